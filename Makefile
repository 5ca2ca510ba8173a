# kp — two commands do everything: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the Dagster instance lives in this folder (dagster.yaml), its storage in .dagster/; a lab
# server sets DAGSTER_HOME to its own instance folder (README, "Instance")
export DAGSTER_HOME ?= $(CURDIR)
export KP_DAGSTER_STORAGE ?= $(CURDIR)/.dagster
# `make test` runs on this many worker processes; tests that share a simulated study run on
# one worker (the xdist_group marks in tests/)
TEST_WORKERS ?= 2
HOST ?= 127.0.0.1
PORT ?= 3000

.PHONY: install system-packages demo test test-fast lint format ui ui-dask bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# numba compiles kp's kernels on first use; once here, not in every first process
	$(BIN)/python -m kp_science.compiled_kernels
	touch $@

demo: $(STAMP)
	$(BIN)/kp demo

# the Debian packages the tests use (PostgreSQL, Chromium): installed with apt-get as root,
# otherwise a stop with the command to run; nothing to do when they are there
system-packages:
	.ci/system-packages

test: system-packages lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

# everything but the tests marked slow (whole simulated studies, the UI, PostgreSQL, Dask,
# killed processes): the loop to run while working, about a minute
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup -m "not slow"

# the checks `make test` starts with, and the pre-commit hooks (.pre-commit-config.yaml) run
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pyright

# rewrite the code in the house style (ruff format) and apply ruff's safe fixes
format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

ui: $(STAMP)
	$(BIN)/python -m kp_resources.instance
	mkdir -p $(KP_DAGSTER_STORAGE)
	$(BIN)/dagster dev -w workspace.yaml -h $(HOST) -p $(PORT)

# the same definitions with every step on a Dask cluster: DASK=local (a local cluster per run,
# DASK_WORKERS processes) or DASK=tcp://scheduler:8786 (README, "Scaling out with Dask")
DASK ?= local
DASK_WORKERS ?= 2
ui-dask: $(STAMP)
	$(BIN)/python -m kp_resources.instance
	mkdir -p $(KP_DAGSTER_STORAGE)
	KP_DASK_SCHEDULER=$(DASK) KP_DASK_WORKERS=$(DASK_WORKERS) \
		$(BIN)/dagster dev -m kp_assets.on_dask -h $(HOST) -p $(PORT)

bench: $(STAMP)
	$(BIN)/python bench/simulate.py

clean:
	rm -rf data .dagster bench/out
