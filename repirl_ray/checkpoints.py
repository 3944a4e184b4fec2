"""A run's checkpoints: what one holds, how it is written (atomically), checked and read back,
and which one `--resume` means.

runs/<run>/checkpoints/iter_NNNNNN/ holds policy/ and prm/ in HF format with their optimizer and
RNG states (one optimizer shard per rank), trainer_state.json (the loop's position: iteration,
prompt streams, history, wall time, policy version, ranks), and in the pipelined loop pending/,
the batch already sampled for the next iteration, so that a resume neither loses nor repeats it.
A checkpoint is written under a temporary name and renamed, then `latest` is switched, so a
crash leaves the previous checkpoint as the newest complete one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from repirl_ray.config import TrainConfig, has_prm_learner
from repirl_ray.learners.common import checkpoint_files
from repirl_ray.utils import atomic_write_json, atomic_write_text, publish_dir

CHECKPOINTS = "checkpoints"
LATEST = "latest"
TRAINER_STATE = "trainer_state.json"
PENDING = "pending"  # a checkpoint's batch sampled ahead by the pipelined loop


class CheckpointError(FileNotFoundError):
    """A checkpoint that cannot be resumed from: the message names the file and what to do."""


def learner_ranks(cfg: TrainConfig) -> dict[str, int]:
    """Ranks of each learner group of the run (a checkpoint holds one optimizer shard per rank)."""
    ranks = {"policy": cfg.policy.num_workers}
    if has_prm_learner(cfg):
        ranks["prm"] = cfg.prm.num_workers
    return ranks


def trainer_state(cfg: TrainConfig, *, iteration: int, streams: tuple, history: dict, wall_s: float,
                  policy_version: int, pending: bool) -> dict:
    """trainer_state.json: the loop's position. streams: (the prompt stream, the curriculum's
    stream or None); pending: whether the checkpoint holds a batch sampled ahead."""
    stream, curriculum_stream = streams
    return {
        "iteration": iteration,
        "data": stream.state(),
        "curriculum_data": curriculum_stream.state() if curriculum_stream else None,
        "history": history,
        "wall_s": wall_s,
        "policy_version": policy_version,
        "ranks": learner_ranks(cfg),
        "pending": pending,
    }


def save_checkpoint(run_dir: Path, iteration: int, trainer_state, *, policy, prm, rollout, pending, keep_last: int,
                    log_fn=print) -> Path:
    """Write checkpoint iter_<iteration> of the run: the learner groups' save (policy, prm or
    None), the sampled batch `pending` (or None) through the rollout group, then trainer_state()
    as trainer_state.json (called once the rest is written, so its wall time counts the save);
    publish it, switch `latest`, and keep the newest `keep_last`."""
    ckpt_root = Path(run_dir) / CHECKPOINTS
    name = f"iter_{iteration:06d}"
    tmp = ckpt_root / f".tmp-{name}"
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        policy.save(str(tmp / "policy"))
        if prm is not None:
            prm.save(str(tmp / "prm"))
        if pending is not None:
            rollout.save_sampled(pending, tmp / PENDING)
    except BaseException:
        # A half-written checkpoint is never published; remove it so only complete ones remain.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_json(tmp / TRAINER_STATE, trainer_state())
    publish_dir(tmp, ckpt_root / name)
    atomic_write_text(ckpt_root / LATEST, name + "\n")
    kept = sorted(p for p in ckpt_root.glob("iter_*") if p.is_dir())
    for old in kept[: max(0, len(kept) - keep_last)]:
        shutil.rmtree(old, ignore_errors=True)
    log_fn(f"checkpoint: {ckpt_root / name}")
    return ckpt_root / name


def load_checkpoint(ckpt: Path, state: dict, *, policy, prm, rollout):
    """Weights, optimizer shards and RNGs into the learner groups, from a checkpoint that
    check_checkpoint has passed; returns the batch sampled ahead (in the object store again), or
    None when the checkpoint holds none."""
    policy.load(str(ckpt / "policy"))
    if prm is not None:
        prm.load(str(ckpt / "prm"))
    return rollout.load_sampled(ckpt / PENDING) if state.get("pending") else None


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
    for role, ranks in learner_ranks(cfg).items():
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
