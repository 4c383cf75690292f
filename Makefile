# Two commands do all set-up on a fresh machine:
#   make demo   – create .venv, install evalkit, run the main job offline (the bundled Imagen on the shapes suite)
#   make test   – create .venv, install evalkit with test extras, run the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision come as a matching pair from PyPI (pinned in pyproject.toml); a CPU-only
# torch wheel beside PyPI's torchvision fails at `import torchvision`, so the install is checked.
INSTALL_CHECK := import torch, torchvision; torchvision.ops.nms; print("torch", torch.__version__, "torchvision", torchvision.__version__)

.PHONY: demo test install lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e ".[dev,datasets]"
	$(BIN)/python -c '$(INSTALL_CHECK)'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/evalkit run --model imagen --suite shapes

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff format --check . && $(BIN)/ruff check .

bench: install
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/bench_frechet.py
	$(BIN)/python benchmarks/bench_fid_features.py

clean:
	rm -rf $(VENV) .pytest_cache
