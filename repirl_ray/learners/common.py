"""What both learners share: the device, the trainable model's set-up (plain, or sharded with
FSDP2), whole state dicts out of and into it, the optimizer, mini/micro-batch splitting, and
the checkpoint's learner-state files.

A learner's checkpoint folder (one per role, written by `save`, read by `load`):
    config.json, model.safetensors, tokenizer files   HF folder in model.dtype (rank 0)
    prm.json                                           PRM only: its kind, beta, pi_ref (rank 0)
    learner_state.pt                                   version, numpy and torch RNG, world_size (rank 0)
    optimizer/rank_{r}.pt                              rank r's optimizer state shard, fp32 (every rank);
                                                       with model.dtype other than float32 also rank r's
                                                       fp32 master weight shard, which the HF file rounds
`checkpoint_files(world_size)` lists the files a complete folder must hold.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_model_state_dict,
)
from torch.distributed.tensor import DTensor

from repirl_ray.learners.distributed import Ranks, init_process_group, shard_model
from repirl_ray.models.policy import DTYPES

STATE_FILE = "learner_state.pt"
OPTIMIZER_DIR = "optimizer"


def checkpoint_files(world_size: int) -> list[str]:
    """Relative paths a complete learner checkpoint folder of `world_size` ranks holds (a PRM's
    also holds prm.json). The tokenizer is named by tokenizer_config.json, which every
    tokenizer's save_pretrained writes."""
    return ["config.json", "model.safetensors", "tokenizer_config.json", STATE_FILE] + [
        optimizer_file(r) for r in range(world_size)
    ]


def optimizer_file(rank: int) -> str:
    return f"{OPTIMIZER_DIR}/rank_{rank}.pt"


# ------------------------------------------------------------------------------------------------
# Set-up
def learner_device(num_gpus: float) -> torch.device:
    return torch.device("cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu")


def start_ranks(rank: int, world_size: int, dist_url: str, compute_dtype: str, device: torch.device) -> Ranks:
    """The learner's place in its group. One rank computing in float32 is the plain path (no
    process group, no FSDP); anything else joins a process group and shards with FSDP2."""
    if compute_dtype not in DTYPES:
        raise ValueError(f"compute_dtype {compute_dtype!r} is not one of {', '.join(DTYPES)} (config key model.compute_dtype)")
    if not 0 <= rank < world_size:
        raise ValueError(f"learner rank {rank} is outside its group of world_size {world_size}")
    sharded = world_size > 1 or compute_dtype != "float32"
    if sharded:
        init_process_group(rank, world_size, dist_url, device)
    return Ranks(rank, world_size, sharded)


def prepare_trainable(
    model: torch.nn.Module, *, gradient_checkpointing: bool, compute_dtype: str, ranks: Ranks, device: torch.device
) -> torch.nn.Module:
    """fp32 master weights on the learner's device: sharded with FSDP2, or plain."""
    if gradient_checkpointing:
        # Non-reentrant checkpointing: the variant FSDP2 supports (verl, torchtitan use it too).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if ranks.sharded:
        shard_model(model, compute_dtype, device)
    else:
        model.to(device)
    model.train()
    return model


def make_optimizer(params, lr: float, weight_decay: float, betas) -> torch.optim.AdamW:
    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=lr, weight_decay=weight_decay, betas=tuple(betas))


def chunks(rows: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def row_lengths(batch) -> np.ndarray:
    """Tokens each row attends to (prompt + response): for micro-batches of similar rows."""
    return batch.prompt_len.astype(np.int64) + batch.response_len


def gather_row_parts(ranks: Ranks, parts: list[tuple[np.ndarray, torch.Tensor]], num_rows: int, width: int,
                     device) -> torch.Tensor:
    """Collective. Per-token values of this rank's rows as (rows of the batch, values [n, t <=
    width]) parts, from micro-batches cut to their own length and run in any order -> the whole
    batch's [num_rows, width] float32 (zero beyond each part's t) on CPU, on every rank."""
    mine = ranks.share(np.arange(num_rows))
    start = int(mine[0]) if len(mine) else 0
    local = torch.zeros((len(mine), width), dtype=torch.float32, device=device)
    for rows, values in parts:
        local[torch.as_tensor(rows - start, device=device), : values.shape[1]] = values.float()
    return ranks.gather_rows(local, num_rows).cpu()


# ------------------------------------------------------------------------------------------------
# Whole state dicts
def gather_full_state(model: torch.nn.Module, ranks: Ranks) -> dict[str, torch.Tensor] | None:
    """Collective. The whole state dict (fp32 masters, checkpoint names, on CPU) on rank 0;
    None on the other ranks. On the plain path the tensors are views of the live weights."""
    if not ranks.sharded:
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if ranks.is_main else None


def _tied_keys(model: torch.nn.Module) -> dict[str, str]:
    """{tied key: the key it shares storage with}, e.g. lm_head.weight -> model.embed_tokens.weight."""
    if not getattr(model.config, "tie_word_embeddings", False):
        return {}
    tied = getattr(model, "_tied_weights_keys", None)
    return dict(tied) if isinstance(tied, dict) else {}


def load_full_state(model: torch.nn.Module, path: str, ranks: Ranks, what: str) -> None:
    """Collective. Weights from an HF safetensors file (any dtype) into the fp32 masters. Every
    rank checks the file's names (its header only), so a wrong checkpoint fails on every rank
    alike; on the sharded path rank 0 reads the tensors and FSDP2 broadcasts them."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} checkpoint: {path} is missing (see checkpoint_files)")
    with safe_open(path, framework="pt") as f:
        stored = set(f.keys())
    tied = _tied_keys(model)
    expected = set(model.state_dict().keys()) - set(tied)
    missing, unexpected = sorted(expected - stored), sorted(stored - expected)
    if missing or unexpected:
        raise ValueError(f"{what} checkpoint {path} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    state: dict[str, torch.Tensor] = {}
    if ranks.is_main or not ranks.sharded:
        state = {k: v.to(torch.float32) for k, v in load_file(path).items()}
        # A tied weight is one parameter under two names: give both names the stored value,
        # or loading would write the stale one back under the second name.
        for key, source in tied.items():
            state[key] = state[source]
    if not ranks.sharded:
        model.load_state_dict(state, strict=True)
        return
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


# ------------------------------------------------------------------------------------------------
# Learner state: version, RNGs, optimizer shards (and fp32 master shards where the HF file rounds)
def _local(t: torch.Tensor) -> torch.Tensor:
    return (t.to_local() if isinstance(t, DTensor) else t).detach().cpu().clone()


def save_learner_state(
    out_dir: str,
    ranks: Ranks,
    optimizer: torch.optim.Optimizer,
    model: torch.nn.Module,
    rng: np.random.Generator,
    version: int,
    save_master: bool,
) -> None:
    """Collective in that every rank writes its own file: rank 0 learner_state.pt, rank r
    optimizer/rank_{r}.pt (its optimizer shard; with `save_master` also its fp32 weight shard)."""
    os.makedirs(os.path.join(out_dir, OPTIMIZER_DIR), exist_ok=True)
    opt = optimizer.state_dict()
    opt["state"] = {i: {k: _local(v) if torch.is_tensor(v) else v for k, v in s.items()} for i, s in opt["state"].items()}
    shard = {"optimizer": opt, "rank": ranks.rank, "world_size": ranks.world_size}
    if save_master:
        shard["master"] = {n: _local(p) for n, p in model.named_parameters()}
    _atomic_save(shard, os.path.join(out_dir, optimizer_file(ranks.rank)))
    if ranks.is_main:
        state = {"version": version, "np_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "world_size": ranks.world_size}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda_rng"] = torch.cuda.get_rng_state()
        _atomic_save(state, os.path.join(out_dir, STATE_FILE))


def read_learner_state(in_dir: str, world_size: int) -> dict:
    """learner_state.pt of a checkpoint, checked against this group's world_size before any
    weight is touched: the optimizer shards only fit the rank count that wrote them."""
    path = os.path.join(in_dir, STATE_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"learner checkpoint: {path} is missing (see checkpoint_files)")
    state = torch.load(path, weights_only=False)
    saved = int(state.get("world_size", 1))
    if saved != world_size:
        raise ValueError(
            f"{path} was saved by a learner group of {saved} ranks but this group has {world_size}: its optimizer "
            f"shards ({OPTIMIZER_DIR}/rank_*.pt) fit {saved} ranks only; resume with {saved} learner ranks"
        )
    return state


def load_learner_state(
    in_dir: str, state: dict, ranks: Ranks, optimizer: torch.optim.Optimizer, model: torch.nn.Module, rng: np.random.Generator
) -> int:
    """This rank's optimizer shard (and fp32 master shard, if saved), the RNGs; returns the version."""
    path = os.path.join(in_dir, optimizer_file(ranks.rank))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"learner checkpoint: {path} is missing (see checkpoint_files)")
    shard = torch.load(path, weights_only=False)
    if "master" in shard:
        with torch.no_grad():
            for name, p in model.named_parameters():
                (p.to_local() if isinstance(p, DTensor) else p).copy_(shard["master"][name])
    params = [p for group in optimizer.param_groups for p in group["params"]]
    opt = shard["optimizer"]
    for i, s in opt["state"].items():
        p = params[i]
        for k, v in s.items():
            # Moments were saved as this rank's local shard; give them back their placement.
            if isinstance(p, DTensor) and torch.is_tensor(v) and v.dim() > 0:
                s[k] = DTensor.from_local(
                    v.to(p.device), p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride()
                )
    optimizer.load_state_dict(opt)
    rng.bit_generator.state = state["np_rng"]
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng"])
    return int(state["version"])


def _atomic_save(obj, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


class MetricSum:
    """Weighted running means of per-micro-batch statistics (weights = tokens or samples)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, stats: dict, weight: float) -> None:
        for k, v in stats.items():
            v = float(v.detach()) if torch.is_tensor(v) else float(v)
            self.sums[k] = self.sums.get(k, 0.0) + v * weight
            self.weights[k] = self.weights.get(k, 0.0) + weight

    def means(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}{k}": self.sums[k] / max(self.weights[k], 1e-12) for k in self.sums}

