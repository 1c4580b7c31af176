"""Whether a URL lies inside one of a set of base URLs: the same scheme, host and port, and a
path under the base's path, segment by segment.

    within("https://market.example.org/reg/metadata/ID", ("https://market.example.org/reg",))  # True

A cloud user's image may come only from the site's registries and mirrors (issue 17, point 4);
this is the one test of "from there", used before any connection and on every redirect. A URL
with credentials (``user@host``), a backslash, or a ``.``/``..`` segment (raw or %-encoded) is
never inside anything: those are how a URL that looks like the registry reaches elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import SplitResult, unquote, urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443, "file": None}


def _parts(url: str) -> tuple[str, str, int | None, list[str]] | None:
    try:
        split: SplitResult = urlsplit(url.strip())
        port = split.port
    except ValueError:  # a port that is no number, or out of range
        return None
    scheme = split.scheme.lower()
    if scheme not in DEFAULT_PORTS or "@" in split.netloc or "\\" in url:
        return None
    segments = [unquote(s) for s in split.path.split("/")]
    if any(s in (".", "..") or "/" in s or "\\" in s for s in segments):
        return None
    host = (split.hostname or "").lower()
    return scheme, host, port if port is not None else DEFAULT_PORTS[scheme], [s for s in segments if s]


def within(url: str, bases: Iterable[str]) -> bool:
    """Whether ``url`` is one of ``bases`` or below one of them."""
    wanted = _parts(url)
    if wanted is None:
        return False
    for base in bases:
        allowed = _parts(base)
        if allowed is None:
            continue
        if wanted[:3] == allowed[:3] and wanted[3][: len(allowed[3])] == allowed[3]:
            return True
    return False
