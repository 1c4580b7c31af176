"""Collecting every error of a recipe file, so one run reports them all.

problems = Problems()
problems.add("web.appl:3:5", "hardware.memory", "expected a multiple of 64, got 1000")
problems.raise_if_any()   # RecipeErrors, or the single InputError when there is one
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from imagekit.errors import InputError


class RecipeErrors(InputError):
    """Several errors in one recipe; ``str()`` is one line per error."""

    def __init__(self, errors: list[InputError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


class Problems:
    """An ordered list of input errors, each ``WHERE: dotted.path: expected X, got Y``."""

    def __init__(self) -> None:
        self.errors: list[InputError] = []

    def add(self, where: str, path: str, message: str) -> None:
        self.errors.append(InputError(f"{path}: {message}" if path else message, where=where))

    def extend(self, err: InputError) -> None:
        self.errors.extend(err.errors if isinstance(err, RecipeErrors) else [err])

    def __bool__(self) -> bool:
        return bool(self.errors)

    def raise_if_any(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise RecipeErrors(self.errors)


def unknown_key(word: str, choices: Iterable[str]) -> str:
    """The message for an unknown key: what was allowed, what came, and a did-you-mean."""
    allowed = sorted(choices)
    close = difflib.get_close_matches(word, allowed, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"expected one of {', '.join(allowed)}, got unknown key {word!r}{hint}"


def shown(value: object) -> str:
    """A value as error messages quote it: short and on one line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
