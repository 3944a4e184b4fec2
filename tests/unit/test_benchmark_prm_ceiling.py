"""benchmarks/prm_ceiling.py: its oracle checkers against hand-worked cases, and its table columns."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from repirl_ray.algo import NULL_SCORERS, STEP_QUALITY_KEYS
from repirl_ray.tasks.base import Problem

SPEC = importlib.util.spec_from_file_location("prm_ceiling", Path(__file__).resolve().parents[2] / "benchmarks" / "prm_ceiling.py")
prm_ceiling = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(prm_ceiling)


def rows_with_steps(*counts):
    """A stand-in batch whose rows have the given numbers of step ids (only step_ids is read)."""
    width = max(counts) + 1
    ids = np.full((len(counts), width), -1, dtype=np.int16)
    for i, n in enumerate(counts):
        ids[i, :n] = np.arange(n)
    return SimpleNamespace(step_ids=ids)


def test_oracle_checkers_pass_carried_forward_steps_and_fail_the_first_mistake():
    # 7+5*8-5: true chain 7+5=12; 12*8=96; 96-5=91; #91.
    texts = [
        "7+5=12;12*8=96;96-5=91;#91",  # all right
        "7+5=13;13*8=4;4-5=99;#99",    # first step wrong, the rest computed right from 13
        "7+5=12;12*8=96;95-5=90;#90",  # step 2 starts from a wrong value (not the previous result)
        "7+5=12;12*9=8;#8",            # wrong operand at step 1, answer too early
    ]
    problem = Problem(id="p", prompt="7+5*8-5:", answer="91")
    out = prm_ceiling.oracle_scores(rows_with_steps(4, 4, 4, 3), texts, [problem] * 4, 100)
    assert out["local"] == [[1, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0]]
    assert out["chained"] == [[1, 1, 1, 1], [0, 1, 1, 1], [1, 1, 0, 1], [1, 0, 0]]


def test_table_columns_are_the_step_quality_keys_runs_log():
    # The split AUROC itself is algo.step_auroc_split (tests/unit/test_algo_metrics.py).
    assert tuple(prm_ceiling.COLUMNS) == STEP_QUALITY_KEYS
    assert set(prm_ceiling.NULL_LABELS) == set(NULL_SCORERS)
