import json, sys, glob, collections
d = sys.argv[1]
series = collections.defaultdict(list); titles = {}
for l in open(f'{d}/samples.txt'):
    if len(l.split(maxsplit=4)) < 5: continue
    t, pid, u, s, title = l.split(maxsplit=4); series[pid].append((float(t), int(u), int(s))); titles[pid] = title.strip()
def at(pid, t):
    best = None
    for x in series[pid]:
        if x[0] <= t: best = x
    return best
def role(t):
    for k in ('RolloutWorker', 'PolicyLearner', 'PRMLearner', 'repirl_ray.cli', 'raylet', 'gcs_server', 'dashboard'):
        if k in t: return k
    return 'other'
for f in sorted(glob.glob(f'{d}/*_*.metrics.jsonl')):
    recs = [json.loads(l) for l in open(f) if '"rollout/accuracy"' in l]
    t0, t1 = recs[0]['time'], recs[-1]['time']; n = len(recs) - 1
    tot = collections.Counter()
    for pid in series:
        a, b = at(pid, t0), at(pid, t1)
        if a is None or b is None or b[0] < t1 - 0.3: continue
        tot[role(titles[pid])] += (b[1] + b[2] - a[1] - a[2]) / n * 10
    wall = (t1 - t0) / n * 1000
    print(f.split('/')[-1].split('.')[0].ljust(12), f'wall {wall:4.0f} ms/it | cpu ms/it', ' '.join(f'{k} {tot[k]:4.0f}' for k in ('RolloutWorker', 'PolicyLearner', 'PRMLearner', 'repirl_ray.cli', 'raylet', 'gcs_server', 'dashboard', 'other')), f'| total {sum(tot.values()):4.0f}')
