"""Every pair of adjacent serial / pipelined runs at 0.8M / 8 prompts, shared layout, on this machine
(AMD EPYC, 2 vCPUs), pooled: the geometric mean of the pipelined / serial ratio of each phase, the
spread of one pair's log-ratio, and how many pairs came out above 1.
    python3 benchmarks/results/scaling_amd/cpu_1m_p8/pooled.py   (from the repository root)"""
import glob, json, re
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
pairs = []
for d in ["../variants_75587e0", "../variants_7a512ae", "../variants_abba_c2b2a31", "../after_c2b2a31/variants_1m",
          "stopped_invocation"]:
    runs = {}
    for f in glob.glob(str(HERE / d / "1m-p8-shared*.json")):
        m = re.search(r"shared-(serial|pipelined)(?:-r(\d))?\.json$", f)
        runs[(m.group(1), int(m.group(2) or 0))] = json.load(open(f))
    pairs += [(runs[("serial", r)], runs[("pipelined", r)]) for r in range(8) if ("serial", r) in runs and ("pipelined", r) in runs]
for d in [".", "by_role_a", "by_role_b"]:
    for r in range(8):
        s, p = HERE / d / f"{r}_serial.json", HERE / d / f"{r}_pipelined.json"
        if s.is_file() and p.is_file():
            pairs.append((json.load(open(s)), json.load(open(p))))
print(f"{len(pairs)} pairs")
for k in ["s_iteration", "s_rollout", "s_rollout_engine", "s_prm", "s_score", "s_policy", "s_sync"]:
    log_r = np.log([p[k] / s[k] for s, p in pairs])
    se = log_r.std(ddof=1) / np.sqrt(len(log_r))
    print(f"{k[2:]:16s} pipelined / serial {np.exp(log_r.mean()):.3f} (95 % interval {np.exp(log_r.mean() - 2 * se):.3f}-"
          f"{np.exp(log_r.mean() + 2 * se):.3f}); one pair's spread (sd of log) {log_r.std(ddof=1):.3f}; above 1: "
          f"{(log_r > 0).sum()}/{len(log_r)}")
