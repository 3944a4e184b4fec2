"""The prompt stream of a run: epochs over the training problems in a seeded order.

Its position is part of every checkpoint, so a resumed run sees the same prompts in the same
order as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from repirl_ray.tasks.base import Problem


def limit_demos(problems: list[Problem], max_demos: int) -> tuple[list[Problem], int]:
    """Keep the first `max_demos` expert demos of every problem (data.max_demos_per_problem;
    -1 keeps all). Returns the problems and how many demos were left out, for the run's log."""
    if max_demos < 0:
        return problems, 0
    dropped = sum(max(0, len(p.demos) - max_demos) for p in problems)
    if dropped == 0:
        return problems, 0
    return [dataclasses.replace(p, demos=p.demos[:max_demos]) for p in problems], dropped


class PromptStream:
    def __init__(self, problems: list[Problem], batch_size: int, *, seed: int, shuffle: bool = True):
        if not problems:
            raise ValueError("the training data has no problems")
        self.problems = problems
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0
        self._order = self._make_order()

    def _make_order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.problems))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.problems))

    def next_batch(self) -> tuple[list[Problem], list[int]]:
        """The next batch_size problems and their row indices; an epoch ends at a batch boundary
        only when the data divides evenly: otherwise the batch wraps into the next epoch."""
        indices: list[int] = []
        while len(indices) < self.batch_size:
            if self.position >= len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._make_order()
            take = min(self.batch_size - len(indices), len(self._order) - self.position)
            indices.extend(int(i) for i in self._order[self.position : self.position + take])
            self.position += take
        return [self.problems[i] for i in indices], indices

    def shuffled_demo_problems(self, size: int, seed: int, index: int) -> list[Problem]:
        """irl.demo_pairing=shuffled: the released code's expert loader is not aligned with the
        prompts, so each slot's demos come from a training problem drawn at random (seeded by the
        iteration `index`, so a resumed run draws the same ones), with that problem's own prompt."""
        rng = np.random.default_rng([seed, index, 1])
        pool = self.problems
        return [pool[i] for i in rng.choice(len(pool), size=size, replace=len(pool) < size)]

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order = self._make_order()
