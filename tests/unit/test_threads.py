"""Thread budgets per role (repirl_ray/threads.py), worked out by hand: each process gets its
role's cores divided among the role's own processes; where the rollout workers sample beside a
learner on the same cores (pipelined loop) they run at idle priority; a number the user gave is kept."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from repirl_ray.config import ConfigError, TrainConfig, load_config
from repirl_ray.models.tiny import build_char_tokenizer, build_tiny_qwen2
from repirl_ray.run_setup import RunSetup, policy_weight_bytes, resolve_rollout_workers
from repirl_ray.threads import (DEFERRED_NOTE, SHARED_OVERLAP_NOTE, RoleThreads, describe_budgets, rollout_engines_note,
                                rollout_workers, samples_beside_updates, thread_budgets, weight_bytes)
from repirl_ray.world import policy_parameters


def cfg(**sections) -> TrainConfig:
    """The defaults with some keys of some sections replaced: cfg(rollout={"num_workers": 1}); 2 rollout
    workers unless given (what rollout.num_workers=auto resolves to for the 0.8M world on 2 cores)."""
    c = TrainConfig()
    c.rollout.num_workers = 2
    for name, values in sections.items():
        for key, value in values.items():
            setattr(getattr(c, name), key, value)
    return c


def test_two_cores_one_worker_each_role_has_the_node_and_the_pipelined_sampling_yields():
    serial = thread_budgets(cfg(rollout={"num_workers": 1}), 2, overlapped=False)
    assert (serial["rollout"], serial["policy"], serial["prm"]) == (RoleThreads(2), RoleThreads(2), RoleThreads(2))
    assert serial["sft"] == RoleThreads(2)
    pipelined = thread_budgets(cfg(rollout={"num_workers": 1}), 2, overlapped=True)
    assert (pipelined["rollout"], pipelined["policy"], pipelined["prm"]) == (RoleThreads(2, idle=True), RoleThreads(2), RoleThreads(2))
    assert pipelined["sft"] == RoleThreads(2)  # the supervised stage runs alone, before the loop


def test_two_cores_two_workers_share_the_cores():
    # The default: 2 workers on 2 cores, 1 thread each; each learner rank has both.
    b = thread_budgets(cfg(), 2, overlapped=False)
    assert (b["rollout"], b["policy"], b["prm"]) == (RoleThreads(1), RoleThreads(2), RoleThreads(2))
    b = thread_budgets(cfg(), 2, overlapped=True)
    assert (b["rollout"], b["policy"], b["prm"]) == (RoleThreads(1, idle=True), RoleThreads(2), RoleThreads(2))


def test_many_cores_and_ranks():
    # 64 cores: 64 // 2 workers = 32, 64 // 1 policy rank = 64, 64 // 4 PRM ranks = 16, sft 64 // 1.
    b = thread_budgets(cfg(prm={"num_workers": 4}), 64, overlapped=False)
    assert [b[r].num_threads for r in ("rollout", "policy", "prm", "sft")] == [32, 64, 16, 64]
    # 8 cores, the policy on 2 ranks: policy 4, sft on the policy's ranks 4; 3 workers: 2 (8 // 3).
    b = thread_budgets(cfg(policy={"num_workers": 2}, rollout={"num_workers": 3}), 8, overlapped=True)
    assert [b[r] for r in ("rollout", "policy", "sft")] == [RoleThreads(2, idle=True), RoleThreads(4), RoleThreads(4)]


def test_split_layout_roles_on_their_own_cores():
    split = cfg(rollout={"num_workers": 1, "cores": "0-1"}, policy={"cores": "2-3"}, prm={"cores": "2-3"})
    for overlapped in (False, True):
        b = thread_budgets(split, 4, overlapped=overlapped)
        assert (b["rollout"], b["policy"], b["prm"]) == (RoleThreads(2), RoleThreads(2), RoleThreads(2))
    # The benchmark's split layout on 2 cores: 1 core each, never at idle priority (no core shared).
    b = thread_budgets(cfg(rollout={"num_workers": 1, "cores": "0"}, policy={"cores": "1"}, prm={"cores": "1"}), 2, overlapped=True)
    assert (b["rollout"], b["policy"], b["prm"]) == (RoleThreads(1), RoleThreads(1), RoleThreads(1))
    # One learner on the rollout's core is enough for the sampling to yield.
    b = thread_budgets(cfg(rollout={"num_workers": 1, "cores": "0"}, policy={"cores": "1"}, prm={"cores": "0"}), 2, overlapped=True)
    assert b["rollout"] == RoleThreads(1, idle=True)


def test_a_number_the_user_gave_is_kept_and_marked_given():
    b = thread_budgets(cfg(policy={"num_threads": 3}, rollout={"num_threads": 4}, sft={"num_threads": 1}), 2, overlapped=True)
    assert b["policy"] == RoleThreads(3, given=True) and b["rollout"] == RoleThreads(4, idle=True, given=True)
    assert b["prm"] == RoleThreads(2) and b["sft"] == RoleThreads(1, given=True)
    assert RoleThreads(3, idle=True).env() == {"OMP_NUM_THREADS": "3"}


def test_no_prm_learner_no_prm_budget():
    b = thread_budgets(cfg(prm={"kind": "none"}, advantage={"c_process": 0.0}), 2, overlapped=False)
    assert set(b) == {"rollout", "policy", "sft"}


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_num_threads_neither_auto_nor_a_count_is_an_error_naming_the_key(value):
    with pytest.raises(ConfigError, match="'policy.num_threads'"):
        load_config(None, [f"policy.num_threads={value}"])


def test_the_pipelined_loop_samples_beside_the_updates_only_where_the_rollout_has_compute_of_its_own():
    pipelined = {"off_policy_steps": 1}
    split = {"rollout": {"num_workers": 1, "cores": "0"}, "policy": {"cores": "1"}, "prm": {"cores": "1"}}
    assert not samples_beside_updates(cfg(), 2)  # serial: nothing to overlap
    assert not samples_beside_updates(cfg(pipeline=pipelined), 2)  # auto, shared cores: after the updates
    assert samples_beside_updates(cfg(pipeline=pipelined, **split), 2)  # auto, cores of its own
    # One learner on the rollout's core is enough to share; a learner on a GPU shares none.
    assert not samples_beside_updates(cfg(pipeline=pipelined, **{**split, "prm": {"cores": "0"}}), 2)
    assert samples_beside_updates(cfg(pipeline=pipelined, policy={"num_gpus": 1.0}, prm={"num_gpus": 1.0}), 2)
    assert samples_beside_updates(cfg(pipeline=pipelined, rollout={"num_gpus": 1.0}), 2)
    # Without a PRM learner only the policy learner's cores count.
    no_prm = {"prm": {"kind": "none"}, "advantage": {"c_process": 0.0}, "policy": {"cores": "1"}, "rollout": {"cores": "0"}}
    assert samples_beside_updates(cfg(pipeline=pipelined, **no_prm), 2)
    # What the user set is kept either way.
    assert samples_beside_updates(cfg(pipeline={**pipelined, "overlap": "always"}), 2)
    assert not samples_beside_updates(cfg(pipeline={**pipelined, "overlap": "never"}, **split), 2)
    with pytest.raises(ConfigError, match="'pipeline.overlap'"):
        load_config(None, ["pipeline.overlap=sometimes"])


def test_the_start_up_line_shows_every_role_budget():
    lines: list[str] = []
    setup = RunSetup.__new__(RunSetup)  # only the thread step: no data, no Ray
    setup.cfg, setup.log = load_config(None, ["rollout.num_workers=2", "pipeline.off_policy_steps=1", "policy.num_threads=1"]), lines.append
    setup._setup_threads(2)
    # The default on shared cores: the next batch after the updates, at normal priority.
    assert lines == ["threads per process (2 cores, pipelined loop, next batch sampled after the updates): rollout 1 (auto), "
                     "policy 1, prm 2 (auto), sft 2 (auto)", DEFERRED_NOTE] and not setup.overlapped
    assert setup.threads["policy"] == RoleThreads(1, given=True)
    lines.clear()
    setup.cfg = load_config(None, ["rollout.num_workers=2", "pipeline.off_policy_steps=1", "pipeline.overlap=always"])
    setup._setup_threads(2)
    assert lines == ["threads per process (2 cores, pipelined loop): rollout 1 (auto) idle priority, policy 2 (auto), "
                     "prm 2 (auto), sft 2 (auto)", SHARED_OVERLAP_NOTE] and setup.overlapped
    assert describe_budgets({"rollout": RoleThreads(4)}, 8, "serial loop") == "threads per process (8 cores, serial loop): rollout 4 (auto)"
    # The serial loop, a pipelined one whose rollout has cores of its own, and one told never to
    # overlap: no note.
    for extra in (["pipeline.off_policy_steps=0"], ["pipeline.off_policy_steps=1", "rollout.cores=0", "policy.cores=1",
                                                     "prm.cores=1", "rollout.num_workers=1"],
                  ["pipeline.off_policy_steps=1", "pipeline.overlap=never"]):
        lines.clear()
        setup.cfg = load_config(None, ["rollout.num_workers=2", *extra])
        setup._setup_threads(2)
        assert len(lines) == 1 and lines[0].startswith("threads per process"), lines


def test_several_cpu_engines_for_a_policy_beyond_the_caches_get_a_hint(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 3000)
    (tmp_path / "pytorch_model.bin").write_bytes(b"x" * 500)
    (tmp_path / "config.json").write_text("{}")  # not a weight file
    assert weight_bytes(str(tmp_path)) == 3500
    assert weight_bytes("HuggingFaceTB/SmolLM2-135M-Instruct") == 0  # a hub name: unknown, no hint
    mb = 2**20
    note = rollout_engines_note(cfg(), 109 * mb)  # the default 2 workers, a 27M fp32 policy
    assert note.startswith("rollout: 2 vLLM engines on CPU for a policy of 109 MB") and note.endswith("rollout.num_workers=1")
    assert rollout_engines_note(cfg(), 32 * mb) is None  # the 0.8M world's policy (3 MB) and up to 32 MB: engines side by side pay
    assert rollout_engines_note(cfg(rollout={"num_workers": 1}), 500 * mb) is None
    assert rollout_engines_note(cfg(rollout={"num_gpus": 1.0}), 500 * mb) is None


def test_auto_rollout_workers_two_small_engines_or_one_with_every_core():
    mb = 2**20
    auto = cfg(rollout={"num_workers": "auto"})
    # A policy within the caches on 2+ cores: 2 engines (0.97-1.12 of a raw engine, one engine 0.83-0.87).
    assert rollout_workers(auto, 2, 3 * mb)[0] == 2 and rollout_workers(auto, 8, 32 * mb)[0] == 2
    # Beyond the caches, unknown, or one core for the rollout: 1 engine.
    assert rollout_workers(auto, 2, 32 * mb + 1) == (
        1, "rollout.num_workers=auto: 1 engine with 2 core(s) (policy weights of 32 MB: each engine would stream all "
           "of them at every decoding step)")
    assert rollout_workers(auto, 2, None)[0] == 1
    assert rollout_workers(auto, 1, 3 * mb)[0] == 1
    assert rollout_workers(cfg(rollout={"num_workers": "auto", "cores": "1"}), 2, 3 * mb)[0] == 1
    assert rollout_workers(cfg(rollout={"num_workers": "auto", "cores": "0-3"}), 8, 3 * mb)[0] == 2
    assert rollout_workers(cfg(rollout={"num_workers": "auto", "num_gpus": 1.0}), 2, 3 * mb)[0] == 1
    # A number given is kept, whatever the weights.
    assert rollout_workers(cfg(rollout={"num_workers": 3}), 2, 500 * mb)[0] == 3
    for bad in ("two", 0, True):
        with pytest.raises(ConfigError, match="'rollout.num_workers'"):
            load_config(None, [f"rollout.num_workers={bad}"])


def test_the_world_policy_size_is_known_before_the_world_is_built(tmp_path):
    # The closed form against the model itself, at the default and the benchmarks' shapes.
    for shape in ({}, {"world.hidden_size": 512, "world.num_layers": 8, "world.intermediate_size": 2048}, {"world.num_heads": 8}):
        w = load_config(None, [f"{k}={v}" for k, v in shape.items()]).world
        model = build_tiny_qwen2(len(build_char_tokenizer()), w.hidden_size, w.num_layers, w.num_heads, w.intermediate_size)
        assert policy_parameters(w) == sum(p.numel() for p in model.parameters())
    assert policy_parameters(TrainConfig().world) == 791_040  # the 0.8M policy
    default = load_config(None, [])
    assert policy_weight_bytes(default) == 4 * 791_040
    (tmp_path / "model.safetensors").write_bytes(b"x" * 5000)
    assert policy_weight_bytes(load_config(None, [f"model.policy_path={tmp_path}"])) == 5000
    assert policy_weight_bytes(load_config(None, ["model.policy_path=HuggingFaceTB/SmolLM2-135M-Instruct"])) is None
    # Resolving: the line says what auto became; the rest of the config is the same.
    lines: list[str] = []
    resolved = resolve_rollout_workers(default, 2, lines.append)
    assert resolved.rollout.num_workers == 2 and default.rollout.num_workers == "auto"
    assert lines == ["rollout.num_workers=auto: 2 engines (policy weights of 3 MB: small engines side by side sample faster "
                     "than one with every core)"]
    resolved.rollout.num_workers = "auto"
    assert resolved == default
    big = load_config(None, ["world.hidden_size=512", "world.num_layers=8", "world.intermediate_size=2048"])  # 27M
    assert resolve_rollout_workers(big, 2, lines.append).rollout.num_workers == 1
    given = load_config(None, ["rollout.num_workers=2"])
    assert resolve_rollout_workers(given, 2, lines.append) is given and len(lines) == 2


def test_idle_priority_covers_every_thread_and_those_started_later():
    # In a child process: a process cannot leave idle priority without privileges.
    code = textwrap.dedent("""
        import json, os, threading
        from repirl_ray.actors.common import idle_priority
        before = threading.Thread(target=threading.Event().wait, args=(30,), daemon=True)
        before.start()
        idle_priority()
        later = []
        after = threading.Thread(target=lambda: later.append(os.sched_getscheduler(0)))
        after.start(); after.join()
        tids = [int(t) for t in os.listdir("/proc/self/task")]
        def policy(tid):
            try:
                return os.sched_getscheduler(tid)
            except ProcessLookupError:  # a thread that ended after the listing (the joined one may linger there)
                return None
        policies = [p for p in map(policy, tids) if p is not None]
        print(json.dumps({"policies": policies, "later": later, "before_seen": before.native_id in tids}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["before_seen"] and len(out["policies"]) >= 2
    assert set(out["policies"]) == {os.SCHED_IDLE} and out["later"] == [os.SCHED_IDLE]
