"""Supervised fine-tuning on (prompt, response) pairs: the world's base-policy warm-up and the
behaviour-cloning / SFT baselines. A plain loop; Ray Train runs it as a one-shot job (world.py).

Loss: mean negative log-likelihood of the response tokens (prompt tokens are context only).
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable

import numpy as np
import torch

from repirl_ray.batch import build_rollouts
from repirl_ray.utils import atomic_write_json
from repirl_ray.models.prompts import PromptEncoder
from repirl_ray.models.sequence import model_inputs, response_logprobs


SFT_METRICS = "sft_metrics.json"


def encode_pairs(tokenizer, pairs: list[tuple[str, str]], chat_template: bool = False, max_prompt_tokens: int = 10**9):
    """(prompt text, response text) pairs -> (prompt ids, response ids + EOS), prompts encoded as
    the rollout workers encode them."""
    encode = PromptEncoder(tokenizer, chat_template, max_prompt_tokens)
    prompts = [encode(p) for p, _ in pairs]
    responses = [tokenizer(r, add_special_tokens=False).input_ids + [tokenizer.eos_token_id] for _, r in pairs]
    return prompts, responses


def sft_job(job: dict) -> dict:
    """A whole supervised job from a plain dict (what Ray Train hands its workers): load the model
    in job["init_dir"], train on job["pairs"], save model and tokenizer to job["out_dir"]."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from repirl_ray.models.policy import DTYPES

    torch.set_num_threads(job.get("threads", 2))
    tokenizer = AutoTokenizer.from_pretrained(job["init_dir"])
    model = AutoModelForCausalLM.from_pretrained(job["init_dir"], dtype=DTYPES[job.get("dtype", "float32")])
    prompts, responses = encode_pairs(tokenizer, job["pairs"], job.get("chat_template", False))
    label = job.get("label", "sft")

    def report(m: dict) -> None:
        print(f"  {label} step {m['step']}/{m['steps']}  loss {m['loss']:.3f}  {m['elapsed_s']:.0f} s", flush=True)

    metrics = sft_train(
        model, prompts, responses, steps=job["steps"], batch_size=job["batch_size"], lr=job["lr"],
        seed=job["seed"], pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0, report=report,
    )
    model.save_pretrained(job["out_dir"])
    tokenizer.save_pretrained(job["out_dir"])
    # Beside the weights: Ray Train returns reported metrics only together with a checkpoint.
    atomic_write_json(os.path.join(job["out_dir"], SFT_METRICS), metrics)
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
    log_every: int = 32,
    report: Callable[[dict], None] | None = None,
) -> dict:
    """AdamW with linear warm-up then cosine decay to 10 % of lr; one batch drawn per step."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, int(warmup_frac * steps))

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    t0 = time.perf_counter()
    loss_ema = None
    for step in range(steps):
        rows = rng.integers(0, len(prompts), size=batch_size)
        batch = build_rollouts(
            [prompts[i] for i in rows], [responses[i] for i in rows], None,
            prompt_index=list(range(batch_size)), sample_index=[0] * batch_size, outcome=[1.0] * batch_size,
            format_ok=[1.0] * batch_size, is_demo=True, policy_version=-1, step_ids=None,
            first_wrong=[-2] * batch_size, pad_id=pad_id,
        )
        inputs = model_inputs(batch)
        logp, _ = response_logprobs(model, inputs)
        loss = -(logp * inputs.response_mask).sum() / inputs.response_mask.sum()
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_ema = float(loss) if loss_ema is None else 0.9 * loss_ema + 0.1 * float(loss)
        if report is not None and ((step + 1) % log_every == 0 or step + 1 == steps):
            report({"step": step + 1, "steps": steps, "loss": loss_ema, "elapsed_s": time.perf_counter() - t0})
    return {"loss": loss_ema, "steps": steps, "wall_s": time.perf_counter() - t0}
