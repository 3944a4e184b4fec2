"""Learners that span N ranks: the process group, FSDP2 sharding, and how a batch is split.

DESIGN.md section 5: a learner group is N processes, one `torch.distributed` rank each (gloo on
CPU, nccl on GPU); the trainable model is sharded with FSDP2 (`fully_shard` on every decoder
layer, then the root), with fp32 master weights and optimizer moments, and compute in
`compute_dtype` through a `MixedPrecisionPolicy`. This is how verl and OpenRLHF scale their
trainers; no sharding scheme is written by hand here.

Every public method of a sharded learner is collective: every rank is called with the same
arguments (the whole batch), every rank computes whole-batch quantities (advantages, the
PRM's importance weights) itself, and each rank takes a contiguous share of the rows for the
forward/backward passes. One update on N ranks equals one update on 1 rank because
- losses are normalised by the GLOBAL token / sample count, and
- FSDP reduces gradients as a SUM over ranks (its default is the mean), and
- every rank runs the same number of forward/backward passes (FSDP's collectives run in each):
  a rank with fewer rows runs zero-weight micro-batches.
"""

from __future__ import annotations

import math
import socket
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from repirl_ray.models.policy import DTYPES


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_process_group(rank: int, world_size: int, dist_url: str, device: torch.device) -> None:
    """Join the learner group's process group (nccl on CUDA, gloo on CPU).

    A 1-rank group (world_size 1 with a compute dtype other than float32: FSDP2 carries the
    mixed precision) is started on a free loopback port when no group exists yet. Two learners
    may live in one process (unit tests): the second reuses the group the first started."""
    if dist.is_initialized():
        if dist.get_world_size() != world_size or dist.get_rank() != rank:
            raise ValueError(
                f"a process group of {dist.get_world_size()} ranks (this is rank {dist.get_rank()}) already exists in "
                f"this process; a learner asked for rank {rank} of {world_size}: give each learner rank its own process"
            )
        return
    if not dist_url:
        if world_size > 1:
            raise ValueError(f"a learner of world_size {world_size} needs dist_url (e.g. tcp://<rank 0 ip>:<port>)")
        dist_url = f"tcp://127.0.0.1:{free_port()}"
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, init_method=dist_url, rank=rank, world_size=world_size)


def shard_model(model: torch.nn.Module, compute_dtype: str, device: torch.device) -> torch.nn.Module:
    """FSDP2 over all ranks: `fully_shard` on each decoder layer, then on the root.

    Parameters stay fp32 (the master copy the optimizer updates); forward and backward run in
    `compute_dtype`; gradients are reduced in fp32 and SUMMED over ranks (the losses are
    already normalised by the global token or sample count)."""
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise ValueError("shard_model: the master weights must be float32 (load the model with dtype float32)")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=DTYPES[compute_dtype], reduce_dtype=torch.float32)
    # Hugging Face names the decoder layer classes that must not be split across devices.
    layer_classes = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in layer_classes]
    if not layers:
        raise ValueError(
            f"shard_model: found no decoder layer ({sorted(layer_classes) or 'no _no_split_modules'}) in "
            f"{type(model).__name__}; FSDP2 sharding needs a Hugging Face decoder model"
        )
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            # Sum, not mean, over ranks; a plain SUM collective (gloo has no PREMUL_SUM).
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return model


def clip_grad_norm(parameters, max_norm: float) -> float:
    """Clip by the GLOBAL gradient norm; returns the norm before clipping.

    With FSDP2 the gradients are DTensor shards: the per-shard norms are reduced over ranks
    (full_tensor) before the clip coefficient is taken, as torchtitan does."""
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_([p for p in parameters if p.grad is not None], max_norm, total)
    return float(total)


class Ranks:
    """Where this process stands in its learner group, and the row bookkeeping that follows.

    `sharded` False is the plain single-process path: every method degenerates to the identity
    (all rows here, sums are local, gathers return the local tensor), so a learner's update is
    written once for both."""

    def __init__(self, rank: int, world_size: int, sharded: bool):
        self.rank = rank
        self.world_size = world_size
        self.sharded = sharded

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, rows: np.ndarray) -> np.ndarray:
        """This rank's contiguous share of `rows` (rank order = row order)."""
        if not self.sharded:
            return rows
        return np.array_split(np.asarray(rows), self.world_size)[self.rank]

    def largest_share(self, num_rows: int) -> int:
        """Rows of the largest rank's share of num_rows (the same on every rank)."""
        return math.ceil(num_rows / self.world_size) if self.sharded else num_rows

    def micro_batches(self, rows: np.ndarray, size: int, lengths: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, float]]:
        """(micro-batch rows, weight) over this rank's share of `rows`: the same number on every
        rank (that of the largest share). A rank with fewer rows gets extra micro-batches of one
        borrowed row with weight 0: its forward/backward runs FSDP's collectives and adds
        nothing. `rows` must be the same on every rank and non-empty. With `lengths` (of every
        row of the batch, indexed by row), the share goes in length order, so that a micro-batch
        holds rows of similar length and pads little (model_inputs cuts the rest); the shares
        themselves do not change."""
        rows = np.asarray(rows)
        mine = self.share(rows)
        if lengths is not None:
            mine = mine[np.argsort(np.asarray(lengths)[mine], kind="stable")]
        count = max(1, math.ceil(self.largest_share(len(rows)) / size))
        for i in range(count):
            micro = mine[i * size : (i + 1) * size]
            if len(micro):
                yield micro, 1.0
            else:
                yield rows[:1], 0.0

    def reduce_floats(self, values: dict[str, float], device: torch.device, op: str = "sum") -> dict[str, float]:
        """Sum (or max) of each value over ranks, so every rank reports the same metrics; every
        rank must pass the same keys."""
        if not values or not self.sharded or self.world_size == 1:
            return dict(values)
        keys = sorted(values)
        total = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return dict(zip(keys, total.cpu().tolist()))

    def gather_rows(self, local: torch.Tensor, num_rows: int) -> torch.Tensor:
        """Concatenate every rank's share (rows of `share(arange(num_rows))`) into the whole
        [num_rows, ...] tensor, on every rank."""
        if not self.sharded or self.world_size == 1:
            return local
        sizes = [len(s) for s in np.array_split(np.arange(num_rows), self.world_size)]
        padded = local.new_zeros((sizes[0],) + tuple(local.shape[1:]))
        padded[: len(local)] = local
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return torch.cat([p[:n] for p, n in zip(parts, sizes)], dim=0)

    def barrier(self) -> None:
        if self.sharded and self.world_size > 1:
            dist.barrier()
