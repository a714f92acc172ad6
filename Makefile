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
	$(BIN)/pip install $(TORCH_PIN)
	$(BIN)/pip install -e '.[video,plot,models,ray,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/zeroskip demo

# The differential tests run twice: with the native scan, executor and carry maps, and with the torch fallback forced.
FALLBACK_TESTS := tests/test_conv.py tests/test_opinfo.py tests/test_network.py tests/test_activation.py tests/test_fusion.py tests/test_fuzz.py

test: $(STAMP)
	$(BIN)/ruff check zeroskip tests benchmarks
	$(BIN)/python -m pytest -q -m "not slow"
	ZEROSKIP_NATIVE=0 $(BIN)/python -m pytest -q -m "not slow" $(FALLBACK_TESTS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

# A crash (a segfault leaves no report) prints the case it died in.
FUZZ := ZEROSKIP_FUZZ=slow ZEROSKIP_FUZZ_CASE_FILE=.fuzz-case $(BIN)/python -m pytest -q tests/test_fuzz.py -m "slow or not slow"
FUZZ_CRASH := { echo "fuzz: the last case begun: $$(cat .fuzz-case 2>/dev/null)"; exit 1; }

fuzz: $(STAMP)
	$(FUZZ) || $(FUZZ_CRASH)
	ZEROSKIP_NATIVE=0 $(FUZZ) || $(FUZZ_CRASH)

bench: $(STAMP)
	$(BIN)/zeroskip bench

lint: $(STAMP)
	$(BIN)/ruff check zeroskip tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
