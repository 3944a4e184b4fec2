"""Prompt filtering by K-sample accuracy (repirl_ray/algo/filtering.py, ALGORITHM.md section 3)."""

import pytest
import torch

from repirl_ray.algo.filtering import filter_prompts


def test_filter_prompts_band_is_inclusive():
    # K = 5, correct counts per prompt 0, 1, 2, 4, 5 -> accuracy 0, 0.2, 0.4, 0.8, 1.0;
    # band [0.2, 0.8] keeps the middle three, including both edges.
    counts = [0, 1, 2, 4, 5]
    outcomes = torch.tensor([1 if k < c else 0 for c in counts for k in range(5)])
    keep = filter_prompts(outcomes, samples_per_prompt=5, low=0.2, high=0.8)
    assert keep.dtype == torch.bool
    assert keep.tolist() == [False, True, True, True, False]


def test_filter_prompts_k4_paper_band():
    # K = 4: accuracies 0.25 and 0.75 are inside [0.2, 0.8], 0 and 1 are outside.
    outcomes = torch.tensor([0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1, 1], dtype=torch.float32)
    assert filter_prompts(outcomes, 4, 0.2, 0.8).tolist() == [False, True, True, False]
    # the full band keeps everything
    assert filter_prompts(outcomes, 4, 0.0, 1.0).all()


def test_filter_prompts_rejects_ragged_batch():
    with pytest.raises(ValueError, match="multiple of samples_per_prompt"):
        filter_prompts(torch.zeros(7), 4, 0.2, 0.8)
