"""A real `ray start --head` cluster on loopback for the job-submission tests, stopped by the
process ids this test started (never `ray stop`, which would stop every Ray of the machine)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRayCluster:
    def __init__(self, tmp: Path, num_cpus: int = 2):
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        # Ray's socket paths must stay under 107 bytes: its temp dir gets a short name of its own.
        import tempfile

        self.ray_tmp = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))
        self.num_cpus = num_cpus
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def env(self) -> dict:
        env = dict(os.environ)
        env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1")
        env.pop("RAY_ADDRESS", None)
        return env

    def start(self, timeout: float = 120) -> "LocalRayCluster":
        temp_dir = self.ray_tmp
        cmd = [
            str(BIN / "ray"), "start", "--head", "--block",
            "--node-ip-address=127.0.0.1", f"--port={self.gcs_port}",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--num-cpus={self.num_cpus}", "--object-store-memory=300000000",
            f"--temp-dir={temp_dir}", "--disable-usage-stats",
            f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", f"--ray-client-server-port={free_port()}",
        ]
        self.log = open(self.tmp / "ray_start.log", "w")
        # A session of its own: every process of this cluster can be found and stopped by it.
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}: {(self.tmp / 'ray_start.log').read_text()[-2000:]}")
            try:
                import urllib.request

                with urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=2) as r:
                    if r.status == 200:
                        return self
            except Exception:
                time.sleep(1)
        self.stop()
        raise TimeoutError(f"the Ray dashboard did not come up on {self.dashboard} in {timeout} s")

    def submit(self, entrypoint: list[str], timeout: float = 600, extra: list[str] = ()) -> subprocess.CompletedProcess:
        cmd = [str(BIN / "ray"), "job", "submit", f"--address={self.dashboard}", *extra, "--", *entrypoint]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=self.env())

    def pids(self) -> list[int]:
        if self.proc is None:
            return []
        # Our session, plus anything that runs from our private temp dir (in case a Ray
        # process started a session of its own).
        sid = self.proc.pid  # start_new_session: the session id is the leader's pid
        marker = str(self.ray_tmp)
        out = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if os.getsid(p.pid) == sid or marker in " ".join(p.info["cmdline"] or []):
                    out.append(p.pid)
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        return [p for p in out if p != os.getpid()]

    def stop(self) -> None:
        pids = self.pids()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + 15
            while time.time() < deadline and any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids):
                time.sleep(0.5)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.log.close()
        import shutil

        shutil.rmtree(self.ray_tmp, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
