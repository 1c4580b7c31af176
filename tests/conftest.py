"""Shared fixtures. Every test gets its own state and etc-independent environment."""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from imagekit.recipe.model import Recipe

REPO = Path(__file__).resolve().parent.parent
# IMAGEKIT_ANCHORS=/nonexistent runs the suite as a clone that does not sit beside shared/ would.
ANCHORS = Path(os.environ.get("IMAGEKIT_ANCHORS") or REPO.parent / "shared" / "anchors")
ANCHORS_SKIP_REASON = (
    f"reads the original systems' files in {ANCHORS}, which this checkout does not sit beside"
)
# The project's own inputs (recipes, metadata, templates): the features are tested without shared/.
FIXTURES = Path(__file__).resolve().parent / "fixtures"


# Per-test timeout for the marked tiers; everything else gets pyproject's short default.
LONG_TIMEOUTS = {"slow": 1800, "vm": 1800, "browser": 300, "postgres": 300, "sshd": 300}
# Session fixtures that build an image: a test using one is `slow` whether or not it says so.
BUILDING_FIXTURES = frozenset(
    {"minimal_image", "cloud_image", "build_state_dir", "cloud_init_image", "both_agents_image"}
)


# Built images whose package stage another one bootstraps (the same package set): built after
# that one's stage is cached, they take minutes less. Their first user runs after the boots.
SHARES_PACKAGE_STAGE = {"both_agents_image": "cloud_init_image"}


# Fixtures that start a server: a test using one is in that server's tier.
SERVER_FIXTURES = {"pg_server": "postgres", "ssh_lab": "sshd", "ssh_hosts": "sshd"}


# What starts one of the project's servers as a process (or a real client talking to one): a
# test that reaches one of these, directly, through a fixture or through a helper of its own
# module, is in the `server` tier (make test, not make check). Named here, resolved lazily.
SERVER_STARTERS = (
    ("tests.cloud.serving", "cloud_server"),
    ("tests.cloud.serving", "cloud_server_process"),
    ("tests.cloud.serving", "ec2_server"),
    ("tests.cloud.serving", "AwsCli"),
    ("tests.cloud.serving", "aws_program"),
    ("tests.marketplace.serving", "running_server"),
    ("tests.cloud.buildservice_standin", "running"),
)


def _server_starters() -> set[int]:
    import importlib

    return {id(getattr(importlib.import_module(module), name)) for module, name in SERVER_STARTERS}


def _code_names(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_names(const)


def _reaches(function: object, starters: set[int], seen: set[int]) -> bool:
    """Whether ``function`` names a server starter, itself or through the tests' own helpers."""
    function = inspect.unwrap(function)  # type: ignore[arg-type]
    code = getattr(function, "__code__", None)
    if code is None or id(function) in seen:
        return False
    seen.add(id(function))
    module_globals = getattr(function, "__globals__", {})
    names = list(_code_names(code))
    for name in names:
        found = module_globals.get(name)
        if found is None and name.startswith("tests."):  # imported inside the function
            found = sys.modules.get(name)
        if found is None:
            continue
        if isinstance(found, types.ModuleType):  # `from tests.x import y` in the body names both
            found_names = [getattr(found, n) for n in names if hasattr(found, n)]
            if any(id(f) in starters for f in found_names):
                return True
            continue
        if id(found) in starters:
            return True
        if getattr(found, "__module__", "").startswith("tests.") and _reaches(found, starters, seen):
            return True
    return False


def starts_a_server(item: pytest.Item, starters: set[int]) -> bool:
    functions = [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)
    for definitions in getattr(info, "name2fixturedefs", {}).values():
        functions += [definition.func for definition in definitions]
    seen: set[int] = set()
    return any(_reaches(f, starters, seen) for f in functions if f is not None)


# Files this session collected, before -m or -k deselected any (tests/test_collection.py).
COLLECTED_FILES: set[str] = set()


@pytest.hookimpl(tryfirst=True)  # before -m deselects, so `make check` never builds an image
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    starters = _server_starters()
    for item in items:
        if starts_a_server(item, starters) and not item.get_closest_marker("server"):
            item.add_marker(pytest.mark.server)
        if item.path.is_relative_to(REPO):
            COLLECTED_FILES.add(str(item.path.relative_to(REPO)))
        fixtures = set(getattr(item, "fixturenames", ()))
        if BUILDING_FIXTURES & fixtures and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
        for fixture in sorted(fixtures & SERVER_FIXTURES.keys()):
            if not item.get_closest_marker(SERVER_FIXTURES[fixture]):
                item.add_marker(getattr(pytest.mark, SERVER_FIXTURES[fixture]))
        longest = max(
            (LONG_TIMEOUTS[m.name] for m in item.iter_markers() if m.name in LONG_TIMEOUTS), default=0
        )
        if longest and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(longest))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items[:] = costliest_first(items)


def costliest_first(items: list[pytest.Item]) -> list[pytest.Item]:
    """The run's order under pytest-xdist (`make test` hands out one test at a time): the first
    test to use each built image (its build), the other boots of built images, the builds that
    reuse a cached package stage (SHARES_PACKAGE_STAGE), the rest of the
    slow tier (builds, loads), the other VM tests (stand-in disks), the browser and database tiers,
    then the quick tests, each group in collection order. The workers start the builds and
    boots at once and finish together, the quick tests filling the gaps."""
    built: set[str] = set()

    def images_of(item: pytest.Item) -> set[str]:
        return set(BUILDING_FIXTURES & set(getattr(item, "fixturenames", ()))) - {"build_state_dir"}

    in_run = set().union(*map(images_of, items))

    def rank(item: pytest.Item) -> float:
        images = images_of(item)
        if images - built:
            warm = all(SHARES_PACKAGE_STAGE.get(image) in in_run for image in images - built)
            built.update(images)
            return 1.5 if warm else 0  # a warm build: after the cold ones and the boots
        marks = {m.name for m in item.iter_markers()}
        if images and "vm" in marks:
            return 1
        for n, tier in enumerate(("slow", "vm", "browser", "postgres", "sshd", "server"), 2):
            if tier in marks:
                return n
        return 7

    ranks = [rank(item) for item in items]  # in collection order: "first to use" is well defined
    return [item for _, _, item in sorted(zip(ranks, range(len(items)), items, strict=True))]


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the state directory at a temp dir so no test touches ~/.local/share/imagekit."""
    state = tmp_path / "state"
    monkeypatch.setenv("IMAGEKIT_STATE", str(state))
    return state


@pytest.fixture(autouse=True)
def _root_log_handlers() -> Iterator[None]:
    """``main()`` points the root logger at the sys.stderr of its call, which under capsys is a
    stream pytest closes after the test; a later test's log line would then hit a closed file."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@pytest.fixture(autouse=True)
def _cheap_password_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Password hashes made in this process cost scrypt N=16 instead of the site's 2**14: every
    test creates users and logs in, and at ~50 ms a hash that was a fifth of the fast tier. The
    cost is stored in each hash, so checking is the same code; tests/cloud/test_users.py checks
    the real cost, and servers started as processes keep it."""
    import cloud.users

    monkeypatch.setattr(cloud.users, "PASSWORD_COST", cloud.users.ScryptCost(16, 8, 1))


@pytest.fixture
def anchors() -> Path:
    """The original systems' files in ../shared/anchors; the test is skipped, saying why, without them."""
    if not ANCHORS.is_dir():
        pytest.skip(ANCHORS_SKIP_REASON)
    return ANCHORS


# --- images built once per run (builder, issue 4); boot tests use them -----------------------
# With pytest-xdist every worker is a session of its own: the first worker to ask for an image
# builds it under a lock in the run's shared directory, the others wait and take its record.
# No test writes to these files (boots use snapshot=on or a copy-on-write overlay).


@dataclass(frozen=True)
class BuiltImage:
    path: Path  # the qcow2 image
    manifest: Path
    firmware: str  # "bios", "uefi" or "hybrid"


def run_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory shared by every worker of this run (xdist's workers' common parent), else the
    session's own temporary directory."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def build_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, recipe: Recipe, state_dir: Path
) -> BuiltImage:
    """``recipe`` built in the first worker that asks for ``name``; its record for the rest (a
    failed build fails them too, with its error, instead of being tried again)."""
    from imagekit.locks import exclusive

    shared = run_directory(tmp_path_factory) / "images"
    record = shared / f"{name}.json"
    with exclusive(shared / f"{name}.lock"):
        if record.exists():
            done = json.loads(record.read_text())
            if "error" in done:
                pytest.fail(f"building {name} failed in another worker: {done['error']}", pytrace=False)
            return BuiltImage(Path(done["path"]), Path(done["manifest"]), done["firmware"])
        try:
            built = _build(recipe, shared / name, state_dir)
        except BaseException as exc:
            record.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
            raise
        record.write_text(json.dumps({"path": str(built.path), "manifest": str(built.manifest),
                                      "firmware": built.firmware}))  # fmt: skip
        return built


@pytest.fixture(scope="session")
def build_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One state directory (and so one package cache) for every image built in the run."""
    state = run_directory(tmp_path_factory) / "imagekit-build-state"
    state.mkdir(exist_ok=True)
    return state


def _build(recipe: Recipe, out: Path, state_dir: Path) -> BuiltImage:
    from imagekit.builder import BuildOptions, build_image
    from imagekit.recipe.model import OutputFormat
    from imagekit.state import State

    result = build_image(recipe, BuildOptions(output_dir=out), state=State.open(state_dir))
    return BuiltImage(result.output(OutputFormat.QCOW2), result.manifest, result.firmware.value)


def shipped(recipe_name: str) -> Recipe:
    from imagekit.recipe import load_recipe

    return load_recipe(REPO / "recipes" / recipe_name)


@pytest.fixture(scope="session")
def minimal_image(tmp_path_factory: pytest.TempPathFactory, build_state_dir: Path) -> BuiltImage:
    """recipes/debian-12-minimal.appl built for BIOS (qcow2 and raw)."""
    return build_once(tmp_path_factory, "minimal-image", shipped("debian-12-minimal.appl"), build_state_dir)


@pytest.fixture(scope="session")
def cloud_image(tmp_path_factory: pytest.TempPathFactory, build_state_dir: Path) -> BuiltImage:
    """recipes/debian-12-cloud.tdl built for hybrid BIOS+UEFI boot (qcow2)."""
    return build_once(tmp_path_factory, "cloud-image", shipped("debian-12-cloud.tdl"), build_state_dir)
