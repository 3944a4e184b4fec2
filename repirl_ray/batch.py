"""The trajectory batch that travels between actors: one numpy array per field (DESIGN.md s3).

Numpy arrays in the Ray object store are read zero-copy; torch tensors and lists of dicts are not.
Layout: prompts are left-padded and responses right-padded, so that `prompt_ids ++ response_ids`
puts every response token t of every row at column Lp + t. A model then reads all response
positions with one slice, and logits at column Lp - 1 + t predict response token t.
Rows of one prompt are contiguous (K per prompt, sample_index 0..K-1); expert demos travel in a
separate batch with is_demo set.
"""

from __future__ import annotations

import io

from dataclasses import dataclass, fields

import numpy as np

from repirl_ray.utils import atomic_write_bytes


@dataclass
class Rollouts:
    prompt_ids: np.ndarray  # int32 [B, Lp], left-padded with pad_id
    prompt_len: np.ndarray  # int32 [B]
    response_ids: np.ndarray  # int32 [B, T], right-padded with pad_id
    response_mask: np.ndarray  # float32 [B, T], 1 on real response tokens (EOS included)
    sampling_logprobs: np.ndarray  # float32 [B, T], log pi_old(a_t|s_t) as sampled (0 for demos)
    prompt_index: np.ndarray  # int64 [B], the prompt's slot in its batch (unique per prompt)
    sample_index: np.ndarray  # int32 [B], 0..K-1 within the prompt's group
    outcome: np.ndarray  # float32 [B], verifier's 0/1
    format_ok: np.ndarray  # float32 [B], 1 when the answer is in the expected format
    is_demo: np.ndarray  # bool [B]
    policy_version: np.ndarray  # int64 [B], which weights produced the row (-1 for demos)
    step_ids: np.ndarray  # int16 [B, T], step index of each response token, -1 = none
    first_wrong: np.ndarray  # int16 [B], first wrong step; -1 = all correct, -2 = no step labels
    pad_id: int = 0

    def __len__(self) -> int:
        return int(self.prompt_ids.shape[0])

    @property
    def response_len(self) -> np.ndarray:
        return self.response_mask.sum(axis=1).astype(np.int32)

    def select(self, rows: np.ndarray) -> "Rollouts":
        rows = np.asarray(rows)
        return Rollouts(
            **{f.name: getattr(self, f.name)[rows] for f in fields(self) if f.name != "pad_id"},
            pad_id=self.pad_id,
        )

    @staticmethod
    def concat(parts: list["Rollouts"]) -> "Rollouts":
        parts = [p for p in parts if p is not None and len(p) > 0]
        if not parts:
            raise ValueError("Rollouts.concat: nothing to concatenate")
        pad_id = parts[0].pad_id
        lp = max(p.prompt_ids.shape[1] for p in parts)
        t = max(p.response_ids.shape[1] for p in parts)

        def left(a: np.ndarray, width: int, value) -> np.ndarray:
            return np.pad(a, ((0, 0), (width - a.shape[1], 0)), constant_values=value)

        def right(a: np.ndarray, width: int, value) -> np.ndarray:
            return np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=value)

        out = {}
        for f in fields(Rollouts):
            name = f.name
            if name == "pad_id":
                continue
            arrays = [getattr(p, name) for p in parts]
            if name == "prompt_ids":
                arrays = [left(a, lp, pad_id) for a in arrays]
            elif name == "response_ids":
                arrays = [right(a, t, pad_id) for a in arrays]
            elif name in ("response_mask", "sampling_logprobs"):
                arrays = [right(a, t, 0) for a in arrays]
            elif name == "step_ids":
                arrays = [right(a, t, -1) for a in arrays]
            out[name] = np.concatenate(arrays, axis=0)
        return Rollouts(**out, pad_id=pad_id)

    @staticmethod
    def gather(keep_prompts: np.ndarray | None, parts) -> tuple["Rollouts | None", "Rollouts | None"]:
        """(rollouts, demos) of the kept prompts, from the shards of all rollout workers.

        Learners are handed the workers' shards as ObjectRefs, which Ray resolves (zero-copy)
        in the learner; each learner builds its batch here, so no extra process copies data.
        keep_prompts None keeps every prompt."""
        parts = [p for p in parts if p is not None and len(p) > 0]
        out = []
        for want_demo in (False, True):
            sel = [p for p in parts if bool(p.is_demo[0]) == want_demo]
            if not sel:
                out.append(None)
                continue
            batch = Rollouts.concat(sel)
            if keep_prompts is not None:
                rows = batch.group_rows(np.asarray(keep_prompts))
                batch = batch.select(rows) if len(rows) else None
            out.append(batch)
        return out[0], out[1]

    def group_rows(self, keep_prompts: np.ndarray) -> np.ndarray:
        """Row indices of the given prompts (by prompt_index), in batch order."""
        return np.flatnonzero(np.isin(self.prompt_index, keep_prompts))


def build_rollouts(
    prompt_token_ids: list[list[int]],
    response_token_ids: list[list[int]],
    sampling_logprobs: list[list[float]] | None,
    *,
    prompt_index: list[int],
    sample_index: list[int],
    outcome: list[float],
    format_ok: list[float],
    is_demo: bool,
    policy_version: int,
    step_ids: list[list[int]] | None,
    first_wrong: list[int],
    pad_id: int,
) -> Rollouts:
    """Pad ragged token lists into a Rollouts batch (left for prompts, right for responses)."""
    b = len(prompt_token_ids)
    lp = max((len(p) for p in prompt_token_ids), default=1)
    t = max(1, max((len(r) for r in response_token_ids), default=1))
    prompt_ids = np.full((b, lp), pad_id, np.int32)
    response_ids = np.full((b, t), pad_id, np.int32)
    mask = np.zeros((b, t), np.float32)
    logps = np.zeros((b, t), np.float32)
    steps = np.full((b, t), -1, np.int16)
    for i, (p, r) in enumerate(zip(prompt_token_ids, response_token_ids)):
        prompt_ids[i, lp - len(p):] = p
        response_ids[i, : len(r)] = r
        mask[i, : len(r)] = 1.0
        if sampling_logprobs is not None:
            logps[i, : len(r)] = sampling_logprobs[i]
        if step_ids is not None:
            steps[i, : len(r)] = step_ids[i]
    return Rollouts(
        prompt_ids=prompt_ids,
        prompt_len=np.array([len(p) for p in prompt_token_ids], np.int32),
        response_ids=response_ids,
        response_mask=mask,
        sampling_logprobs=logps,
        prompt_index=np.asarray(prompt_index, np.int64),
        sample_index=np.asarray(sample_index, np.int32),
        outcome=np.asarray(outcome, np.float32),
        format_ok=np.asarray(format_ok, np.float32),
        is_demo=np.full(b, is_demo, bool),
        policy_version=np.full(b, policy_version, np.int64),
        step_ids=steps,
        first_wrong=np.asarray(first_wrong, np.int16),
        pad_id=pad_id,
    )


def save_rollouts(batch: Rollouts, path) -> None:
    """One .npz holding every field (written atomically)."""
    buf = io.BytesIO()
    np.savez(buf, pad_id=np.array(batch.pad_id), **{f.name: getattr(batch, f.name) for f in fields(batch) if f.name != "pad_id"})
    atomic_write_bytes(path, buf.getvalue())


def load_rollouts(path) -> Rollouts:
    with np.load(path) as data:
        return Rollouts(**{f.name: data[f.name] for f in fields(Rollouts) if f.name != "pad_id"}, pad_id=int(data["pad_id"]))
