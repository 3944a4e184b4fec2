"""Run set-up, apart from the loop: where models and data come from, the checks made before
anything starts, Ray, the run folder, and which checkpoint a resume starts from.

Everything here runs before the first actor exists, so a typo, a damaged checkpoint or a request
the cluster cannot place costs a second and one line, not a minute and a traceback. `driver.py`
(training) and `assess.py` (eval, best-of-N) share it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from pathlib import Path

from repirl_ray.config import ConfigError, TrainConfig, has_prm_learner, needs_demos
from repirl_ray.models.packaged import resolve_model
from repirl_ray.models.policy import check_model_path
from repirl_ray.data.dataset import REASONING_GYM, DataReport, check_prompts, read_split
from repirl_ray.data.dataset import task_kwargs as dataset_task_kwargs

CHECKPOINTS = "checkpoints"
LATEST = "latest"
TRAINER_STATE = "trainer_state.json"


class CheckpointError(FileNotFoundError):
    """A checkpoint that cannot be resumed from: the message names the file and what to do."""


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
    import ray

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
    ray.init(
        address="local",
        num_cpus=cfg.ray.num_cpus or None,
        object_store_memory=int(cfg.ray.object_store_gib * 2**30),
        include_dashboard=cfg.ray.include_dashboard,
        log_to_driver=True,
    )
    log_fn(f"started a local Ray: {ray.cluster_resources().get('CPU', 0):.0f} CPUs")
    return True


def role_demands(cfg: TrainConfig) -> dict[str, list[dict[str, float]]]:
    """What each role asks of the cluster: one resource bundle per actor (a learner group's
    ranks are bundles of one placement group)."""

    def bundle(section) -> dict[str, float]:
        out = {"CPU": float(section.num_cpus), **{k: float(v) for k, v in section.resources.items()}}
        if section.num_gpus:
            out["GPU"] = float(section.num_gpus)
        return out

    demands = {"rollout": [bundle(cfg.rollout)] * cfg.rollout.num_workers,
               "policy": [bundle(cfg.policy)] * cfg.policy.num_workers}
    if has_prm_learner(cfg):
        demands["prm"] = [bundle(cfg.prm)] * cfg.prm.num_workers
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

    total = {}
    for n in nodes:
        for k, v in n.items():
            total[k] = total.get(k, 0.0) + v
    asked = {}
    for bundles in demands.values():
        for b in bundles:
            for k, v in b.items():
                asked[k] = asked.get(k, 0.0) + v
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
            group = {}
            for b in bundles:
                for k, v in b.items():
                    group[k] = group.get(k, 0.0) + v
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
                asked = {}
                for bb in bundles:
                    for k, v in bb.items():
                        asked[k] = asked.get(k, 0.0) + v
                raise ConfigError(
                    f"config key '{key_of(role)}': {role} asks for {describe(b, len(bundles))} (with the other "
                    f"roles placed first, actor {i + 1} does not fit); the cluster has "
                    + ", ".join(f"{k} {total.get(k, 0):g}" for k in sorted(asked) if k in offered)
                    + f" in all. Lower {key_of(role)} or the per-actor num_cpus/num_gpus, or add nodes "
                    "(on an autoscaling cluster, bring them up first: min_workers in the cluster YAML)"
                )


def check_cluster_fits(cfg: TrainConfig) -> None:
    """check_fits against the nodes of the running Ray (their total resources)."""
    import ray

    nodes = [
        {k: float(v) for k, v in n["Resources"].items() if not k.startswith("node:") and k not in ("memory", "object_store_memory")}
        for n in ray.nodes() if n.get("Alive")
    ]
    packed = {"policy": cfg.policy.placement == "pack", "prm": cfg.prm.placement == "pack"}
    check_fits(role_demands(cfg), nodes, packed)


# ----------------------------------------------------------------------------------------------
# The run folder and its checkpoints


def new_run_dir(cfg: TrainConfig) -> Path:
    """The run folder's path; not created here (Trainer creates it once the checks pass, so a run
    that fails them leaves no empty folder behind)."""
    if cfg.run_dir:
        path = Path(cfg.run_dir)
        if (path / CHECKPOINTS).exists():
            raise FileExistsError(
                f"run_dir {path} already holds a run; continue it with `repirl train --resume {path}` "
                "or choose another run_dir"
            )
        return path
    return Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / CHECKPOINTS / LATEST
    if not pointer.is_file():
        return None
    path = Path(run_dir) / CHECKPOINTS / pointer.read_text().strip()
    return path if path.is_dir() else None


def resume_target(path: str) -> tuple[Path, Path | None]:
    """`--resume` takes a run folder (its newest checkpoint) or one checkpoint folder in it
    (runs/<run>/checkpoints/iter_NNNNNN: resume from that one, e.g. when the newest is damaged).
    Returns (run folder, the named checkpoint or None)."""
    p = Path(path)
    if p.parent.name == CHECKPOINTS and (p.parent.parent / "config.yaml").is_file():
        if not p.is_dir():
            raise CheckpointError(f"--resume {path}: no such checkpoint folder; the run's checkpoints: "
                                  + ", ".join(sorted(c.name for c in p.parent.glob("iter_*"))))
        return p.parent.parent, p
    if not (p / "config.yaml").is_file():
        raise FileNotFoundError(f"--resume {path}: no config.yaml there; give a run folder (runs/<run>) or one of its "
                                "checkpoints (runs/<run>/checkpoints/iter_NNNNNN)")
    return p, None


def check_checkpoint(ckpt: Path, cfg: TrainConfig) -> dict:
    """Check a checkpoint before any actor starts and return its trainer state. Every problem is a
    CheckpointError naming the file, and how to resume from an older complete checkpoint."""
    from repirl_ray.learners.common import checkpoint_files

    older = sorted(p.name for p in ckpt.parent.glob("iter_*") if p.is_dir() and p.name < ckpt.name)
    hint = (f"; resume from an older complete checkpoint with `repirl train --resume {ckpt.parent / older[-1]}`"
            if older else "; no older checkpoint is left in this run")
    state_path = ckpt / TRAINER_STATE
    try:
        state = json.loads(state_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {ckpt} is incomplete: {state_path} is missing{hint}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint {ckpt} is damaged: {state_path} is not valid JSON ({err}){hint}") from None
    for key in ("iteration", "data", "history"):
        if key not in state:
            raise CheckpointError(f"checkpoint {ckpt} is damaged: {state_path} has no '{key}'{hint}")
    roles = {"policy": cfg.policy.num_workers}
    if has_prm_learner(cfg):
        roles["prm"] = cfg.prm.num_workers
    for role, ranks in roles.items():
        saved = int(state.get("ranks", {}).get(role, 1))
        if saved != ranks:
            raise CheckpointError(
                f"checkpoint {ckpt}: {state_path} says the {role} learner was saved by {saved} rank(s), but "
                f"{role}.num_workers is {ranks}; resume with {role}.num_workers={saved}"
            )
        for rel in checkpoint_files(ranks) + (["prm.json"] if role == "prm" else []):
            f = ckpt / role / rel
            if not f.is_file() or f.stat().st_size == 0:
                raise CheckpointError(f"checkpoint {ckpt} is incomplete: {f} is missing or empty{hint}")
    return state


def machine_info() -> dict:
    import torch

    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
