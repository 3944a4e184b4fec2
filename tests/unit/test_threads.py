"""Thread budgets per role (repirl_ray/threads.py), worked out by hand: each process gets its
role's cores divided by the processes that run on them at the same time; passive OpenMP waiting
only where those processes hold more threads than cores; a number the user gave is kept."""

import pytest

from repirl_ray.config import ConfigError, TrainConfig, load_config
from repirl_ray.run_setup import RunSetup
from repirl_ray.threads import PASSIVE, RoleThreads, describe_budgets, thread_budgets


def cfg(**sections) -> TrainConfig:
    """The defaults with some keys of some sections replaced: cfg(rollout={"num_workers": 1})."""
    c = TrainConfig()
    for name, values in sections.items():
        for key, value in values.items():
            setattr(getattr(c, name), key, value)
    return c


def budgets(c: TrainConfig, cores: int, pipelined: bool, environ=None) -> dict:
    return thread_budgets(c, cores, pipelined=pipelined, environ={} if environ is None else environ)


def test_two_cores_one_worker_serial_each_role_has_the_node_to_itself():
    b = budgets(cfg(rollout={"num_workers": 1}), 2, pipelined=False)
    assert b["rollout"] == RoleThreads(2) and b["policy"] == RoleThreads(2) and b["prm"] == RoleThreads(2)
    assert b["sft"] == RoleThreads(2)


def test_two_cores_one_worker_pipelined_worker_and_learner_split_the_cores():
    # 1 rollout worker + 1 learner rank at a time on 2 cores: 1 thread each, 2 threads on 2 cores:
    # nothing oversubscribed, so OpenMP keeps its default (spinning) wait.
    b = budgets(cfg(rollout={"num_workers": 1}), 2, pipelined=True)
    assert b["rollout"] == RoleThreads(1) and b["policy"] == RoleThreads(1) and b["prm"] == RoleThreads(1)
    assert b["sft"] == RoleThreads(2)  # the supervised stage runs alone, before the loop


def test_two_cores_two_workers_pipelined_oversubscribed_waits_passively():
    # 2 workers + 1 learner rank = 3 processes on 2 cores: 1 thread each, 3 > 2: passive.
    b = budgets(cfg(), 2, pipelined=True)
    assert b["rollout"] == b["policy"] == b["prm"] == RoleThreads(1, PASSIVE)
    # Serial: the 2 workers share the 2 cores (1 each), each learner has both.
    b = budgets(cfg(), 2, pipelined=False)
    assert (b["rollout"], b["policy"], b["prm"]) == (RoleThreads(1), RoleThreads(2), RoleThreads(2))


def test_eight_cores_pipelined_the_larger_learner_group_counts_beside_the_rollout():
    # rollout: 8 // (2 workers + 2 PRM ranks) = 2; policy: 8 // (2 + 1) = 2; prm: 8 // (2 + 2) = 2.
    # Beside the rollout (2 x 2 threads) the PRM's 2 x 2 make 8 threads on 8 cores: no passive wait.
    b = budgets(cfg(prm={"num_workers": 2}), 8, pipelined=True)
    assert (b["rollout"], b["policy"], b["prm"]) == (RoleThreads(2), RoleThreads(2), RoleThreads(2))
    # 64 cores, serial: 32 per worker, 64 per learner rank, 32 per PRM rank.
    b = budgets(cfg(prm={"num_workers": 2}), 64, pipelined=False)
    assert (b["rollout"].num_threads, b["policy"].num_threads, b["prm"].num_threads) == (32, 64, 32)


def test_split_layout_roles_on_their_own_cores_keep_them_in_both_loops():
    split = cfg(rollout={"num_workers": 1, "cores": "0-1"}, policy={"cores": "2-3"}, prm={"cores": "2-3"})
    for pipelined in (False, True):
        b = budgets(split, 4, pipelined)
        assert (b["rollout"], b["policy"], b["prm"]) == (RoleThreads(2), RoleThreads(2), RoleThreads(2))
    # Learners on core 1 and the rollout on all cores (none given) overlap on core 1 when pipelined:
    # the learner's 1 core holds 1 worker and 1 rank (max(1, 1 // 2) = 1); the rollout's 2 cores
    # hold them too (2 // 2 = 1), 2 threads on 2 cores.
    b = budgets(cfg(rollout={"num_workers": 1}, policy={"cores": "1"}, prm={"cores": "1"}), 2, pipelined=True)
    assert (b["rollout"], b["policy"], b["prm"]) == (RoleThreads(1), RoleThreads(1), RoleThreads(1))
    # On the learner's 1 core: 1 worker thread + 1 rank thread > 1 core, but the span counted is the
    # union of the overlapping roles' cores (2): no passive wait.


def test_a_number_the_user_gave_is_kept_and_marked_given():
    b = budgets(cfg(policy={"num_threads": 3}, rollout={"num_threads": 4}, sft={"num_threads": 1}), 2, pipelined=True)
    assert b["policy"] == RoleThreads(3, PASSIVE, given=True) and b["rollout"] == RoleThreads(4, PASSIVE, given=True)
    assert b["prm"] == RoleThreads(1, PASSIVE) and b["sft"] == RoleThreads(1, given=True)


def test_an_omp_wait_policy_in_the_environment_is_left_to_every_role():
    b = budgets(cfg(), 2, pipelined=True, environ={"OMP_WAIT_POLICY": "ACTIVE"})
    assert all(r.wait_policy == "" for r in b.values())
    assert RoleThreads(1, PASSIVE).env() == {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    assert RoleThreads(2).env() == {"OMP_NUM_THREADS": "2"}


def test_no_prm_learner_no_prm_budget():
    b = budgets(cfg(prm={"kind": "none"}, advantage={"c_process": 0.0}), 2, pipelined=False)
    assert set(b) == {"rollout", "policy", "sft"}


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_num_threads_neither_auto_nor_a_count_is_an_error_naming_the_key(value):
    with pytest.raises(ConfigError, match="'policy.num_threads'"):
        load_config(None, [f"policy.num_threads={value}"])


def test_the_start_up_line_shows_every_role_budget():
    lines: list[str] = []
    setup = RunSetup.__new__(RunSetup)  # only the thread step: no data, no Ray
    setup.cfg, setup.log = load_config(None, ["pipeline.off_policy_steps=1", "policy.num_threads=2"]), lines.append
    setup._setup_threads(2)
    assert lines == ["threads per process (2 cores, pipelined loop): rollout 1 (auto) passive, policy 2 passive, "
                     "prm 1 (auto) passive, sft 2 (auto)"]
    assert setup.threads["policy"] == RoleThreads(2, PASSIVE, given=True)
    assert describe_budgets({"rollout": RoleThreads(4)}, 8, False) == "threads per process (8 cores, serial loop): rollout 4 (auto)"
