"""Anchor recipe files, shared by the recipe tests.

The lists are empty when the checkout does not sit beside shared/; `anchor_params()` then gives one
skipped parameter that says why, so the parametrized anchor tests report a skip instead of vanishing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ..conftest import ANCHORS as ANCHORS  # re-exported for the recipe tests
from ..conftest import ANCHORS_SKIP_REASON, FIXTURES

REPO = Path(__file__).resolve().parents[2]
APPL_ANCHORS = sorted((ANCHORS / "boxgrinder" / "examples").rglob("*.appl"))
TDL_ANCHORS = sorted((ANCHORS / "oz" / "examples").glob("*.tdl"))
SHIPPED = sorted([*(REPO / "recipes").rglob("*.appl"), *(REPO / "recipes").rglob("*.tdl")])
# The project's own recipes: inheritance, #VAR# substitution, TDL commands, files, repositories.
OWN = sorted([*(FIXTURES / "recipes").rglob("*.appl"), *(FIXTURES / "recipes").rglob("*.tdl")])


def anchor_params(anchors: list[Path]) -> list[Any]:
    """`anchors` as parameters, or one skipped parameter naming the missing directory."""
    if ANCHORS.is_dir():
        return list(anchors)
    return [pytest.param(None, id="anchors", marks=pytest.mark.skip(reason=ANCHORS_SKIP_REASON))]


def anchor_id(path: Path) -> str:
    if path.is_relative_to(ANCHORS):
        return str(path.relative_to(ANCHORS))
    return str(path.relative_to(REPO))
