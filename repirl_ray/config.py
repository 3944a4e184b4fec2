"""Run configuration: typed dataclass schemas hold every default; YAML files and key=value
overrides only override them. An unknown key, a value of the wrong type or a value outside its
allowed set is an error that names the key (and the file it came from); nothing is rewritten
after parsing.

The defaults are the built-in CPU world (DESIGN.md section 4), so `repirl train` with no
arguments is a real rePIRL run. Each component is given only its own section.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError


class ConfigError(ValueError):
    """A one-line, user-facing configuration error."""


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
    dtype: str = "float32"  # float32 | bfloat16 | float16
    trust_remote_code: bool = False


@dataclass
class DataConfig:
    task: str = "arithmetic"  # arithmetic | math | code
    train_path: str = ""  # JSONL or parquet with prompt, answer, demos; "" = the world's (see world_split)
    world_split: str = "train"  # with train_path "": the world split that trains: train | hard_train | eval
    eval_path: str = ""  # held-out prompts; "" = the world's
    hard_eval_path: str = ""  # optional extra eval split; "" = the world's hard split (arithmetic)
    prompts_per_iteration: int = 64
    shuffle: bool = True
    chat_template: bool = False  # wrap prompts with the tokenizer's chat template
    max_prompt_tokens: int = 64
    # Expert demos kept per training problem (the first ones of each row); -1 = all. 0 trains the
    # PRM on pseudo-experts alone (correct rollouts), the paper's no-demo setting.
    max_demos_per_problem: int = -1


@dataclass
class SFTConfig:
    """An optional supervised stage on the training problems' expert demos, run as a Ray Train job
    before the RL loop; its result is the starting policy. steps > 0 with iterations = 0 is
    behaviour cloning; with the rloo mode it is the paper's SFT + RLOO baseline."""

    steps: int = 0  # 0 = no supervised stage
    batch_size: int = 64
    lr: float = 1e-4
    num_cpus: float = 1.0
    num_threads: int = 2


@dataclass
class RolloutConfig:
    num_workers: int = 2
    num_cpus: float = 0.5  # per worker; fractional so that all roles fit on 2 cores
    num_gpus: float = 0.0
    samples_per_prompt: int = 4  # K (paper: 4)
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 48
    max_model_len: int = 128
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources, e.g. {rollout: 1}
    kv_cache_gib: float = 0.25  # vLLM-CPU KV cache (VLLM_CPU_KVCACHE_SPACE)
    gpu_memory_utilization: float = 0.4
    enforce_eager: bool = True
    bind_cores: bool = True  # CPU: pin each worker's threads to its own cores


@dataclass
class PolicyConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0
    clip_eps: float = 0.2
    entropy_coef: float = 0.001
    kl_coef: float = 0.0  # KL to the base policy; 0 = no reference model is loaded
    epochs: int = 1
    mini_batch_size: int = 256  # rollouts per optimizer step
    micro_batch_size: int = 64  # rollouts per forward/backward (gradient accumulation)
    gradient_checkpointing: bool = False
    num_cpus: float = 0.5
    num_gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources, e.g. {learner: 1}
    num_threads: int = 2  # torch threads of the learner process


@dataclass
class PRMConfig:
    # head (the paper's: base model + scalar head) | implicit (PRIME's beta * log-ratio) | none (rloo).
    # Departure: the built-in world defaults to implicit. Measured there (100 iterations, step AUROC on
    # the base policy's held-out samples): head 0.63, implicit 0.77; the tiny model's last-layer state
    # at a_t carries little of whether a_t was right, its log-probs do. prm.kind=head is the paper's.
    kind: str = "implicit"
    update: str = "before"  # before (paper) | after | none (frozen PRM)
    loss: str = "repirl"  # repirl (IRL objective) | prime (cross-entropy on outcomes)
    beta: float = 0.05  # beta_prm of the implicit PRM
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 10.0
    prompts_per_mini_batch: int = 0  # 0 = the whole iteration's prompts in one optimizer step
    epochs: int = 1  # passes over each iteration's batch (paper: 1); weights recomputed every pass
    micro_batch_size: int = 64
    gradient_checkpointing: bool = False
    num_cpus: float = 0.5
    num_gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources, e.g. {learner: 1}
    num_threads: int = 2


@dataclass
class IRLConfig:
    """The points the paper leaves open (ALGORITHM.md section 2)."""

    weight_reward: str = "sum"  # sum (paper) | mean
    pseudo_expert: bool = True
    normalise_over: str = "prompt"  # prompt | batch
    reward_l2: float = 2.0  # paper: 0; 2.0 keeps the built-in world's PRM from drifting


@dataclass
class AdvantageConfig:
    c_outcome: float = 1.0
    c_process: float = 0.2
    c_format: float = 0.0  # prm_only / test-time training: 0 if well formatted else -1
    whiten: bool = True
    # How token rewards become the process return (ALGORITHM.md section 3): sum (the paper's
    # reverse cumulative sum) | min (PURE's min-form: the minimum of the remaining step rewards).
    process_credit: str = "sum"


@dataclass
class FilterConfig:
    enabled: bool = True
    low: float = 0.2
    high: float = 0.8


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
    object_store_gib: float = 1.0  # local Ray only
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
    sft: SFTConfig = field(default_factory=SFTConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    prm: PRMConfig = field(default_factory=PRMConfig)
    irl: IRLConfig = field(default_factory=IRLConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    ray: RayConfig = field(default_factory=RayConfig)


_CHOICES = {
    "model.dtype": ("float32", "bfloat16", "float16"),
    "data.task": ("arithmetic", "math", "code"),
    "data.world_split": ("train", "hard_train", "eval"),
    "prm.kind": ("head", "implicit", "none"),
    "prm.update": ("before", "after", "none"),
    "prm.loss": ("repirl", "prime"),
    "irl.weight_reward": ("sum", "mean"),
    "irl.normalise_over": ("prompt", "batch"),
    "advantage.process_credit": ("sum", "min"),
}


def needs_demos(cfg: "TrainConfig") -> bool:
    """Expert demos are read by the IRL step (a PRM that learns with the rePIRL loss) and by the
    supervised stage; training data without them is fine otherwise (rloo, prime, TTT)."""
    irl = cfg.prm.kind != "none" and cfg.prm.update != "none" and cfg.prm.loss == "repirl"
    return (irl and cfg.data.max_demos_per_problem != 0) or cfg.sft.steps > 0


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Check values and combinations that types alone cannot; raise ConfigError naming the key."""
    for key, allowed in _CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {', '.join(allowed)}")
    if cfg.iterations < 0:
        raise ConfigError(f"config key 'iterations': must be >= 0 (0 = evaluate only), got {cfg.iterations}")
    positive = [
        "data.prompts_per_iteration", "rollout.num_workers", "rollout.max_new_tokens",
        "policy.mini_batch_size", "policy.micro_batch_size", "policy.epochs", "prm.micro_batch_size", "prm.epochs",
        "eval.num_prompts", "eval.samples_per_prompt",
    ]
    for key in positive:
        if _get(cfg, key) <= 0:
            raise ConfigError(f"config key '{key}': must be > 0, got {_get(cfg, key)}")
    if cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens > cfg.rollout.max_model_len:
        raise ConfigError(
            f"config key 'rollout.max_model_len': {cfg.rollout.max_model_len} is less than data.max_prompt_tokens "
            f"({cfg.data.max_prompt_tokens}) + rollout.max_new_tokens ({cfg.rollout.max_new_tokens}); raise it"
        )
    if cfg.rollout.samples_per_prompt < 2:
        raise ConfigError("config key 'rollout.samples_per_prompt': RLOO needs at least 2 samples per prompt")
    if cfg.rollout.temperature <= 0:
        raise ConfigError("config key 'rollout.temperature': must be > 0 (K samples per prompt need sampling)")
    if not 0.0 <= cfg.filter.low <= cfg.filter.high <= 1.0:
        raise ConfigError(f"config keys 'filter.low'/'filter.high': need 0 <= low <= high <= 1, got {cfg.filter.low}, {cfg.filter.high}")
    if cfg.prm.kind == "none":
        if cfg.advantage.c_process != 0.0:
            raise ConfigError("config key 'advantage.c_process': must be 0 when prm.kind is none (there is no PRM to score with)")
    if cfg.prm.update == "none" and cfg.prm.kind != "none" and not cfg.model.prm_path:
        raise ConfigError(
            "config key 'model.prm_path': a frozen PRM (prm.update=none) must be a trained one; give its "
            "checkpoint, e.g. model.prm_path=runs/<run>/checkpoints/iter_000100/prm"
        )
    if cfg.data.max_demos_per_problem < -1:
        raise ConfigError(
            f"config key 'data.max_demos_per_problem': must be -1 (all), 0 or more, got {cfg.data.max_demos_per_problem}"
        )
    irl_step = cfg.prm.kind != "none" and cfg.prm.update != "none" and cfg.prm.loss == "repirl"
    if irl_step and cfg.data.max_demos_per_problem == 0 and not cfg.irl.pseudo_expert:
        raise ConfigError(
            "config key 'data.max_demos_per_problem': 0 demos with irl.pseudo_expert=false leaves the IRL step no "
            "positive trajectory (every update would be skipped); keep demos or set irl.pseudo_expert=true"
        )
    if cfg.sft.steps > 0 and cfg.data.max_demos_per_problem == 0:
        raise ConfigError("config key 'data.max_demos_per_problem': 0 leaves the supervised stage (sft.steps > 0) no demos")
    if cfg.prm.loss == "prime" and cfg.prm.kind != "implicit":
        raise ConfigError("config key 'prm.loss': 'prime' trains the implicit PRM; set prm.kind=implicit")
    if cfg.policy.mini_batch_size % cfg.policy.micro_batch_size:
        raise ConfigError(
            f"config key 'policy.micro_batch_size': {cfg.policy.micro_batch_size} must divide "
            f"policy.mini_batch_size {cfg.policy.mini_batch_size}"
        )
    for role in ("rollout", "policy", "prm"):
        if _get(cfg, f"{role}.num_cpus") <= 0:
            raise ConfigError(
                f"config key '{role}.num_cpus': must be > 0 (an actor with 0 CPUs would be scheduled anywhere, "
                "one asking for more than is free waits forever)"
            )


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
        return ConfigError(f"config key '{key}' (from {source}): {msg}")
    return ConfigError(f"config error (from {source}): {str(err).splitlines()[0]}")


def load_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Defaults <- YAML file <- key=value overrides; returns a validated TrainConfig object."""
    cfg = _schema()
    if path:
        if not os.path.isfile(path):
            raise ConfigError(f"config file not found: {path}")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        except OmegaConfBaseException as err:
            raise _explain(err, path) from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (for example policy.lr=1e-5)")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as err:
            raise _explain(err, f"override {item!r}") from None
    obj: TrainConfig = OmegaConf.to_object(cfg)
    validate(obj)
    return obj


def to_yaml(cfg: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    from repirl_ray.utils import atomic_write_text

    atomic_write_text(path, to_yaml(cfg))
