"""Weight buckets: they reassemble to the exact weights (fp32 and bf16), a tied lm_head is left
out, nothing is copied when the dtype already matches, and buckets respect their size bound;
the parts of a packed engine parameter travel back to back and are viewed as it without a copy."""

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from repirl_ray.models.tiny import build_tiny_qwen2
from repirl_ray.models.weights import bucket_tensors, engine_order, engine_views, flatten_parameters, weight_buckets


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
    assert names == [n for n in engine_order(state) if n != "lm_head.weight"]  # all of them, once
    assert sorted(names) == sorted(n for n in state if n != "lm_head.weight")
    # The parts of vLLM's packed qkv_proj and gate_up_proj travel back to back.
    at = {n: i for i, n in enumerate(names)}
    layer = "model.layers.1."
    assert [at[layer + f"self_attn.{p}_proj.weight"] for p in "qkv"] == [at[layer + "self_attn.q_proj.weight"] + i for i in range(3)]
    assert [at[layer + f"self_attn.{p}_proj.bias"] for p in "qkv"] == [at[layer + "self_attn.q_proj.bias"] + i for i in range(3)]
    assert at[layer + "mlp.up_proj.weight"] == at[layer + "mlp.gate_proj.weight"] + 1
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


def test_engine_order_groups_sibling_weights_then_biases():
    names = ["m.embed.weight", "m.l0.attn.q.weight", "m.l0.attn.q.bias", "m.l0.attn.k.weight", "m.l0.attn.k.bias",
             "m.l0.norm.weight", "m.l0.mlp.up.weight", "m.norm.weight", "head"]
    assert engine_order(names) == [
        "m.embed.weight", "m.norm.weight",
        "m.l0.attn.q.weight", "m.l0.attn.k.weight", "m.l0.attn.q.bias", "m.l0.attn.k.bias",
        "m.l0.norm.weight", "m.l0.mlp.up.weight", "head",
    ]


PACKED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}
# The engine's parameters: q (2 rows) + k (1) + v (1) stacked; biases likewise; a norm.
PARAMS = {"a.qkv_proj.weight": torch.empty(4, 3), "a.qkv_proj.bias": torch.empty(4), "norm.weight": torch.empty(3)}
PARTS = [("a.q_proj.weight", (2, 3)), ("a.k_proj.weight", (1, 3)), ("a.v_proj.weight", (1, 3)),
         ("a.q_proj.bias", (2,)), ("a.k_proj.bias", (1,)), ("a.v_proj.bias", (1,)), ("norm.weight", (3,))]


def _back_to_back(dtype=np.float32):
    """Buckets whose arrays lie end to end in one read-only buffer, as Ray lays out one object."""
    flat = np.frombuffer(np.arange(3 * 4 + 4 + 3, dtype=dtype).tobytes(), dtype=dtype)
    buckets, at = [[], []], 0
    for i, (name, shape) in enumerate(PARTS):
        n = int(np.prod(shape))
        buckets[i // 4].append((name, flat[at : at + n].reshape(shape)))  # a bucket boundary inside qkv's bias
        at += n
    return flat, buckets


def test_engine_views_span_back_to_back_parts_without_a_copy():
    flat, buckets = _back_to_back()
    views, copied = engine_views(buckets, torch.float32, PARAMS, PACKED)
    assert copied == 0
    # qkv weight = rows [[0 1 2] [3 4 5] | [6 7 8] | [9 10 11]], its bias = [12 13 | 14 | 15], norm = [16 17 18]
    assert views["a.qkv_proj.weight"].tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert views["a.qkv_proj.bias"].tolist() == [12, 13, 14, 15]
    assert views["norm.weight"].tolist() == [16, 17, 18]
    base = flat.ctypes.data
    assert [views[n].data_ptr() - base for n in PARAMS] == [0, 4 * 12, 4 * 16]  # views of the buffer itself


def test_engine_views_concatenate_parts_that_are_apart_and_count_them():
    _, buckets = _back_to_back()
    apart = [[(n, a.copy()) for n, a in b] for b in buckets]  # each part in memory of its own
    views, copied = engine_views(apart, torch.float32, PARAMS, PACKED)
    assert copied == 2  # qkv weight and qkv bias; the norm is still a view
    assert views["a.qkv_proj.weight"].tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert views["a.qkv_proj.bias"].tolist() == [12, 13, 14, 15]
    assert views["norm.weight"].data_ptr() == apart[1][-1][1].ctypes.data


def test_engine_views_of_bf16_bits():
    flat, buckets = _back_to_back(np.uint16)
    params = {k: v.to(torch.bfloat16) for k, v in PARAMS.items()}
    views, copied = engine_views(buckets, torch.bfloat16, params, PACKED)
    assert copied == 0 and views["a.qkv_proj.weight"].dtype == torch.bfloat16
    assert views["a.qkv_proj.bias"].view(torch.uint16).tolist() == [12, 13, 14, 15]


def test_engine_views_pad_a_padded_vocabulary_with_zeros():
    embed = np.frombuffer(np.arange(6, dtype=np.float32).tobytes(), dtype=np.float32).reshape(3, 2)
    params = {"embed.weight": torch.empty(4, 2)}  # vLLM pads the vocabulary
    views, copied = engine_views([[("embed.weight", embed)]], torch.float32, params, {}, frozenset(params))
    assert copied == 1 and views["embed.weight"].tolist() == [[0, 1], [2, 3], [4, 5], [0, 0]]
    assert engine_views([[("embed.weight", embed)]], torch.float32, params, {}) is None  # not a padded one


@pytest.mark.parametrize(
    "change",
    ["missing part", "extra weight", "wrong shape", "engine dtype"],
)
def test_engine_views_give_up_where_the_buckets_do_not_match_the_parameters(change):
    _, buckets = _back_to_back()
    params = dict(PARAMS)
    if change == "missing part":
        buckets[0] = buckets[0][1:]
    elif change == "extra weight":
        buckets[1].append(("lm_head.weight", np.zeros(3, np.float32)))
    elif change == "wrong shape":
        params["norm.weight"] = torch.empty(4)
    else:
        params["norm.weight"] = torch.empty(3, dtype=torch.float64)
    assert engine_views(buckets, torch.float32, params, PACKED) is None


def _pickled(buckets):
    """As Ray stores and reads them: pickle protocol 5, arrays out of band, read back over
    read-only copies of the out-of-band buffers. Returns (the buckets read back, buffer sizes)."""
    buffers = []
    data = pickle.dumps(buckets, protocol=5, buffer_callback=buffers.append)
    stored = [memoryview(bytes(b.raw())) for b in buffers]
    return pickle.loads(data, buffers=stored), [len(b) for b in stored]


def test_flattened_parameters_travel_as_one_array_per_bucket_and_arrive_as_views_of_it():
    model = _model()
    x = torch.tensor([[1, 5, 7, 2]])
    logits = model(x).logits
    flatten_parameters(model)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    assert torch.equal(model(x).logits, logits)
    # Training keeps the parameters in the buffer: the same objects, updated in place.
    model(x).logits.sum().backward()
    torch.optim.AdamW(model.parameters(), lr=0.1).step()
    state = model.state_dict()
    buckets = weight_buckets(state, torch.float32, 64 * 1024)
    assert len(buckets) >= 3
    for bucket in buckets:  # the span and its arrays are views of the parameters: no copy
        assert bucket.span is not None
        for name, array in bucket:
            assert np.shares_memory(array, state[name].numpy()) and np.shares_memory(array, bucket.span)
    back, sizes = _pickled(buckets)
    assert len(sizes) == len(buckets)  # one buffer per bucket, not one per tensor
    assert sum(sizes) < sum(a.nbytes for b in buckets for _, a in b) + 64 * len(state)  # no more than the alignment
    assert [[n for n, _ in b] for b in back] == [[n for n, _ in b] for b in buckets]
    for bucket in back:
        for name, array in bucket:
            assert not array.flags.writeable and np.shares_memory(array, bucket.span)
            assert torch.equal(torch.from_numpy(array.copy()), state[name])
    # Parts of one engine parameter still lie back to back on arrival (engine_views needs it).
    arrays = {n: a for b in back for n, a in b}
    q, k, v = (arrays[f"model.layers.1.self_attn.{p}_proj.weight"] for p in "qkv")
    assert k.ctypes.data == q.ctypes.data + q.nbytes and v.ctypes.data == k.ctypes.data + k.nbytes


def test_separate_tensors_travel_array_by_array():
    state = _model().state_dict()  # each parameter in memory of its own
    buckets = weight_buckets(state, torch.float32, 64 * 1024)
    assert all(bucket.span is None for bucket in buckets)
    back, sizes = _pickled(buckets)
    assert len(sizes) == len(state) - 1  # every tensor but the tied lm_head
    assert all(torch.equal(torch.from_numpy(a.copy()), state[n]) for b in back for n, a in b)


def test_a_conversion_is_written_into_one_array_per_bucket():
    state = _model().state_dict()  # fp32 parameters apart, sent as bf16: each needs a copy anyway
    buckets = weight_buckets(state, torch.bfloat16, 32 * 1024)
    assert all(bucket.span is not None for bucket in buckets)
    back, sizes = _pickled(buckets)
    assert len(sizes) == len(buckets)
    back_t = dict(bucket_tensors(back, torch.bfloat16))
    assert all(torch.equal(back_t[n].view(torch.uint16), state[n].to(torch.bfloat16).view(torch.uint16)) for n in back_t)


def test_tensors_of_one_buffer_out_of_its_order_travel_array_by_array():
    model = _model()
    flatten_parameters(model)
    state = dict(reversed(model.state_dict().items()))  # sent in another order than they lie
    buckets = weight_buckets(state, torch.float32, 64 * 1024)
    assert all(bucket.span is None for bucket in buckets)
    back, _ = _pickled(buckets)
    assert all(torch.equal(torch.from_numpy(a.copy()), state[n]) for b in back for n, a in b)
