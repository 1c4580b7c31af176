"""Which valid recipes can be built here: Debian releases from Debian's archive.

A CentOS, Fedora or Windows recipe loads and shows fine; asking to build it fails here with
one line that names the OS and lists what can be built.

    debian_suite(recipe)   # "bookworm" for os Debian/debian + 12/bookworm, else InputError
    debian_arch(recipe)    # "amd64" for x86_64
"""

from __future__ import annotations

import re

from imagekit.errors import InputError
from imagekit.recipe.model import Recipe

SUITES = {"11": "bullseye", "12": "bookworm", "13": "trixie"}
ARCHES = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "i386": "i386",
    "ppc64le": "ppc64el",
    "s390x": "s390x",
    "armv7l": "armhf",
}
BUILDABLE = ", ".join(f"Debian {number} ({name})" for number, name in SUITES.items())


def debian_suite(recipe: Recipe) -> str:
    """The Debian suite to bootstrap; ``debian``/``Debian`` with ``12``, ``12.5`` or ``bookworm``."""
    name, version = recipe.os.name.strip(), recipe.os.version.strip().lower()
    if name.lower() == "debian":
        number = re.sub(r"^(\d+)(\.\d+)*$", r"\1", version)
        if number in SUITES:
            return SUITES[number]
        if version in SUITES.values():
            return version
    shown = f"{name} {recipe.os.version}".strip() or "a recipe without an os"
    raise InputError(
        f"os: cannot build {shown} here: expected one of {BUILDABLE} from Debian's archive",
        where=str(recipe.source_path.name),
    )


def debian_arch(recipe: Recipe) -> str:
    """Debian's name for the recipe's architecture (``x86_64`` → ``amd64``)."""
    if recipe.os.arch in ARCHES:
        return ARCHES[recipe.os.arch]
    raise InputError(
        f"os.arch: cannot build for {recipe.os.arch} here: expected one of {', '.join(ARCHES)}",
        where=str(recipe.source_path.name),
    )
