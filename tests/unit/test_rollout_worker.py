"""RolloutWorker without vLLM (a fake engine): the expert demos it attaches to each prompt slot,
its own problem's or, with irl.demo_pairing=shuffled, another problem's with that problem's prompt."""

from types import SimpleNamespace

from repirl_ray.config import RolloutConfig
from repirl_ray.models.tiny import build_char_tokenizer
from repirl_ray.rollout.worker import RolloutWorker
from repirl_ray.tasks.base import Problem

A = Problem(id="a", prompt="7+5:", answer="12", demos=("7+5=12;#12",))
B = Problem(id="b", prompt="3*3-1:", answer="8", demos=("3*3=9;9-1=8;#8", "3*3=9;9-1=8;#8"))


class Engine:  # every sample is the text "#0"
    def __init__(self, tokenizer):
        self.ids = tokenizer("#0", add_special_tokens=False).input_ids

    def generate(self, prompts, *, n, **_):
        return [[SimpleNamespace(token_ids=self.ids, logprobs=[-1.0] * len(self.ids)) for _ in range(n)] for _ in prompts]


def test_demos_are_the_slot_problems_own_or_the_given_problems(tmp_path):
    tokenizer = build_char_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    worker = RolloutWorker(RolloutConfig(), str(tmp_path), "arithmetic", engine=Engine(tokenizer))

    def text(ids, pad):
        return tokenizer.decode([i for i in ids if i != pad], skip_special_tokens=True)

    _, own, _ = worker.generate([A, B], [0, 1], n=2, temperature=1.0, seed=0, with_demos=True)
    assert list(own.prompt_index) == [0, 1, 1]
    assert [text(p, own.pad_id) for p in own.prompt_ids] == ["7+5:", "3*3-1:", "3*3-1:"]
    # Shuffled: slot 0 gets B's two demos with B's prompt, slot 1 gets A's; step labels are the
    # demo's own problem's (every demo is a right solution).
    rollouts, shuffled, _ = worker.generate([A, B], [0, 1], n=2, temperature=1.0, seed=0, with_demos=True,
                                            demo_problems=[B, A])
    assert list(shuffled.prompt_index) == [0, 0, 1]
    assert [text(p, shuffled.pad_id) for p in shuffled.prompt_ids] == ["3*3-1:", "3*3-1:", "7+5:"]
    assert [text(r, shuffled.pad_id) for r in shuffled.response_ids] == ["3*3=9;9-1=8;#8", "3*3=9;9-1=8;#8", "7+5=12;#12"]
    assert list(shuffled.first_wrong) == [-1, -1, -1]
    # The rollouts are the slots' own.
    assert [text(p, rollouts.pad_id) for p in rollouts.prompt_ids] == ["7+5:"] * 2 + ["3*3-1:"] * 2
