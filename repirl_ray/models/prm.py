"""The process reward model r_phi(s_t, a_t): one scalar per response token (ALGORITHM.md s1).

- HeadPRM (`prm.kind: head`, the paper's): a copy of the base model with a scalar head; the
  reward of token a_t is read at a_t's own position (the state that has just seen a_t). Stored as
  an HF token-classification model with one label, so `from_pretrained` reloads it. `prm.head`:
  linear (one bias-free row, zero-initialised) or mlp_tanh (the authors' released head,
  H -> 1024 -> 1024 -> 1 with ReLU and a final tanh, PyTorch's default init, biases; its
  weights are stored under `score.*` beside the model's, and prm.json names the head).
- ImplicitPRM (`prm.kind: implicit`, PRIME's): r = beta * (log pi_phi(a_t|s_t) - log pi_ref(a_t|s_t)),
  pi_phi trainable, pi_ref frozen. pi_phi is stored as an HF causal LM, beside a prm.json that
  names pi_ref and beta.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModelForTokenClassification

from repirl_ray.algo import implicit_token_rewards
from repirl_ray.models.policy import DTYPES, check_model_path, load_causal_lm
from repirl_ray.models.sequence import ModelInputs, response_logprobs
from repirl_ray.utils import atomic_write_json

PRM_META = "prm.json"


# The released head's hidden width (the authors' rm.py), kept for the tiny world too: it makes the
# head larger than the tiny model, but a narrower one would be a third head, not the released one.
MLP_HEAD_WIDTH = 1024
HEADS = ("linear", "mlp_tanh")


def mlp_tanh_head(hidden_size: int) -> nn.Module:
    """The released PRM head: Linear(H, 1024), ReLU, Linear(1024, 1024), ReLU, Linear(1024, 1),
    Tanh; PyTorch's default initialisation (seeded by the caller's torch.manual_seed), biases."""
    return nn.Sequential(
        nn.Linear(hidden_size, MLP_HEAD_WIDTH), nn.ReLU(),
        nn.Linear(MLP_HEAD_WIDTH, MLP_HEAD_WIDTH), nn.ReLU(),
        nn.Linear(MLP_HEAD_WIDTH, 1), nn.Tanh(),
    )


class HeadPRM(nn.Module):
    kind = "head"

    def __init__(self, model: nn.Module, head: str = "linear"):
        super().__init__()
        self.model = model
        self.head = head

    @classmethod
    def from_pretrained(cls, path: str, dtype: str = "float32", trust_remote_code: bool = False,
                        head: str = "linear") -> "HeadPRM":
        check_model_path(path, "model.prm_path")
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        trained = any("ForTokenClassification" in a for a in (config.architectures or []))
        config.num_labels = 1
        config.classifier_dropout = 0.0  # rewards must be deterministic: the weights use them
        # No bias: a constant added to every token reward cancels in the IRL contrast (the
        # coefficients sum to zero), so it would only drift on rounding noise under Adam.
        config.token_classification_bias = False
        model = AutoModelForTokenClassification.from_pretrained(
            path, config=config, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code
        )
        if head == "mlp_tanh":
            # transformers builds (and, for a trained one, warns about) a linear score; the MLP
            # replaces it, and a trained one's score.* weights are read from the folder here.
            model.score = mlp_tanh_head(config.hidden_size).to(DTYPES[dtype])
            if trained:
                stored = load_file(os.path.join(path, "model.safetensors"))
                model.score.load_state_dict({k[len("score."):]: v for k, v in stored.items() if k.startswith("score.")})
        elif not trained:
            # A fresh head starts at r = 0 on every token, so the first importance weights are
            # the proposal's alone and the policy sees no process reward before the PRM learns.
            nn.init.zeros_(model.score.weight)
        return cls(model, head)

    def token_rewards(self, inputs: ModelInputs) -> torch.Tensor:
        """r_phi(s_t, a_t) for every response token [B, T]; 0 on padding."""
        scores = self.model(
            input_ids=inputs.input_ids,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
            use_cache=False,
        ).logits[..., 0]
        return scores[:, -inputs.response_len:].float() * inputs.response_mask

    @property
    def trainable(self) -> nn.Module:
        """The module the optimizer trains (and a learner shards): the whole model with its head."""
        return self.model

    def save(self, out_dir: str) -> None:
        self.model.save_pretrained(out_dir)
        self.save_meta(out_dir)

    def save_meta(self, out_dir: str) -> None:
        atomic_write_json(os.path.join(out_dir, PRM_META), {"kind": "head", "head": self.head})


class FrozenLogprobs:
    """log pi(a_t|s_t) of a frozen model, remembered per trajectory.

    pi_ref never changes, so neither do a trajectory's log-probs under it, and one iteration reads
    them three times: the IRL step's weights pass and gradient pass, then the scoring of the same
    rollouts for the policy (2 of 3 reference forwards saved; docs/speed.md). A micro-batch whose
    trajectories were all seen is read from here; any other is computed whole and remembered.
    A trajectory is its attended tokens (prompt and response) and its response length; the
    max_rows most recent are kept."""

    def __init__(self, model: nn.Module, max_rows: int = 8192):
        self.model, self.max_rows = model, max_rows
        self.rows: OrderedDict[bytes, torch.Tensor] = OrderedDict()

    @staticmethod
    def _keys(inputs: ModelInputs) -> tuple[list[bytes], list[int]]:
        ids = inputs.input_ids.cpu().numpy()
        attended = inputs.attention_mask.cpu().numpy().astype(bool)
        lengths = inputs.response_mask.sum(dim=1).long().tolist()
        return [ids[i][attended[i]].tobytes() + n.to_bytes(4, "little") for i, n in enumerate(lengths)], lengths

    @torch.no_grad()
    def __call__(self, inputs: ModelInputs) -> torch.Tensor:
        """[B, T] log-probs of the response tokens (0 beyond each response), without gradient."""
        keys, lengths = self._keys(inputs)
        if all(k in self.rows for k in keys):
            out = torch.zeros(inputs.response_mask.shape, dtype=torch.float32)
            for i, k in enumerate(keys):
                out[i, : lengths[i]] = self.rows[k]
            return out.to(inputs.response_mask.device)
        logp, _ = response_logprobs(self.model, inputs)
        logp = torch.where(inputs.response_mask > 0, logp, 0.0)  # as a remembered row reads back (-inf * 0 would be NaN)
        for i, k in enumerate(keys):
            self.rows[k] = logp[i, : lengths[i]].cpu()
            self.rows.move_to_end(k)
        while len(self.rows) > self.max_rows:
            self.rows.popitem(last=False)
        return logp


class ImplicitPRM(nn.Module):
    kind = "implicit"

    def __init__(self, phi: nn.Module, ref: nn.Module, beta: float, ref_path: str):
        super().__init__()
        self.phi = phi
        self.ref = ref.eval().requires_grad_(False)
        self.beta = beta
        self.ref_path = ref_path
        self.ref_logprobs = FrozenLogprobs(self.ref)

    def log_probs(self, inputs: ModelInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(log pi_phi(a_t|s_t), log pi_ref(a_t|s_t)), each [B, T]; pi_ref without gradient."""
        logp_phi, _ = response_logprobs(self.phi, inputs)
        return logp_phi, self.ref_logprobs(inputs)

    def token_rewards(self, inputs: ModelInputs) -> torch.Tensor:
        logp_phi, logp_ref = self.log_probs(inputs)
        return implicit_token_rewards(logp_phi, logp_ref, self.beta, inputs.response_mask)

    @property
    def trainable(self) -> nn.Module:
        """The module the optimizer trains (and a learner shards): pi_phi; pi_ref is frozen."""
        return self.phi

    def save(self, out_dir: str) -> None:
        self.phi.save_pretrained(out_dir)
        self.save_meta(out_dir)

    def save_meta(self, out_dir: str) -> None:
        atomic_write_json(
            os.path.join(out_dir, PRM_META), {"kind": "implicit", "beta": self.beta, "ref_path": self.ref_path}
        )


def read_prm_meta(path: str) -> dict | None:
    meta = os.path.join(path, PRM_META)
    if os.path.isfile(meta):
        with open(meta) as f:
            return json.load(f)
    return None


def load_prm(
    kind: str,
    path: str,
    ref_path: str,
    beta: float,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    ref_dtype: str = "",
    head: str = "linear",
) -> HeadPRM | ImplicitPRM:
    """Build a PRM from a base model, or reload a trained one (a folder holding prm.json).

    dtype: of the trainable weights; ref_dtype: of the frozen pi_ref ("" = dtype); head: the
    head PRM's head (prm.head). A learner keeps fp32 masters and may hold pi_ref in its compute
    dtype."""
    meta = read_prm_meta(path) if os.path.isdir(path) else None
    if meta is not None and meta["kind"] != kind:
        raise ValueError(
            f"config key 'prm.kind' is {kind!r} but {path} holds a trained {meta['kind']!r} PRM; "
            f"set prm.kind={meta['kind']} or point model.prm_path at a base model"
        )
    if kind == "head":
        trained_head = meta.get("head", "linear") if meta is not None else head
        if trained_head != head:
            raise ValueError(
                f"config key 'prm.head' is {head!r} but {path} holds a head PRM with a {trained_head!r} head; "
                f"set prm.head={trained_head}"
            )
        return HeadPRM.from_pretrained(path, dtype, trust_remote_code, head)
    if kind == "implicit":
        if meta is not None:
            if meta["beta"] != beta:
                raise ValueError(
                    f"config key 'prm.beta' is {beta} but the implicit PRM at {path} was trained with "
                    f"beta {meta['beta']}; set prm.beta={meta['beta']}"
                )
            ref_path = ref_path or meta["ref_path"]
        ref_path = ref_path or path
        phi = load_causal_lm(path, dtype, trust_remote_code, key="model.prm_path")
        ref = load_causal_lm(ref_path, ref_dtype or dtype, trust_remote_code, key="model.ref_path")
        return ImplicitPRM(phi, ref, beta, ref_path)
    raise ValueError(f"config key 'prm.kind': {kind!r} is not one of head, implicit")
