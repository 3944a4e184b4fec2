"""Learner throughput: tokens/s and MFU of one update of the policy learner and of the PRM
learner (implicit PRM, rePIRL loss), without Ray or vLLM, on Qwen2-shaped models built from a
config (random weights, no download): fp32 master weights and AdamW moments, bf16 compute
(FSDP2 MixedPrecisionPolicy on a 1-rank group, the path a learner group of N ranks takes).

    python benchmarks/learner_gpu.py                        # on a GPU: 0.5B and 3B, B8 x T2048
    python benchmarks/learner_gpu.py --shapes 0.5B --steps 3 --peak-flops 989e12
    python benchmarks/learner_gpu.py --cpu-smoke            # tiny shape on CPU, under a minute

MFU = 6 * N * tokens / seconds / peak (N: parameters, embeddings included, counted once when
tied; attention's own FLOPs left out), the convention of the anchor printed beside the table.
`passes` is the FLOP multiple the learner really runs per token (policy: 6N, 8N with gradient
checkpointing; implicit PRM: + a no-grad pass for the importance weights and two pi_ref
forwards = 12N, 14N with checkpointing), and HFU counts those. Without CUDA (or with
--cpu-smoke) a tiny shape runs on CPU so the script stays tested; its MFU means nothing.
Writes benchmarks/results/learner_gpu.md (or --out) and prints it.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from repirl_ray.batch import Rollouts, build_rollouts  # noqa: E402
from repirl_ray.config import AdvantageConfig, IRLConfig, PolicyConfig, PRMConfig  # noqa: E402
from repirl_ray.learners.policy import PolicyLearner  # noqa: E402
from repirl_ray.learners.prm import PRMLearner  # noqa: E402
from repirl_ray.models.tiny import build_char_tokenizer  # noqa: E402

# Qwen2.5-0.5B and Qwen2.5-3B as their hub configs give them (tied embeddings, GQA).
SHAPES = {
    "0.5B": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, rope_theta=1e6, gradient_checkpointing=False),
    "3B": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
               num_key_value_heads=2, vocab_size=151936, rope_theta=1e6, gradient_checkpointing=True),
    "smoke": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, vocab_size=64, rope_theta=1e4, gradient_checkpointing=False),
}
ANCHOR = "plain HF + torch: 24.9 % MFU (0.5B, B8xT2048), 32.8 % (3B with gradient checkpointing), H100"
K = 4  # samples per prompt


def build_model_dir(shape: str, root: Path, max_positions: int) -> tuple[str, int]:
    """A Qwen2 of the given shape with random weights, saved in HF format (bf16, to halve the
    disk), with the char tokenizer beside it (the learners only save it)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    spec = {k: v for k, v in SHAPES[shape].items() if k not in ("gradient_checkpointing", "rope_theta")}
    config = Qwen2Config(
        **spec, max_position_embeddings=max_positions, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": SHAPES[shape]["rope_theta"]},
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU: seconds instead of minutes for 3B
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    path = root / shape
    model.save_pretrained(path)
    build_char_tokenizer().save_pretrained(path)
    del model
    return str(path), n_params


def synthetic_batch(rows: int, prompt_len: int, response_len: int, vocab: int, seed: int = 0) -> Rollouts:
    """K samples per prompt, full-length responses, outcomes alternating 1/0 (P and N in every
    prompt), sampling log-probs around -2."""
    rng = np.random.default_rng(seed)
    prompts, responses, logps = [], [], []
    for i in range(rows):
        if i % K == 0:
            prompt = [1] + list(rng.integers(3, vocab, size=prompt_len - 1))
        prompts.append(prompt)
        responses.append(list(rng.integers(3, vocab, size=response_len)))
        logps.append(list(-rng.uniform(1.0, 3.0, size=response_len)))
    return build_rollouts(
        prompts, responses, logps, prompt_index=[i // K for i in range(rows)], sample_index=[i % K for i in range(rows)],
        outcome=[float(i % 2 == 0) for i in range(rows)], format_ok=[1.0] * rows, is_demo=False, policy_version=0,
        step_ids=None, first_wrong=[-2] * rows, pad_id=0,
    )


def run_role(role: str, path: str, batch: Rollouts, args, gpus: float, checkpointing: bool) -> dict:
    common = dict(num_gpus=gpus, num_threads=args.threads, micro_batch_size=args.micro, gradient_checkpointing=checkpointing)
    if role == "policy":
        learner = PolicyLearner(
            PolicyConfig(lr=5e-7, mini_batch_size=len(batch), **common), path, advantage=AdvantageConfig(c_process=0.0),
            samples_per_prompt=K, compute_dtype=args.compute_dtype, dtype="bfloat16",
        )
        step = lambda: learner.update(None, None, batch)  # noqa: E731
    else:
        learner = PRMLearner(
            PRMConfig(kind="implicit", lr=3e-8, **common), IRLConfig(reward_l2=0.0), path,
            compute_dtype=args.compute_dtype, dtype="bfloat16",
        )
        step = lambda: learner.update(None, batch)  # noqa: E731
    cuda = torch.cuda.is_available() and gpus > 0
    step()  # warm-up: allocator, kernels, lazy FSDP state
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / args.steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    del learner, step
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return {"seconds": seconds, "peak_gib": peak}


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.0f} k"


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="0.5B,3B", help="comma-separated: 0.5B, 3B")
    parser.add_argument("--roles", default="policy,prm")
    parser.add_argument("--batch", type=int, default=8, help="rows (sequences) per update")
    parser.add_argument("--seq", type=int, default=2048, help="tokens per row, prompt + response")
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--micro", type=int, default=4, help="rows per forward/backward")
    parser.add_argument("--steps", type=int, default=2, help="timed updates after one warm-up update")
    parser.add_argument("--compute-dtype", default="bfloat16")
    parser.add_argument("--peak-flops", type=float, default=989e12, help="dense bf16 FLOP/s of the device (H100/H200 SXM: 989e12)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cpu-smoke", action="store_true", help="a tiny shape on CPU (automatic without CUDA)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "learner_gpu.md"))
    args = parser.parse_args(argv)
    smoke = args.cpu_smoke or not torch.cuda.is_available()
    if smoke:
        shapes, args.batch, args.seq, args.prompt_len, args.micro, args.steps = ["smoke"], 8, 64, 16, 4, 1
        device, gpus = f"CPU ({os.cpu_count()} cores)", 0.0
    else:
        shapes = args.shapes.split(",")
        device, gpus = torch.cuda.get_device_name(0), 1.0
    roles = args.roles.split(",")
    tokens = args.batch * args.seq
    rows = []
    with tempfile.TemporaryDirectory(prefix="learner_gpu_") as tmp:
        for shape in shapes:
            path, n_params = build_model_dir(shape, Path(tmp), args.seq + 8)
            batch = synthetic_batch(args.batch, args.prompt_len, args.seq - args.prompt_len, SHAPES[shape]["vocab_size"])
            checkpointing = SHAPES[shape]["gradient_checkpointing"]
            for role in roles:
                print(f"{shape} {role}: B{args.batch} x T{args.seq}, micro {args.micro}, checkpointing {checkpointing} ...", flush=True)
                r = run_role(role, path, batch, args, gpus, checkpointing)
                passes = (6 if role == "policy" else 12) + (2 if checkpointing else 0)
                flops = 6 * n_params * tokens / r["seconds"]
                rows.append(
                    f"| {shape} | {role} | {_count(n_params)} | B{args.batch} x T{args.seq} | {'yes' if checkpointing else 'no'} "
                    f"| {r['seconds']:.3f} | {tokens / r['seconds']:,.0f} | {100 * flops / args.peak_flops:.1f} % "
                    f"| {passes}N | {100 * flops * passes / 6 / args.peak_flops:.1f} % | {r['peak_gib']:.1f} |"
                )
    note = (
        "CPU smoke run (no GPU was lent in this session): the tiny shape only shows the script works; "
        "its MFU against a GPU peak means nothing." if smoke else f"{device}, peak {args.peak_flops:.3g} FLOP/s."
    )
    text = "\n".join([
        "# Learner throughput (benchmarks/learner_gpu.py)",
        "",
        f"Device: {device}; {platform.platform()}; torch {torch.__version__}. Compute {args.compute_dtype}, fp32 master "
        f"weights and AdamW moments (FSDP2 MixedPrecisionPolicy, 1 rank), micro-batch {args.micro} rows, mean of {args.steps} "
        "update(s) after one warm-up. PRM: implicit, rePIRL loss.",
        "",
        "| shape | learner | params | batch | grad. ckpt | s / update | tokens/s | MFU (6N) | passes | HFU | peak GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Anchor: {ANCHOR}.",
        "",
        f"Note: {note}",
        "",
    ])
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return text


if __name__ == "__main__":
    main()
