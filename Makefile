# wan: developer commands. `make test` is what CI runs (.ci/run) and what the README shows.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# CPU machines and CI: the local CPU build. On a GPU machine: `make install TORCH=torch` (the CUDA build from PyPI).
TORCH  ?= torch==2.13.0

.PHONY: install test test-fast lint docs bench demo demo-tiny clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test,dev]"
	touch $@

install: $(VENV)/.installed  ## create .venv and install wan with its test and dev extras

test: install  ## the whole suite (tiny shapes plus a few real-width parity checks)
	$(BIN)/python -m pytest -q

test-fast: install  ## everything but the real-width checks
	$(BIN)/python -m pytest -q -m "not slow"

lint: install  ## ruff + mypy, and the CLI reference must match --help
	$(BIN)/ruff check wan_cli tests benchmarks
	$(BIN)/ruff format --check wan_cli tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m wan_cli.cli.docgen --check docs/cli.md

docs: install  ## regenerate docs/cli.md from --help
	$(BIN)/python -m wan_cli.cli.docgen docs/cli.md

bench: install  ## memory benchmark of the streaming VAE (real config, random weights; ~20 min on 2 CPU cores)
	$(BIN)/python benchmarks/vae_memory.py

demo: install  ## the default 1.3B video (demo.mp4), downloading the weights (~14.5 GB) first if absent; wants a GPU
	$(BIN)/python benchmarks/demo.py

demo-tiny: install  ## no download: tiny random-weight files through wan inspect / t2v / encode / decode
	$(BIN)/python benchmarks/demo.py --tiny

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
