"""Run set-up, apart from the loop: where models and data come from, the checks made before
anything starts, Ray, the run folder, the supervised stage, the actors, and the checkpoint a
resume starts from (checkpoints.py reads and writes them).

`RunSetup` is `repirl train`'s set-up as named steps, in order; the driver calls it once and
runs the loop on what it leaves. Everything up to its actors runs before the first actor exists,
so a typo, a damaged checkpoint or a request the cluster cannot place costs a second and one
line, not a minute and a traceback. `assess.py` (eval, best-of-N) and `sweep.py` share the checks.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path

import ray

from repirl_ray.actors.common import actor_bundle, sum_bundles
from repirl_ray.actors.learner_group import PolicyLearnerGroup, PRMLearnerGroup
from repirl_ray.actors.rollout_group import RolloutGroup
from repirl_ray.actors.supervised import run_supervised_job
from repirl_ray.checkpoints import (
    CHECKPOINTS,
    CheckpointError,
    check_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    resume_target,
)
from repirl_ray.config import ConfigError, TrainConfig, has_prm_learner, load_config, needs_demos, save_config
from repirl_ray.data import PromptStream, limit_demos
from repirl_ray.learners.sft import SupervisedJob
from repirl_ray.metrics import MemoryMonitor, MetricsLogger
from repirl_ray.models.packaged import is_packaged, model_dir, resolve_model
from repirl_ray.models.policy import check_model_path
from repirl_ray.tasks import Task, build_task
from repirl_ray.threads import (DEFERRED_NOTE, SHARED_OVERLAP_NOTE, describe_budgets, rollout_engines_note, rollout_workers,
                               samples_beside_updates, thread_budgets, weight_bytes)
from repirl_ray.data.dataset import REASONING_GYM, DataReport, check_prompts, read_split
from repirl_ray.data.dataset import task_kwargs as dataset_task_kwargs
from repirl_ray.utils import atomic_write_json, publish_dir

@dataclasses.dataclass
class Paths:
    """Where the models and data of a run come from, after the built-in world's defaults."""

    policy: str
    prm: str
    ref: str
    train: str
    eval: str
    hard_eval: str
    curriculum: str = ""


def resolve_paths(cfg: TrainConfig, log_fn=print) -> Paths:
    """Empty paths mean the built-in world's (built on first use), or with data.format=reasoning_gym
    the generated splits; a packaged model's name (models/packaged.py) means its folder, converted on
    first use. The config itself is not changed: the run folder records these in paths.json."""
    generated = cfg.data.format == "reasoning_gym"
    needs_world = (not cfg.model.policy_path or (not generated and (
        not cfg.data.train_path or not cfg.data.eval_path
        or (cfg.data.curriculum_iterations > 0 and not cfg.data.curriculum_path))))
    world = None
    if needs_world:
        if cfg.data.task != "arithmetic":
            raise ConfigError(
                f"config key 'data.task' is {cfg.data.task!r}: give model.policy_path, data.train_path and "
                "data.eval_path (the built-in world only provides the arithmetic task)"
            )
        from repirl_ray.world import ensure_world

        world = ensure_world(cfg.world, log=log_fn)
    policy = resolve_model(cfg.model.policy_path, log_fn) if cfg.model.policy_path else str(world.base_policy)
    prm = resolve_model(cfg.model.prm_path, log_fn) if cfg.model.prm_path else policy
    if generated:
        train, eval_, hard_eval, curriculum = REASONING_GYM + "train", REASONING_GYM + "eval", "", ""
    else:
        train = cfg.data.train_path or str(world.split(cfg.data.world_split))
        eval_ = cfg.data.eval_path or str(world.eval)
        hard_eval = cfg.data.hard_eval_path or (str(world.hard_eval) if world else "")
        curriculum = cfg.data.curriculum_path or (str(world.train) if world and cfg.data.curriculum_iterations else "")
    return Paths(policy=policy, prm=prm, ref=resolve_model(cfg.model.ref_path, log_fn) if cfg.model.ref_path else policy,
                 train=train, eval=eval_, hard_eval=hard_eval, curriculum=curriculum)


def check_given_paths(cfg: TrainConfig) -> None:
    """Model paths the user gave are checked before anything starts (Ray, the world, actors), so a
    typo costs a second, not a minute (data files: read_given_data); and the code task's sandbox."""
    for key in ("model.policy_path", "model.prm_path", "model.ref_path"):
        section, name = key.split(".")
        path = getattr(getattr(cfg, section), name)
        if path and not (key == "model.prm_path" and not has_prm_learner(cfg)):
            check_model_path(path, key, tokenizer=key == "model.policy_path")
    if cfg.data.task == "code":
        from repirl_ray.sandbox import check_sandbox

        check_sandbox(cfg.code.sandbox)  # a machine without user namespaces stops here, in one line


# Data: formats, the demos file and prompt lengths, checked before any actor starts (tasks/dataset.py).
DATA_SPLITS = (("train", "train_path"), ("eval", "eval_path"), ("hard_eval", "hard_eval_path"),
               ("curriculum", "curriculum_path"))


def read_data_split(cfg: TrainConfig, split: str, path: str):
    """One split read and checked as the run reads it: (problems, DataReport)."""
    trains = split in ("train", "curriculum")  # the curriculum's problems train like train_path's
    return read_split(cfg.data, path, split=split, require_demos=trains and needs_demos(cfg),
                      demos_path=cfg.data.demos_path if trains else "")


def read_given_data(cfg: TrainConfig) -> dict:
    """The data files the user gave, read and checked (rows, demos) before the world is built or
    Ray starts, so that a bad row costs a second: {split: (problems, DataReport)}."""
    out = {}
    for split, key in DATA_SPLITS:
        path = getattr(cfg.data, key)
        if path and (split != "hard_eval" or cfg.eval.hard):
            out[split] = read_data_split(cfg, split, path)
    return out


def load_run_data(cfg: TrainConfig, paths: Paths, given: dict, log_fn=print) -> tuple[dict, dict]:
    """Every split the run uses, its prompts measured with the policy's tokenizer as the rollout
    workers will encode them: ({split: problems}, {split: report as a dict}); one log line each."""
    from transformers import AutoTokenizer

    from repirl_ray.tasks import build_task

    tokenizer = AutoTokenizer.from_pretrained(paths.policy, trust_remote_code=cfg.model.trust_remote_code)
    task = build_task(cfg.data.task, **task_kwargs(cfg))
    split_paths = {"train": paths.train, "eval": paths.eval, "hard_eval": paths.hard_eval if cfg.eval.hard else "",
                   "curriculum": paths.curriculum}
    out, reports = {}, {}
    for split, path in split_paths.items():
        if not path:
            out[split] = []
            continue
        problems, report = given.get(split) or read_data_split(cfg, split, path)
        out[split] = check_prompts(problems, report, cfg.data, task=task, tokenizer=tokenizer, tokenizer_name=paths.policy)
        reports[split] = report.to_dict()
        log_fn(data_log_line(report))
    check_response_boundary(cfg, task, tokenizer, out["train"])
    return out, reports


def check_response_boundary(cfg: TrainConfig, task, tokenizer, problems: list) -> None:
    """Demos are encoded as prompt ids + response ids, as rollouts are; a prompt whose end the
    tokenizer would merge with the response's start gives the learners token sequences the model
    never reads. Checked on the first training problem with a demo (the template is shared)."""
    from repirl_ray.data.prompts import PromptEncoder, boundary_split

    if tokenizer.eos_token_id is None:
        raise ConfigError(f"config key 'model.policy_path': the tokenizer of {cfg.model.policy_path or 'the policy'} "
                          "has no EOS token; responses could not end (set eos_token in its tokenizer_config.json)")
    problem = next((p for p in problems if p.demos), None)
    if problem is None:
        return
    encode = PromptEncoder(tokenizer, cfg.data.chat_template, max_prompt_tokens=1 << 30)
    split = boundary_split(encode, task.format_prompt(problem), problem.demos[0])
    if split:
        key = "data.prompt_template" if cfg.data.prompt_template else "data.chat_template"
        raise ConfigError(f"config key '{key}': {split} (problem {problem.id}); end the prompt so that the response "
                          "starts a new token (e.g. end it with a newline, not a space), or turn the chat template on")


def data_log_line(r: DataReport) -> str:
    line = f"data {r.split}: {r.problems} problems from {r.path} (format {r.format}), {r.with_demos} with demos"
    if r.with_demos:
        line += f" ({r.demos_min}-{r.demos_max} each, mean {r.demos_mean:.1f})"
    if r.prompt_tokens:
        line += f"; prompt tokens p50 {r.prompt_tokens['p50']}, p99 {r.prompt_tokens['p99']}, max {r.prompt_tokens['max']} (limit {r.max_prompt_tokens})"
    notes = [f"{what}: {n}" for what, n in {**r.changed, **r.dropped}.items()]
    if r.unmatched_demo_ids:
        notes.append(f"{len(r.unmatched_demo_ids)} demos of {r.demos_path} match no problem (not used; first ids "
                     f"{', '.join(map(repr, list(dict.fromkeys(r.unmatched_demo_ids))[:3]))})")
    return line + "".join(f"; {n}" for n in notes)


def task_kwargs(cfg: TrainConfig) -> dict:
    """The task's own settings: the arithmetic verifier needs the world's modulus, the math task
    data.prompt_template, the code task its sandbox (the `code` section)."""
    if cfg.data.task == "code":
        from repirl_ray.data.dataset import code_task_kwargs

        return code_task_kwargs(cfg.code)
    return dataset_task_kwargs(cfg.data, cfg.world)


# ----------------------------------------------------------------------------------------------
# Ray, and whether the roles fit on it


def init_ray(cfg: TrainConfig, log_fn=print) -> bool:
    """Join a cluster (ray.address, or the RAY_ADDRESS a `ray job submit` sets), or start a
    private local Ray. Returns True when this process started Ray (and must stop it)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return False
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, log_to_driver=True)
        log_fn(f"joined the Ray cluster at {address}: {ray.cluster_resources().get('CPU', 0):.0f} CPUs, "
               f"{ray.cluster_resources().get('GPU', 0):.0f} GPUs")
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    store, why = object_store_size(cfg.ray.object_store_gib, policy_weight_bytes(cfg))
    ray.init(
        address="local",
        num_cpus=cfg.ray.num_cpus or None,
        object_store_memory=store,
        include_dashboard=cfg.ray.include_dashboard,
        log_to_driver=True,
    )
    log_fn(f"started a local Ray: {ray.cluster_resources().get('CPU', 0):.0f} CPUs, object store {why}")
    return True


SPILL_THRESHOLD = 0.8  # Ray writes objects to disk once its store is this full (object_spilling_threshold)
STORE_SLACK = 256 * 2**20  # batches, token rewards and the like beside the weights


def object_store_size(setting: float | str, push_bytes: int | None) -> tuple[int, str]:
    """The local Ray's object store in bytes, and what the start-up line says of it.

    During a weight push the store holds two copies of the policy: the one the rollout workers'
    engines read their parameters from (pinned), and the new one. Above SPILL_THRESHOLD of the
    store Ray writes objects to disk: a 123M float32 policy (468 MiB a push) in 1 GiB was spilled
    in every run of benchmarks/scaling.py, at 100-400 MiB/s. auto: room for both copies and
    STORE_SLACK below the threshold, at least 1 GiB, in steps of 1/4 GiB; push_bytes is the
    policy's weight files (an upper bound where the engine's dtype is narrower), None where not
    known before loading. A number is used as given; the line says when pushes will spill."""
    gib = 2**30
    need = None if push_bytes is None else math.ceil((2 * push_bytes + STORE_SLACK) / SPILL_THRESHOLD / (gib / 4)) * (gib // 4)
    if setting == "auto":
        size = gib if need is None else max(gib, need)
        room = "policy size unknown before loading" if need is None else f"two weight pushes of {push_bytes / 2**20:.0f} MiB"
        return int(size), f"{size / gib:.2f} GiB (ray.object_store_gib=auto: {room})"
    size = int(float(setting) * gib)
    line = f"{size / gib:.2f} GiB (ray.object_store_gib)"
    if need is not None and size < need:
        line += (f"; WARNING: two weight pushes of {push_bytes / 2**20:.0f} MiB pass Ray's spilling threshold "
                 f"({SPILL_THRESHOLD:.0%} of the store): pushes will be written to disk; "
                 f"ray.object_store_gib >= {need / gib:.2f} (or auto) avoids it")
    return size, line


def policy_weight_bytes(cfg: TrainConfig) -> int | None:
    """The size of the policy's weight files, known before anything is built or loaded: a local
    folder's, a fetched packaged model's, the built-in world's policy from its shape (float32);
    None where it is not known yet (a hub name, a packaged model not fetched)."""
    from repirl_ray.world import policy_parameters

    path = cfg.model.policy_path
    if not path:
        return 4 * policy_parameters(cfg.world)
    return weight_bytes(str(model_dir(path) if is_packaged(path) else path)) or None


def resolve_rollout_workers(cfg: TrainConfig, cores: int, log_fn=print) -> TrainConfig:
    """cfg with rollout.num_workers=auto replaced by the engines this run starts (threads.rollout_workers),
    said in a start-up line; a config without auto comes back as it is."""
    if cfg.rollout.num_workers != "auto":
        return cfg
    workers, line = rollout_workers(cfg, cores, policy_weight_bytes(cfg))
    log_fn(line)
    return dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, num_workers=workers))


def role_demands(cfg: TrainConfig) -> dict[str, list[dict[str, float]]]:
    """What each role asks of the cluster: one resource bundle per actor (a learner group's
    ranks are bundles of one placement group)."""

    demands = {"rollout": [actor_bundle(cfg.rollout)] * cfg.rollout.num_workers,
               "policy": [actor_bundle(cfg.policy)] * cfg.policy.num_workers}
    if has_prm_learner(cfg):
        demands["prm"] = [actor_bundle(cfg.prm)] * cfg.prm.num_workers
    return demands


def check_fits(demands: dict[str, list[dict[str, float]]], nodes: list[dict[str, float]], packed: dict[str, bool]) -> None:
    """Raise ConfigError when the roles cannot all be placed on these nodes (their total
    resources): every role's bundles together, and each packed learner group on one node.

    Greedy first-fit of whole roles, largest first: a request this rejects would wait forever
    for resources in Ray, silently. Custom resources that no node offers are left to
    `warn_missing_resources` (an autoscaler may add such nodes)."""
    offered = {k for n in nodes for k in n}
    free = [dict(n) for n in nodes]

    def fits(b: dict, node: dict) -> bool:
        return all(node.get(k, 0.0) + 1e-9 >= v for k, v in b.items() if k in offered)

    def take(b: dict, node: dict) -> None:
        for k, v in b.items():
            if k in offered:
                node[k] = node.get(k, 0.0) - v

    def key_of(role: str) -> str:
        return f"{role}.num_workers"

    def describe(b: dict, n: int) -> str:
        return f"{n} x {{" + ", ".join(f"{k}: {v:g}" for k, v in b.items()) + "}"

    total = sum_bundles(nodes)
    asked = sum_bundles(b for bundles in demands.values() for b in bundles)
    order = sorted(demands, key=lambda r: -sum(sum(b.values()) for b in demands[r]))
    over = [k for k in asked if k in offered and asked[k] > total.get(k, 0.0) + 1e-9]
    if over:
        # More than the whole cluster: name the role that asks most (most likely the one raised).
        biggest = order[0]
        roles = ", ".join(f"{r} {describe(demands[r][0], len(demands[r]))}" for r in order if demands[r])
        raise ConfigError(
            f"config key '{key_of(biggest)}': the roles ask for " + ", ".join(f"{k} {asked[k]:g}" for k in over)
            + f" in all ({roles}) but the cluster has " + ", ".join(f"{k} {total.get(k, 0.0):g}" for k in over)
            + f"; lower {key_of(biggest)} or the per-actor num_cpus/num_gpus, or add nodes "
            "(on an autoscaling cluster, bring them up first: min_workers in the cluster YAML)"
        )
    for role in order:
        bundles = demands[role]
        if not bundles:
            continue
        if packed.get(role, False):
            # All ranks on one node (STRICT_PACK): the node must hold the whole group.
            group = sum_bundles(bundles)
            for node in free:
                if fits(group, node):
                    take(group, node)
                    break
            else:
                biggest = max(nodes, key=lambda n: n.get("CPU", 0.0)) if nodes else {}
                raise ConfigError(
                    f"config key '{key_of(role)}': {len(bundles)} ranks packed on one node ask for "
                    f"{describe(bundles[0], len(bundles))}, but no node has that free (largest node: "
                    + ", ".join(f"{k} {v:g}" for k, v in sorted(biggest.items()) if not k.startswith("node:")) +
                    f"); lower {key_of(role)} or {role}.num_cpus/num_gpus, or set {role}.placement=spread"
                )
            continue
        for i, b in enumerate(bundles):
            for node in free:
                if fits(b, node):
                    take(b, node)
                    break
            else:
                asked = sum_bundles(bundles)
                raise ConfigError(
                    f"config key '{key_of(role)}': {role} asks for {describe(b, len(bundles))} (with the other "
                    f"roles placed first, actor {i + 1} does not fit); the cluster has "
                    + ", ".join(f"{k} {total.get(k, 0):g}" for k in sorted(asked) if k in offered)
                    + f" in all. Lower {key_of(role)} or the per-actor num_cpus/num_gpus, or add nodes "
                    "(on an autoscaling cluster, bring them up first: min_workers in the cluster YAML)"
                )


def check_cluster_fits(cfg: TrainConfig) -> None:
    """check_fits against the nodes of the running Ray (their total resources)."""
    nodes = [
        {k: float(v) for k, v in n["Resources"].items() if not k.startswith("node:") and k not in ("memory", "object_store_memory")}
        for n in ray.nodes() if n.get("Alive")
    ]
    packed = {"policy": cfg.policy.placement == "pack", "prm": cfg.prm.placement == "pack"}
    check_fits(role_demands(cfg), nodes, packed)


def node_cores(cfg: TrainConfig, joined: bool) -> int:
    """The CPUs of the node the roles share, for their thread budgets: on a joined cluster the
    largest node's (Ray's count), else ray.num_cpus or the cores this process may run on."""
    if joined:
        return max(int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")) or 1
    if cfg.ray.num_cpus:
        return cfg.ray.num_cpus
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def stop_ray(started: bool, joined: bool) -> None:
    """Stop a Ray this process started (init_ray returned True), or leave a joined cluster."""
    if started or (joined and ray.is_initialized()):
        ray.shutdown()


# ----------------------------------------------------------------------------------------------
# The run folder, and the run `repirl train` means


def new_run_dir(cfg: TrainConfig) -> Path:
    """The run folder's path; not created here (RunSetup creates it once the checks pass, so a
    run that fails them leaves no empty folder behind)."""
    if cfg.run_dir:
        path = Path(cfg.run_dir)
        if (path / CHECKPOINTS).exists():
            raise FileExistsError(
                f"run_dir {path} already holds a run; continue it with `repirl train --resume {path}` "
                "or choose another run_dir"
            )
        return path
    return Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_target(cfg: TrainConfig | None, resume: str | None, overrides=()) -> tuple[TrainConfig, Path, Path | None]:
    """(config, run folder, checkpoint to resume from or None) of a `repirl train`: a new run of
    cfg (or the defaults with overrides), or with `resume` (a run folder, or one of its
    checkpoints) that run's config.yaml with the overrides, and its newest checkpoint."""
    if not resume:
        cfg = cfg or load_config(None, overrides)
        return cfg, new_run_dir(cfg), None
    run_dir, ckpt = resume_target(resume)
    cfg = load_config([str(run_dir / "config.yaml")], overrides)
    ckpt = ckpt or latest_checkpoint(run_dir)
    if ckpt is None:
        raise CheckpointError(f"--resume {resume}: no checkpoint in {run_dir / CHECKPOINTS} (the run stopped before its first)")
    return cfg, run_dir, ckpt


# ----------------------------------------------------------------------------------------------
# A training run's set-up, step by step


class RunSetup:
    """`repirl train`'s set-up, in order: checks, data, run folder, supervised stage, Ray, actors,
    and on resume the checkpoint. Nothing starts before every check has passed; a step that fails
    stops whatever started (actors, a Ray this process started) and raises.

    What the loop runs with is left here: paths, problems and prompt streams, the metrics logger
    and memory monitor, the rollout group and learner groups, `history` (the supervised stage's
    numbers), and on resume the checkpoint's trainer state (`resumed`) and the batch it sampled
    ahead (`pending`).

    rollout: rollout workers to reuse (started by an earlier run with the same rollout section
    and task); they start again from this run's policy, and outlive it."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, *, resume_from: Path | None = None, rollout=None,
                 log_fn=print):
        self.cfg, self.run_dir, self.log = cfg, Path(run_dir), log_fn
        self.given_rollout = rollout
        self.history: dict = {}
        self.resumed: dict | None = None
        self.pending = None
        self.policy_version = 0  # of the weights the rollout workers hold
        self.rollout = self.policy = self.prm = None
        self.started_ray = self.joined_ray = False
        try:
            self._setup_checks(resume_from)
            self._setup_threads(node_cores(self.cfg, self.joined_ray))
            self._setup_data()
            self._setup_run_folder()
            self._setup_supervised_stage()
            self._setup_ray()
            self._setup_actors()
            if resume_from is not None:
                self._setup_resume(resume_from)
        except BaseException:
            self.shutdown()  # whatever started: actors, and a Ray this process started
            raise

    def _setup_checks(self, resume_from: Path | None) -> None:
        """Paths the user gave, the checkpoint to resume from, and whether the roles fit on the
        cluster: each a one-line error before any actor (or the world's warm-up) starts."""
        cfg = self.cfg
        check_given_paths(cfg)
        if cfg.prm.kind == "oracle":
            if type(build_task(cfg.data.task, **task_kwargs(cfg))).step_labels is Task.step_labels:
                raise ConfigError(
                    f"config key 'prm.kind': oracle rewards steps from the task's step labels, and the {cfg.data.task} "
                    "task has none; use a task that labels steps (data.task=arithmetic) or a learned PRM"
                )
        self._given_data = read_given_data(cfg)  # rows and demos, before the world and Ray
        self.resumed = check_checkpoint(resume_from, cfg) if resume_from is not None else None
        self.joined_ray = bool(cfg.ray.address or os.environ.get("RAY_ADDRESS"))
        if self.joined_ray:
            init_ray(cfg, self.log)  # joining is cheap, and the cluster's nodes are what must fit
        self.cfg = cfg = resolve_rollout_workers(cfg, node_cores(cfg, self.joined_ray), self.log)
        if self.joined_ray:
            check_cluster_fits(cfg)
        else:
            import torch  # only for the GPU count: the learners load torch anyway

            node = {"CPU": float(cfg.ray.num_cpus or os.cpu_count() or 1)}
            if torch.cuda.is_available():
                node["GPU"] = float(torch.cuda.device_count())
            check_fits(role_demands(cfg), [node], {"policy": cfg.policy.placement == "pack", "prm": cfg.prm.placement == "pack"})

    def _setup_threads(self, cores: int) -> None:
        """Each role's threads and priority (threads.py), from the cores it shares with the roles
        that run beside it, and whether the pipelined loop samples beside the updates; printed, as
        a run's first speed fact."""
        pipelined = self.cfg.pipeline.off_policy_steps > 0
        self.overlapped = samples_beside_updates(self.cfg, cores)
        self.threads = thread_budgets(self.cfg, cores, overlapped=self.overlapped)
        loop = ("serial loop" if not pipelined else "pipelined loop" if self.overlapped
                else "pipelined loop, next batch sampled after the updates")
        self.log(describe_budgets(self.threads, cores, loop))
        if self.threads["rollout"].idle:
            self.log(SHARED_OVERLAP_NOTE)
        elif pipelined and not self.overlapped and self.cfg.pipeline.overlap == "auto":
            self.log(DEFERRED_NOTE)

    def _setup_data(self) -> None:
        cfg = self.cfg
        self.paths = resolve_paths(cfg, self.log)  # builds the world first when needed
        # Prompt lengths as the workers will encode them: a too-long prompt stops the run here.
        data, self.data_reports = load_run_data(cfg, self.paths, self._given_data, self.log)
        # data.max_demos_per_problem: the demos the IRL step and the supervised stage see.
        self.train_problems, dropped = limit_demos(data["train"], cfg.data.max_demos_per_problem)
        if dropped:
            self.log(f"data.max_demos_per_problem={cfg.data.max_demos_per_problem}: left out {dropped} expert demos of the training problems")
        self.eval_problems = data["eval"][: cfg.eval.num_prompts]
        self.hard_problems = data["hard_eval"][: cfg.eval.num_prompts]
        self.stream = PromptStream(self.train_problems, cfg.data.prompts_per_iteration, seed=cfg.seed, shuffle=cfg.data.shuffle)
        # A curriculum's first stage (data.curriculum_iterations batches), its own seeded stream.
        self.curriculum_stream = None
        if cfg.data.curriculum_iterations:
            curriculum, _ = limit_demos(data["curriculum"], cfg.data.max_demos_per_problem)
            self.curriculum_stream = PromptStream(curriculum, cfg.data.prompts_per_iteration, seed=cfg.seed, shuffle=cfg.data.shuffle)

    def _setup_run_folder(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.run_dir / "config.yaml")  # the resolved config, as this run uses it
        atomic_write_json(self.run_dir / "data_report.json", self.data_reports)
        self.metrics = MetricsLogger(self.run_dir)

    def _setup_supervised_stage(self) -> None:
        """Behaviour cloning on the training problems' expert demos (a Ray Train job); its result
        is the starting policy. A resumed run finds it already in the run folder."""
        cfg = self.cfg
        if cfg.sft.steps > 0:
            out = self.run_dir / "sft_policy"
            if not (out / "config.json").is_file():
                task = build_task(cfg.data.task, **task_kwargs(cfg))
                pairs = [(task.format_prompt(p), demo) for p in self.train_problems for demo in p.demos]
                tmp = self.run_dir / ".tmp-sft_policy"
                job = SupervisedJob(
                    init_dir=self.paths.policy, out_dir=str(tmp), pairs=pairs, steps=cfg.sft.steps,
                    batch_size=cfg.sft.batch_size, lr=cfg.sft.lr, seed=cfg.seed, threads=self.threads["sft"].num_threads,
                    chat_template=cfg.data.chat_template, dtype=cfg.model.dtype, label="sft",
                )
                self.log(f"supervised stage: {cfg.sft.steps} steps x {cfg.sft.batch_size} on {len(pairs)} expert demos (Ray Train job)")
                # On the policy learner's ranks and GPUs, when the config gives them.
                metrics = run_supervised_job(job, self.run_dir, name="sft", num_workers=cfg.policy.num_workers,
                                             num_cpus=cfg.sft.num_cpus, num_gpus=cfg.policy.num_gpus)
                publish_dir(tmp, out)
                self.history["sft"] = metrics
                self.log(f"supervised stage done: loss {metrics['loss']:.3f}, {metrics['wall_s']:.0f} s -> {out}")
            self.paths.policy = str(out)
        atomic_write_json(self.run_dir / "paths.json", dataclasses.asdict(self.paths))

    def _setup_ray(self) -> None:
        # A private Ray starts after the one-shot jobs above, which ran in a Ray of their own.
        self.started_ray = init_ray(self.cfg, self.log)
        self.memory = MemoryMonitor(whole_node=not self.started_ray)

    def _setup_actors(self) -> None:
        """The rollout workers first (the base evaluation needs them); the learners start while
        they load, and the first call to a learner group waits for it."""
        cfg, paths = self.cfg, self.paths
        t0 = time.time()
        common = dict(dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code)
        learner_common = dict(common, compute_dtype=cfg.model.compute_dtype, seed=cfg.seed)
        worker_kwargs = dict(chat_template=cfg.data.chat_template, max_prompt_tokens=cfg.data.max_prompt_tokens,
                             task_kwargs=task_kwargs(cfg), **common)
        if not self.joined_ray and (note := rollout_engines_note(cfg, weight_bytes(paths.policy))):
            self.log(note)  # one machine: its engines share its memory bandwidth
        if self.given_rollout is not None:
            given = self.given_rollout
            same = {k: v for k, v in given.worker_kwargs.items() if k != "seed"} == worker_kwargs
            if given.cfg != cfg.rollout or given.task_name != cfg.data.task or not same:
                raise ValueError("rollout workers can be reused only by a run with the same rollout section, task, "
                                 "prompt encoding and dtype")
            self.rollout = given
            self.rollout.on_event = self._event
            self.rollout.reset(paths.policy, cfg.model.dtype)
        else:
            self.rollout = RolloutGroup(cfg.rollout, paths.policy, cfg.data.task, on_event=self._event, wait=False,
                                        threads=self.threads["rollout"], seed=cfg.seed, **worker_kwargs)
        self.policy = PolicyLearnerGroup(
            cfg.policy, paths.policy, advantage=cfg.advantage, samples_per_prompt=cfg.rollout.samples_per_prompt,
            temperature=cfg.rollout.temperature, ref_path=paths.ref, oracle_process_reward=cfg.prm.kind == "oracle",
            threads=self.threads["policy"], **learner_common,
        )
        if has_prm_learner(cfg):
            self.prm = PRMLearnerGroup(cfg.prm, cfg.irl, paths.prm, ref_path=paths.ref, threads=self.threads["prm"],
                                       **learner_common)
        self.rollout.wait_ready()
        self.log(f"rollout workers ready in {time.time() - t0:.1f} s: {cfg.rollout.num_workers} x vLLM; learners "
                 f"starting: policy x {cfg.policy.num_workers}" + (f", PRM ({cfg.prm.kind}) x {cfg.prm.num_workers}" if self.prm else ""))

    def _event(self, kind: str, info: dict) -> None:
        """What the rollout group reports during set-up (a worker replaced), recorded as the loop
        records it, under the iteration the loop starts from; the loop then takes this over."""
        self.log(f"event: {kind} {info}")
        self.metrics.event(int((self.resumed or {}).get("iteration", 0)), kind, info)

    def _setup_resume(self, ckpt: Path) -> None:
        """From a checkpoint that check_checkpoint has passed: the learners' weights, optimizer
        shards and RNGs, the prompt streams' positions, (pipelined) the batch sampled ahead, and
        the policy's weights in the rollout workers; records of iterations after it are dropped,
        as they run again. The loop takes its own position from `resumed`."""
        state = self.resumed
        self.pending = load_checkpoint(ckpt, state, policy=self.policy, prm=self.prm, rollout=self.rollout)
        self.stream.load_state(state["data"])
        if self.curriculum_stream is not None and state.get("curriculum_data"):
            self.curriculum_stream.load_state(state["curriculum_data"])
        self.metrics.truncate_after(int(state["iteration"]))
        # The rollout workers start from the checkpoint's policy (pipelined: behind the batch sampled ahead).
        self.policy_version = self.policy.push_weights(self.rollout, wait=not self.cfg.pipeline.off_policy_steps)
        self.log(f"resumed from {ckpt} at iteration {state['iteration']}")

    def shutdown(self, keep_rollout: bool = False) -> None:
        """Stop the actors (and a Ray this process started). keep_rollout: leave the rollout
        workers running for another run to reuse (they were given to this one, or it was asked)."""
        keep = keep_rollout or self.given_rollout is not None
        for group in (self.rollout, self.policy, self.prm):
            if group is not None and not (keep and group is self.rollout):
                group.shutdown()
        stop_ray(self.started_ray, self.joined_ray)
