"""The checks made before anything starts: whether the roles fit on the cluster, whether a
checkpoint can be resumed from, which checkpoint `--resume` means, and config files that compose."""

import json

import pytest

from repirl_ray.config import ConfigError, load_config
from repirl_ray.learners.common import checkpoint_files
from repirl_ray.checkpoints import CheckpointError, check_checkpoint, resume_target
from repirl_ray.run_setup import check_fits, new_run_dir, object_store_size, resolve_rollout_workers, role_demands


def test_default_roles_fit_on_two_cores():
    cfg = resolve_rollout_workers(load_config(None, []), 2, log_fn=lambda _: None)
    # 2 rollout workers (auto, for the 0.8M world's policy), 1 policy rank, 1 PRM rank at 0.5 CPU each.
    assert cfg.rollout.num_workers == 2
    check_fits(role_demands(cfg), [{"CPU": 2.0}], {"policy": True, "prm": True})


def test_too_many_learner_ranks_is_one_line_naming_the_key_and_resources():
    cfg = load_config(None, ["rollout.num_workers=2", "policy.num_workers=4"])
    with pytest.raises(ConfigError) as err:
        check_fits(role_demands(cfg), [{"CPU": 2.0}], {"policy": True, "prm": True})
    msg = str(err.value)
    assert "\n" not in msg
    assert "policy.num_workers" in msg and "4 x {CPU: 0.5}" in msg and "CPU 2" in msg


def test_packed_group_must_fit_one_node_but_spread_may_span_nodes():
    cfg = load_config(None, ["rollout.num_workers=2", "policy.num_workers=2", "policy.num_cpus=1", "rollout.num_cpus=0.25",
                             "prm.num_cpus=0.25"])
    nodes = [{"CPU": 1.5}, {"CPU": 1.5}]
    with pytest.raises(ConfigError, match="policy.num_workers.*packed on one node.*policy.placement=spread"):
        check_fits(role_demands(cfg), nodes, {"policy": True, "prm": True})
    check_fits(role_demands(cfg), nodes, {"policy": False, "prm": True})  # one rank per node fits


def test_custom_resources_are_placed_on_the_nodes_that_offer_them():
    cfg = load_config(None, ["rollout.num_workers=2", "rollout.resources={rollout: 1}", "policy.resources={learner: 1}",
                             "prm.resources={learner: 1}", "policy.num_workers=2"])
    rollout_node = {"CPU": 1.0, "rollout": 2.0}
    learner_node = {"CPU": 1.5, "learner": 3.0}
    check_fits(role_demands(cfg), [rollout_node, learner_node], {"policy": True, "prm": True})
    # Only 2 'learner' slots for 3 learner ranks.
    with pytest.raises(ConfigError, match=r"ask for learner 3 in all .* the cluster has learner 2"):
        check_fits(role_demands(cfg), [rollout_node, {"CPU": 1.5, "learner": 2.0}], {"policy": True, "prm": True})
    # Enough slots in all, but the packed policy group's two ranks are on no single node together.
    with pytest.raises(ConfigError, match="'policy.num_workers': 2 ranks packed on one node"):
        check_fits(role_demands(cfg), [rollout_node] + [{"CPU": 1.0, "learner": 1.0}] * 3,
                   {"policy": True, "prm": True})


def _checkpoint(tmp_path, ranks=1, prm=True):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("{}\n")
    ckpts = []
    for it in (2, 4):
        ckpt = run / "checkpoints" / f"iter_{it:06d}"
        for role in ("policy", "prm") if prm else ("policy",):
            for rel in checkpoint_files(ranks) + (["prm.json"] if role == "prm" else []):
                (ckpt / role / rel).parent.mkdir(parents=True, exist_ok=True)
                (ckpt / role / rel).write_text("x")
        state = {"iteration": it, "data": {"epoch": 0, "position": 8 * it}, "history": {}, "wall_s": 1.0,
                 "ranks": {"policy": ranks, **({"prm": ranks} if prm else {})}}
        (ckpt / "trainer_state.json").write_text(json.dumps(state))
        ckpts.append(ckpt)
    (run / "checkpoints" / "latest").write_text("iter_000004\n")
    return run, ckpts


def test_a_complete_checkpoint_passes(tmp_path):
    run, (_, newest) = _checkpoint(tmp_path)
    state = check_checkpoint(newest, load_config(None, []))
    assert state["iteration"] == 4


def test_truncated_trainer_state_names_the_file_and_the_older_checkpoint(tmp_path):
    run, (older, newest) = _checkpoint(tmp_path)
    path = newest / "trainer_state.json"
    path.write_text(path.read_text()[:20])
    with pytest.raises(CheckpointError) as err:
        check_checkpoint(newest, load_config(None, []))
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "not valid JSON" in msg
    assert f"--resume {older}" in msg
    # ...and naming that older checkpoint is what --resume takes.
    assert resume_target(str(older)) == (run, older)
    assert check_checkpoint(older, load_config(None, []))["iteration"] == 2


@pytest.mark.parametrize("missing", ["policy/model.safetensors", "prm/config.json", "prm/prm.json",
                                     "policy/optimizer/rank_0.pt"])
def test_a_missing_weights_or_state_file_is_named(tmp_path, missing):
    run, (_, newest) = _checkpoint(tmp_path)
    (newest / missing).unlink()
    with pytest.raises(CheckpointError, match=f"{newest / missing} is missing"):
        check_checkpoint(newest, load_config(None, []))


def test_every_rank_file_is_required(tmp_path):
    run, (_, newest) = _checkpoint(tmp_path, ranks=2)
    cfg = load_config(None, ["policy.num_workers=2", "prm.num_workers=2"])
    check_checkpoint(newest, cfg)
    per_rank = [f for f in checkpoint_files(2) if f not in checkpoint_files(1)]
    assert per_rank == ["optimizer/rank_1.pt"]  # the sharded optimizer state: one file per rank
    (newest / "policy" / per_rank[0]).unlink()
    with pytest.raises(CheckpointError, match="rank_1.pt is missing"):
        check_checkpoint(newest, cfg)


def test_a_rank_count_that_differs_from_the_run_is_named(tmp_path):
    run, (_, newest) = _checkpoint(tmp_path, ranks=2)
    with pytest.raises(CheckpointError) as err:
        check_checkpoint(newest, load_config(None, []))  # policy.num_workers = 1
    assert "saved by 2 rank(s)" in str(err.value) and "policy.num_workers=2" in str(err.value)


def test_resume_target_of_a_run_folder_and_of_a_missing_checkpoint(tmp_path):
    run, _ = _checkpoint(tmp_path)
    assert resume_target(str(run)) == (run, None)
    with pytest.raises(CheckpointError, match="iter_000002, iter_000004"):
        resume_target(str(run / "checkpoints" / "iter_000003"))
    with pytest.raises(FileNotFoundError, match="no config.yaml"):
        resume_target(str(tmp_path / "elsewhere"))


def test_new_run_dir_creates_nothing(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path / 'r'}"])
    assert new_run_dir(cfg) == tmp_path / "r" and not (tmp_path / "r").exists()


def test_config_files_compose_in_order_then_overrides(tmp_path):
    gpu = tmp_path / "gpu.yaml"
    gpu.write_text("model:\n  compute_dtype: bfloat16\npolicy:\n  lr: 5.0e-7\n  num_workers: 4\nadvantage:\n  c_process: 0.05\n")
    mode = tmp_path / "mode.yaml"
    mode.write_text("prm:\n  kind: none\nadvantage:\n  c_process: 0.0\n")
    cfg = load_config([str(gpu), str(mode)], ["policy.lr=1e-6"])
    assert cfg.model.compute_dtype == "bfloat16" and cfg.policy.num_workers == 4  # from the first file
    assert cfg.prm.kind == "none" and cfg.advantage.c_process == 0.0  # the later file wins
    assert cfg.policy.lr == 1e-6  # key=value last
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config([str(gpu), str(tmp_path / "nope.yaml")])


def test_curriculum_keys_are_checked():
    with pytest.raises(ConfigError, match="data.curriculum_iterations"):
        load_config(None, ["data.curriculum_path=easy.jsonl"])
    with pytest.raises(ConfigError, match="data.curriculum_iterations"):
        load_config(None, ["data.curriculum_iterations=-1"])
    cfg = load_config(None, ["data.world_split=hard_train", "data.curriculum_iterations=5"])
    assert cfg.data.curriculum_iterations == 5 and cfg.data.curriculum_path == ""


def test_cli_stops_before_anything_starts_on_a_damaged_checkpoint(tmp_path, capsys):
    from repirl_ray.cli import main

    run, (older, newest) = _checkpoint(tmp_path)
    (newest / "trainer_state.json").write_text('{"iteration": 4, "da')  # truncated
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "trainer_state.json is not valid JSON" in err and str(older) in err


def test_cli_stops_on_ranks_the_machine_cannot_place_and_leaves_no_run_folder(tmp_path, capsys):
    from repirl_ray.cli import main

    run_dir = tmp_path / "run"
    assert main(["train", "policy.num_workers=8", f"run_dir={run_dir}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "policy.num_workers" in err and "the cluster has CPU" in err
    assert not run_dir.exists()
    assert main(["train", "data.train_path=/nonexistent/train.jsonl", "data.eval_path=/nonexistent/eval.jsonl",
                 f"run_dir={run_dir}"]) == 2
    assert "not found" in capsys.readouterr().err and not run_dir.exists()


def test_the_object_store_holds_two_weight_pushes_below_rays_spilling_threshold():
    mib, gib = 2**20, 2**30
    # The built-in world's 0.8M policy (3 MB a push): the 1 GiB floor.
    assert object_store_size("auto", 3 * mib) == (gib, "1.00 GiB (ray.object_store_gib=auto: two weight pushes of 3 MiB)")
    # 123M in float32, 468 MiB a push: (2 x 468 + 256) / 0.8 = 1490 MiB, up to the next 1/4 GiB.
    size, line = object_store_size("auto", 468 * mib)
    assert size == int(1.5 * gib) and "two weight pushes of 468 MiB" in line
    assert object_store_size("auto", None) == (gib, "1.00 GiB (ray.object_store_gib=auto: policy size unknown before loading)")
    # A number is the user's: used as given, with a warning where pushes will spill.
    size, line = object_store_size(1.0, 468 * mib)
    assert size == gib and "WARNING" in line and "pushes will be written to disk" in line and ">= 1.50" in line
    assert object_store_size(2, 468 * mib) == (2 * gib, "2.00 GiB (ray.object_store_gib)")


@pytest.mark.parametrize("value", ["0", "-1", "big", "true"])
def test_an_object_store_size_that_is_neither_auto_nor_positive_names_the_key(value):
    with pytest.raises(ConfigError, match="ray.object_store_gib"):
        load_config(None, [f"ray.object_store_gib={value}"])


@pytest.mark.parametrize("value, want", [("16", 16), ("2.0", 2.0), ("auto", "auto")])
def test_an_object_store_size_in_whole_or_fractional_gib_or_auto_is_taken_as_given(value, want):
    assert load_config(None, [f"ray.object_store_gib={value}"]).ray.object_store_gib == want
