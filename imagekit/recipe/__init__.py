"""Recipes: BoxGrinder ``.appl`` and Oz TDL, loaded into one frozen model (:mod:`.model`).

    from imagekit.recipe import load_recipe
    recipe = load_recipe(Path("recipes/debian-12-cloud.tdl"))   # InputError if invalid

Whether a valid recipe can be built here is a separate question: :mod:`.buildable`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from imagekit.errors import InputError
from imagekit.recipe.errors import RecipeErrors
from imagekit.recipe.model import Recipe

APPL_SUFFIXES = (".appl", ".yaml", ".yml")
TDL_SUFFIXES = (".tdl", ".xml")

__all__ = ["APPL_SUFFIXES", "TDL_SUFFIXES", "InputError", "Recipe", "RecipeErrors", "load_recipe"]


def load_recipe(path: Path, *, env: Mapping[str, str] | None = None) -> Recipe:
    """Load a recipe by its suffix. ``env`` backs ``#VAR#`` lookups in ``.appl`` (default: the
    environment's, ``imagekit.environment``)."""
    suffix = path.suffix.lower()
    if suffix in APPL_SUFFIXES:
        from imagekit.recipe.appl import load_appl

        return load_appl(path, env=env)
    if suffix in TDL_SUFFIXES:
        from imagekit.recipe.tdl import load_tdl

        return load_tdl(path)
    known = ", ".join((*APPL_SUFFIXES, *TDL_SUFFIXES))
    raise InputError(f"expected a recipe file ending in one of {known}, got {path.name!r}", where=str(path))
