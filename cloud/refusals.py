"""What a front door may tell a client about a refusal: never a path on this host.

    Response(public_message(str(err)), 400)   # ".../state/occi/uploads/.tmp-x.part: …" → ".tmp-x.part: …"

Errors raised below the front doors name the files they concern (``where``, qemu-img's own
messages, a template's location), which is right for the command line and the server's log
but tells a remote user where the state directory, the configuration and other users' files
live. Every message a front door answers goes through ``public_message``: each absolute path
is cut to its last component, which still says which file (an image, a template) was at
fault. URLs are left whole (the ``//`` of ``scheme://`` is not a path start), as are request
paths a front door writes itself (``POST /compute``), which never go through here. Which
errors are refusals (4xx) and which are the server's faults (500) is each door's mapping.
"""

from __future__ import annotations

import re

# An absolute path: a "/" not preceded by a word character, "/", "." or "~", nor by the ":" of
# a URL's "scheme://" (a "file:/x" or "unix:/x" is a path), then components up to a character
# that ends a path in prose (space, quote, bracket, ":").
_ABSOLUTE_PATH = re.compile(
    r"(?:(?<=:)(?!//)|(?<![\w:/.~-]))/+(?:[^\s'\"<>:,;()\[\]{}/]+/+)*([^\s'\"<>:,;()\[\]{}/]+)"
)

_FILE_URL = re.compile(r"\bfile://(?=/)", re.IGNORECASE)


def public_message(message: str) -> str:
    """``message`` with every absolute path replaced by its last component."""
    local = _FILE_URL.sub("file:", message)  # file:///x names a path of this host, as /x does
    return _ABSOLUTE_PATH.sub(lambda m: m.group(1), local)
