"""Machine-readable output for ``--json``: one stable encoding for every command."""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Any


def _default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, datetime | date):
        return obj.isoformat()
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    if isinstance(obj, tuple | frozenset | set):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def to_json(obj: Any, *, indent: int | None = 2) -> str:
    return json.dumps(obj, default=_default, indent=indent, ensure_ascii=False)


def print_json(obj: Any) -> None:
    sys.stdout.write(to_json(obj) + "\n")
