"""Where imagekit keeps things: the state directory and the configuration directory.

Both are injectable (a CLI flag or an environment variable), so tests and several users can
run side by side without root and without touching ``~``. The directories that hold secrets
and other users' files (state, runtime sockets, VM directories, uploads) are made and checked
by ``private_directory``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from imagekit import environment
from imagekit.errors import InputError

STATE_ENV = "IMAGEKIT_STATE"
ETC_ENV = "IMAGEKIT_ETC"


def state_dir(explicit: Path | None = None) -> Path:
    """``--state DIR``, else ``$IMAGEKIT_STATE``, else ``$XDG_DATA_HOME/imagekit``."""
    if explicit is not None:
        return explicit
    env = environment.current()
    if env.state:
        return Path(env.state)
    return Path(env.data_home or Path.home() / ".local" / "share") / "imagekit"


def etc_dir(explicit: Path | None = None) -> Path:
    """``$IMAGEKIT_ETC``, else ``/etc/imagekit`` when it exists, else the checkout's ``etc/``."""
    if explicit is not None:
        return explicit
    if (etc := environment.current().etc) is not None:
        return Path(etc)
    system = Path("/etc/imagekit")
    if system.is_dir():
        return system
    return Path(__file__).resolve().parent.parent / "etc"


def private_directory(path: Path) -> Path:
    """``path`` as a directory only this user can enter: made 0700 when missing (parents as the
    umask makes them), refused when it (or what a symlink there points to) is owned by another
    user or is group- or world-writable: whoever could write in it could swap a socket, an
    overlay or the database under us (``/tmp/imagekit-UID-…`` can be made by anyone first)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
    except OSError as exc:
        raise InputError(f"cannot create the directory: {exc.strerror}", where=str(path)) from None
    if not stat.S_ISDIR(info.st_mode):
        raise InputError("refused: not a directory", where=str(path))
    if info.st_uid != os.geteuid():
        raise InputError(f"refused: the directory is owned by uid {info.st_uid}, not by us", where=str(path))
    if info.st_mode & 0o022:
        raise InputError(
            f"refused: the directory is group- or world-writable (mode {info.st_mode & 0o777:o})",
            where=str(path),
            hint=f"chmod 700 {path}",
        )
    return path
