# every 0.5 s: for each learner/rollout actor: heap size (MB), RSS (MB), minflt, stime, title
import os, sys, time, re
out = open(sys.argv[1], 'a')
while True:
    for pid in os.listdir('/proc'):
        if not pid.isdigit(): continue
        try:
            cmd = open(f'/proc/{pid}/cmdline').read().replace('\0', ' ').strip()
            if not cmd.startswith('ray::') or 'IDLE' in cmd: continue
            heap = 0
            for l in open(f'/proc/{pid}/maps'):
                if '[heap]' in l:
                    a, b = l.split()[0].split('-'); heap = (int(b, 16) - int(a, 16)) >> 20
            rss = 0
            for l in open(f'/proc/{pid}/status'):
                if l.startswith('VmRSS'): rss = int(l.split()[1]) >> 10
            s = open(f'/proc/{pid}/stat').read(); f = s[s.rindex(')') + 2:].split()
            out.write(f"{time.time():.1f} {pid} heap {heap} rss {rss} minflt {f[7]} utime {f[11]} stime {f[12]} {cmd[:40]}\n")
        except Exception:
            pass
    out.flush(); time.sleep(0.5)
