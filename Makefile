# Two commands for a newcomer: `make demo` and `make test`. Both install what is missing first.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint typecheck unit bench clean

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

test: lint typecheck unit

bench: setup
	@for b in bench/*.py; do $(BIN)/python $$b; done

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
