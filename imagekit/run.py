"""Every external command goes through :func:`run`.

The argv is a list (never a shell string), paths are converted with ``os.fspath``, the
environment is rebuilt from a few variables, stdin is ``/dev/null`` unless input is given, and
the command line is logged (secrets redacted) at debug level. A failure raises
:class:`~imagekit.errors.CommandError` carrying the exit status and the tail of stderr.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from imagekit.errors import CommandError

log = logging.getLogger(__name__)

Argv = Sequence[str | os.PathLike[str]]
# What :func:`run` is, for a step that takes it as a seam: the builder runs mmdebstrap and its
# chroots through one, so its failure paths are tested with a stand-in (tests/builder/standin.py).
Runner = Callable[..., subprocess.CompletedProcess[bytes]]

# Variables passed through from the caller's environment; everything else is dropped so that
# builds do not depend on who runs them.
_PASSTHROUGH = ("PATH", "TERM", "TMPDIR", "HOME", "LIBGUESTFS_BACKEND", "LIBGUESTFS_BACKEND_SETTINGS")
_TAIL_LINES = 20


def minimal_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in _PASSTHROUGH if k in os.environ}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env["LANG"] = "C.UTF-8"
    env["LC_ALL"] = "C.UTF-8"
    if extra:
        env.update(extra)
    return env


def run(
    argv: Argv,
    *,
    input: bytes | None = None,
    capture: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
    check: bool = True,
    step: str | None = None,
    redact: Sequence[str] = (),
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` and return the completed process (stdout/stderr as bytes when captured).

    ``env`` adds to the minimal environment. ``redact`` lists strings (passwords, keys) that
    are replaced by ``***`` in the logged command line. ``step`` names the pipeline step for
    the error message. With ``capture=False`` output goes to our stderr (for long tools whose
    progress the user should see), and only the exit status is checked.
    """
    args = [os.fspath(a) for a in argv]
    shown = shlex.join(args)
    for secret in redact:
        if secret:
            shown = shown.replace(secret, "***")
    log.debug("+ %s", shown)
    try:
        proc = subprocess.run(
            args,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            env=minimal_env(env),
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise CommandError(args, 127, str(exc), step=step) from None
    except subprocess.TimeoutExpired as exc:
        tail = _tail(exc.stderr if isinstance(exc.stderr, bytes) else b"")
        raise CommandError(args, -9, f"{tail}\ntimed out after {timeout:g} s", step=step) from None
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, _tail(proc.stderr or proc.stdout or b""), step=step)
    return proc


def _tail(data: bytes) -> str:
    lines = data.decode("utf-8", "replace").rstrip().splitlines()
    return "\n".join(lines[-_TAIL_LINES:])
