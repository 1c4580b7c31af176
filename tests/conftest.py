"""Shared fixtures. Every test gets its own state and etc-independent environment."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ANCHORS = REPO.parent / "shared" / "anchors"


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the state directory at a temp dir so no test touches ~/.local/share/imagekit."""
    state = tmp_path / "state"
    monkeypatch.setenv("IMAGEKIT_STATE", str(state))
    return state


@pytest.fixture
def anchors() -> Path:
    if not ANCHORS.is_dir():
        pytest.fail(f"anchors not found at {ANCHORS}: the checkout must sit beside shared/")
    return ANCHORS
