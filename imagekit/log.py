"""Logging set up once by the CLI, and :func:`step`: a timed, nestable pipeline step.

Library modules log through ``logging.getLogger(__name__)``. Progress of long work goes
through :func:`step`, which prints ``name…`` when it starts and ``name: 3.2 s`` when it ends
(indented when nested), and records the duration so callers can put timings in manifests.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

_depth: ContextVar[int] = ContextVar("imagekit_step_depth", default=0)
progress = logging.getLogger("imagekit.progress")


def setup_logging(verbosity: int = 0, *, quiet: bool = False) -> None:
    """0: progress and warnings; 1 (-v): also every command run; 2 (-vv): everything."""
    level = logging.DEBUG if verbosity >= 1 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for name in ("imagekit", "context", "marketplace"):
        logging.getLogger(name).setLevel(level)
    if verbosity < 2:
        # Command lines are logged by imagekit.run at debug level: shown with -v.
        logging.getLogger("imagekit.run").setLevel(logging.DEBUG if verbosity >= 1 else logging.INFO)
    progress.setLevel(logging.WARNING if quiet else logging.INFO)


@dataclass
class StepTimings:
    """Durations of finished steps, in the order they finished (name → seconds)."""

    seconds: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def step(name: str, timings: StepTimings | None = None) -> Iterator[None]:
    depth = _depth.get()
    indent = "  " * depth
    progress.info("%s%s…", indent, name)
    token = _depth.set(depth + 1)
    start = time.monotonic()
    try:
        yield
    except BaseException:
        progress.info("%s%s: failed after %.1f s", indent, name, time.monotonic() - start)
        raise
    else:
        elapsed = time.monotonic() - start
        progress.info("%s%s: %.1f s", indent, name, elapsed)
        if timings is not None:
            timings.seconds[name] = round(elapsed, 3)
    finally:
        _depth.reset(token)
