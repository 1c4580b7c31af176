"""One small exception tree, split by who is at fault.

- :class:`InputError`: the user's input is wrong (a recipe, a template, a flag, a path).
- :class:`DataError`: data we read is bad or corrupt (an image, a metadata entry, a state DB).
- :class:`CommandError`: an external tool failed.
- :class:`VerificationError`: a signature, checksum or trust rule does not hold.
- :class:`NetworkError`: a server could not be reached, or the exchange with it broke off.

Library code raises these; only the CLI turns them into exit codes and one-line messages.
Bugs stay plain Python exceptions and keep their tracebacks.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from pathlib import Path


class ImagekitError(Exception):
    """Base of every error a user may see; ``str(err)`` is the one-line message."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class InputError(ImagekitError):
    """The caller's input is invalid. ``where`` is ``FILE:LINE:COL`` (or a prefix of it)."""

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None) -> None:
        super().__init__(f"{where}: {message}" if where else message, hint=hint)
        self.where = where
        self.reason = message


class DataError(ImagekitError):
    """Data we read (an image, a metadata entry, a database) is malformed or inconsistent."""


class VerificationError(ImagekitError):
    """A signature, checksum, certificate or policy rule failed. ``rule`` names which."""

    def __init__(self, message: str, *, rule: str, hint: str | None = None) -> None:
        super().__init__(f"{rule}: {message}", hint=hint)
        self.rule = rule
        self.reason = message


class NetworkError(ImagekitError):
    """A server could not be reached or the exchange broke off (refused, timed out, reset, a TLS
    handshake that failed). Nobody's input is at fault and no data was judged: the same command
    may work later, or against another address. A server that answers and refuses is not this."""


class CommandError(ImagekitError):
    """An external command exited non-zero (or could not be started)."""

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        returncode: int,
        stderr_tail: str = "",
        *,
        step: str | None = None,
    ) -> None:
        self.argv = [os.fspath(a) for a in argv]
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        self.step = step
        super().__init__(self._describe(), hint=self._hint())

    def _describe(self) -> str:
        tool = Path(self.argv[0]).name if self.argv else "?"
        prefix = f"{self.step}: " if self.step else ""
        if self.returncode == 127:
            status = "not found"
        elif self.returncode < 0:
            try:
                status = f"killed by {signal.Signals(-self.returncode).name}"
            except ValueError:
                status = f"killed by signal {-self.returncode}"
        else:
            status = f"exited with status {self.returncode}"
        last = self.stderr_tail.strip().splitlines()[-1:] if self.stderr_tail.strip() else []
        tail = f": {last[0]}" if last else ""
        return f"{prefix}{tool} {status}{tail}"

    def _hint(self) -> str | None:
        if self.returncode == 127:
            return "the tool is not installed; run `make setup`"
        return None
