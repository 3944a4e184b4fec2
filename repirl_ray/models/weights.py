"""Policy weights as buckets of numpy arrays: learner -> Ray object store -> vLLM, one copy.

A bucket is a list of (HF checkpoint name, array) of at most `bucket_bytes` in all (a tensor
larger than that gets a bucket of its own). Numpy arrays inside a returned list are stored out of
band by Ray and read back without a copy, so a rollout worker views the object store's memory
directly: on the CPU the engine's parameters become views of it (`engine_views`), and Ray's copy
into the store is the push's one copy (a GPU engine's weight loader copies from the views).

- No copy on the learner side either when a tensor already is contiguous, on the CPU and in the
  engine's dtype (the array is a view of the parameter; Ray's put is the copy).
- bf16 has no numpy dtype: a bf16 tensor travels as its raw 16 bits (uint16) and is viewed back
  as bf16 on arrival; both views are free.
- A tensor that aliases one already sent is left out: a tied lm_head shares the embedding's
  storage, and vLLM ties it back from the model's config.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import torch

BUCKET_BYTES = 256 * 2**20

Bucket = list[tuple[str, np.ndarray]]

# numpy has no bfloat16: its raw bits travel instead.
_WIRE_DTYPE = {torch.bfloat16: torch.uint16}


def weight_buckets(state: dict[str, torch.Tensor], dtype: torch.dtype, bucket_bytes: int = BUCKET_BYTES) -> list[Bucket]:
    """The state dict as buckets of (name, array) in `dtype`, in the engine's order
    (`engine_order`).

    Where no copy is needed the arrays are views of the live parameters: store or load them
    before the next optimizer step (a Ray actor method's return value is stored right away)."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    buckets: list[Bucket] = []
    bucket: Bucket = []
    size = 0
    sent = set()
    for name in engine_order(state):
        tensor = state[name]
        tensor = tensor.detach()
        if tensor.numel() > 0:
            key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()))
            if key in sent:
                continue
            sent.add(key)
        array = _to_numpy(tensor, dtype)
        if bucket and size + array.nbytes > bucket_bytes:
            buckets.append(bucket)
            bucket, size = [], 0
        bucket.append((name, array))
        size += array.nbytes
    if bucket:
        buckets.append(bucket)
    return buckets


def engine_order(names) -> list[str]:
    """The state dict's names with the weights of one module's siblings next to each other, then
    their biases: q/k/v_proj.weight, o_proj.weight, q/k/v_proj.bias; gate/up/down_proj.weight.
    HF checkpoints interleave each projection's weight and bias; vLLM stacks q, k and v (and
    gate and up) into one parameter, and parts sent back to back can be viewed as it without a
    copy (`engine_views`). Otherwise the state dict's order: groups by first appearance."""
    groups: dict[tuple[str, str], list[str]] = {}
    for name in names:
        parent, _, leaf = name.rpartition(".")
        groups.setdefault((parent.rpartition(".")[0], leaf), []).append(name)
    return [name for group in groups.values() for name in group]


def _to_numpy(tensor: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    # .to and .contiguous return the tensor itself when nothing needs to change.
    tensor = tensor.to(device="cpu", dtype=dtype).contiguous()
    return tensor.view(_WIRE_DTYPE.get(dtype, dtype)).numpy()


def bucket_tensors(buckets: list[Bucket], dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """The inverse: (name, tensor) pairs viewing the arrays (no copy), in `dtype`."""
    for bucket in buckets:
        for name, array in bucket:
            yield name, _as_tensor(name, array, dtype)


def _as_tensor(name: str, array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A tensor over the array's own memory, in `dtype`.

    Arrays read from the object store are read-only, and torch.from_numpy warns that a tensor
    over them must not be written: the consumer (vLLM's weight loaders and forward pass, a test)
    only reads them, so that one warning is silenced here, and only it."""
    wire = _WIRE_DTYPE.get(dtype, dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        tensor = torch.from_numpy(array)
    if tensor.dtype != wire:
        raise ValueError(
            f"weight {name} arrived as {array.dtype}, the engine runs in {dtype}: the policy learner "
            "and the rollout engine must use the same model.dtype"
        )
    return tensor.view(dtype)


def engine_views(
    buckets: list[Bucket],
    dtype: torch.dtype,
    params: dict[str, torch.Tensor],
    packed: dict[str, list[str]],
    padded: frozenset[str] = frozenset(),
) -> tuple[dict[str, torch.Tensor], int] | None:
    """Each engine parameter as a tensor over the buckets' own memory, so that a push needs no
    copy on the engine's side: the engine's parameters are then set to these tensors.

    `params`: the engine's parameters by name (only shape and dtype are read). `packed`: the
    model's packed_modules_mapping, e.g. {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}: a packed
    parameter is its parts stacked along dim 0 in that order (vLLM's QKV and merged column
    layers without tensor parallelism). Ray writes a list's arrays back to back into one store
    object (64-byte aligned, which these sizes are), so the parts usually lie end to end and one
    view spans them; where they do not, the parts are concatenated (a copy, counted). `padded`:
    parameters that may have more rows than sent (vLLM pads a vocabulary to a multiple of 64):
    those get the rows sent and zeros below, as vLLM's embedding loader does (a copy, counted).

    Returns (views by parameter name, number of parameters concatenated), or None where the
    buckets do not hold exactly the parameters' parts in their shapes and dtype (another model,
    tensor parallelism): then the model's own load_weights must map and check them."""
    arrays = {name: array for bucket in buckets for name, array in bucket}
    used: set[str] = set()
    views: dict[str, torch.Tensor] = {}
    copied = 0
    for name, param in params.items():
        sources = _source_names(name, packed)
        parts = [arrays.get(s) for s in sources]
        if param.dtype != dtype or any(p is None for p in parts):
            return None
        shape = tuple(param.shape)
        if len(parts) == 1:
            span = parts[0]
            if name in padded and span.shape[1:] == shape[1:] and span.shape[0] < shape[0]:
                span = np.concatenate([span, np.zeros((shape[0] - span.shape[0], *shape[1:]), span.dtype)])
                copied += 1
            elif span.shape != shape:
                return None
        else:
            if any(p.shape[1:] != shape[1:] for p in parts) or sum(p.shape[0] for p in parts) != shape[0]:
                return None
            span = _adjacent_span(parts, shape)
            if span is None:
                span = np.concatenate(parts)
                copied += 1
        used.update(sources)
        views[name] = _as_tensor(name, span, dtype)
    if used != arrays.keys():
        return None
    return views, copied


def _source_names(name: str, packed: dict[str, list[str]]) -> list[str]:
    """The checkpoint names a parameter is made of: qkv_proj.weight <- q/k/v_proj.weight."""
    for packed_name, parts in packed.items():
        token = f".{packed_name}."
        if token in name:
            return [name.replace(token, f".{part}.") for part in parts]
    return [name]


def _adjacent_span(parts: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray | None:
    """One read-only array over parts that lie end to end in memory (C-contiguous, same dtype),
    else None. The span's base is the first part's buffer: the caller keeps all parts alive."""
    first = parts[0]
    end = first.ctypes.data
    for part in parts:
        if not part.flags.c_contiguous or part.dtype != first.dtype or part.ctypes.data != end:
            return None
        end += part.nbytes
    strides = tuple(int(np.prod(shape[i + 1 :], dtype=np.int64)) * first.itemsize for i in range(len(shape)))
    return np.lib.stride_tricks.as_strided(first, shape=shape, strides=strides, writeable=False)
