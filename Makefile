# Two commands for a newcomer: `make demo` and `make test`. Both install what is missing first.
# `make check` is the developer's fast tier: lint, types and every test that needs no image
# build, VM boot, browser or database server (markers slow, vm, browser, postgres), < 2 minutes.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test check lint typecheck unit fast bench clean
FAST := not slow and not vm and not browser and not postgres

setup:
	@tools/setup

demo: setup
	@$(BIN)/python tools/demo.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest

fast: setup
	$(BIN)/pytest -m "$(FAST)"

test: lint typecheck unit

check: lint typecheck fast

bench: setup
	@for b in bench/*.py; do $(BIN)/python $$b; done

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
