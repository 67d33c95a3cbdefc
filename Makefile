# The README's commands. Each target creates .venv on first use and reinstalls when the
# project files change. torch is pinned to the local CPU build through constraints/cpu.txt.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints/cpu.txt

.PHONY: test demo lint bench bench-quick bench-dcp clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.test-installed: $(BIN)/python pyproject.toml constraints/cpu.txt
	$(PIP_INSTALL) -e ".[test]"
	touch $@

$(VENV)/.demo-installed: $(BIN)/python pyproject.toml constraints/cpu.txt
	$(PIP_INSTALL) -e ".[query]"
	touch $@

test: $(VENV)/.test-installed
	$(BIN)/python -m pytest

lint: $(VENV)/.test-installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

demo: $(VENV)/.demo-installed
	$(BIN)/castore demo

bench: $(VENV)/.test-installed
	$(BIN)/python benchmarks/run.py

bench-quick: $(VENV)/.test-installed
	$(BIN)/python benchmarks/run.py --quick

bench-dcp: $(VENV)/.test-installed
	$(BIN)/python benchmarks/dcp.py

clean:
	rm -rf $(VENV) castore-demo .pytest_cache .ruff_cache
