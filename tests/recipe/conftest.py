"""Anchor recipe files, shared by the recipe tests."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ANCHORS = REPO.parent / "shared" / "anchors"
APPL_ANCHORS = sorted((ANCHORS / "boxgrinder" / "examples").rglob("*.appl"))
TDL_ANCHORS = sorted((ANCHORS / "oz" / "examples").glob("*.tdl"))
SHIPPED = sorted([*(REPO / "recipes").rglob("*.appl"), *(REPO / "recipes").rglob("*.tdl")])


def anchor_id(path: Path) -> str:
    return str(path.relative_to(ANCHORS)) if path.is_relative_to(ANCHORS) else str(path.relative_to(REPO))
