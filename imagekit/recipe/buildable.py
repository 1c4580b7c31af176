"""Which valid recipes can be built here: the one gate between loading a recipe and building it.

A CentOS, Fedora or Windows recipe loads and shows fine; asking to build it fails here with
one line that names the OS and lists what can be built. ``check_buildable`` runs before any
work (``imagekit.builder.build_image``) and reports every reason at once, each at the
``FILE:LINE:COL`` where it was written (``Recipe.locations``) with its key path: the OS and the
architecture, the kernel, package groups, repositories, partitions and file destinations. The
builder's steps then take what they check as given.

    check_buildable(recipe, Firmware.BIOS)   # InputError (RecipeErrors for several), or None
    debian_suite(recipe)   # "bookworm" for os Debian/debian + 12/bookworm, else InputError
    debian_arch(recipe)    # "amd64" for x86_64
"""

from __future__ import annotations

import re
from collections.abc import Callable

from imagekit.diskimage import Firmware
from imagekit.errors import InputError
from imagekit.recipe.errors import Problems
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
# The architectures images are built for here (the builder bootstraps amd64 only).
BUILT_ARCHES = {"x86_64": "amd64", "amd64": "amd64"}
KERNELS = {"cloud": "linux-image-cloud-amd64", "generic": "linux-image-amd64"}
# BoxGrinder/Fedora comps groups and their nearest Debian equivalent. Groups that name the
# base system map to nothing: the builder's boot set already is Debian's minimal bootable system.
GROUPS: dict[str, tuple[str, ...]] = {
    "core": (),
    "base": ("ca-certificates", "less", "nano", "sudo", "iproute2", "iputils-ping", "procps", "curl"),
    "standard": ("ca-certificates", "less", "nano", "sudo", "iproute2", "iputils-ping", "procps", "curl"),
    "minimal": (),
    "buildsys-build": ("build-essential",),
    "development-tools": ("build-essential", "git", "gdb"),
    "web-server": ("apache2",),
    "mysql": ("mariadb-server",),
    "postgresql": ("postgresql",),
}
BOOT_MOUNT = "/boot/efi"  # the partition the builder makes itself
EXT_TYPES = ("ext2", "ext3", "ext4")
MBR_PARTITIONS = 4


def where(recipe: Recipe, path: str) -> str:
    """``FILE:LINE:COL`` of ``path`` (or of the nearest enclosing key recorded), else the file."""
    while path:
        if path in recipe.locations:
            return recipe.locations[path]
        path = path.rsplit(".", 1)[0] if "." in path else ""
    return recipe.source_path.name


def check_buildable(recipe: Recipe, firmware: Firmware | None = None) -> None:
    """Every reason ``recipe`` cannot be built here with ``firmware`` (default: the recipe's)."""
    problems = Problems()

    def refuse(path: str, message: str) -> None:
        problems.add(where(recipe, path), path, message)

    try:
        debian_suite(recipe)
    except InputError as err:
        problems.extend(err)
    if recipe.os.arch not in BUILT_ARCHES:
        refuse("os.arch", f"expected x86_64, got {recipe.os.arch!r} (only amd64 images are built)")
    if recipe.kernel_flavour not in KERNELS:
        refuse("kernel", f"expected one of {', '.join(KERNELS)}, got {recipe.kernel_flavour!r}")
    for package in recipe.packages:
        name = package.name.strip()
        if name.startswith("@") and name[1:].strip().lower() not in GROUPS:
            known = ", ".join(f"@{g}" for g in GROUPS)
            refuse(
                f"packages.{package.name}",
                f"group {name!r} has no Debian equivalent (known groups: {known})",
            )
    for repo in recipe.repositories:
        path = f"repositories.{repo.name}"
        words = repo.url.split()
        if repo.mirrorlist and not repo.url:
            refuse(path, "mirrorlist is a yum feature; give a baseurl for apt")
        elif not words or words[0].split(":", 1)[0] not in ("http", "https", "ftp", "file"):
            refuse(path, f"expected an http(s), ftp or file URL, got {repo.url!r}")
    for item in recipe.files:
        if not item.path.startswith("/"):
            refuse("files", f"expected an absolute destination path, got {item.path!r}")
    _check_partitions(recipe, firmware or recipe.firmware, refuse)
    problems.raise_if_any()


def _check_partitions(recipe: Recipe, firmware: Firmware, refuse: Callable[[str, str], None]) -> None:
    seen: set[str] = set()
    extras = 0
    for part in recipe.disk.partitions:
        mount = part.mount if part.mount == "swap" else "/" + part.mount.strip("/")
        path = f"hardware.partitions.{part.mount}"
        if mount in seen:
            refuse("hardware.partitions", f"mount point {mount!r} given twice")
        seen.add(mount)
        if part.fstype not in (*EXT_TYPES, "swap"):
            refuse(f"{path}.type", f"expected ext2, ext3, ext4 or swap, got {part.fstype!r}")
        elif mount == "/" and part.fstype not in EXT_TYPES:
            refuse(f"{path}.type", f"expected ext4, got {part.fstype!r}")
        if part.passphrase:
            refuse(f"{path}.passphrase", "encrypted partitions are not supported")
        if mount == BOOT_MOUNT:
            refuse(path, f"{BOOT_MOUNT} is the boot partition imagekit makes")
        elif mount != "/":
            extras += 1
    # The boot partition, the extras and the root: an MBR table has room for four.
    if not firmware.boots_uefi() and 1 + extras + 1 > MBR_PARTITIONS:
        refuse("hardware.partitions", "an MBR disk holds 4 partitions; use firmware uefi or hybrid (GPT)")


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
        where=where(recipe, "os"),
    )


def debian_arch(recipe: Recipe) -> str:
    """Debian's name for the recipe's architecture (``x86_64`` → ``amd64``)."""
    if recipe.os.arch in ARCHES:
        return ARCHES[recipe.os.arch]
    raise InputError(
        f"os.arch: cannot build for {recipe.os.arch} here: expected one of {', '.join(ARCHES)}",
        where=where(recipe, "os.arch"),
    )
