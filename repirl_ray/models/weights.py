"""Policy weights as buckets of numpy arrays: learner -> Ray object store -> vLLM, one copy.

A bucket is a list of (HF checkpoint name, array) of at most `bucket_bytes` in all (a tensor
larger than that gets a bucket of its own). Numpy arrays inside a returned list are stored out of
band by Ray and read back without a copy, so a rollout worker views the object store's memory
directly: on the CPU the engine's parameters become views of it (`engine_views`), and Ray's copy
into the store is the push's one copy (a GPU engine's weight loader copies from the views).

- No copy on the learner side either when a tensor already is contiguous, on the CPU and in the
  engine's dtype (the array is a view of the parameter; Ray's put is the copy).
- A bucket whose arrays lie in one span of memory travels as that one array (`Bucket`): Ray
  copies one buffer instead of one per tensor. The policy learner keeps its parameters in one
  buffer in the order they are sent (`flatten_parameters`), so its buckets are such spans.
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

# Ray places each large out-of-band buffer at a 64-byte boundary; spans keep that alignment inside.
ALIGN = 64

# numpy has no bfloat16: its raw bits travel instead.
_WIRE_DTYPE = {torch.bfloat16: torch.uint16}


class Bucket(list):
    """(HF checkpoint name, array) pairs. Where its arrays lie in one span of memory (`span`, a
    uint8 array over them all), pickling (Ray's put) sends the span as one buffer and the
    receiver views the arrays back out of it: Ray copies out-of-band buffers one at a time,
    and the 146 arrays of a 125M model went into the store at 1.58x a memcpy of their bytes,
    one array of the same bytes at 1.01x (2 cores, measured). Without a span, array by array."""

    def __init__(self, items=(), span: np.ndarray | None = None):
        super().__init__(items)
        self.span = span

    def __reduce__(self):
        if self.span is None:
            return Bucket, (list(self),)
        base = self.span.ctypes.data
        layout = [(name, array.ctypes.data - base, array.shape, array.dtype.str) for name, array in self]
        return _from_span, (self.span, layout)


def _from_span(span: np.ndarray, layout: list) -> Bucket:
    """A pickled span's arrays, as views of it (read-only where the span is: the object store)."""
    arrays = []
    for name, offset, shape, dtype in layout:
        dtype = np.dtype(dtype)
        arrays.append((name, span[offset : offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize].view(dtype).reshape(shape)))
    return Bucket(arrays, span)


def weight_buckets(state: dict[str, torch.Tensor], dtype: torch.dtype, bucket_bytes: int = BUCKET_BYTES) -> list[Bucket]:
    """The state dict as buckets of (name, array) in `dtype`, in the engine's order
    (`engine_order`), each bucket one span of memory where it can be (see Bucket):
    - tensors that lie in one CPU buffer in this order, in `dtype` (a learner's parameters after
      `flatten_parameters`): the arrays and the span are views of them, no copy;
    - tensors that all need a copy anyway (another dtype or device): each is converted straight
      into its place in one new buffer per bucket, at the cost of the conversion alone;
    - otherwise (e.g. separate fp32 tensors from a sharded gather): arrays viewing each tensor.

    Where no copy is needed the arrays are views of the live parameters: store or load them
    before the next optimizer step (a Ray actor method's return value is stored right away)."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    groups: list[list[tuple[str, torch.Tensor]]] = []
    group: list[tuple[str, torch.Tensor]] = []
    size = 0
    sent = set()
    itemsize = _itemsize(dtype)
    for name in engine_order(state):
        tensor = state[name].detach()
        if tensor.numel() > 0:
            key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()))
            if key in sent:
                continue
            sent.add(key)
        nbytes = tensor.numel() * itemsize
        if group and size + nbytes > bucket_bytes:
            groups.append(group)
            group, size = [], 0
        group.append((name, tensor))
        size += nbytes
    if group:
        groups.append(group)
    return [_bucket(g, dtype) for g in groups]


def _bucket(group: list[tuple[str, torch.Tensor]], dtype: torch.dtype) -> Bucket:
    tensors = [t for _, t in group]
    span = _storage_span(tensors, dtype)
    if span is None and all(_needs_copy(t, dtype) for t in tensors):
        span = _converted_span(tensors, dtype)
    if span is None:
        return Bucket((name, _to_numpy(t, dtype)) for name, t in group)
    flat, offsets = span
    wire = _WIRE_DTYPE.get(dtype, dtype)
    arrays = [
        (name, flat[offset : offset + t.numel() * _itemsize(dtype)].view(wire).view(t.shape).numpy())
        for (name, t), offset in zip(group, offsets)
    ]
    return Bucket(arrays, flat.numpy())


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def _needs_copy(tensor: torch.Tensor, dtype: torch.dtype) -> bool:
    return tensor.device.type != "cpu" or tensor.dtype != dtype or not tensor.is_contiguous()


def _storage_span(tensors: list[torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, list[int]] | None:
    """(uint8 tensor over the bytes from the first tensor's start to the last one's end, each
    tensor's byte offset in it) where the tensors are on the CPU, contiguous, in `dtype`, and lie
    in one storage in this order with less than ALIGN bytes between them; else None."""
    storage = tensors[0].untyped_storage()
    start = end = tensors[0].storage_offset() * tensors[0].element_size()
    offsets = []
    for t in tensors:
        if _needs_copy(t, dtype) or t.numel() == 0 or t.untyped_storage().data_ptr() != storage.data_ptr():
            return None
        begin = t.storage_offset() * t.element_size()
        if not 0 <= begin - end < ALIGN:
            return None
        offsets.append(begin - start)
        end = begin + t.numel() * t.element_size()
    whole = torch.empty(0, dtype=torch.uint8).set_(storage)
    return whole[start:end], offsets


def _converted_span(tensors: list[torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, list[int]]:
    """One new buffer holding each tensor converted to `dtype` (and to the CPU) at an ALIGN
    boundary: the conversion is the copy, written where it will be sent from."""
    offsets, size = _aligned_offsets([t.numel() * _itemsize(dtype) for t in tensors])
    flat = torch.empty(size, dtype=torch.uint8)
    for t, offset in zip(tensors, offsets):
        flat[offset : offset + t.numel() * _itemsize(dtype)].view(dtype).view(t.shape).copy_(t)
    return flat, offsets


def _aligned_offsets(sizes: list[int]) -> tuple[list[int], int]:
    """Byte offsets of consecutive blocks of these sizes, each at an ALIGN boundary, and the total."""
    offsets, size = [], 0
    for n in sizes:
        size = -(-size // ALIGN) * ALIGN
        offsets.append(size)
        size += n
    return offsets, size


def flatten_parameters(model: torch.nn.Module) -> None:
    """Moves the model's parameters into one buffer, in the order `weight_buckets` sends them
    (`engine_order`), each at an ALIGN boundary, so that a bucket of them is one span of memory
    and goes into the object store as one array (see Bucket). The parameters stay the same
    objects (an optimizer, a tied weight see them): their .data becomes a view of the buffer.
    All parameters must share one device."""
    params = dict(model.named_parameters())  # a tied weight once
    names = engine_order(params)
    devices = {p.device for p in params.values()}
    if len(devices) != 1:
        raise ValueError(f"flatten_parameters: the parameters are on several devices {sorted(map(str, devices))}")
    sizes = [params[n].numel() * params[n].element_size() for n in names]
    offsets, total = _aligned_offsets(sizes)
    flat = torch.empty(total, dtype=torch.uint8, device=devices.pop())
    with torch.no_grad():
        for name, offset, n in zip(names, offsets, sizes):
            param = params[name]
            view = flat[offset : offset + n].view(param.dtype).view(param.shape)
            view.copy_(param.data)
            param.data = view


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
