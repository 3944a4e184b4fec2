"""The default world's base policy shipped with the package (repirl_ray/assets/): it belongs to the
default WorldConfig, its files match its manifest, an empty cache uses it without a warm-up, and
`--rebuild` warms up instead. The tiny world of conftest.py covers a non-default world's build."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from repirl_ray import world as W
from repirl_ray.config import WorldConfig, load_config
from repirl_ray.world import REFRESH_COMMAND, AssetError, asset_dir, check_asset, ensure_world, export_asset, world_key

# A world that warms up in a few seconds in this process.
FAST_WORLD = [
    "world.num_train=256", "world.num_eval=16", "world.num_hard_train=16", "world.num_hard_eval=16",
    "world.hidden_size=32", "world.num_layers=1", "world.num_heads=1", "world.intermediate_size=64",
    "world.warmup_steps=3", "world.warmup_batch_size=8",
]


def _source(paths) -> str:
    return json.loads((paths.root / "world.json").read_text())["base_policy"]["source"]


def test_the_shipped_asset_is_the_default_worlds():
    shipped = sorted(p.name for p in W.ASSETS.glob("world-*"))
    expected = asset_dir(WorldConfig()).name
    assert shipped == [expected], (
        f"repirl_ray/assets holds {shipped}, but the default WorldConfig's key is {expected}: the defaults or "
        f"WORLD_FORMAT changed without a new shipped base policy. Run `{REFRESH_COMMAND}` (or `make world-asset`) "
        "and commit repirl_ray/assets/"
    )
    # `repirl train` with no config reaches the same key.
    assert world_key(load_config(None, []).world) == world_key(WorldConfig())


def test_the_shipped_asset_matches_its_manifest():
    manifest = check_asset(asset_dir(WorldConfig()))  # sha256 of every file, tokenizer = a fresh one
    assert manifest["key"] == world_key(WorldConfig())
    config = {k: v for k, v in dataclasses.asdict(WorldConfig()).items() if k not in ("dir", "warmup_threads")}
    assert manifest["config"] == config
    assert set(manifest["files"]) >= {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    assert manifest["warmup"]["steps"] == WorldConfig().warmup_steps


def test_a_damaged_asset_is_refused(tmp_path):
    asset = tmp_path / asset_dir(WorldConfig()).name
    shutil.copytree(asset_dir(WorldConfig()), asset)
    weights = asset / "base_policy" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(AssetError, match="model.safetensors does not have the sha256"):
        check_asset(asset)


def test_a_changed_tokenizer_is_refused(monkeypatch):
    import repirl_ray.models.tiny as tiny
    import repirl_ray.world as world

    build = tiny.build_char_tokenizer
    monkeypatch.setattr(world, "build_char_tokenizer", lambda: build(tiny.WORLD_CHARS + "/"))  # as world.py calls it
    with pytest.raises(AssetError, match="tokenizer .* differs from a freshly built one in its vocabulary"):
        check_asset(asset_dir(WorldConfig()))


def test_the_default_world_in_an_empty_cache_uses_the_shipped_policy(tmp_path, monkeypatch):
    import repirl_ray.actors.supervised as supervised
    import repirl_ray.learners.sft as sft

    def no_warmup(*args, **kwargs):
        raise AssertionError("the default world warmed up although its base policy is shipped")

    monkeypatch.setattr(sft, "sft_job", no_warmup)
    monkeypatch.setattr(supervised, "run_supervised_job", no_warmup)
    cfg = WorldConfig(dir=str(tmp_path))
    paths = ensure_world(cfg, use_ray_train=False, log=lambda *_: None)
    info = json.loads((paths.root / "world.json").read_text())
    manifest = json.loads((asset_dir(cfg) / W.MANIFEST).read_text())
    assert info["base_policy"]["source"] == "shipped"
    assert info["warmup"] == manifest["warmup"]
    assert W._sha256(paths.base_policy / "model.safetensors") == manifest["files"]["model.safetensors"]
    # The data is generated from the seed, as for every world.
    assert sum(1 for _ in paths.train.open()) == cfg.num_train
    assert sum(1 for _ in paths.eval.open()) == cfg.num_eval


def test_rebuild_warms_up_and_export_ships_the_result(tmp_path, monkeypatch):
    """A small world through the maintainers' path: rebuild, export, an empty cache takes the
    exported policy, a damaged one is refused with a message and a warm-up runs instead, and
    --rebuild ignores the shipped one."""
    monkeypatch.setattr(W, "ASSETS", tmp_path / "assets")
    cfg = load_config(None, FAST_WORLD + [f"world.dir={tmp_path / 'cache1'}"]).world
    built = ensure_world(cfg, use_ray_train=False, rebuild=True, log=lambda *_: None)
    assert _source(built) == "warm-up"
    (W.ASSETS / "world-0000000000").mkdir(parents=True)  # a stale one, e.g. before a defaults change
    asset = export_asset(cfg, built, W.ASSETS)
    assert asset == asset_dir(cfg)
    assert [p.name for p in W.ASSETS.iterdir()] == [asset.name]

    fresh = ensure_world(dataclasses.replace(cfg, dir=str(tmp_path / "cache2")), use_ray_train=False, log=lambda *_: None)
    assert _source(fresh) == "shipped"
    assert (fresh.base_policy / "model.safetensors").read_bytes() == (built.base_policy / "model.safetensors").read_bytes()

    again = ensure_world(dataclasses.replace(cfg, dir=str(tmp_path / "cache2")), use_ray_train=False, rebuild=True, log=lambda *_: None)
    assert _source(again) == "warm-up"

    (asset / "base_policy" / "config.json").write_text("{}")
    lines = []
    damaged = ensure_world(dataclasses.replace(cfg, dir=str(tmp_path / "cache3")), use_ray_train=False, log=lines.append)
    assert _source(damaged) == "warm-up"
    assert any("shipped base policy is not used" in line and "config.json" in line for line in lines)
