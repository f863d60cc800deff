# One entry point for humans and CI. `make demo` and `make test` work on a fresh machine
# with nothing but Python 3.11+: they create .venv and install what they need.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test test-fast lint typecheck chaos bench install install-tools clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

# Deployment tools for tests/deploy: prometheus + promtool (Debian), kubectl, compose, hadolint.
$(BIN)/.tools: $(BIN)/.installed deploy/tools/install.sh deploy/tools/requirements.txt
	bash deploy/tools/install.sh $(VENV)
	touch $@

install-tools: $(BIN)/.tools

demo: install
	$(BIN)/aam-dcl demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

test: install install-tools lint typecheck
	$(BIN)/pytest -m "not chaos" -p no:cacheprovider

test-fast: install
	$(BIN)/pytest -m "not chaos" -p no:cacheprovider tests/unit

chaos: install
	$(BIN)/pytest -m chaos -p no:cacheprovider tests/chaos -s

bench: install
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
