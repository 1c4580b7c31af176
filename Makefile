# Two commands for a newcomer: `make demo` and `make test`. Both install what is missing first.
# `make check` is the developer's fast tier: lint, types and every test that needs no image
# build, VM boot, browser or database server (markers slow, vm, browser, postgres), < 1 minute.
VENV := .venv
BIN := $(VENV)/bin
# Both run on every core (pytest-xdist), one test handed out at a time in tests/conftest.py's
# order (costliest first): image builds and boots overlap, and the workers finish together.
PARALLEL := -n auto --dist load --maxschedchunk 1

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
	$(BIN)/pytest $(PARALLEL)

fast: setup
	$(BIN)/pytest $(PARALLEL) -m "$(FAST)"

test: lint typecheck unit

check: lint typecheck fast

bench: setup
	@for b in bench/*.py; do $(BIN)/python $$b; done

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
