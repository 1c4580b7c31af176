"""What is in a disk image, through libguestfs inspection (any format qemu reads).

    info = inspect_image(Path("debian.qcow2"))
    print(info.os.distro, info.os.version, len(info.packages))

:func:`open_image` is the one place that launches the libguestfs appliance (also used by
``imagekit customize``). The appliance is a small VM: it runs with the ``direct`` backend
and TCG unless the caller's environment chose otherwise, because ``/dev/kvm`` on nested hosts
opens but cannot run guests. A launch takes 10–30 s under TCG.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagekit.diskimage import qemu_img_info
from imagekit.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Partition:
    device: str  # as the appliance names it: /dev/sda1
    number: int
    size: int  # bytes
    filesystem: str  # vfat, ext4, swap, "" when unknown
    label: str = ""
    uuid: str = ""


@dataclass(frozen=True)
class OsInfo:
    root: str  # the root filesystem's device
    type: str  # linux, windows…
    distro: str  # debian, fedora…
    product: str  # "Debian GNU/Linux 12 (bookworm)"
    version: str  # "12.11"
    arch: str
    hostname: str
    package_format: str
    mountpoints: tuple[tuple[str, str], ...] = ()  # (mount point, device)


@dataclass(frozen=True)
class PackageInfo:
    name: str
    version: str  # epoch:version-release as the package manager writes it
    arch: str


@dataclass(frozen=True)
class ImageInfo:
    path: Path
    format: str
    virtual_size: int
    partition_table: str  # msdos, gpt, "" for a bare filesystem
    partitions: tuple[Partition, ...]
    os: OsInfo | None
    packages: tuple[PackageInfo, ...] = ()


@contextlib.contextmanager
def open_image(path: Path, *, readonly: bool = True) -> Iterator[tuple[Any, str]]:
    """A launched libguestfs handle with ``path`` as its only drive, and the image's format."""
    import guestfs  # Debian's python3-guestfs; imported late so other commands never pay for it

    fmt = str(qemu_img_info(path)["format"])
    os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
    os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
    g = guestfs.GuestFS(python_return_dict=True)  # type: ignore[attr-defined,unused-ignore]
    try:
        g.add_drive_opts(str(path), format=fmt, readonly=readonly)
        log.debug("launching the libguestfs appliance for %s", path)
        g.launch()
        yield g, fmt
    except RuntimeError as exc:  # libguestfs reports every failure as RuntimeError
        raise DataError(f"{path}: libguestfs: {exc}") from None
    finally:
        with contextlib.suppress(RuntimeError):
            g.shutdown()
        g.close()


def mount_os(g: Any, root: str, *, readonly: bool = True) -> None:
    """Mount the guest's filesystems as its fstab would, shortest mount point first."""
    mounts = g.inspect_get_mountpoints(root)
    for mountpoint in sorted(mounts, key=len):
        try:
            if readonly:
                g.mount_ro(mounts[mountpoint], mountpoint)
            else:
                g.mount(mounts[mountpoint], mountpoint)
        except RuntimeError as exc:
            log.warning("cannot mount %s on %s: %s", mounts[mountpoint], mountpoint, exc)


def find_root(g: Any, path: Path) -> str:
    roots = g.inspect_os()
    if not roots:
        raise DataError(f"{path}: libguestfs found no operating system in the image")
    if len(roots) > 1:
        log.warning("%s: %d operating systems found, using %s", path, len(roots), roots[0])
    return str(roots[0])


def _partitions(g: Any) -> tuple[str, tuple[Partition, ...]]:
    table = ""
    parts: list[Partition] = []
    for device in g.list_devices():
        with contextlib.suppress(RuntimeError):
            table = g.part_get_parttype(device)
    for dev in g.list_partitions():
        fs = label = uuid = ""
        with contextlib.suppress(RuntimeError):
            fs = g.vfs_type(dev)
        with contextlib.suppress(RuntimeError):
            label = g.vfs_label(dev)
        with contextlib.suppress(RuntimeError):
            uuid = g.vfs_uuid(dev)
        parts.append(
            Partition(dev, int(g.part_to_partnum(dev)), int(g.blockdev_getsize64(dev)), fs, label, uuid)
        )
    return table, tuple(parts)


def _os_info(g: Any, root: str) -> OsInfo:
    major, minor = g.inspect_get_major_version(root), g.inspect_get_minor_version(root)
    mounts = g.inspect_get_mountpoints(root)
    return OsInfo(
        root=root,
        type=g.inspect_get_type(root),
        distro=g.inspect_get_distro(root),
        product=g.inspect_get_product_name(root),
        version=f"{major}.{minor}",
        arch=g.inspect_get_arch(root),
        hostname=g.inspect_get_hostname(root),
        package_format=g.inspect_get_package_format(root),
        mountpoints=tuple(sorted(mounts.items())),
    )


def _packages(g: Any, root: str) -> tuple[PackageInfo, ...]:
    apps = g.inspect_list_applications2(root)
    found = []
    for app in apps:
        version = app["app2_version"]
        if app.get("app2_release"):
            version += f"-{app['app2_release']}"
        if int(app.get("app2_epoch") or 0):
            version = f"{app['app2_epoch']}:{version}"
        found.append(PackageInfo(app["app2_name"], version, app.get("app2_arch", "")))
    return tuple(sorted(found, key=lambda p: p.name))


def inspect_image(path: Path) -> ImageInfo:
    """Partitions, operating system and installed packages of the image at ``path``."""
    virtual_size = int(qemu_img_info(path).get("virtual-size", 0))
    with open_image(path) as (g, fmt):
        table, partitions = _partitions(g)
        roots = g.inspect_os()
        if not roots:
            return ImageInfo(path, fmt, virtual_size, table, partitions, None)
        root = find_root(g, path)
        info = _os_info(g, root)
        mount_os(g, root)
        packages = _packages(g, root)
        g.umount_all()
    return ImageInfo(path, fmt, virtual_size, table, partitions, info, packages)
