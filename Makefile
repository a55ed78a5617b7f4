# Two commands do all set-up on a fresh machine: `make demo` and `make test`. Both create and reuse .venv.
# Settings: PYTHON (the interpreter the venv is made from), VENV (where), WITH_VLLM=auto|1|0 (scripts/setup_env.sh),
# BASELINE=1 (make demo), and DDK_CACHE (where models, corpora and stores go).
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ddk-setup
# Models, corpora and stores go to $DDK_CACHE (default ~/.cache/ddk; ddk_store.paths.cache_dir resolves it).

.PHONY: setup test test-fast lint demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup_env.sh ddk_store/_kernels.c
	PYTHON="$(PYTHON)" VENV="$(VENV)" bash scripts/setup_env.sh
	touch $(STAMP)

# The whole suite, vLLM and the real S3 server included; it ends with its 15 slowest tests (CI keeps an eye on time).
test: setup lint
	$(PY) -m pytest -q --durations=15

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# One-way imports (stage1 -> ddk_store <- stage2) and no torch/transformers/vllm in ddk_store.
lint: setup
	$(VENV)/bin/lint-imports

# BASELINE=1: also train plain KD from the same warm student and compare the two in the report.
demo: setup
	VENV="$(VENV)" bash examples/demo.sh $(if $(filter 1 yes true on,$(BASELINE)),--baseline)

bench: setup
	$(PY) bench/store_codec.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
