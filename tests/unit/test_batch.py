import numpy as np

from repirl_ray.batch import Rollouts, build_rollouts
from repirl_ray.data import PromptStream
from repirl_ray.tasks.base import Problem


def _batch(prompts, responses, pidx, pad=0):
    n = len(prompts)
    return build_rollouts(
        prompts, responses, [[-0.5] * len(r) for r in responses],
        prompt_index=pidx, sample_index=[0] * n, outcome=[1.0] * n, format_ok=[1.0] * n,
        is_demo=False, policy_version=3, step_ids=None, first_wrong=[-2] * n, pad_id=pad,
    )


def test_build_pads_prompts_left_and_responses_right():
    b = _batch([[5, 6, 7], [8]], [[1], [2, 3, 4]], [0, 1], pad=0)
    assert b.prompt_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert b.response_ids.tolist() == [[1, 0, 0], [2, 3, 4]]
    assert b.response_mask.tolist() == [[1, 0, 0], [1, 1, 1]]
    assert b.sampling_logprobs.tolist() == [[-0.5, 0, 0], [-0.5, -0.5, -0.5]]
    assert b.prompt_len.tolist() == [3, 1] and b.response_len.tolist() == [1, 3]
    assert b.policy_version.tolist() == [3, 3]


def test_concat_repads_and_select_keeps_rows():
    a = _batch([[5, 6]], [[1, 2]], [0])
    b = _batch([[7, 8, 9]], [[3]], [1])
    c = Rollouts.concat([a, None, b])
    assert c.prompt_ids.tolist() == [[0, 5, 6], [7, 8, 9]]
    assert c.response_ids.tolist() == [[1, 2], [3, 0]]
    assert c.step_ids.tolist() == [[-1, -1], [-1, -1]]
    assert c.group_rows(np.array([1])).tolist() == [1]
    assert c.select(np.array([1])).prompt_ids.tolist() == [[7, 8, 9]]


def test_prompt_stream_is_seeded_and_resumable():
    problems = [Problem(str(i), f"p{i}", "0") for i in range(10)]
    a = PromptStream(problems, 4, seed=3)
    first = [a.next_batch()[1] for _ in range(5)]  # crosses epochs: 20 draws of 10 problems
    assert sorted(first[0] + first[1] + first[2][:2]) == list(range(10))
    b = PromptStream(problems, 4, seed=3)
    b.next_batch(); b.next_batch()
    c = PromptStream(problems, 4, seed=3)
    c.load_state(b.state())
    assert [c.next_batch()[1] for _ in range(3)] == first[2:]
