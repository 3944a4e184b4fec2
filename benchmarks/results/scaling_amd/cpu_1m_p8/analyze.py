import json, sys, glob, collections
d = sys.argv[1]
cmds = {}
for l in open(f'{d}/samples.txt.cmds'):
    pid, _, cmd = l.strip().partition(' '); cmds[pid] = cmd
series = collections.defaultdict(list)
for l in open(f'{d}/samples.txt'):
    t, pid, u, s = l.split(); series[pid].append((float(t), int(u), int(s)))
def at(pid, t):
    best = None
    for x in series[pid]:
        if x[0] <= t: best = x
    return best
def role(cmd):
    for k in ('RolloutWorker', 'PolicyLearner', 'PRMLearner', 'repirl_ray.cli', 'raylet', 'gcs_server', 'dashboard', 'log_monitor', 'runtime_env', 'monitor'):
        if k in cmd: return k
    return cmd[:30]
for f in sorted(glob.glob(f'{d}/*_*.metrics.jsonl')):
    recs = [json.loads(l) for l in open(f) if '"rollout/accuracy"' in l]
    t0, t1 = recs[0]['time'], recs[-1]['time']; n = len(recs) - 1
    tot = collections.Counter(); sysc = collections.Counter()
    for pid in series:
        a, b = at(pid, t0), at(pid, t1)
        if a is None or b is None or b[0] < t1 - 0.5: continue
        r = role(cmds.get(pid, '?'))
        tot[r] += (b[1] + b[2] - a[1] - a[2]) / n * 10; sysc[r] += (b[2] - a[2]) / n * 10
    wall = (t1 - t0) / n * 1000
    print(f.split('/')[-1][:14], f'wall {wall:.0f} ms/it; cpu ms/it:', ', '.join(f'{k} {v:.0f} (sys {sysc[k]:.0f})' for k, v in tot.most_common() if v > 0), f'| total {sum(tot.values()):.0f}')
