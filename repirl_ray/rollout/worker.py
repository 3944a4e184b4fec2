"""RolloutWorker: prompts in, verified trajectories out, as a numpy Rollouts batch.

It holds the engine (vLLM; a fake may stand in for it in unit tests of this class), the
tokenizer and the task's verifier. Each prompt's K samples come from one engine call, so a group
always shares one policy version. Sampling seeds are derived from (iteration seed, prompt index),
not from the worker, so a shard regenerated elsewhere after a failure gives the same samples.
"""

from __future__ import annotations

import os
import time

from transformers import AutoTokenizer

from repirl_ray.batch import Rollouts, build_rollouts
from repirl_ray.config import RolloutConfig
from repirl_ray.data.prompts import PromptEncoder, encode_response
from repirl_ray.rollout.vllm_engine import VLLMEngine
from repirl_ray.tasks import build_task
from repirl_ray.tasks.base import Problem


def prompt_seed(iteration_seed: int, prompt_index: int) -> int:
    return (iteration_seed * 1_000_003 + prompt_index * 7919) % (2**31 - 1)


def token_char_ends(tokenizer, token_ids: list[int]) -> list[int]:
    """End character offset of each token in the decoded text (prefix decoding: exact for any
    tokenizer, quadratic in length; only used where step labels exist, i.e. short responses)."""
    ends = []
    for i in range(len(token_ids)):
        ends.append(len(tokenizer.decode(token_ids[: i + 1], skip_special_tokens=True)))
    return ends


def step_ids_of(tokenizer, token_ids: list[int], spans) -> list[int]:
    """Step index of each token (-1 when it belongs to no step, e.g. EOS)."""
    ends = token_char_ends(tokenizer, token_ids)
    out, start = [], 0
    for end in ends:
        step = -1
        if end > start:  # a token that adds characters belongs to the step of its first one
            for j, (a, b) in enumerate(spans):
                if a <= start < b:
                    step = j
                    break
        out.append(step)
        start = end
    return out


class RolloutWorker:
    def __init__(
        self,
        cfg: RolloutConfig,
        model_path: str,
        task_name: str,
        *,
        dtype: str = "float32",
        seed: int = 0,
        chat_template: bool = False,
        max_prompt_tokens: int = 64,
        trust_remote_code: bool = False,
        task_kwargs: dict | None = None,
        engine=None,
    ):
        self.cfg = cfg
        self.task = build_task(task_name, **(task_kwargs or {}))
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.encode = PromptEncoder(self.tokenizer, chat_template, max_prompt_tokens)
        if engine is None:
            engine = VLLMEngine(
                model_path,
                dtype=dtype,
                max_model_len=cfg.max_model_len,
                seed=seed,
                kv_cache_gib=cfg.kv_cache_gib,
                gpu_memory_utilization=cfg.gpu_memory_utilization,
                enforce_eager=cfg.enforce_eager,
                trust_remote_code=trust_remote_code,
            )
        self.engine = engine
        self.version = 0
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def generate(
        self,
        problems: list[Problem],
        prompt_indices: list[int],
        *,
        n: int,
        temperature: float,
        seed: int,
        with_demos: bool = False,
        demo_problems: list[Problem] | None = None,
    ) -> tuple[Rollouts, Rollouts | None, dict]:
        """n samples per problem (temperature 0: greedy, n = 1), verified.

        Returns the rollouts, the problems' expert demos as a batch (when asked) and a small
        summary (outcomes per row) that the driver reads without fetching the batch.
        demo_problems[i] (irl.demo_pairing=shuffled): the problem whose demos, with its own
        prompt, fill slot i instead of problems[i]'s."""
        t0 = time.perf_counter()
        prompts = [self.encode(self.task.format_prompt(p), p.id) for p in problems]
        seeds = [prompt_seed(seed, i) for i in prompt_indices]
        samples = self.engine.generate(
            prompts,
            n=n,
            temperature=temperature,
            top_p=self.cfg.top_p,
            max_tokens=self.cfg.max_new_tokens,
            min_tokens=self.cfg.min_new_tokens,
            seeds=seeds if temperature > 0 else None,
        )
        t_sample = time.perf_counter() - t0
        rows = dict(prompt=[], response=[], logps=[], pidx=[], sidx=[], outcome=[], fmt=[], steps=[], first_wrong=[])
        answers = []
        # One verify_batch call for the whole batch: the code task runs its sandboxes in parallel.
        verdicts = self._verify([(p, s.token_ids) for p, group in zip(problems, samples) for s in group])
        for problem, pidx, prompt, group in zip(problems, prompt_indices, prompts, samples):
            for k, s in enumerate(group):
                self._add_row(rows, problem, pidx, k, prompt, s.token_ids, s.logprobs, answers, next(verdicts))
        rollouts = self._to_batch(rows, is_demo=False, version=self.version)
        demos = None
        if with_demos:
            drows = dict(prompt=[], response=[], logps=[], pidx=[], sidx=[], outcome=[], fmt=[], steps=[], first_wrong=[])
            sources = problems if demo_problems is None else demo_problems
            source_prompts = prompts if demo_problems is None else [self.encode(self.task.format_prompt(p), p.id) for p in sources]
            demo_ids = [
                [encode_response(self.tokenizer, demo) for demo in p.demos]
                for p in sources
            ]
            dverdicts = self._verify([(p, ids) for p, group in zip(sources, demo_ids) for ids in group])
            for problem, pidx, prompt, group in zip(sources, prompt_indices, source_prompts, demo_ids):
                for k, ids in enumerate(group):
                    self._add_row(drows, problem, pidx, k, prompt, ids, None, [], next(dverdicts))
            demos = self._to_batch(drows, is_demo=True, version=-1) if drows["prompt"] else None
        summary = {
            "outcome": rollouts.outcome,
            "format_ok": rollouts.format_ok,
            "prompt_index": rollouts.prompt_index,
            "response_len": rollouts.response_len,
            "answers": answers,
            "policy_version": self.version,
            "sample_s": t_sample,
            "total_s": time.perf_counter() - t0,
        }
        return rollouts, demos, summary

    def _verify(self, pairs):
        """(text, verdict) of each (problem, token ids) pair, as an iterator; one verify_batch call."""
        texts = [self.tokenizer.decode(ids, skip_special_tokens=True) for _, ids in pairs]
        return zip(texts, self.task.verify_batch([p for p, _ in pairs], texts))

    def _add_row(self, rows, problem, pidx, k, prompt, token_ids, logps, answers, verified) -> None:
        text, verdict = verified
        labels = self.task.step_labels(problem, text)
        rows["prompt"].append(prompt)
        rows["response"].append(list(token_ids))
        rows["logps"].append(logps if logps is not None else [0.0] * len(token_ids))
        rows["pidx"].append(pidx)
        rows["sidx"].append(k)
        rows["outcome"].append(float(verdict.correct))
        rows["fmt"].append(float(verdict.format_ok))
        if labels is None:
            rows["steps"].append([-1] * len(token_ids))
            rows["first_wrong"].append(-2)
        else:
            rows["steps"].append(step_ids_of(self.tokenizer, list(token_ids), labels.spans))
            rows["first_wrong"].append(-1 if labels.first_wrong is None else labels.first_wrong)
        answers.append(verdict.answer)

    def _to_batch(self, rows, *, is_demo: bool, version: int) -> Rollouts:
        return build_rollouts(
            rows["prompt"],
            rows["response"],
            rows["logps"],
            prompt_index=rows["pidx"],
            sample_index=rows["sidx"],
            outcome=rows["outcome"],
            format_ok=rows["fmt"],
            is_demo=is_demo,
            policy_version=version,
            step_ids=rows["steps"],
            first_wrong=rows["first_wrong"],
            pad_id=self.pad_id,
        )

    def load_weights(self, buckets: list, version: int) -> int:
        """The policy learner's weights (models.weights buckets; Ray hands them over as views of
        the object store) into the engine in place; later samples carry this version."""
        self.engine.load_weights(buckets)
        self.version = version
        return version

    def ping(self) -> int:
        """Liveness check; the process id (tests kill actors by it)."""
        return os.getpid()
