"""reasoning-gym as a data source: generated splits, the task's own verifier, step-by-step demos
and step labels, against hand-worked cases."""

from __future__ import annotations

import pytest

from repirl_ray.config import ConfigError, load_config
from repirl_ray.tasks.base import DataError
from repirl_ray.tasks.reasoning_gym import ReasoningGymTask, extract_answer, generate, true_steps, write_steps

CHAIN = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1}
RG = ["data.format=reasoning_gym", "data.task=reasoning_gym", "data.reasoning_gym.name=chain_sum"]


def test_true_steps_left_to_right_by_hand():
    assert true_steps("4 - 1 + 7", "+-") == [(4, "-", 1, 3), (3, "+", 7, 10)]
    # Negative terms as chain_sum writes them with allow_negation.
    assert true_steps("-1 - -6 - 6", "+-") == [(-1, "-", -6, 5), (5, "-", 6, -1)]
    assert true_steps("2 * 3 * 4", "*") == [(2, "*", 3, 6), (6, "*", 4, 24)]
    assert write_steps(true_steps("4 - 1 + 7", "+-")) == "4 - 1 = 3\n3 + 7 = 10\nAnswer: 10"


@pytest.mark.parametrize("expression", ["2 + 3 * 4", "2 +", "2 + x", "( 2 + 3 )"])
def test_true_steps_refuses_what_is_not_a_chain(expression):
    with pytest.raises(DataError, match="steps=false"):
        true_steps(expression, "+-")


def _problem():
    (p,), _ = generate("chain_sum", {"min_terms": 3, "max_terms": 3, **{k: 1 for k in ("min_digits", "max_digits")}},
                       1, 5, steps=True, prefix="t")
    return p


def test_demo_is_correct_with_exact_step_labels():
    task = ReasoningGymTask("chain_sum", CHAIN)
    p = _problem()
    demo = p.demos[0]
    assert task.verify(p, demo).correct and task.verify(p, demo).format_ok
    labels = task.step_labels(p, demo)
    assert labels.first_wrong is None
    assert labels.spans[0][0] == 0 and labels.spans[-1][1] == len(demo)  # the spans tile the reply
    assert len(labels.spans) == 3  # two operations, then the answer line


def test_step_labels_hand_cases():
    task = ReasoningGymTask("chain_sum", CHAIN)
    p = _problem()
    a, b, c = p.demos[0].split("\n")
    (x, op, y, r) = true_steps(p.meta["rg_metadata"]["expression"], "+-")[1]
    wrong_second = f"{x} {op} {y} = {r + 1}"
    cases = {
        f"{a}\n{wrong_second}\n{c}": 1,  # a wrong result at step 2
        f"{a}\n{b}\nAnswer: {r + 1}": 2,  # right steps, wrong answer
        f"{a}\n": 1,  # stops early: the first missing line
        f"{a}\n{b}\n{c}\nmore": 3,  # anything after the answer is wrong
        f"{c}": 0,  # the answer too early
        f"  {a.replace(' ', '')}\n{b}\n{c}": None,  # spacing is free
    }
    for reply, first_wrong in cases.items():
        assert task.step_labels(p, reply).first_wrong == first_wrong, reply


def test_verify_uses_the_tasks_scorer_and_full_credit_only():
    task = ReasoningGymTask("chain_sum", CHAIN)
    p = _problem()
    right = p.answer
    assert task.verify(p, f"so\nAnswer: {right}").correct
    assert task.verify(p, f"Answer: +{right}.0").correct  # chain_sum's scorer tolerates these
    v = task.verify(p, f"I think it is {right}")  # no Answer line: the last number, format not ok
    assert v.correct and not v.format_ok
    assert not task.verify(p, f"Answer: {right}\nAnswer: 999").correct  # the last Answer line counts
    assert not task.verify(p, "").correct
    # Partial credit (basic_arithmetic gives 0.5 for a wrong number) is not an outcome of 1.
    ba = ReasoningGymTask("basic_arithmetic", {}, steps=False)
    (q,), _ = generate("basic_arithmetic", {}, 1, 0, steps=False, prefix="b")
    near = q.answer + "0"  # contains the answer: the default scorer gives len(answer)/len(reply)
    entry = {"question": q.prompt, "answer": q.answer, "metadata": q.meta["rg_metadata"]}
    assert 0 < ba._scorer.score_answer(near, entry) < 1
    assert not ba.verify(q, f"Answer: {near}").correct
    assert ba.step_labels(q, "Answer: 1") is None and q.demos == (f"Answer: {q.answer}",)


def test_hostile_replies_are_bounded():
    answer, ok = extract_answer("Answer: " + "9" * 100_000)
    assert ok and len(answer) == 200
    task = ReasoningGymTask("chain_sum", CHAIN)
    assert not task.verify(_problem(), "Answer: " + "1" * 100_000).correct


def test_generated_splits_are_seeded_disjoint_and_counted():
    train, _ = generate("chain_sum", CHAIN, 300, 0, steps=True, prefix="train-")
    again, _ = generate("chain_sum", CHAIN, 300, 0, steps=True, prefix="train-")
    assert [p.prompt for p in train] == [p.prompt for p in again]
    assert [p.id for p in train[:2]] == ["train-0", "train-1"]
    taken = frozenset(p.prompt for p in train)
    eval_, left_out = generate("chain_sum", CHAIN, 50, 300, steps=True, prefix="eval-", exclude=taken)
    assert len(eval_) == 50 and not taken & {p.prompt for p in eval_}
    assert left_out > 0  # 4200 distinct questions: 300 train items make collisions likely, and counted


def test_read_split_reports_generated_sets():
    from repirl_ray.data.dataset import read_split

    cfg = load_config(None, RG + ["data.reasoning_gym.train_size=200", "data.reasoning_gym.eval_size=20",
                                  "data.reasoning_gym.config={min_terms: 2, max_terms: 2, max_digits: 1}"])
    train, rtrain = read_split(cfg.data, "reasoning_gym:train", split="train", require_demos=True)
    eval_, reval = read_split(cfg.data, "reasoning_gym:eval", split="eval")
    assert len(train) == 200 and rtrain.with_demos == 200 and rtrain.usable
    assert len(eval_) == 20 and not {p.prompt for p in train} & {p.prompt for p in eval_}
    # 2 one-digit terms: 200 questions in all, so most eval draws collide with train and are replaced.
    assert reval.changed["generated eval problems also in the train split, replaced"] > 0


@pytest.mark.parametrize("extra, key", [
    (["data.reasoning_gym.name=chain_sm"], "data.reasoning_gym.name"),
    (["data.reasoning_gym.name=basic_arithmetic"], "data.reasoning_gym.steps"),
    (["data.train_path=x.jsonl"], "data.train_path"),
    (["data.reasoning_gym.train_size=0"], "data.reasoning_gym.train_size"),
])
def test_bad_reasoning_gym_config_names_the_key(extra, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(None, RG + extra)


def test_format_and_task_go_together():
    with pytest.raises(ConfigError, match="data.task=reasoning_gym"):
        load_config(None, ["data.format=reasoning_gym", "data.task=math"])
    with pytest.raises(ConfigError, match="reasoning_gym"):
        load_config(None, ["data.task=reasoning_gym", "data.reasoning_gym.name=chain_sum"])


def test_generator_settings_it_rejects_name_the_key():
    from repirl_ray.data.dataset import read_split

    cfg = load_config(None, RG + ["data.reasoning_gym.config={no_such_setting: 1}"])
    with pytest.raises(DataError, match="data.reasoning_gym.config"):
        read_split(cfg.data, "reasoning_gym:train", split="train")
