# byok: every target creates or refreshes .venv itself, so each works on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
PROTOS := $(shell find proto -name '*.proto' | sort)

.PHONY: help venv run test test-py gen gen-check lint fmt clean

help:
	@echo "make run    - serve byok (gRPC + HTTP) on the embedded SQLite default"
	@echo "make test   - lint, generated-code check and the whole test suite"
	@echo "make gen    - regenerate gen/ from proto/"
	@echo "make lint   - buf lint + breaking, ruff, mypy --strict"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/byok-server serve

gen: $(STAMP)
	scripts/gen.sh gen

gen-check: $(STAMP)
	scripts/gen.sh check

lint: $(STAMP)
	$(BIN)/buf lint
	scripts/buf-breaking.sh
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint gen-check test-py

test-py: $(STAMP)
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
