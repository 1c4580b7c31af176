"""Install the context agent (and a few settings) into an existing image through libguestfs.

    result = customize(Path("vendor.qcow2"), Customization(agent=True, hostname="web-1"))

Nothing is written until the image has been checked: it must be a systemd Linux and have
every command the agent runs (:data:`imagekit.agent.AGENT_COMMANDS`). Missing ones are an
error naming the Debian packages to install, because the appliance has no network and
installing packages offline is not possible in general. With ``output`` the image is first
copied there (atomically: a failure leaves nothing at ``output``); otherwise it changes in place.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from imagekit.agent import AGENT_COMMANDS, AGENT_FILES, AGENT_PACKAGES, ENABLE_LINK, UNIT_PATH
from imagekit.errors import DataError, InputError
from imagekit.inspect import find_root, mount_os, open_image
from imagekit.run import run

log = logging.getLogger(__name__)

_BIN_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
_SYSTEMD = ("/lib/systemd/systemd", "/usr/lib/systemd/systemd")
# Which Debian package brings which command, for the error message.
_PROVIDERS = {
    "ip": "iproute2",
    "blkid": "util-linux",
    "mount": "mount",
    "umount": "mount",
    "chpasswd": "passwd",
    "useradd": "passwd",
    "getent": "libc-bin",
    "base64": "coreutils",
    "timeout": "coreutils",
    "env": "coreutils",
    "awk": "mawk",
    "sed": "sed",
    "grep": "grep",
    "bash": "bash",
}


@dataclass(frozen=True)
class Customization:
    agent: bool = True
    hostname: str = ""


@dataclass(frozen=True)
class CustomizeResult:
    image: Path
    os: str
    installed: tuple[str, ...]  # paths written inside the image
    missing_commands: tuple[str, ...] = ()


def missing_commands(g: Any) -> list[str]:
    """Agent commands found in none of the usual bin directories of the mounted guest."""
    missing = []
    for cmd in AGENT_COMMANDS:
        if not any(g.exists(f"{d}/{cmd}") for d in _BIN_DIRS):
            missing.append(cmd)
    return missing


def _check(g: Any, path: Path, root: str, want_agent: bool) -> str:
    kind = g.inspect_get_type(root)
    product = str(g.inspect_get_product_name(root))
    if kind != "linux":
        raise DataError(f"{path}: the context agent needs Linux, found {kind} ({product})")
    if want_agent:
        if not any(g.exists(p) for p in _SYSTEMD):
            raise DataError(f"{path}: {product} does not boot with systemd; the agent is a systemd unit")
        missing = missing_commands(g)
        if missing:
            packages = sorted({_PROVIDERS.get(c, c) for c in missing})
            raise DataError(
                f"{path}: {product} lacks {', '.join(missing)}, which the context agent runs; "
                f"install {' '.join(packages)} in the image first "
                f"(the agent needs {' '.join(AGENT_PACKAGES)})"
            )
    return product


def _write(g: Any, dest: PurePosixPath, content: bytes, mode: int) -> None:
    g.mkdir_p(str(dest.parent))
    g.write(str(dest), content)
    g.chmod(mode, str(dest))
    g.chown(0, 0, str(dest))


def _apply(g: Any, path: Path, change: Customization) -> CustomizeResult:
    root = find_root(g, path)
    mount_os(g, root, readonly=False)
    product = _check(g, path, root, change.agent)
    written: list[str] = []
    if change.agent:
        for f in AGENT_FILES:
            _write(g, f.path, f.content, f.mode)
            written.append(str(f.path))
        g.mkdir_p(str(ENABLE_LINK.parent))
        if g.is_symlink(str(ENABLE_LINK)) or g.exists(str(ENABLE_LINK)):
            g.rm_f(str(ENABLE_LINK))
        g.ln_s(str(UNIT_PATH), str(ENABLE_LINK))
        written.append(str(ENABLE_LINK))
    if change.hostname:
        _write(g, PurePosixPath("/etc/hostname"), f"{change.hostname}\n".encode(), 0o644)
        written.append("/etc/hostname")
    g.sync()
    g.umount_all()
    return CustomizeResult(path, product, tuple(written))


def customize(image: Path, change: Customization, *, output: Path | None = None) -> CustomizeResult:
    """Apply ``change`` to ``image`` (or to a copy at ``output``); see the module docstring."""
    if change.hostname and not all(c.isalnum() or c in "-." for c in change.hostname):
        raise InputError(f"--hostname: expected letters, digits, '-' and '.', got {change.hostname!r}")
    if output is None:
        with open_image(image, readonly=False) as (g, _fmt):
            return _apply(g, image, change)
    if output.resolve() == image.resolve():
        raise InputError("--output: must differ from IMAGE (omit it to change the image in place)")
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    try:
        # cp keeps a raw image sparse (shutil would write every zero).
        run(["cp", "--sparse=always", "--reflink=auto", image, tmp], step="copy image")
        with open_image(tmp, readonly=False) as (g, _fmt):
            result = _apply(g, image, change)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, output)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return CustomizeResult(output, result.os, result.installed)
