"""Run configuration: typed dataclass schemas hold every default; YAML files and key=value
overrides only override them. An unknown key, a value of the wrong type or a value outside its
allowed set is an error that names the key (and the file it came from); nothing is rewritten
after parsing.

The defaults are the built-in CPU world (DESIGN.md section 4), so `repirl train` with no
arguments is a real rePIRL run. Each component is given only its own section.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from repirl_ray.errors import ConfigError
from repirl_ray.tasks import TASK_NAMES
from repirl_ray.tasks.reasoning_gym import STEP_WRITERS, task_names
from repirl_ray.utils import atomic_write_text


@dataclass
class WorldConfig:
    """The built-in arithmetic world: data, tokenizer, tiny model and its warm-up (DESIGN.md s4)."""

    dir: str = ""  # cache folder; "" = $REPIRL_CACHE or ~/.cache/repirl_ray, then world-<hash of this section>
    seed: int = 0
    min_ops: int = 2
    max_ops: int = 4
    max_start: int = 9
    max_operand: int = 9
    modulus: int = 100
    hard_min_ops: int = 5  # the "hard" split: longer chains the base policy rarely solves
    hard_max_ops: int = 6
    num_train: int = 20000
    num_eval: int = 256
    num_hard_train: int = 2000  # hard_train.jsonl, with demos: the early-signal experiment trains on it
    num_hard_eval: int = 256
    # Warm-up data: a per-step chance of a +-1..max_error error carried forward, so the base
    # policy samples mistakes and RL has room.
    step_error_prob: float = 0.2
    max_error: int = 3
    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 512
    warmup_steps: int = 512
    warmup_batch_size: int = 128
    warmup_lr: float = 3e-3
    warmup_threads: int = 2


@dataclass
class ModelConfig:
    policy_path: str = ""  # HF folder or hub name of the base policy; "" = the built-in world's
    prm_path: str = ""  # base model of the PRM, or a trained PRM checkpoint; "" = policy_path
    ref_path: str = ""  # frozen pi_ref of the implicit PRM; "" = prm base model
    # The vLLM engines' dtype and that of the weights pushed to them and of saved HF folders.
    dtype: str = "float32"  # float32 | bfloat16 | float16
    # The learners' forward/backward dtype. Master weights and optimizer moments stay float32
    # whatever it is (FSDP2 MixedPrecisionPolicy); bfloat16 on GPUs. float32 with one learner
    # rank is the plain unsharded path (the fast default on CPU).
    compute_dtype: str = "float32"  # float32 | bfloat16 | float16
    trust_remote_code: bool = False


@dataclass
class DataFieldsConfig:
    """Which column holds each part of a problem, for layouts other than the format's own
    (data/formats.py). "" = the format's own; a dotted name reaches into a nested column."""

    prompt: str = ""  # jsonl: prompt, gsm8k: question, math: problem; a chat message list gives its last user message
    answer: str = ""  # jsonl: answer, gsm8k: answer, math: solution
    demos: str = ""  # jsonl: demos, gsm8k: answer, math: solution; "none" = no demos from the data file
    id: str = ""  # id; rows without one are numbered from 0


@dataclass
class ReasoningGymConfig:
    """data.format=reasoning_gym: problems generated offline by a reasoning-gym task, verified by
    that task's own scorer (repirl_ray/tasks/reasoning_gym.py)."""

    name: str = ""  # the reasoning-gym task, e.g. chain_sum, products, basic_arithmetic
    config: dict[str, Any] = field(default_factory=dict)  # its generator's settings, e.g. {min_terms: 2, max_digits: 1}
    train_size: int = 2000
    eval_size: int = 128  # drawn after the train items; problems also in the train split are replaced and counted
    seed: int = 0
    # Step-by-step expert demos and ground-truth step labels (step AUROC, first error): only
    # tasks with a step writer (chain_sum, products); false = answer-only demos, no step labels.
    steps: bool = True


@dataclass
class DataConfig:
    task: str = "arithmetic"  # arithmetic | math | code | reasoning_gym
    train_path: str = ""  # JSONL or parquet (see format), or humaneval (the shipped set); "" = the world's (see world_split)
    world_split: str = "train"  # with train_path "": the world split that trains: train | hard_train | eval
    eval_path: str = ""  # held-out prompts; "" = the world's
    hard_eval_path: str = ""  # optional extra eval split; "" = the world's hard split (arithmetic)
    format: str = "jsonl"  # jsonl (prompt, answer, demos) | gsm8k | math | humaneval (data/formats.py) | reasoning_gym
    fields: DataFieldsConfig = field(default_factory=DataFieldsConfig)
    reasoning_gym: ReasoningGymConfig = field(default_factory=ReasoningGymConfig)  # with format reasoning_gym
    answer_from: str = ""  # field | boxed (last \boxed{}) | hash (after ####); "" = the format's own
    demos_path: str = ""  # expert demos of the training problems: JSONL/parquet rows {"id", "response"}
    drop_rejected: bool = False  # rows that cannot be converted: false = the run refuses to start
    prompts_per_iteration: int = 64
    shuffle: bool = True
    prompt_template: str = ""  # math and reasoning_gym tasks: the text around {problem}; "" = the task's default
    chat_template: bool = False  # wrap prompts with the tokenizer's chat template
    max_prompt_tokens: int = 64
    drop_long_prompts: bool = False  # prompts over max_prompt_tokens: false = the run refuses to start
    # Expert demos kept per training problem (the first ones of each row); -1 = all. 0 trains the
    # PRM on pseudo-experts alone (correct rollouts), the paper's no-demo setting.
    max_demos_per_problem: int = -1
    # A curriculum: the first curriculum_iterations batches come from curriculum_path (e.g. easier
    # problems, read like train_path), then training goes on with train_path. "" with
    # curriculum_iterations > 0 = the built-in world's `train` split (for world_split=hard_train).
    curriculum_iterations: int = 0
    curriculum_path: str = ""


@dataclass
class CodeConfig:
    """The code task's sandbox (repirl_ray/sandbox/): where a policy's program runs."""

    # bwrap: Linux namespaces (no network, own PIDs, read-only system, private work folder) |
    # process: a plain child with rlimits only, unsafe (for machines without user namespaces)
    sandbox: str = "bwrap"
    timeout_s: float = 5.0  # wall clock per program, its tests included
    memory_mb: int = 1024  # a run's memory, all processes (its cgroup), and each process's address space
    workers: int = 2  # programs verified at once per rollout worker


@dataclass
class SFTConfig:
    """An optional supervised stage on the training problems' expert demos, run as a Ray Train job
    before the RL loop; its result is the starting policy. steps > 0 with iterations = 0 is
    behaviour cloning; with the rloo mode it is the paper's SFT + RLOO baseline."""

    steps: int = 0  # 0 = no supervised stage
    batch_size: int = 64
    lr: float = 1e-4
    num_cpus: float = 1.0
    num_threads: Union[int, str] = "auto"  # torch threads per rank; auto: the node's cores / ranks (threads.py)


@dataclass
class RolloutConfig:
    # vLLM engines; auto: 2 where the policy's weights fit the caches (<= 32 MB) and the rollout has
    # 2+ CPU cores, else 1 (threads.rollout_workers: engines side by side each stream every weight)
    num_workers: Union[int, str] = "auto"
    num_cpus: float = 0.5  # per worker; fractional so that all roles fit on 2 cores
    num_gpus: float = 0.0
    samples_per_prompt: int = 4  # K (paper: 4)
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 48
    # EOS held back until a response has this many tokens (vLLM's min_tokens); benchmarks set it to
    # max_new_tokens so that every response is the same work; 0 = off
    min_new_tokens: int = 0
    max_model_len: int = 128
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources, e.g. {rollout: 1}
    kv_cache_gib: float = 0.25  # vLLM-CPU KV cache (VLLM_CPU_KVCACHE_SPACE)
    gpu_memory_utilization: float = 0.4
    enforce_eager: bool = True
    bind_cores: bool = True  # CPU: pin each worker's threads to its own cores
    cores: str = ""  # CPU: the cores the workers are bound to (split among them), e.g. "0" or "0-3"; "" = all
    num_threads: Union[int, str] = "auto"  # torch/OpenMP threads per worker; auto: its share of its cores (threads.py)


@dataclass
class PolicyConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0
    clip_eps: float = 0.2
    entropy_coef: float = 0.001
    kl_coef: float = 0.0  # KL to the base policy; 0 = no reference model is loaded
    # pi_old of the PPO ratio (ALGORITHM.md section 4): sampler = the log-probs vLLM recorded;
    # recompute = one no-grad learner pass before the update, with the truncated importance
    # weight min(exp(logp_learner_old - logp_sampler), tis_cap) on each token's loss.
    old_logprobs: str = "sampler"  # sampler | recompute
    tis_cap: float = 2.0  # truncation of that weight (verl / TRL use 2); 0 = no correction
    epochs: int = 1
    mini_batch_size: int = 256  # rollouts per optimizer step
    micro_batch_size: int = 64  # rollouts per forward/backward (gradient accumulation)
    gradient_checkpointing: bool = False
    num_workers: int = 1  # ranks of the learner group (FSDP2 over them); num_cpus/num_gpus are per rank
    placement: str = "pack"  # pack: all ranks on one node (STRICT_PACK) | spread: across nodes (SPREAD)
    num_cpus: float = 0.5
    num_gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources, e.g. {learner: 1}
    num_threads: Union[int, str] = "auto"  # torch threads of each rank; auto: its share of its cores (threads.py)
    cores: str = ""  # CPU: pin every rank to these cores, e.g. "1" or "2-3" (Linux affinity); "" = no pinning


@dataclass
class PRMConfig:
    # head (the paper's: base model + scalar head) | implicit (PRIME's beta * log-ratio) | none (rloo).
    # Departure: the built-in world defaults to implicit. Measured there (100 iterations, step AUROC on
    # the base policy's held-out samples): head 0.63, implicit 0.77; the tiny model's last-layer state
    # at a_t carries little of whether a_t was right, its log-probs do. prm.kind=head is the paper's.
    kind: str = "implicit"
    # oracle: no learned PRM; the process reward is +-1 per step from the task's step labels
    # (ALGORITHM.md section 3), for tasks that label steps: the bound on what a PRM can add.
    # head: the scalar head on the PRM's last hidden state: linear (one bias-free row, zero-initialised)
    # | mlp_tanh (the authors' released head: H -> 1024 -> 1024 -> 1, ReLU, then tanh; default init, biases)
    head: str = "linear"
    update: str = "before"  # before (paper) | after | none (frozen PRM)
    loss: str = "repirl"  # repirl (IRL objective) | prime (cross-entropy on outcomes)
    beta: float = 0.05  # beta_prm of the implicit PRM
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 10.0
    prompts_per_mini_batch: int = 0  # 0 = the whole iteration's prompts in one optimizer step
    epochs: int = 1  # passes over each iteration's batch (paper: 1); weights recomputed every pass
    # Rows (rollouts and demos) whose activations may be held at once; the learner runs them in
    # pieces of at most 64 rows of similar length. Where a mini-batch's rows on a rank fit, its
    # weights come from the gradient pass's own forward (phi once per row, not twice): the
    # built-in world's 64 prompts x (4 + 1 demo) do; a large model needs a smaller value (memory).
    micro_batch_size: int = 320
    gradient_checkpointing: bool = False
    num_workers: int = 1  # ranks of the learner group (FSDP2 over them); num_cpus/num_gpus are per rank
    placement: str = "pack"  # pack (STRICT_PACK, one node) | spread (SPREAD)
    num_cpus: float = 0.5
    num_gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources, e.g. {learner: 1}
    num_threads: Union[int, str] = "auto"  # torch threads of each rank; auto: its share of its cores (threads.py)
    cores: str = ""  # CPU: pin every rank to these cores, e.g. "1" or "2-3" (Linux affinity); "" = no pinning


@dataclass
class IRLConfig:
    """The points the paper leaves open (ALGORITHM.md section 2)."""

    weight_reward: str = "sum"  # sum (paper) | mean
    pseudo_expert: bool = True
    normalise_over: str = "prompt"  # prompt | batch
    reward_l2: float = 2.0  # paper: 0; 2.0 keeps the built-in world's PRM from drifting
    # paper: coef w_hat on N, -1/|P| on P | released (the authors' code, micro-batch 1): +1/M on N,
    # -1/M on P, M = rows of the PRM step; importance weights all 1
    loss_form: str = "paper"
    # own: each prompt's own demos | shuffled: demos of other training problems (the released
    # code's expert loader is not aligned with the prompts)
    demo_pairing: str = "own"


@dataclass
class AdvantageConfig:
    c_outcome: float = 1.0
    c_process: float = 0.2
    c_format: float = 0.0  # prm_only / test-time training: 0 if well formatted else -1
    whiten: bool = True
    # How token rewards become the process return (ALGORITHM.md section 3): sum (the paper's
    # reverse cumulative sum) | min (PURE's min-form: the minimum of the remaining step rewards).
    process_credit: str = "sum"
    # The authors' released code: batch_max divides the token rewards by the batch's largest
    # |return-to-go|; position takes the leave-one-out baseline at each token over the siblings
    # still active there (both channels) instead of per sequence.
    process_norm: str = "none"  # none | batch_max
    baseline: str = "sequence"  # sequence | position


@dataclass
class FilterConfig:
    enabled: bool = True
    low: float = 0.2
    high: float = 0.8


@dataclass
class PipelineConfig:
    # 0: the serial loop (sample, then learn). 1: the rollout workers sample the next batch while
    # the learners update on this one; an update's samples then come from the policy one version
    # behind (rollout/staleness), corrected by the sampler's log-probs in PPO and the IRL weights.
    off_policy_steps: int = 0
    # Pipelined only: when the next batch is sampled. "always": beside the updates; "never": after
    # them, with the same weights (the same batch: timing changes, nothing else); "auto": beside
    # them where the rollout has compute of its own (its own cores or GPUs), after them where it
    # would share a learner's cores (threads.py: beside measured 0.94-1.13x after there).
    overlap: str = "auto"


@dataclass
class EvalConfig:
    every: int = 50  # iterations; 0 = only at the start and the end
    num_prompts: int = 256
    samples_per_prompt: int = 4
    greedy: bool = True
    hard: bool = False  # also evaluate the hard split


@dataclass
class CheckpointConfig:
    every: int = 50  # iterations; 0 = only at the end
    keep_last: int = 2


@dataclass
class RayConfig:
    address: str = ""  # "" = a private local Ray started in-process; "auto" = join a running cluster
    num_cpus: int = 0  # local Ray only; 0 = all cores
    # Local Ray only. auto: room for two weight pushes of the policy below Ray's spilling
    # threshold, at least 1 GiB (run_setup.object_store_size); a number is used as given.
    object_store_gib: Union[int, float, str] = "auto"
    include_dashboard: bool = False  # local Ray only


@dataclass
class TrainConfig:
    name: str = "repirl"
    run_dir: str = ""  # "" = runs/<name>-<timestamp>
    seed: int = 0
    iterations: int = 100
    world: WorldConfig = field(default_factory=WorldConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    code: CodeConfig = field(default_factory=CodeConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    prm: PRMConfig = field(default_factory=PRMConfig)
    irl: IRLConfig = field(default_factory=IRLConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    ray: RayConfig = field(default_factory=RayConfig)


_CHOICES = {
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.compute_dtype": ("float32", "bfloat16", "float16"),
    "policy.placement": ("pack", "spread"),
    "prm.placement": ("pack", "spread"),
    "pipeline.off_policy_steps": (0, 1),
    "pipeline.overlap": ("auto", "always", "never"),
    "policy.old_logprobs": ("sampler", "recompute"),
    "data.task": TASK_NAMES,
    "data.format": ("jsonl", "gsm8k", "math", "humaneval", "reasoning_gym"),
    "data.answer_from": ("", "field", "boxed", "hash"),
    "data.world_split": ("train", "hard_train", "eval"),
    "code.sandbox": ("bwrap", "process"),
    "prm.kind": ("head", "implicit", "none", "oracle"),
    "prm.head": ("linear", "mlp_tanh"),
    "prm.update": ("before", "after", "none"),
    "prm.loss": ("repirl", "prime"),
    "irl.weight_reward": ("sum", "mean"),
    "irl.normalise_over": ("prompt", "batch"),
    "irl.loss_form": ("paper", "released"),
    "irl.demo_pairing": ("own", "shuffled"),
    "advantage.process_credit": ("sum", "min"),
    "advantage.process_norm": ("none", "batch_max"),
    "advantage.baseline": ("sequence", "position"),
}


def needs_demos(cfg: "TrainConfig") -> bool:
    """Expert demos are read by the IRL step (a PRM that learns with the rePIRL loss) and by the
    supervised stage; training data without them is fine otherwise (rloo, prime, TTT)."""
    return (irl_step(cfg) and cfg.data.max_demos_per_problem != 0) or cfg.sft.steps > 0


def has_prm_learner(cfg: "TrainConfig") -> bool:
    """A PRM model and its learner group exist (every prm.kind but none and oracle)."""
    return cfg.prm.kind not in ("none", "oracle")


def irl_step(cfg: "TrainConfig") -> bool:
    """A PRM learns with the rePIRL loss every iteration (not none, oracle, frozen or PRIME)."""
    return has_prm_learner(cfg) and cfg.prm.update != "none" and cfg.prm.loss == "repirl"


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _check_finite(node: Any, key: str = "") -> None:
    """Every float of every section, nested dataclasses, lists and dicts included: OmegaConf reads
    nan and inf as floats, and a nan coefficient would run a whole job on nan losses."""
    if isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"config key '{key}': {node} is not a number; give a finite value")
    if dataclasses.is_dataclass(node):
        children = [(f"{key}.{f.name}" if key else f.name, getattr(node, f.name)) for f in dataclasses.fields(node)]
    elif isinstance(node, dict):
        children = [(f"{key}.{k}", v) for k, v in node.items()]
    elif isinstance(node, (list, tuple)):
        children = [(f"{key}[{i}]", v) for i, v in enumerate(node)]
    else:
        return
    for child_key, value in children:
        _check_finite(value, child_key)


_DATA_FORMAT_TASK = {"gsm8k": "math", "math": "math", "humaneval": "code", "reasoning_gym": "reasoning_gym"}


def check_data(data: DataConfig) -> None:
    """The data section's own checks (also run by `repirl data`, which sets data keys from flags)."""
    for key in ("data.task", "data.format", "data.answer_from"):
        value = getattr(data, key.split(".")[1])
        if value not in _CHOICES[key]:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {', '.join(_CHOICES[key])}")
    task = _DATA_FORMAT_TASK.get(data.format)
    if task and data.task != task:
        raise ConfigError(f"config key 'data.format': {data.format} problems are {task} problems; set data.task={task}")
    if data.format == "humaneval":
        mapped = [f"data.fields.{k}" for k, v in vars(data.fields).items() if v] + (["data.answer_from"] if data.answer_from else [])
        if mapped:
            raise ConfigError(f"config key '{mapped[0]}': HumanEval's columns are fixed; leave the field mapping empty with data.format=humaneval")
    if data.format == "reasoning_gym" or data.task == "reasoning_gym":
        check_reasoning_gym(data)
    if data.prompt_template:
        if data.task not in ("math", "reasoning_gym"):
            raise ConfigError(
                f"config key 'data.prompt_template': only the math and reasoning_gym tasks have a prompt template "
                f"(data.task is {data.task})"
            )
        if "{problem}" not in data.prompt_template:
            raise ConfigError("config key 'data.prompt_template': it has no {problem} placeholder; add one where the problem text goes")
    if data.max_prompt_tokens <= 0:
        raise ConfigError(f"config key 'data.max_prompt_tokens': must be > 0, got {data.max_prompt_tokens}")


def check_reasoning_gym(data: DataConfig) -> None:
    """data.format=reasoning_gym: its section names a real task, with a step writer when steps are
    asked for; the problems are generated, so no data file is read."""
    rg = data.reasoning_gym
    if data.format != "reasoning_gym" or data.task != "reasoning_gym":
        raise ConfigError("config key 'data.format': reasoning_gym problems need data.format=reasoning_gym and "
                          "data.task=reasoning_gym together")
    for key in ("train_path", "eval_path", "demos_path", "curriculum_path"):
        if getattr(data, key):
            raise ConfigError(f"config key 'data.{key}': with data.format=reasoning_gym the problems are generated "
                              f"(data.reasoning_gym.*); leave data.{key} empty")
    if not rg.name:
        raise ConfigError("config key 'data.reasoning_gym.name': empty; name a reasoning-gym task, e.g. chain_sum")
    names = task_names()
    if rg.name not in names:
        close = [n for n in names if rg.name.split("_")[0] in n][:5]
        raise ConfigError(f"config key 'data.reasoning_gym.name': {rg.name!r} is not a reasoning-gym task"
                          + (f" (close: {', '.join(close)})" if close else f" ({len(names)} exist, e.g. chain_sum, products)"))
    if rg.steps and rg.name not in STEP_WRITERS:
        raise ConfigError(f"config key 'data.reasoning_gym.steps': {rg.name} has no step writer (step-by-step demos "
                          f"and step labels exist for {', '.join(STEP_WRITERS)}); set data.reasoning_gym.steps=false")
    for key in ("train_size", "eval_size"):
        if getattr(rg, key) <= 0:
            raise ConfigError(f"config key 'data.reasoning_gym.{key}': must be > 0, got {getattr(rg, key)}")


def validate(cfg: TrainConfig) -> None:
    """Check values and combinations that types alone cannot; raise ConfigError naming the key."""
    _check_finite(cfg)
    for key, allowed in _CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {', '.join(allowed)}")
    check_data(cfg.data)
    if cfg.iterations < 0:
        raise ConfigError(f"config key 'iterations': must be >= 0 (0 = evaluate only), got {cfg.iterations}")
    positive = [
        "data.prompts_per_iteration", "rollout.max_new_tokens", "policy.num_workers", "prm.num_workers",
        "policy.mini_batch_size", "policy.micro_batch_size", "policy.epochs", "prm.micro_batch_size", "prm.epochs",
        "eval.num_prompts", "eval.samples_per_prompt", "code.timeout_s", "code.memory_mb", "code.workers",
    ]
    for key in positive:
        if _get(cfg, key) <= 0:
            raise ConfigError(f"config key '{key}': must be > 0, got {_get(cfg, key)}")
    if cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens > cfg.rollout.max_model_len:
        raise ConfigError(
            f"config key 'rollout.max_model_len': {cfg.rollout.max_model_len} is less than data.max_prompt_tokens "
            f"({cfg.data.max_prompt_tokens}) + rollout.max_new_tokens ({cfg.rollout.max_new_tokens}); raise it"
        )
    if not 0 <= cfg.rollout.min_new_tokens <= cfg.rollout.max_new_tokens:
        raise ConfigError(f"config key 'rollout.min_new_tokens': {cfg.rollout.min_new_tokens} must be between 0 and "
                          f"rollout.max_new_tokens ({cfg.rollout.max_new_tokens})")
    if cfg.rollout.samples_per_prompt < 2:
        raise ConfigError("config key 'rollout.samples_per_prompt': RLOO needs at least 2 samples per prompt")
    if cfg.rollout.temperature <= 0:
        raise ConfigError("config key 'rollout.temperature': must be > 0 (K samples per prompt need sampling)")
    if not 0.0 <= cfg.filter.low <= cfg.filter.high <= 1.0:
        raise ConfigError(f"config keys 'filter.low'/'filter.high': need 0 <= low <= high <= 1, got {cfg.filter.low}, {cfg.filter.high}")
    if cfg.prm.kind == "none":
        if cfg.advantage.c_process != 0.0:
            raise ConfigError("config key 'advantage.c_process': must be 0 when prm.kind is none (there is no PRM to score with)")
    if cfg.prm.kind == "oracle" and cfg.advantage.c_process == 0.0:
        raise ConfigError("config key 'advantage.c_process': prm.kind=oracle is a process reward; give it a weight (c_process != 0)")
    if cfg.prm.head != "linear" and cfg.prm.kind != "head":
        raise ConfigError(f"config key 'prm.head': {cfg.prm.head} is a head of the head PRM; set prm.kind=head")
    if cfg.prm.update == "none" and has_prm_learner(cfg) and not cfg.model.prm_path:
        raise ConfigError(
            "config key 'model.prm_path': a frozen PRM (prm.update=none) must be a trained one; give its "
            "checkpoint, e.g. model.prm_path=runs/<run>/checkpoints/iter_000100/prm"
        )
    if cfg.data.curriculum_iterations < 0:
        raise ConfigError(f"config key 'data.curriculum_iterations': must be >= 0, got {cfg.data.curriculum_iterations}")
    if cfg.data.curriculum_path and not cfg.data.curriculum_iterations:
        raise ConfigError("config key 'data.curriculum_path': set data.curriculum_iterations too (how many batches come from it)")
    if cfg.data.max_demos_per_problem < -1:
        raise ConfigError(
            f"config key 'data.max_demos_per_problem': must be -1 (all), 0 or more, got {cfg.data.max_demos_per_problem}"
        )
    if irl_step(cfg) and cfg.data.max_demos_per_problem == 0 and not cfg.irl.pseudo_expert:
        raise ConfigError(
            "config key 'data.max_demos_per_problem': 0 demos with irl.pseudo_expert=false leaves the IRL step no "
            "positive trajectory (every update would be skipped); keep demos or set irl.pseudo_expert=true"
        )
    if cfg.sft.steps > 0 and cfg.data.max_demos_per_problem == 0:
        raise ConfigError("config key 'data.max_demos_per_problem': 0 leaves the supervised stage (sft.steps > 0) no demos")
    if cfg.prm.loss == "prime" and cfg.prm.kind != "implicit":
        raise ConfigError("config key 'prm.loss': 'prime' trains the implicit PRM; set prm.kind=implicit")
    if cfg.policy.tis_cap != 0 and cfg.policy.tis_cap < 1:
        raise ConfigError(
            f"config key 'policy.tis_cap': {cfg.policy.tis_cap} would scale down even the tokens on which sampler "
            "and learner agree; use a cap >= 1 (verl / TRL use 2) or 0 to turn the correction off"
        )
    if cfg.policy.mini_batch_size % cfg.policy.micro_batch_size:
        raise ConfigError(
            f"config key 'policy.micro_batch_size': {cfg.policy.micro_batch_size} must divide "
            f"policy.mini_batch_size {cfg.policy.mini_batch_size}"
        )
    for key in ("rollout.num_threads", "policy.num_threads", "prm.num_threads", "sft.num_threads"):
        value = _get(cfg, key)
        if value != "auto" and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"config key '{key}': {value!r} is neither auto nor a thread count >= 1")
    workers = cfg.rollout.num_workers
    if workers != "auto" and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
        raise ConfigError(f"config key 'rollout.num_workers': {workers!r} is neither auto nor a number of engines >= 1")
    store = cfg.ray.object_store_gib
    if store != "auto" and (not isinstance(store, (int, float)) or isinstance(store, bool) or store <= 0):
        raise ConfigError(f"config key 'ray.object_store_gib': {store!r} is neither auto nor a size in GiB > 0")
    for role in ("rollout", "policy", "prm"):
        parse_cores(_get(cfg, f"{role}.cores"), f"{role}.cores")
        if _get(cfg, f"{role}.num_cpus") <= 0:
            raise ConfigError(
                f"config key '{role}.num_cpus': must be > 0 (an actor with 0 CPUs would be scheduled anywhere, "
                "one asking for more than is free waits forever)"
            )


def parse_cores(spec: str, key: str = "cores") -> list[int]:
    """ "0,2-3" -> [0, 2, 3]; a ConfigError naming the key when it does not parse."""
    cores: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in spec.split(","))):
            a, _, b = part.partition("-")
            cores.extend(range(int(a), int(b or a) + 1))
    except ValueError:
        raise ConfigError(f"config key '{key}': {spec!r} is not a core list such as 0,2-3") from None
    if spec.strip() and not cores:
        raise ConfigError(f"config key '{key}': {spec!r} names no core")
    return cores


def _schema() -> Any:
    return OmegaConf.structured(TrainConfig)


def _explain(err: OmegaConfBaseException, source: str) -> ConfigError:
    key = getattr(err, "full_key", None) or "?"
    if isinstance(err, ConfigKeyError):
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        valid = ""
        try:
            node = _get(TrainConfig(), parent) if parent else TrainConfig()
            valid = "; valid keys" + (f" under '{parent}'" if parent else "") + ": " + ", ".join(vars(node))
        except AttributeError:
            pass
        return ConfigError(f"unknown config key '{key}' (from {source}){valid}")
    if isinstance(err, ValidationError):
        msg = str(err).splitlines()[0]
        if "Cannot convert" in msg and "to string" in msg:
            # A text with { } or [ ] reads as a YAML mapping or list: it needs quotes.
            msg += f"; quote a text holding {{ }} or [ ], e.g. {key}='\"Q: {{problem}}\"'"
        return ConfigError(f"config key '{key}' (from {source}): {msg}")
    return ConfigError(f"config error (from {source}): {str(err).splitlines()[0]}")


def load_config(paths: str | list[str] | tuple[str, ...] | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Defaults <- each YAML file in order (a later file wins) <- key=value overrides; returns a
    validated TrainConfig object. Several files compose, e.g. a GPU config, then a mode:
    `--config configs/qwen2.5-3b-math.yaml --config configs/modes/rloo.yaml`."""
    cfg = _schema()
    if isinstance(paths, str):
        paths = [paths]
    for path in paths or ():
        if not os.path.isfile(path):
            raise ConfigError(f"config file not found: {path}")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        except OmegaConfBaseException as err:
            raise _explain(err, path) from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML ({' '.join(str(err).split())})") from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (for example policy.lr=1e-5)")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as err:
            raise _explain(err, f"override {item!r}") from None
        except yaml.YAMLError as err:  # the value is read as YAML: an unclosed [ or { lands here
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({str(err).splitlines()[0]})") from None
    obj: TrainConfig = OmegaConf.to_object(cfg)
    validate(obj)
    return obj


def to_yaml(cfg: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    atomic_write_text(path, to_yaml(cfg))
