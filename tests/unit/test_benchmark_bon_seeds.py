"""benchmarks/bon_seeds.py: best-of-N selectors over runs, and each PRM selector's difference
from majority vote, against hand-computed means and standard deviations."""

import importlib.util
from pathlib import Path

SPEC = importlib.util.spec_from_file_location("bon_seeds", Path(__file__).resolve().parents[2] / "benchmarks" / "bon_seeds.py")
bon_seeds = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bon_seeds)


def test_table_by_hand():
    runs = [
        {"n": [1, 2], "selectors": ["prm_vote", "majority"], "prm_vote": [0.5, 0.75], "majority": [0.5, 0.5]},
        {"n": [1, 2], "selectors": ["prm_vote", "majority"], "prm_vote": [0.5, 0.25], "majority": [0.5, 0.25]},
    ]
    lines = bon_seeds.table(runs).splitlines()
    assert lines[0] == "| N | prm_vote | majority | prm_vote - majority |"
    assert lines[2] == "| 1 | 0.500 +- 0.000 (n=2) | 0.500 +- 0.000 (n=2) | 0.000 +- 0.000 (n=2) |"
    # N = 2: prm_vote 0.75, 0.25 -> mean 0.5, std (ddof 1) 0.354; majority 0.5, 0.25 -> 0.375,
    # 0.177; differences 0.25, 0 -> 0.125, 0.177.
    assert lines[3] == "| 2 | 0.500 +- 0.354 (n=2) | 0.375 +- 0.177 (n=2) | 0.125 +- 0.177 (n=2) |"
