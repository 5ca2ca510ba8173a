# kp — two commands do everything: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the Dagster instance lives in this folder (dagster.yaml), its storage in .dagster/
export DAGSTER_HOME := $(CURDIR)
export KP_DAGSTER_STORAGE ?= $(CURDIR)/.dagster
HOST ?= 127.0.0.1
PORT ?= 3000

.PHONY: install demo test lint ui bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(STAMP)
	$(BIN)/kp demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

ui: $(STAMP)
	mkdir -p $(KP_DAGSTER_STORAGE)
	$(BIN)/dagster dev -w workspace.yaml -h $(HOST) -p $(PORT)

bench: $(STAMP)
	$(BIN)/python bench/simulate.py

clean:
	rm -rf data .dagster bench/out
