"""``prepare_context`` as the ``context`` commands call it: the template, oned.conf's settings,
the owner and the image templates parsed first, from files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from context.model import ResolvedContext
from context.render import prepare_context
from context.settings import load_settings
from context.template import load_template
from context.vm import load_images, load_user
from imagekit.locations import etc_dir
from imagekit.state import State


def prepare(
    path: Path,
    *,
    state: State,
    etc: Path | None = None,
    user_path: Path | None = None,
    image_paths: Sequence[Path] = (),
    **options: Any,
) -> ResolvedContext:
    if user_path is not None:
        options["user"] = load_user(user_path)
    return prepare_context(
        load_template(path),
        state=state,
        settings=load_settings(etc if etc is not None else etc_dir()),
        base_dir=path.parent,
        images=load_images(image_paths),
        **options,
    )
