"""Supervised fine-tuning on (prompt, response) pairs: the world's base-policy warm-up and the
behaviour-cloning / SFT baselines. A plain loop; Ray Train runs it as a one-shot job (world.py).

Loss: mean negative log-likelihood of the response tokens (prompt tokens are context only).
With N ranks (Ray Train sets up torch.distributed) the model is wrapped in DDP and each rank
takes every N-th row of the step's batch; the loss is scaled so the averaged gradient equals the
1-rank gradient of the whole batch.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from repirl_ray.algo import masked_sum
from repirl_ray.batch import build_rollouts
from repirl_ray.data.prompts import PromptEncoder, encode_response
from repirl_ray.models.policy import DTYPES
from repirl_ray.models.sequence import model_inputs, response_logprobs
from repirl_ray.utils import atomic_write_json


SFT_METRICS = "sft_metrics.json"


def encode_pairs(tokenizer, pairs: list[tuple[str, str]], chat_template: bool = False, max_prompt_tokens: int = 10**9):
    """(prompt text, response text) pairs -> (prompt ids, response ids + EOS), prompts encoded as
    the rollout workers encode them."""
    encode = PromptEncoder(tokenizer, chat_template, max_prompt_tokens)
    prompts = [encode(p) for p, _ in pairs]
    responses = [encode_response(tokenizer, r) for _, r in pairs]
    return prompts, responses


@dataclass
class SupervisedJob:
    """One supervised job, as Ray Train hands it to each of its workers."""

    init_dir: str  # HF folder the model starts from
    out_dir: str  # where the trained model and tokenizer are written (by rank 0)
    pairs: list  # (prompt text, response text)
    steps: int
    batch_size: int  # rows per step, over all ranks
    lr: float
    seed: int
    threads: int = 2  # torch threads per rank
    chat_template: bool = False
    dtype: str = "float32"
    label: str = "sft"


def sft_job(job: SupervisedJob) -> dict:
    """A whole supervised job: load the model in job.init_dir, train on job.pairs, save model and
    tokenizer to job.out_dir (rank 0)."""
    torch.set_num_threads(job.threads)
    tokenizer = AutoTokenizer.from_pretrained(job.init_dir)
    model = AutoModelForCausalLM.from_pretrained(job.init_dir, dtype=DTYPES[job.dtype])
    prompts, responses = encode_pairs(tokenizer, job.pairs, job.chat_template)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0

    def report(m: dict) -> None:
        if rank == 0:
            print(f"  {job.label} step {m['step']}/{m['steps']}  loss {m['loss']:.3f}  {m['elapsed_s']:.0f} s", flush=True)

    metrics = sft_train(
        model, prompts, responses, steps=job.steps, batch_size=job.batch_size, lr=job.lr,
        seed=job.seed, pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0, report=report,
    )
    if rank == 0:
        model.save_pretrained(job.out_dir)
        tokenizer.save_pretrained(job.out_dir)
        # Beside the weights: Ray Train returns reported metrics only together with a checkpoint.
        atomic_write_json(os.path.join(job.out_dir, SFT_METRICS), metrics)
    return metrics


def sft_train(
    model: torch.nn.Module,
    prompts: list[list[int]],
    responses: list[list[int]],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    pad_id: int,
    weight_decay: float = 0.0,
    warmup_frac: float = 0.05,
    log_every: int = 0,
    report: Callable[[dict], None] | None = None,
) -> dict:
    """AdamW with linear warm-up then cosine decay to 10 % of lr; one batch drawn per step (the
    same draw on every rank; rank r trains on rows r, r + N, ...)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    dist = torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if dist else (0, 1)
    if batch_size < world:
        raise ValueError(f"sft batch_size {batch_size} is smaller than the {world} ranks; raise sft.batch_size")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    trained = model
    if dist:
        trained = torch.nn.parallel.DistributedDataParallel(model)
    warmup = max(1, int(warmup_frac * steps))
    # About ten progress lines a job (0 = that); a 135M model's step takes seconds on a CPU.
    log_every = log_every or max(1, min(32, steps // 10))

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    t0 = time.perf_counter()
    loss_ema = None
    for step in range(steps):
        drawn = rng.integers(0, len(prompts), size=batch_size)
        # Token-mean over the whole batch: every rank divides by the same count.
        num_tokens = float(sum(len(responses[i]) for i in drawn))
        rows = drawn[rank::world]
        n = len(rows)
        batch = build_rollouts(
            [prompts[i] for i in rows], [responses[i] for i in rows], None,
            prompt_index=list(range(n)), sample_index=[0] * n, outcome=[1.0] * n,
            format_ok=[1.0] * n, is_demo=True, policy_version=-1, step_ids=None,
            first_wrong=[-2] * n, pad_id=pad_id,
        )
        inputs = model_inputs(batch)
        logp, _ = response_logprobs(trained, inputs)
        loss = -masked_sum(logp, inputs.response_mask) / num_tokens
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        # DDP averages gradients over ranks; the sum of the ranks' shares is the batch's gradient.
        (loss * world).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss = loss.detach()
        if dist:
            torch.distributed.all_reduce(loss)
        loss_ema = float(loss) if loss_ema is None else 0.9 * loss_ema + 0.1 * float(loss)
        if report is not None and ((step + 1) % log_every == 0 or step + 1 == steps):
            report({"step": step + 1, "steps": steps, "loss": loss_ema, "elapsed_s": time.perf_counter() - t0})
    return {"loss": loss_ema, "steps": steps, "wall_s": time.perf_counter() - t0}
