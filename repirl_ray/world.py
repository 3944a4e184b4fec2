"""The built-in world (DESIGN.md section 4), built once and cached: data splits, tokenizer, a
tiny Qwen2 model, and a base policy from a short supervised warm-up on noisy solutions.

The default world's base policy ships with the package (repirl_ray/assets/world-<key>/): the
warm-up takes 2.5-8 minutes on two cores, and its result differs between machines (threaded float
sums), so shipping it makes the demo start at once and its numbers the same everywhere. The data
splits are still generated from the seed (under a second). Any other world config, and
`repirl make-world --rebuild`, warms up as before; `--rebuild --export-asset` refreshes the
shipped policy (maintainers).

The warm-up is a one-shot supervised job, so it runs as a Ray Train TorchTrainer job (DESIGN.md
section 5); the repeated RL loop uses long-lived actors instead. The folder is written under a
temporary name and renamed when complete, and a lock keeps two processes from building it at once.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import math
import os
import platform
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer

from repirl_ray.actors.supervised import run_supervised_job
from repirl_ray.config import WorldConfig
from repirl_ray.data.reading import write_jsonl
from repirl_ray.learners.sft import SupervisedJob, sft_job
from repirl_ray.models.tiny import SPECIALS, WORLD_CHARS, build_char_tokenizer, build_tiny_qwen2
from repirl_ray.tasks.arithmetic import ArithmeticSpec, make_split, make_splits, noisy_solution
from repirl_ray.utils import atomic_write_json, default_cache_dir, publish_dir

# Fields that change how the world is built (not where or with how many threads).
_NOT_IN_KEY = ("dir", "warmup_threads")
# 3: the base policy may come from the shipped asset; caches of format 2 hold a policy warmed up
# on the machine that built them, so the demo's numbers would differ from the shipped one's.
WORLD_FORMAT = 3

# The shipped base policies: world-<key>/manifest.json and world-<key>/base_policy/.
ASSETS = Path(__file__).parent / "assets"
MANIFEST = "manifest.json"
REFRESH_COMMAND = "repirl make-world --rebuild --export-asset"  # or `make world-asset`


class AssetError(ValueError):
    """A shipped base policy that cannot be used: its files or tokenizer differ from its manifest
    or from a freshly built tokenizer."""


@dataclass
class WorldPaths:
    root: Path
    base_policy: Path
    train: Path
    eval: Path
    hard_train: Path
    hard_eval: Path

    @classmethod
    def at(cls, root: Path) -> "WorldPaths":
        return cls(
            root, root / "base_policy", root / "train.jsonl", root / "eval.jsonl",
            root / "hard_train.jsonl", root / "hard_eval.jsonl",
        )

    def split(self, name: str) -> Path:
        return {"train": self.train, "eval": self.eval, "hard_train": self.hard_train}[name]


def world_key(cfg: WorldConfig) -> str:
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_IN_KEY}
    fields["format"] = WORLD_FORMAT
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


def policy_parameters(cfg: WorldConfig) -> int:
    """The parameters of the world's policy (build_tiny_qwen2: tied embeddings, q/k/v biases), known
    before the world is built: vocabulary x hidden, per layer 4 hidden^2 + 3 hidden (q, k, v, o and
    biases) + 3 hidden x intermediate (MLP) + 2 hidden (norms), and the final norm."""
    h, vocab = cfg.hidden_size, len(SPECIALS) + len(WORLD_CHARS)
    return vocab * h + cfg.num_layers * (4 * h * h + 3 * h + 3 * h * cfg.intermediate_size + 2 * h) + h


def world_root(cfg: WorldConfig) -> Path:
    base = Path(cfg.dir).expanduser() if cfg.dir else default_cache_dir()
    return base / f"world-{world_key(cfg)}"


def asset_dir(cfg: WorldConfig) -> Path:
    """Where the package ships this world's base policy (it exists for the default world only)."""
    return ASSETS / f"world-{world_key(cfg)}"


def ensure_world(cfg: WorldConfig, *, use_ray_train: bool = True, rebuild: bool = False, log=print) -> WorldPaths:
    """The world's paths, building it first when it is not cached yet. rebuild: build it again,
    warm-up included, even when it is cached or its base policy is shipped."""
    root = world_root(cfg)
    paths = WorldPaths.at(root)
    if not rebuild and (root / "world.json").is_file():
        return paths
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second builder waits, then finds it built
        if rebuild or not (root / "world.json").is_file():
            build_world(cfg, root, use_ray_train=use_ray_train, use_asset=not rebuild, log=log)
    return paths


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tokenizer_difference(folder: Path) -> str | None:
    """What differs between the tokenizer saved in folder and a freshly built one, or None."""
    fresh, saved = build_char_tokenizer(), AutoTokenizer.from_pretrained(folder)
    if saved.get_vocab() != fresh.get_vocab():
        return "its vocabulary"
    for name in ("pad_token", "bos_token", "eos_token", "unk_token"):
        if getattr(saved, name) != getattr(fresh, name):
            return f"its {name} ({getattr(saved, name)!r} against {getattr(fresh, name)!r})"
    sample = "7+5*8-5:7+5=12;12*8=96;96-5=91;#91" + WORLD_CHARS
    ids = fresh(sample).input_ids
    if saved(sample).input_ids != ids:
        return f"its encoding of {sample!r}"
    if saved.decode(ids, skip_special_tokens=True) != fresh.decode(ids, skip_special_tokens=True):
        return "its decoding"
    return None


def check_asset(asset: Path) -> dict:
    """The manifest of a shipped base policy, after checking that every file has the sha256 its
    manifest gives and the tokenizer equals a freshly built one; AssetError says what differs."""
    manifest = json.loads((asset / MANIFEST).read_text())
    if f"world-{manifest['key']}" != asset.name:
        raise AssetError(f"{asset / MANIFEST} gives the world key {manifest['key']}, the folder's name another")
    folder = asset / "base_policy"
    on_disk = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if on_disk != sorted(manifest["files"]):
        raise AssetError(f"{folder} holds {on_disk}, its manifest lists {sorted(manifest['files'])}")
    for name, digest in manifest["files"].items():
        if _sha256(folder / name) != digest:
            raise AssetError(f"{folder / name} does not have the sha256 of its manifest (a damaged install?)")
    difference = _tokenizer_difference(folder)
    if difference is not None:
        raise AssetError(f"the tokenizer in {folder} differs from a freshly built one in {difference}")
    return manifest


def machine_info() -> dict:
    cpu = platform.processor()
    try:  # the model name says more than "x86_64"
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def build_world(cfg: WorldConfig, root: Path, *, use_ray_train: bool = True, use_asset: bool = True, log=print) -> None:
    """Data splits from the seed; the base policy from the shipped asset when use_asset and one
    exists for this config (and passes check_asset), otherwise from a warm-up run here."""
    t0 = time.time()
    tmp = root.with_name(root.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    paths = WorldPaths.at(tmp)
    log(f"building the built-in world in {root} (once; cached after)")

    spec = ArithmeticSpec(cfg.min_ops, cfg.max_ops, cfg.max_start, cfg.max_operand, cfg.modulus)
    hard_spec = ArithmeticSpec(cfg.hard_min_ops, cfg.hard_max_ops, cfg.max_start, cfg.max_operand, cfg.modulus)
    splits = make_splits(cfg.seed, cfg.num_train, cfg.num_eval, cfg.num_hard_eval, spec, hard_spec)
    # Hard training problems: longer chains, none equal to a hard-eval prompt.
    hard_train = make_split(f"{cfg.seed}/hard_train", cfg.num_hard_train, hard_spec,
                            exclude={p.prompt for p in splits.hard}, prefix="hard-train-")
    write_jsonl(str(paths.train), splits.train)
    write_jsonl(str(paths.eval), splits.eval)
    write_jsonl(str(paths.hard_train), hard_train)
    write_jsonl(str(paths.hard_eval), splits.hard)
    log(f"  data: {len(splits.train)} train, {len(splits.eval)} eval, {len(hard_train)} hard-train, "
        f"{len(splits.hard)} hard-eval problems (draws excluded as already in a held-out split: {splits.excluded})")

    asset = asset_dir(cfg)
    if use_asset and asset.is_dir():
        try:
            manifest = check_asset(asset)
        except AssetError as err:
            log(f"  the shipped base policy is not used: {err}; warming one up instead (refresh the shipped "
                f"one with `{REFRESH_COMMAND}`)")
        else:
            shutil.copytree(asset / "base_policy", paths.base_policy)
            log(f"  base policy: shipped with the package ({asset}), warmed up on {manifest['machine']['cpu']}; "
                f"`repirl make-world --rebuild` warms one up here instead")
            _publish(cfg, tmp, root, t0, manifest["warmup"], manifest["num_parameters"], {
                "source": "shipped", "asset": str(asset), "sha256": manifest["files"]["model.safetensors"],
                "built_on": manifest["machine"], "built_at": manifest["built_at"],
            }, log)
            return

    tokenizer = build_char_tokenizer()
    init_dir = tmp / "init_policy"
    model = build_tiny_qwen2(
        len(tokenizer), cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size, seed=cfg.seed
    )
    model.save_pretrained(init_dir)
    tokenizer.save_pretrained(init_dir)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"  model: Qwen2, hidden {cfg.hidden_size}, {cfg.num_layers} layers, {cfg.num_heads} heads, "
        f"{n_params / 1e6:.2f} M parameters, vocabulary {len(tokenizer)}")

    # Warm-up data: fresh noise for every pass over the training problems.
    rng = random.Random(f"{cfg.seed}/warmup")
    passes = max(1, math.ceil(cfg.warmup_steps * cfg.warmup_batch_size / max(1, len(splits.train))))
    pairs = [
        (p.prompt, noisy_solution(rng, p, spec, cfg.step_error_prob, cfg.max_error))
        for _ in range(passes)
        for p in splits.train
    ]
    job = SupervisedJob(
        init_dir=str(init_dir), out_dir=str(paths.base_policy), pairs=pairs, steps=cfg.warmup_steps,
        batch_size=cfg.warmup_batch_size, lr=cfg.warmup_lr, seed=cfg.seed, threads=cfg.warmup_threads, label="warm-up",
    )
    log(f"  warm-up: {cfg.warmup_steps} steps x {cfg.warmup_batch_size} noisy solutions "
        f"(step error {cfg.step_error_prob}), lr {cfg.warmup_lr}" + (" as a Ray Train job" if use_ray_train else ""))
    if use_ray_train:
        metrics = run_supervised_job(job, tmp, name="world-warmup")
    else:
        metrics = sft_job(job)
    shutil.rmtree(init_dir)
    _publish(cfg, tmp, root, t0, metrics, n_params, {"source": "warm-up", "machine": machine_info()}, log)


def _publish(cfg: WorldConfig, tmp: Path, root: Path, t0: float, warmup: dict, n_params: int, base_policy: dict, log) -> None:
    """world.json, then the folder renamed into place. base_policy says where the policy came from."""
    atomic_write_json(
        tmp / "world.json",
        {
            "config": dataclasses.asdict(cfg),
            "key": world_key(cfg),
            "warmup": warmup,
            "num_parameters": n_params,
            "base_policy": base_policy,
            "build_s": round(time.time() - t0, 1),
        },
    )
    publish_dir(tmp, root)
    log(f"  world ready in {time.time() - t0:.1f} s: {root}")


def export_asset(cfg: WorldConfig, paths: WorldPaths, assets: Path = ASSETS) -> Path:
    """For maintainers: copy a world's warmed-up base policy into the package as the shipped one
    (assets/world-<key>/), with a manifest: the key and config it was built from, the warm-up's
    metrics, the machine and library versions, and the sha256 of every file. The package ships
    one world's policy: other world-* folders there are removed."""
    info = json.loads((paths.root / "world.json").read_text())
    if info.get("base_policy", {}).get("source") != "warm-up":
        raise ValueError(f"{paths.root} holds no policy warmed up here; export after `repirl make-world --rebuild`")
    key = world_key(cfg)
    tmp = assets / f".tmp-world-{key}"
    shutil.rmtree(tmp, ignore_errors=True)
    # The weights and tokenizer only; sft_metrics.json goes into the manifest.
    shutil.copytree(paths.base_policy, tmp / "base_policy", ignore=shutil.ignore_patterns("sft_metrics.json"))
    files = {p.name: _sha256(p) for p in sorted((tmp / "base_policy").iterdir())}
    config = {k: v for k, v in info["config"].items() if k not in _NOT_IN_KEY}
    atomic_write_json(tmp / MANIFEST, {
        "key": key,
        "world_format": WORLD_FORMAT,
        "config": config,
        "warmup": info["warmup"],
        "num_parameters": info["num_parameters"],
        "warmup_threads": info["config"]["warmup_threads"],
        "machine": info["base_policy"]["machine"],
        "built_at": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime((paths.root / "world.json").stat().st_mtime)),
        "files": files,
        "refresh": REFRESH_COMMAND,
    })
    publish_dir(tmp, assets / f"world-{key}")
    for stale in assets.glob("world-*"):
        if stale.name != f"world-{key}":
            shutil.rmtree(stale)
    return assets / f"world-{key}"
