"""The normalised recipe: one stable JSON text (sorted keys) and its sha256.

    recipe_json(recipe)   # what `imagekit recipe show --json` prints; diffable
    recipe_hash(recipe)   # sha256 hex of recipe_json(recipe)
    recipe_dict(recipe)   # the same as plain data, for callers that hash only some parts

Nothing in it depends on where the checkout is: the source path is reduced to its file name
and local file sources inside the recipe's directory become relative to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from enum import Enum
from pathlib import Path
from typing import Any

from imagekit.recipe.model import ContentSource, Recipe


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def recipe_dict(recipe: Recipe) -> dict[str, Any]:
    data: dict[str, Any] = _plain(dataclasses.asdict(recipe))
    del data["locations"]  # where it was written is not what it is
    base = recipe.source_path.parent
    data["source_path"] = recipe.source_path.name
    data["variables"] = {name: value for name, value in recipe.variables}
    for file, raw in zip(recipe.files, data["files"], strict=True):
        if file.source is ContentSource.LOCAL and Path(file.content).is_relative_to(base):
            raw["content"] = os.path.relpath(file.content, base)
    return data


def recipe_json(recipe: Recipe) -> str:
    return json.dumps(recipe_dict(recipe), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def recipe_hash(recipe: Recipe) -> str:
    return hashlib.sha256(recipe_json(recipe).encode()).hexdigest()
