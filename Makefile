# Two commands for a newcomer: `make demo` and `make test`. Both install what is missing first.
# `make check` is the developer's fast tier: lint, types and every test that needs no image
# build, VM boot, browser, database, imagekit or SSH server
# (markers slow, vm, browser, postgres, server, sshd).
VENV := .venv
BIN := $(VENV)/bin
# Both run on every core (pytest-xdist), one test handed out at a time in tests/conftest.py's
# order (costliest first): image builds and boots overlap, and the workers finish together.
# One worker more than cores: builds wait on the Debian archive, servers and SSH hosts on
# sockets, and a worker per core left a fifth of the CPU idle in the suite's last minutes
# (2 cores: make test's pytest 721-742 s with 2 workers, 688 s with 3, 733 s with 4).
WORKERS := $(shell echo $$(( $$(nproc) + 1 )))
PARALLEL := -n $(WORKERS) --dist load --maxschedchunk 1

# Python caches compiled modules (and pytest its rewritten tests) in __pycache__ unless told not
# to: a shell that sets PYTHONDONTWRITEBYTECODE makes every process, each test worker and each
# `imagekit` a test starts, compile everything again.
unexport PYTHONDONTWRITEBYTECODE

# The tests' scratch files go to /dev/shm when it is a tmpfs with room (16 GiB free, not noexec):
# the suite writes gigabytes of images, overlays, caches and host copies that live for seconds,
# and on the disk each byte also costs the kernel's block layer CPU the guests and builds need.
TEST_TMPDIR := $(shell findmnt -bno FSTYPE,AVAIL,OPTIONS /dev/shm 2>/dev/null | \
	awk '$$1 == "tmpfs" && $$2 >= 16 * 2^30 && $$3 !~ /noexec/ { print "/dev/shm"; exit }')
PYTEST := $(if $(TEST_TMPDIR),TMPDIR=$(TEST_TMPDIR) )$(BIN)/pytest

.PHONY: setup demo test check lint typecheck docs unit fast bench clean
FAST := not slow and not vm and not browser and not postgres and not server and not sshd

setup:
	@tools/setup

demo: setup
	@$(BIN)/python tools/demo.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

# The documentation (docs/): Sphinx, every warning an error; -E re-reads every page, so the CLI
# reference is rendered from the parser as it is now.
docs: setup
	$(BIN)/sphinx-build -W --keep-going -E -q -b html docs docs/_html

unit: setup
	$(PYTEST) $(PARALLEL)

fast: setup
	$(PYTEST) $(PARALLEL) -m "$(FAST)"

# The static checks are each one process on one core: they run side by side, then the tests.
test: setup
	@$(MAKE) --no-print-directory -j3 --output-sync=target lint typecheck docs
	@$(MAKE) --no-print-directory unit

check: setup
	@$(MAKE) --no-print-directory -j2 --output-sync=target lint typecheck
	@$(MAKE) --no-print-directory fast

bench: setup
	@for b in bench/*.py; do $(BIN)/python $$b; done

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache docs/_html
