"""Policy weights as buckets of numpy arrays: learner -> Ray object store -> vLLM, near memcpy.

A bucket is a list of (HF checkpoint name, array) of at most `bucket_bytes` in all (a tensor
larger than that gets a bucket of its own). Numpy arrays inside a returned list are stored out of
band by Ray and read back without a copy, so a rollout worker views the object store's memory
directly and vLLM's weight loader makes the one copy into the engine's parameters.

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
    """The state dict as buckets of (name, array) in `dtype`, in the state dict's order.

    Where no copy is needed the arrays are views of the live parameters: store or load them
    before the next optimizer step (a Ray actor method's return value is stored right away)."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    buckets: list[Bucket] = []
    bucket: Bucket = []
    size = 0
    sent = set()
    for name, tensor in state.items():
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


def _to_numpy(tensor: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    # .to and .contiguous return the tensor itself when nothing needs to change.
    tensor = tensor.to(device="cpu", dtype=dtype).contiguous()
    return tensor.view(_WIRE_DTYPE.get(dtype, dtype)).numpy()


def bucket_tensors(buckets: list[Bucket], dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """The inverse: (name, tensor) pairs viewing the arrays (no copy), in `dtype`.

    Arrays read from the object store are read-only, and torch.from_numpy warns that a tensor
    over them must not be written: the consumer (vLLM's weight loaders, a test) only reads them,
    so that one warning is silenced here, and only it."""
    wire = _WIRE_DTYPE.get(dtype, dtype)
    for bucket in buckets:
        for name, array in bucket:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
                tensor = torch.from_numpy(array)
            if tensor.dtype != wire:
                raise ValueError(
                    f"weight {name} arrived as {array.dtype}, the engine runs in {dtype}: the policy learner "
                    "and the rollout engine must use the same model.dtype"
                )
            yield name, tensor.view(dtype)
