"""The policy: a Hugging Face causal LM, loaded and saved in HF format (so vLLM loads it too)."""

from __future__ import annotations

import os

import torch
from safetensors.torch import save as safetensors_save
from transformers import AutoModelForCausalLM

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelPathError(FileNotFoundError):
    pass


def check_model_path(path: str, key: str) -> None:
    """A local-looking path that does not exist is a typo, not a hub name: say so up front."""
    if not path:
        raise ModelPathError(f"config key '{key}' is empty: give a model folder in HF format or a hub name")
    # Hub names are "org/name"; anything else that is not a folder here is a missing path.
    looks_local = path.startswith((".", "/", "~")) or path.count("/") >= 2
    if looks_local and not os.path.isdir(os.path.expanduser(path)):
        raise ModelPathError(
            f"config key '{key}': model folder not found: {path} (run `repirl make-world` for the built-in model, "
            "or give an HF model folder / hub name)"
        )
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelPathError(f"config key '{key}': {path} has no config.json; it is not a model folder in HF format")


def load_causal_lm(path: str, dtype: str = "float32", trust_remote_code: bool = False, key: str = "model.policy_path"):
    check_model_path(path, key)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code)
    return model


def weights_blob(model: torch.nn.Module) -> bytes:
    """The state dict as one safetensors blob, in checkpoint names, for vLLM's in-place reload.

    A tied lm_head shares storage with the embedding: it is left out (safetensors refuses shared
    tensors, and vLLM ties it back itself)."""
    tied = getattr(model.config, "tie_word_embeddings", False)
    state = {
        k: v.detach().contiguous()
        for k, v in model.state_dict().items()
        if not (tied and k == "lm_head.weight")
    }
    return safetensors_save(state)
