# every 0.1 s: time, pid, utime, stime (ticks), title of each ray/python process
import os, sys, time
out = open(sys.argv[1], 'a'); title = {}
while True:
    now = time.time()
    for pid in os.listdir('/proc'):
        if not pid.isdigit(): continue
        try:
            t = title.get(pid)
            if t is None or not t.startswith('ray::') or 'IDLE' in t:
                cmd = open(f'/proc/{pid}/cmdline').read().replace('\0', ' ').strip()
                if not cmd or ('ray' not in cmd and 'repirl' not in cmd and 'python' not in cmd): continue
                t = title[pid] = cmd.split()[0] if cmd.startswith('ray::') else cmd[:60].replace(' ', '_')
            s = open(f'/proc/{pid}/stat').read(); f = s[s.rindex(')') + 2:].split()
            out.write(f"{now:.2f} {pid} {f[11]} {f[12]} {t}\n")
        except Exception: pass
    out.flush(); time.sleep(0.1)
