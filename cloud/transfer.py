"""Transfer drivers (1.4's TM): how a VM's disks and context CD reach the host that runs it.

Three drivers behind one protocol, :class:`Transfer`, chosen by the host's ``--tm``:

- ``local``: localhost, where imagekit runs; the VM's files are in ``STATE/vms/<id>/``, its
  overlays backed by the front end's verified image cache (what ``vm create`` always did).
- ``shared``: the host sees the front end's image cache and VM directories at the same paths
  (NFS, as 1.4's ``tm_nfs``), so the front end makes the files there and nothing is copied.
- ``ssh``: the host has its own disks (1.4's ``tm_ssh``: ``tm_clone.sh`` copied the image with
  ``scp``, ``tm_delete.sh`` ran ``rm -rf`` over ssh). The verified base image is copied once into
  the host's own image cache, ``~/.imagekit/images/<sha256>`` of the SSH user, checked there with
  ``sha256sum`` before every use (a corrupted or truncated copy is replaced), and the overlay
  (``qemu-img create -F FMT -b BASE``), swap/fs disks and the context ISO are made in the VM's
  directory on the host, ``~/.imagekit/vms/<id>/``. The epilog copies the ``SAVE=yes`` disks
  back (flattened on the host into one standalone qcow2, then ``STATE/saved/vm<id>-disk<n>.qcow2``
  as the local cores keep them) and removes the VM's directory on the host.

Paths on a host are built only from integers (VM ids, disk indexes) and hex digests, never from
request values; every command reaches the host through ``cloud/remote.py``, a few steps at a time
as fixed ``sh -c`` scripts whose values are positional arguments. :func:`stage` is a VM's
whole prolog through a driver (undone on failure), for the pipeline that places VMs on hosts.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cloud.hosts import Host, TransferDriver
from cloud.images import BaseImage
from cloud.model import DiskKind, VmTemplate, filesystem_maker
from cloud.remote import Runner, SshSettings, runner_for
from cloud.standalone import check_chain, check_chain_answer
from imagekit.errors import DataError, ImagekitError, InputError, VerificationError
from imagekit.run import run

CACHE_DIR = ".imagekit/images"  # under the SSH user's home on the host
VMS_DIR = ".imagekit/vms"
FORMATS = ("qcow2", "raw")  # a base image's format, as cloud/images.py resolved it
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20
# A copy under its temporary name ($1) becomes the cached base ($3) only if its checksum is $2.
_ADOPT = """sum=$(sha256sum -- "$1" | cut -d " " -f 1)
if [ "$sum" != "$2" ]; then rm -f -- "$1"; echo mismatch; exit 0; fi
chmod 0400 -- "$1" && mv -f -- "$1" "$3" && echo adopted"""


class Transfer(Protocol):
    """The TM verbs a VM's prolog and epilog need (1.4: CLONE, MKSWAP/MKIMAGE, CONTEXT, MV, DELETE)."""

    def vm_dir(self, vmid: int) -> str: ...

    def clone(self, vmid: int, index: int, base: Path, fmt: str) -> str:
        """A qcow2 overlay ``disk<index>.qcow2`` over ``base``, on the host; its path there."""
        ...

    def image(self, vmid: int, base: Path) -> str:
        """``base`` as the host reads it, as it is (a CD image): its path there."""
        ...

    def mkimage(self, vmid: int, index: int, size_mib: int, fs: str) -> str:
        """An empty ``disk<index>.raw`` of ``size_mib`` formatted as ``fs`` (or swap)."""
        ...

    def context(self, vmid: int, iso: Path) -> str:
        """The context ISO in the VM's directory on the host; its path there."""
        ...

    def epilog(self, vmid: int, save: tuple[int, ...], saved_dir: Path) -> list[Path]:
        """The ``save`` disks copied to ``saved_dir``, then the VM's files removed from the host."""
        ...


def _disk_name(index: int, suffix: str) -> str:
    if index < 0:
        raise InputError(f"disk index {index}: not a disk")
    return f"disk{int(index)}.{suffix}"


def _format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise InputError(f"base image format {fmt[:20]!r}: one of {', '.join(FORMATS)}")
    return fmt


@dataclass(frozen=True)
class FrontEndTransfer:
    """``local`` and ``shared``: the front end makes the files where the host reads them."""

    vms: Path  # STATE/vms

    def vm_dir(self, vmid: int) -> str:
        return str(self.vms / str(int(vmid)))

    def _dir(self, vmid: int) -> Path:
        directory = Path(self.vm_dir(vmid))
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return directory

    def clone(self, vmid: int, index: int, base: Path, fmt: str) -> str:
        overlay = self._dir(vmid) / _disk_name(index, "qcow2")
        run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", _format(fmt), "-b", base, overlay],
            step="prolog",
        )
        overlay.chmod(0o600)
        check_chain(overlay, base)  # overlay → the verified base, nothing else (issue 17, point 1)
        return str(overlay)

    def image(self, vmid: int, base: Path) -> str:
        return str(base)

    def mkimage(self, vmid: int, index: int, size_mib: int, fs: str) -> str:
        path = self._dir(vmid) / _disk_name(index, "raw")
        run(["qemu-img", "create", "-q", "-f", "raw", path, f"{int(size_mib)}M"], step="prolog")
        path.chmod(0o600)
        run([*filesystem_maker(fs), path], step="prolog")
        return str(path)

    def context(self, vmid: int, iso: Path) -> str:
        target = self._dir(vmid) / "context.iso"
        if iso.resolve() != target.resolve():
            shutil.copyfile(iso, target)
            target.chmod(0o600)
        return str(target)

    def epilog(self, vmid: int, save: tuple[int, ...], saved_dir: Path) -> list[Path]:
        directory, kept = Path(self.vm_dir(vmid)), []
        for index in save:
            saved_dir.mkdir(mode=0o700, exist_ok=True)
            target = saved_dir / f"vm{int(vmid)}-{_disk_name(index, 'qcow2')}"
            run(["qemu-img", "convert", "-O", "qcow2", directory / _disk_name(index, "qcow2"), target],
                step="epilog")  # fmt: skip
            kept.append(target)
        for path in directory.glob("*"):
            if path.suffix in (".qcow2", ".raw", ".iso"):
                path.unlink(missing_ok=True)
        return kept


_DIGESTS: dict[tuple[str, int, int], str] = {}
_DIGESTS_LOCK = threading.Lock()


def file_sha256(path: Path) -> str:
    """The file's SHA-256, remembered while its size and mtime stay the same (a base image is
    hashed once per process, not once per VM)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _DIGESTS_LOCK:
        if key in _DIGESTS:
            return _DIGESTS[key]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    with _DIGESTS_LOCK:
        _DIGESTS[key] = digest.hexdigest()
    return digest.hexdigest()


@dataclass
class SshTransfer:
    """``ssh``: the host's own image cache and VM directories, in its SSH user's home."""

    runner: Runner
    _home: str = field(default="", init=False)

    def home(self) -> str:
        if not self._home:
            home = self.runner.run(["pwd"], step="transfer").stdout.decode().strip()
            if not home.startswith("/") or "\n" in home:
                raise DataError(f"host {self.runner.name}: its SSH user's home {home[:80]!r} is not a path")
            self._home = home.rstrip("/") or "/"
        return self._home

    def vm_dir(self, vmid: int) -> str:
        return f"{self.home()}/{VMS_DIR}/{int(vmid)}"

    def _sh(self, script: str, *args: str, input: bytes | None = None, step: str = "prolog") -> str:
        """One of this module's fixed scripts on the host, with ``args`` as its ``$1``, ``$2``…:
        one connection for a few steps, and the values stay words."""
        done = self.runner.run(["sh", "-c", script, "sh", *args], input=input, step=step)
        return done.stdout.decode()

    def _remote_sha256(self, path: str) -> str:
        """``sha256sum`` of ``path`` on the host; empty when it is not there."""
        return self._sh('sha256sum -- "$1" 2>/dev/null || :', path).split(" ", 1)[0].strip()

    def cached_base(self, vmid: int, base: Path) -> str:
        """The host's copy of ``base``: reused when its checksum matches, else copied (again)
        under a temporary name, checked, then renamed into place."""
        digest = file_sha256(base)
        if not _HEX64.fullmatch(digest):
            raise DataError(f"{base.name}: not a SHA-256 digest")
        cached = f"{self.home()}/{CACHE_DIR}/{digest}"
        if self._remote_sha256(cached) == digest:
            return cached
        self._sh('umask 077; mkdir -p -- "$1"', f"{self.home()}/{CACHE_DIR}")
        part = f"{cached}.part-{int(vmid)}"
        self.runner.put(base, part, step="prolog")
        if self._sh(_ADOPT, part, digest, cached).strip() != "adopted":
            raise VerificationError(
                f"host {self.runner.name}: the copy of {base.name} does not match its SHA-256",
                rule="transfer",
            )
        return cached

    def clone(self, vmid: int, index: int, base: Path, fmt: str) -> str:
        cached = self.cached_base(vmid, base)
        directory = self.vm_dir(vmid)
        overlay = f"{directory}/{_disk_name(index, 'qcow2')}"
        self._sh(
            'umask 077; mkdir -p -- "$1" && qemu-img create -q -f qcow2 -F "$2" -b "$3" "$4"',
            directory, _format(fmt), cached, overlay,
        )  # fmt: skip
        chain = ["qemu-img", "info", "--backing-chain", "--output=json", "-f", "qcow2", overlay]
        check_chain_answer(self.runner.run(chain, step="prolog").stdout, cached)  # as on the front end
        return overlay

    def image(self, vmid: int, base: Path) -> str:
        return self.cached_base(vmid, base)

    def mkimage(self, vmid: int, index: int, size_mib: int, fs: str) -> str:
        directory = self.vm_dir(vmid)
        path = f"{directory}/{_disk_name(index, 'raw')}"
        self._sh(
            'umask 077; mkdir -p -- "$1" && qemu-img create -q -f raw "$2" "$3" && shift 3 && exec "$@"',
            directory, path, f"{int(size_mib)}M", *filesystem_maker(fs), path,
        )  # fmt: skip
        return path

    def context(self, vmid: int, iso: Path) -> str:
        """The ISO over the connection's stdin (it is small): one connection, no copy left
        readable by others at any moment."""
        directory = self.vm_dir(vmid)
        target = f"{directory}/context.iso"
        self._sh('umask 077; mkdir -p -- "$1" && cat > "$2"', directory, target, input=iso.read_bytes())
        return target

    def epilog(self, vmid: int, save: tuple[int, ...], saved_dir: Path) -> list[Path]:
        directory, kept = self.vm_dir(vmid), []
        for index in save:
            disk = f"{directory}/{_disk_name(index, 'qcow2')}"
            flat = f"{directory}/saved-{_disk_name(index, 'qcow2')}"
            self.runner.run(["qemu-img", "convert", "-O", "qcow2", disk, flat], step="epilog")
            saved_dir.mkdir(mode=0o700, exist_ok=True)
            target = saved_dir / f"vm{int(vmid)}-{_disk_name(index, 'qcow2')}"
            self.runner.get(flat, target, step="epilog")
            kept.append(target)
        self.runner.run(["rm", "-rf", "--", directory], step="epilog")
        return kept


@dataclass(frozen=True)
class StagedDisk:
    """A disk of the VM as its host reads it."""

    index: int
    kind: DiskKind
    path: str  # on the host
    format: str
    readonly: bool


@dataclass(frozen=True)
class Staged:
    """What the prolog left on the host: the disks in template order, the context CD, and the
    disks the epilog copies back (SAVE=yes)."""

    disks: tuple[StagedDisk, ...]
    context: str | None
    save: tuple[int, ...]


def stage(tm: Transfer, vmid: int, vm: VmTemplate, bases: Sequence[BaseImage], iso: Path | None) -> Staged:
    """The VM's prolog on its host through ``tm``: an overlay per disk over its base, a CD image
    as it is, swap/fs disks made empty, the context ISO. A failure removes what was made there."""
    by_disk = {b.disk.index: b for b in bases}
    disks: list[StagedDisk] = []
    try:
        for disk in vm.disks:
            base = by_disk.get(disk.index)
            if disk.kind is DiskKind.CDROM and base is not None:
                disks.append(StagedDisk(disk.index, disk.kind, tm.image(vmid, base.path), base.format, True))
            elif disk.kind is DiskKind.DISK and base is not None:
                path = tm.clone(vmid, disk.index, base.path, base.format)
                disks.append(StagedDisk(disk.index, disk.kind, path, "qcow2", disk.readonly))
            else:
                fs = "swap" if disk.kind is DiskKind.SWAP else disk.format or "ext4"
                path = tm.mkimage(vmid, disk.index, disk.size_mib or 0, fs)
                disks.append(StagedDisk(disk.index, disk.kind, path, "raw", disk.readonly))
        context = tm.context(vmid, iso) if iso is not None else None
    except BaseException:
        try:
            tm.epilog(vmid, (), Path("/nonexistent"))  # nothing to save: only the removal
        except (ImagekitError, OSError):
            pass  # the first error is the one to report
        raise
    save = tuple(d.index for d in disks if d.kind is DiskKind.DISK and by_disk[d.index].disk.save)
    return Staged(tuple(disks), context, save)


def transfer_for(host: Host, vms: Path, settings: SshSettings) -> Transfer:
    """The host's TM driver; ``vms`` is the front end's ``STATE/vms``."""
    if host.tm is TransferDriver.LOCAL and not host.local:
        raise InputError(f"host {host.name!r}: --tm local is for localhost only (use shared or ssh)")
    if host.tm is TransferDriver.SSH:
        return SshTransfer(runner_for(host, settings))
    return FrontEndTransfer(vms)
