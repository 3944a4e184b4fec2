"""benchmarks/prm_ceiling.py's oracle checkers and AUROC split against hand-worked cases."""

import importlib.util
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

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


def test_split_auroc_by_hand():
    # Sample A all correct: steps 0.9, 0.8. Sample B first wrong at 1: steps 0.7 (correct),
    # 0.1 (first wrong), 0.95 and 0.3 after it.
    scores = [[0.9, 0.8], [0.7, 0.1, 0.95, 0.3]]
    out = prm_ceiling.split_auroc(scores, [None, 1])
    # Positives 0.9, 0.8, 0.7; negatives 0.1, 0.95, 0.3: pairs won 3 + 0 + 3 of 9.
    assert out["step_auroc"] == pytest.approx(6 / 9)
    assert out["vs_first_wrong"] == pytest.approx(1.0)
    assert out["vs_after_first_wrong"] == pytest.approx(3 / 6)
    # Prefix min of B: 0.7, 0.1, 0.1, 0.1: every negative below every positive.
    assert out["prefix_min"] == pytest.approx(1.0)
    # No wrong step anywhere: the split AUROCs are undefined (NaN), not 0 or 1.
    assert math.isnan(prm_ceiling.split_auroc([[0.5, 0.2]], [None])["vs_first_wrong"])
