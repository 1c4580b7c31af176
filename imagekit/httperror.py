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


class HttpError(Exception):
    """A request refused: the HTTP status and a one-line message (no server path in it)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> HttpError:
    return HttpError(400, message)
