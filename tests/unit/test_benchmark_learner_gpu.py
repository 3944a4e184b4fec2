"""benchmarks/learner_gpu.py stays runnable: its CPU smoke path (a tiny Qwen2, bf16 compute with
fp32 masters through FSDP2 on one rank, one policy and one PRM update) prints the table."""

import importlib.util
import re
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "learner_gpu.py"


def test_learner_benchmark_cpu_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("learner_gpu", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "learner_gpu.md"
    text = bench.main(["--cpu-smoke", "--out", str(out)])
    assert out.read_text() == text
    rows = [line for line in text.splitlines() if line.startswith("| smoke |")]
    assert [r.split("|")[2].strip() for r in rows] == ["policy", "prm"]
    for row in rows:
        tokens_per_s = float(row.split("|")[7].replace(",", ""))
        assert tokens_per_s > 0
    assert "no GPU was lent" in text and "24.9 % MFU" in text
    assert re.search(r"\| 6N \|", text) and re.search(r"\| 12N \|", text)
