"""Weight buckets: they reassemble to the exact weights (fp32 and bf16), a tied lm_head is left
out, nothing is copied when the dtype already matches, and buckets respect their size bound."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from repirl_ray.models.tiny import build_tiny_qwen2
from repirl_ray.models.weights import bucket_tensors, weight_buckets


def _model(dtype=torch.float32):
    # 64 hidden, 2 layers: 25 tensors, about 0.1 MB in fp32.
    return build_tiny_qwen2(20, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, seed=3).to(dtype)


def _read_only(buckets):
    """What a rollout worker gets from the object store: arrays over read-only memory."""
    out = []
    for bucket in buckets:
        out.append([(n, np.frombuffer(a.tobytes(), dtype=a.dtype).reshape(a.shape)) for n, a in bucket])
    return out


def test_fp32_buckets_reassemble_exactly_without_the_tied_lm_head_and_without_copies():
    model = _model()
    state = model.state_dict()
    assert state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr()  # tied
    bucket_bytes = 64 * 1024
    buckets = weight_buckets(state, torch.float32, bucket_bytes)
    assert len(buckets) >= 3
    names = [n for b in buckets for n, _ in b]
    assert names == [n for n in state if n != "lm_head.weight"]  # all of them, in order, once
    for bucket in buckets:
        total = sum(a.nbytes for _, a in bucket)
        assert total <= bucket_bytes or len(bucket) == 1
    # Already contiguous fp32 on the CPU: the arrays are views of the parameters.
    for name, array in (p for b in buckets for p in b):
        assert np.shares_memory(array, state[name].numpy())
    back = dict(bucket_tensors(_read_only(buckets), torch.float32))
    assert back.keys() == set(names)
    for name, tensor in back.items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, state[name])


def test_bf16_travels_as_raw_bits_and_comes_back_bitwise():
    model = _model(torch.bfloat16)
    state = model.state_dict()
    buckets = weight_buckets(state, torch.bfloat16, 32 * 1024)
    arrays = [a for b in buckets for _, a in b]
    assert all(a.dtype == np.uint16 for a in arrays)
    back = dict(bucket_tensors(_read_only(buckets), torch.bfloat16))
    assert "lm_head.weight" not in back and len(back) == len(state) - 1
    for name, tensor in back.items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor.view(torch.uint16), state[name].view(torch.uint16))
    # The arrival side is a view too (no copy): a tensor over the array's own memory.
    name, array = buckets[0][0]
    (_, tensor), *_ = bucket_tensors([[(name, array)]], torch.bfloat16)
    assert tensor.data_ptr() == array.ctypes.data


def test_fp32_learner_to_bf16_engine_rounds_like_torch():
    state = _model().state_dict()
    back = dict(bucket_tensors(weight_buckets(state, torch.bfloat16), torch.bfloat16))
    for name, tensor in back.items():
        assert torch.equal(tensor, state[name].to(torch.bfloat16))


def test_non_contiguous_tensor_is_made_contiguous():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()
    ((name, array),), = weight_buckets({"w": t}, torch.float32)
    assert name == "w" and array.flags.c_contiguous
    assert np.array_equal(array, t.numpy())


def test_a_dtype_mismatch_names_the_weight():
    buckets = weight_buckets({"model.norm.weight": torch.ones(4)}, torch.float32)
    with pytest.raises(ValueError, match="model.norm.weight arrived as float32.*model.dtype"):
        list(bucket_tensors(buckets, torch.bfloat16))
    with pytest.raises(ValueError, match="bucket_bytes"):
        weight_buckets({}, torch.float32, 0)


def test_read_only_arrays_give_no_warning():
    # torch warns about non-writable arrays once per process, so this runs in a fresh one where
    # any UserWarning is an error.
    code = (
        "import numpy as np, torch\n"
        "from repirl_ray.models.weights import bucket_tensors\n"
        "a = np.frombuffer(np.arange(6, dtype=np.float32).tobytes(), dtype=np.float32)\n"
        "assert not a.flags.writeable\n"
        "(_, t), = bucket_tensors([[('w', a)]], torch.float32)\n"
        "assert t.tolist() == [0, 1, 2, 3, 4, 5]\n"
    )
    proc = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
