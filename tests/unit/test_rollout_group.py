"""The RolloutGroup in local mode (no Ray: one plain RolloutWorker in this process, a fake engine
standing in for vLLM): the driver's calls (submit, collect, weight pushes, the fixed-set helpers)
and a sampled batch written to files and read back as a checkpoint keeps it."""

from dataclasses import fields
from types import SimpleNamespace

import numpy as np
import ray

from repirl_ray.actors.rollout_group import ARRAY_FIELDS, RolloutGroup, Sampled
from repirl_ray.batch import Rollouts
from repirl_ray.config import RolloutConfig
from repirl_ray.models.tiny import build_char_tokenizer
from repirl_ray.tasks.base import Problem

A = Problem(id="a", prompt="7+5:", answer="12", demos=("7+5=12;#12",))
B = Problem(id="b", prompt="3*3-1:", answer="8", demos=("3*3=9;9-1=8;#8", "3*3=9;9-1=8;#8"))
C = Problem(id="c", prompt="2+2:", answer="4", demos=("2+2=4;#4",))


class Engine:
    """Answers '#12' to every prompt (right for A only); records the weights it is given."""

    def __init__(self, tokenizer):
        self.ids = tokenizer("#12", add_special_tokens=False).input_ids
        self.loaded = []

    def generate(self, prompts, *, n, **_):
        return [[SimpleNamespace(token_ids=self.ids, logprobs=[-0.5] * len(self.ids)) for _ in range(n)] for _ in prompts]

    def load_weights(self, buckets):
        self.loaded.append(buckets)


def _group(tmp_path):
    tokenizer = build_char_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    engine = Engine(tokenizer)
    return RolloutGroup(RolloutConfig(num_workers=2), str(tmp_path), "arithmetic", local=True, engine=engine), engine


def _no_ray(monkeypatch):
    """Any Ray call fails the test: local mode must not touch Ray, whether or not an earlier test
    in this process left a Ray session up."""

    def refuse(name):
        def call(*args, **kwargs):
            raise AssertionError(f"local mode called ray.{name}")

        return call

    for name in ("init", "remote", "get", "put", "wait", "kill", "get_actor"):
        monkeypatch.setattr(ray, name, refuse(name))


def test_local_group_samples_pushes_weights_and_starts_no_ray(tmp_path, monkeypatch):
    was_up = ray.is_initialized()
    _no_ray(monkeypatch)
    group, engine = _group(tmp_path)
    assert group.pids() and len(group.workers) == 1  # local: one in-process worker, whatever num_workers says
    batch = group.generate([A, B, C], n=2, temperature=1.0, seed=0, with_demos=True)
    assert isinstance(batch, Sampled) and batch.version == 0
    assert list(batch.field("prompt_index")) == [0, 0, 1, 1, 2, 2]
    assert list(batch.field("outcome")) == [1, 1, 0, 0, 0, 0]  # '#12' is right for 7+5 only
    rollouts = group.gather(batch.rollouts)
    assert len(rollouts) == 6 and np.all(rollouts.sampling_logprobs[rollouts.response_mask > 0] == -0.5)
    assert group.put(rollouts) is rollouts  # local: the batch itself, no object store
    # A push reaches the engine; the next batch carries its version (pipelined: the push queues).
    group.load_weights("weights-v3", 3, wait=False)
    pending = group.submit([A], n=1, temperature=1.0, seed=1, with_demos=False)
    assert group.collect(pending).version == 3 and engine.loaded == ["weights-v3"]
    assert ray.is_initialized() == was_up


def test_sampled_batch_survives_files(tmp_path):
    group, _ = _group(tmp_path / "model")
    batch = group.generate([A, B], n=2, temperature=1.0, seed=0, with_demos=True)
    group.save_sampled(batch, tmp_path / "pending")
    back = group.load_sampled(tmp_path / "pending")
    assert back.version == batch.version
    for name, dtype in ARRAY_FIELDS.items():
        assert back.field(name).dtype == dtype
        np.testing.assert_array_equal(back.field(name), batch.field(name))
    assert back.summaries[0]["answers"] == [a for s in batch.summaries for a in s["answers"]] == ["12"] * 4
    # Local mode: the shards are values; merged, as the learners merge them, they are the same.
    want, got = Rollouts.gather(None, batch.rollouts + batch.demos), Rollouts.gather(None, back.rollouts + back.demos)
    for part in (0, 1):
        for f in fields(Rollouts):
            np.testing.assert_array_equal(getattr(got[part], f.name), getattr(want[part], f.name))
    assert len(got[0]) == 4 and len(got[1]) == 3 and got[1].is_demo.all()  # A's one demo, B's two


def test_the_group_keeps_only_the_weights_a_worker_or_a_batch_in_flight_can_need(tmp_path):
    """Each kept push is a copy of the policy in the object store: the group forgets one once no
    worker holds it and no batch in flight was submitted with it (a replacement worker needs it)."""
    group, engine = _group(tmp_path)
    # Serial loop: a push waits for the load; the weights before it are needed no more.
    group.load_weights("w1", 1)
    assert group.weights == {0: None, 1: "w1"}
    group.generate([A], n=1, temperature=1.0, seed=0, with_demos=False)
    group.load_weights("w2", 2)
    assert group.weights == {0: None, 2: "w2"}
    # Pipelined loop: the next batch goes to the workers with version 2, then the push of 3 queues.
    pending = group.submit([A], n=1, temperature=1.0, seed=1, with_demos=False)
    group.load_weights("w3", 3, wait=False)
    assert group.weights == {0: None, 2: "w2", 3: "w3"}
    # An evaluation in between (version 3) must not forget what the batch in flight was sampled with.
    assert group.generate([B], n=1, temperature=1.0, seed=2, with_demos=False).version == 3
    assert set(group.weights) == {0, 2, 3}
    assert group.collect(pending).version == 2
    assert group.weights == {0: None, 3: "w3"}
    assert engine.loaded == ["w1", "w2", "w3"]
