"""data.max_demos_per_problem (repirl_ray/data/stream.py limit_demos, config validation)."""

import pytest

from repirl_ray.config import ConfigError, load_config, needs_demos
from repirl_ray.data import limit_demos
from repirl_ray.tasks.base import Problem

PROBLEMS = [
    Problem(id="a", prompt="1+1:", answer="2", demos=("d1", "d2", "d3")),
    Problem(id="b", prompt="2+2:", answer="4", demos=("e1",)),
]


def test_limit_demos_keeps_the_first_ones_and_counts_the_rest():
    kept, dropped = limit_demos(PROBLEMS, 2)
    assert [p.demos for p in kept] == [("d1", "d2"), ("e1",)] and dropped == 1
    kept, dropped = limit_demos(PROBLEMS, 0)
    assert [p.demos for p in kept] == [(), ()] and dropped == 4
    # everything else about a problem is unchanged; -1 (the default) keeps all
    assert [(p.id, p.prompt, p.answer) for p in kept] == [(p.id, p.prompt, p.answer) for p in PROBLEMS]
    assert limit_demos(PROBLEMS, -1) == (PROBLEMS, 0)
    assert limit_demos(PROBLEMS, 3) == (PROBLEMS, 0)


def test_max_demos_per_problem_in_the_config():
    assert load_config().data.max_demos_per_problem == -1
    # without demos the IRL step learns from pseudo-experts alone: the data need carry none
    assert not needs_demos(load_config(None, ["data.max_demos_per_problem=0"]))
    assert needs_demos(load_config(None, ["data.max_demos_per_problem=1"]))
    with pytest.raises(ConfigError, match="irl.pseudo_expert"):
        load_config(None, ["data.max_demos_per_problem=0", "irl.pseudo_expert=false"])
    with pytest.raises(ConfigError, match="data.max_demos_per_problem"):
        load_config(None, ["data.max_demos_per_problem=-2"])


def test_new_issue_10_keys_are_checked():
    cfg = load_config(None, ["prm.epochs=3", "advantage.process_credit=min"])
    assert cfg.prm.epochs == 3 and cfg.advantage.process_credit == "min"
    with pytest.raises(ConfigError, match="advantage.process_credit"):
        load_config(None, ["advantage.process_credit=max"])
    with pytest.raises(ConfigError, match="prm.epochs"):
        load_config(None, ["prm.epochs=0"])
