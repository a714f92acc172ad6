# Dev environment: pinned PyTorch (a range in pyproject.toml is the library's own requirement).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.zeroskip-installed

.PHONY: venv demo test test-all fuzz bench lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_PIN)
	$(BIN)/pip install --quiet -e '.[video,plot,models,ray,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/zeroskip demo

test: $(STAMP)
	$(BIN)/ruff check zeroskip tests benchmarks
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

fuzz: $(STAMP)
	ZEROSKIP_FUZZ=slow $(BIN)/python -m pytest -q tests/test_fuzz.py -m "slow or not slow"

bench: $(STAMP)
	$(BIN)/zeroskip bench

lint: $(STAMP)
	$(BIN)/ruff check zeroskip tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
