"""Where imagekit keeps things: the state directory and the configuration directory.

Both are injectable (a CLI flag or an environment variable), so tests and several users can
run side by side without root and without touching ``~``.
"""

from __future__ import annotations

import os
from pathlib import Path

STATE_ENV = "IMAGEKIT_STATE"
ETC_ENV = "IMAGEKIT_ETC"


def state_dir(explicit: Path | None = None) -> Path:
    """``--state DIR``, else ``$IMAGEKIT_STATE``, else ``$XDG_DATA_HOME/imagekit``."""
    if explicit is not None:
        return explicit
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV])
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "imagekit"


def etc_dir(explicit: Path | None = None) -> Path:
    """``$IMAGEKIT_ETC``, else ``/etc/imagekit`` when it exists, else the checkout's ``etc/``."""
    if explicit is not None:
        return explicit
    if os.environ.get(ETC_ENV):
        return Path(os.environ[ETC_ENV])
    system = Path("/etc/imagekit")
    if system.is_dir():
        return system
    return Path(__file__).resolve().parent.parent / "etc"
