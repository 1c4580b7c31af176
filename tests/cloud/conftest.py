"""Fixtures of the cloud tests (see blank.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .blank import BlankLab, make_blank_lab


@pytest.fixture
def blank_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> BlankLab:
    monkeypatch.setenv("IMAGEKIT_ACCEL", "tcg")
    return make_blank_lab(tmp_path)
