"""Run records: metrics as JSONL and TensorBoard events, the timer of an iteration's phases, the
one-line progress reports, a run's summary.json, and the memory monitor that measures the peak of
all the run's processes together."""

from __future__ import annotations

import json
import math
import os
import platform
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil

from repirl_ray.utils import atomic_write_text

METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"


class MetricsLogger:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self._tb = None

    @property
    def tb(self):
        if self._tb is None:
            # Here, at the first write: tensorboardX takes 1.8 s to import (measured, loaded 2-core machine).
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        return self._tb

    def log(self, iteration: int, metrics: dict) -> None:
        record = {"iteration": iteration, "time": time.time(), **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.tb.add_scalar(key, value, iteration)
        self.tb.flush()

    def event(self, iteration: int, kind: str, info: dict) -> None:
        with open(self.run_dir / EVENTS_FILE, "a") as f:
            f.write(json.dumps({"iteration": iteration, "time": time.time(), "event": kind, **info}) + "\n")

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, iteration: int) -> None:
        """On resume: drop records of iterations after the checkpoint, which will run again."""
        kept = [r for r in self.read() if r["iteration"] <= iteration]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _plain(v):
    if hasattr(v, "item"):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class PhaseTimer:
    """Seconds per phase of one iteration, as `timing/<phase>` (a phase timed twice adds up)."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.t0 = time.perf_counter()

    def results(self) -> dict[str, float]:
        """Every phase's seconds, and timing/iteration: the seconds since this timer was made."""
        return {**self.times, "timing/iteration": time.perf_counter() - self.t0}

    @contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        yield
        self.times[f"timing/{phase}"] = self.times.get(f"timing/{phase}", 0.0) + time.perf_counter() - t0


def format_base(m: dict) -> str:
    parts = [f"base policy: accuracy {m['eval/accuracy']:.3f} (sampled)"]
    if "eval/greedy_accuracy" in m:
        parts.append(f"greedy {m['eval/greedy_accuracy']:.3f}")
    if "eval/step_auroc" in m:
        parts.append(f"initial PRM step AUROC {m['eval/step_auroc']:.3f}")
    return ", ".join(parts)


def format_progress(iteration: int, total: int, m: dict) -> str:
    parts = [f"iter {iteration:>4}/{total}", f"acc {m.get('rollout/accuracy', float('nan')):.3f}"]
    if "rollout/kept" in m:
        parts.append(f"kept {int(m['rollout/kept'])}")
    if "prm/loss" in m:
        parts.append(f"prm/loss {m['prm/loss']:+.3f}")
    if "prm/ess" in m:
        parts.append(f"ess {m['prm/ess']:.1f}")
    if "prm/step_auroc" in m:
        parts.append(f"auroc {m['prm/step_auroc']:.2f}")
    if "policy/entropy" in m:
        parts.append(f"H {m['policy/entropy']:.3f}")
    if "eval/accuracy" in m:
        parts.append(f"EVAL acc {m['eval/accuracy']:.3f}")
    times = " ".join(
        f"{k.split('/')[1]} {m[k]:.2f}" for k in ("timing/rollout", "timing/prm", "timing/score", "timing/policy", "timing/sync") if k in m
    )
    parts.append(f"[{times}] {m.get('timing/iteration', float('nan')):.2f} s")
    return " | ".join(parts)


# The null scorers' numbers a run's summary.json keeps (every one is in metrics.jsonl).
NULL_SUMMARY_KEYS = ("step_auroc_null", "step_auroc_prefix_min_null", "first_error_acc_null")


def run_summary(*, name: str, run_dir: Path, iterations: int, base: dict, final: dict, records: list[dict],
                wall_s: float, setup_s: float, memory: "MemoryMonitor") -> dict:
    """A finished run's summary.json: base and final evaluation (the hard split's and the null
    scorers' too), mean seconds per phase over the training iterations' records, wall and set-up
    time, peak memory, the machine."""
    phases = {}
    for key in ("timing/rollout", "timing/prm", "timing/score", "timing/policy", "timing/sync", "timing/iteration"):
        values = [m[key] for m in records if key in m and "rollout/accuracy" in m]
        if values:
            phases[key.split("/")[1]] = round(float(np.mean(values)), 3)
    out = {
        "name": name,
        "run_dir": str(run_dir),
        "iterations": iterations,
        "base_accuracy": base["eval/accuracy"],
        "final_accuracy": final["eval/accuracy"],
        "base_greedy_accuracy": base.get("eval/greedy_accuracy"),
        "final_greedy_accuracy": final.get("eval/greedy_accuracy"),
        "step_auroc": final.get("eval/step_auroc"),
        "step_auroc_prefix_min": final.get("eval/step_auroc_prefix_min"),
        "step_auroc_first_wrong": final.get("eval/step_auroc_first_wrong"),
        "step_auroc_after_first_wrong": final.get("eval/step_auroc_after_first_wrong"),
        "base_step_auroc": base.get("eval/step_auroc"),
        "first_error_acc": final.get("eval/first_error_acc"),
        "step_auroc_onpolicy": final.get("eval/step_auroc_onpolicy"),
        "wall_s": round(wall_s, 1),
        "setup_s": round(setup_s, 1),
        "peak_rss_gib": round(memory.peak_gib, 3),
        "peak_pss_gib": round(memory.peak_pss_gib, 3),
        "mean_phase_s": phases,
        "machine": machine_info(),
    }
    for key, value in final.items():
        if key.startswith("eval/") and key[len("eval/"):].startswith(NULL_SUMMARY_KEYS):
            out[key[len("eval/"):]] = value
        if key.startswith("eval_hard/"):
            out["final_hard_" + key.split("/")[1]] = value
    for key, value in base.items():
        if key.startswith("eval_hard/"):
            out["base_hard_" + key.split("/")[1]] = value
    return out


def machine_info() -> dict:
    import torch  # the learners have loaded it already; the summary only reads its version

    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _ray_processes(whole_node: bool) -> list[psutil.Process]:
    """This process and its descendants (a local Ray's raylet, GCS and workers), plus every Ray
    process of this node when the driver joined a cluster (whole_node)."""
    me = psutil.Process()
    procs = {me.pid: me}
    for p in me.children(recursive=True):
        procs[p.pid] = p
    if not whole_node:
        return list(procs.values())
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            name = p.info["name"] or ""
            cmd = " ".join(p.info["cmdline"] or [])
        except (psutil.Error, TypeError):
            continue
        if name.startswith("ray::") or "raylet" in name or "gcs_server" in name or "ray/_private" in cmd or cmd.startswith("ray::"):
            procs[p.pid] = p
    return list(procs.values())


class MemoryMonitor:
    """Samples the summed RSS (and PSS, which counts shared pages once) of the run's processes
    every `interval` seconds in a background thread and keeps the peaks. RSS sums count memory
    shared between processes (the object store, libraries) more than once: an upper bound."""

    # PSS makes the kernel walk every page table of every process: 75 ms of CPU per reading on a 27M
    # run (4 ms for RSS). Read every 5 s, that was 1.6 % of a core, and a learner whose 2 OpenMP
    # threads fill both cores waits for the one it preempts (iterations 0.95-0.98x with no readings
    # at all). Memory in a run is near its steady state after the first iterations.
    pss_every_s = 30.0

    def __init__(self, interval: float = 1.0, whole_node: bool = False, clock=time.monotonic):
        self.interval = interval
        self.whole_node = whole_node
        self.peak_gib = 0.0
        self.peak_pss_gib = 0.0
        self.current_gib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="memory-monitor")
        self._clock = clock
        self._pss_at: float | None = None  # when PSS was last read

    def sample(self, with_pss: bool | None = None) -> None:
        """RSS of the run's processes; PSS too when asked, or (None) at the first sample and then
        once pss_every_s has passed."""
        now = self._clock()
        if with_pss is None:
            with_pss = self._pss_at is None or now - self._pss_at >= self.pss_every_s
        rss = pss = 0
        for p in _ray_processes(self.whole_node):
            try:
                rss += p.memory_info().rss
                if with_pss:
                    pss += p.memory_full_info().pss
            except (psutil.Error, AttributeError):
                continue
        self.current_gib = rss / 2**30
        self.peak_gib = max(self.peak_gib, self.current_gib)
        if with_pss:
            self.peak_pss_gib = max(self.peak_pss_gib, pss / 2**30)
            self._pss_at = now

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.sample()
