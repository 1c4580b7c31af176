"""Recipe content sources (raw, base64, url, local) turned into bytes, once, at build time.

    data = content_bytes(ContentSource.URL, "https://example.org/motd", what="file /etc/motd")

A URL that cannot be fetched is an :class:`~imagekit.errors.InputError` naming the URL and the
recipe item that wanted it, so the author knows which line to fix.
"""

from __future__ import annotations

import base64
import binascii
import urllib.error
import urllib.request
from pathlib import Path

from imagekit.errors import InputError, NetworkError
from imagekit.recipe.model import ContentSource

FETCH_TIMEOUT = 30.0


def content_bytes(
    source: ContentSource, content: str, *, what: str, timeout: float = FETCH_TIMEOUT
) -> bytes:
    """The bytes ``content`` stands for; ``what`` names the recipe item in error messages."""
    if source is ContentSource.RAW:
        return content.encode()
    if source is ContentSource.BASE64:
        try:
            return base64.b64decode("".join(content.split()), validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"{what}: content is not valid base64") from None
    if source is ContentSource.LOCAL:
        try:
            return Path(content).read_bytes()
        except OSError as exc:
            raise InputError(f"{what}: cannot read {content}: {exc.strerror}") from None
    return fetch(content.strip(), what=what, timeout=timeout)


def fetch(url: str, *, what: str, timeout: float = FETCH_TIMEOUT) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data: bytes = response.read()
            return data
    except urllib.error.HTTPError as exc:  # it answered: the recipe names a URL that is not there
        raise InputError(f"{what}: cannot fetch {url}: {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NetworkError(f"{what}: cannot fetch {url}: {reason}") from None
    except ValueError as exc:
        raise InputError(f"{what}: cannot fetch {url}: {exc}") from None
