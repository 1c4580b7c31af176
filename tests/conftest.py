"""Shared fixtures. Every test gets its own state and etc-independent environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# IMAGEKIT_ANCHORS=/nonexistent runs the suite as a clone that does not sit beside shared/ would.
ANCHORS = Path(os.environ.get("IMAGEKIT_ANCHORS") or REPO.parent / "shared" / "anchors")
ANCHORS_SKIP_REASON = (
    f"reads the original systems' files in {ANCHORS}, which this checkout does not sit beside"
)
# The project's own inputs (recipes, metadata, templates): the features are tested without shared/.
FIXTURES = Path(__file__).resolve().parent / "fixtures"


# Per-test timeout for the marked tiers; everything else gets pyproject's short default.
LONG_TIMEOUTS = {"slow": 1800, "vm": 1800, "browser": 300, "postgres": 300}
# Session fixtures that build an image: a test using one is `slow` whether or not it says so.
BUILDING_FIXTURES = frozenset({"minimal_image", "cloud_image", "build_state_dir"})


# Files this session collected, before -m or -k deselected any (tests/test_collection.py).
COLLECTED_FILES: set[str] = set()


@pytest.hookimpl(tryfirst=True)  # before -m deselects, so `make check` never builds an image
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(REPO):
            COLLECTED_FILES.add(str(item.path.relative_to(REPO)))
        builds = BUILDING_FIXTURES & set(getattr(item, "fixturenames", ()))
        if builds and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
        longest = max(
            (LONG_TIMEOUTS[m.name] for m in item.iter_markers() if m.name in LONG_TIMEOUTS), default=0
        )
        if longest and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(longest))


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the state directory at a temp dir so no test touches ~/.local/share/imagekit."""
    state = tmp_path / "state"
    monkeypatch.setenv("IMAGEKIT_STATE", str(state))
    return state


@pytest.fixture
def anchors() -> Path:
    """The original systems' files in ../shared/anchors; the test is skipped, saying why, without them."""
    if not ANCHORS.is_dir():
        pytest.skip(ANCHORS_SKIP_REASON)
    return ANCHORS


# --- images built once per session (builder, issue 4); boot tests use them -------------------


@dataclass(frozen=True)
class BuiltImage:
    path: Path  # the qcow2 image
    manifest: Path
    firmware: str  # "bios", "uefi" or "hybrid"


@pytest.fixture(scope="session")
def build_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One state directory (and so one package cache) for every image built in the session."""
    return tmp_path_factory.mktemp("imagekit-build-state")


def _build_shipped(recipe_name: str, out: Path, state_dir: Path) -> BuiltImage:
    from imagekit.builder import BuildOptions, build_image
    from imagekit.recipe import load_recipe
    from imagekit.recipe.model import OutputFormat
    from imagekit.state import State

    recipe = load_recipe(REPO / "recipes" / recipe_name)
    result = build_image(recipe, BuildOptions(output_dir=out), state=State.open(state_dir))
    qcow2 = next(o.path for o in result.outputs if o.format is OutputFormat.QCOW2)
    return BuiltImage(qcow2, result.manifest, result.firmware.value)


@pytest.fixture(scope="session")
def minimal_image(tmp_path_factory: pytest.TempPathFactory, build_state_dir: Path) -> BuiltImage:
    """recipes/debian-12-minimal.appl built for BIOS (qcow2 and raw)."""
    out = tmp_path_factory.mktemp("minimal-image")
    return _build_shipped("debian-12-minimal.appl", out, build_state_dir)


@pytest.fixture(scope="session")
def cloud_image(tmp_path_factory: pytest.TempPathFactory, build_state_dir: Path) -> BuiltImage:
    """recipes/debian-12-cloud.tdl built for hybrid BIOS+UEFI boot (qcow2)."""
    return _build_shipped("debian-12-cloud.tdl", tmp_path_factory.mktemp("cloud-image"), build_state_dir)
