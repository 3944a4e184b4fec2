# every 0.2 s: time, pid, utime, stime (ticks) of each python/ray process; cmdlines once
import os, sys, time
out = open(sys.argv[1], 'a'); cmds = open(sys.argv[1] + '.cmds', 'a'); known = set()
while True:
    now = time.time()
    for pid in os.listdir('/proc'):
        if not pid.isdigit(): continue
        try:
            if pid not in known:
                cmd = open(f'/proc/{pid}/cmdline').read().replace('\0', ' ').strip()
                known.add(pid); cmds.write(f"{pid} {cmd[:150]}\n"); cmds.flush()
            s = open(f'/proc/{pid}/stat').read(); f = s[s.rindex(')') + 2:].split()
            if int(f[11]) + int(f[12]) > 0: out.write(f"{now:.2f} {pid} {f[11]} {f[12]}\n")
        except Exception: pass
    out.flush(); time.sleep(0.2)
