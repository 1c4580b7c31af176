"""The one HTTP refusal both servers raise: the registry (``marketplace/server.py``) and the
OCCI front door (``cloud/occi/``).

    raise HttpError(404, "no metadata entry …")
    raise bad_request("COMPUTE/NAME is missing")

Handlers raise it anywhere below a request; each server's error handler turns it into an
answer in its own representation (the registry negotiates XML, JSON or HTML; OCCI answers
one line of text). It is not an :class:`imagekit.errors.ImagekitError`: it is an answer to a
network client, never something the CLI prints, and a server must not mistake one for the
other (an ``ImagekitError`` left unhandled in the registry is its 500).
"""

from __future__ import annotations

import base64
import binascii


class HttpError(Exception):
    """A request refused: the HTTP status and a one-line message (no server path in it)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> HttpError:
    return HttpError(400, message)


def basic_credentials(encoded: str) -> tuple[str, str]:
    """The name and password of HTTP Basic's base64 ``name:password`` (a 401 when malformed)."""
    try:
        name, sep, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise HttpError(401, "malformed HTTP Basic credentials") from None
    if not sep:
        raise HttpError(401, "malformed HTTP Basic credentials")
    return name, password
