# The two commands of the README:
#   make demo   # local Kafka + registry up, worker, 10 000 synthetic events, per-agency summary
#   make test   # lint, types, unit + property + integration tests (real broker, started once)
# Everything else is a building block of those two.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
N ?= 10000

.PHONY: demo test lint unit integration bench clean-venv

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/screening-streams demo --count $(N)

lint: $(BIN)/.installed
	$(BIN)/ruff check streams tests $(wildcard bench)
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/screening-streams policy check

unit: $(BIN)/.installed
	$(BIN)/python -m pytest -m "not integration"

integration: $(BIN)/.installed
	$(BIN)/python -m pytest -m integration

test: lint
	$(BIN)/python -m pytest

bench: $(BIN)/.installed
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/throughput.py

clean-venv:
	rm -rf $(VENV)
