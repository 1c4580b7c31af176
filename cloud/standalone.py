"""Images that read only themselves: a cloud user's image is data, never a pointer to host files.

    fmt = detect_format(path)              # from the bytes, as this module reads them
    check_standalone(path, fmt)            # qemu-img info -f FMT: no backing, data file or extent
    make_standalone(upload, dest, max_bytes=n)  # converted once to qcow2 (at most n bytes); only that kept
    check_chain(overlay, base)             # at deploy: the overlay's chain is overlay → base

qcow2 (backing file, external data file), QED (backing file), VMDK (a descriptor's extents and
parent, also embedded in a sparse file) and qcow version 1 can all make qemu open another file
of the host, by an absolute or relative name or a ``json:{…}`` pseudo-protocol. qemu guesses a
format from the first bytes when none is given, so a file meant as raw but shaped like a VMDK
descriptor would become one: the format is detected here instead, and every qemu-img call
names it with ``-f``. Formats that only ever point elsewhere (VMDK descriptors, VMFS sparse,
QED, qcow) are refused; the others are probed without following anything, refused when they
name any other file, and converted with the source format given. Anything else is raw bytes.

Refusals are :class:`NotStandalone` (an ``InputError``: 400 at both front doors) and name no
server path: the messages go to the network.
"""

from __future__ import annotations

import json
import signal
import struct
from pathlib import Path, PurePosixPath
from typing import Any

from imagekit.errors import CommandError, InputError
from imagekit.run import run

SITE_FORMAT = "qcow2"
PROBE_BYTES = 2048  # what qemu's format probes read (BLOCK_PROBE_BUF_SIZE)
# Formats taken (probed, then converted): what they read elsewhere shows in their header or
# in `qemu-img info` (no chain followed), and is refused there.
CONVERTIBLE = frozenset({"raw", "qcow2", "vmdk", "vdi", "vhdx", "vpc"})
_REFUSED = {
    "vmdk-descriptor": "a VMDK descriptor file only points at other files",
    "vmdk-vmfs-sparse": "a VMFS sparse VMDK (COWD) is not taken",
    "qed": "QED images are not taken",
    "qcow": "qcow version 1 images are not taken",
}
QCOW2_TABLES = 4 << 20  # qcow2's header, L1, refcount table and blocks for a small image
QCOW2_EXTERNAL_DATA_FILE = 1 << 2  # incompatible feature bit (qcow2 spec, version 3)
_UPLOAD_HINT = "upload one self-contained image file (qemu-img convert -O qcow2 IMAGE standalone.qcow2)"


class NotStandalone(InputError):
    """The image reads another file, or cannot be read as the format its bytes show."""


def _looks_like_vmdk_descriptor(head: bytes) -> bool:
    """qemu's vmdk_probe on text (comment and blank lines, then ``version=N``), a little wider:
    refusing a raw file shaped like a descriptor costs nothing, taking one as raw neither."""
    for line in head.split(b"\n"):
        if line.startswith(b"#") or not line.strip(b" \t\r"):
            continue
        return line.lstrip(b" \t").startswith(b"version=")
    return False


def detect_format(path: Path) -> str:
    """The format of ``path`` from its first bytes; ``raw`` for anything not recognised."""
    with open(path, "rb") as image:
        head = image.read(PROBE_BYTES)
    magic = head[:4]
    if magic == b"QFI\xfb":
        version = struct.unpack(">I", head[4:8])[0] if len(head) >= 8 else 0
        return "qcow2" if version >= 2 else "qcow"
    if magic == b"QED\x00":
        return "qed"
    if magic == b"KDMV":
        return "vmdk"
    if magic == b"COWD":
        return "vmdk-vmfs-sparse"
    if head.startswith(b"vhdxfile"):
        return "vhdx"
    if head.startswith(b"conectix"):
        return "vpc"
    if len(head) >= 0x44 and struct.unpack("<I", head[0x40:0x44])[0] == 0xBEDA107F:
        return "vdi"
    if _looks_like_vmdk_descriptor(head):
        return "vmdk-descriptor"
    return "raw"


def _info(path: Path, fmt: str) -> dict[str, Any]:
    """``qemu-img info -f FMT`` of ``path`` alone (no ``--backing-chain``: nothing followed)."""
    try:
        proc = run(["qemu-img", "info", "--output=json", "-f", fmt, path], check=False, timeout=60)
    except CommandError:  # timed out
        raise NotStandalone(f"the {fmt} image could not be probed") from None
    if proc.returncode != 0:
        raise NotStandalone(f"the file is not a {fmt} image qemu-img can read", hint=_UPLOAD_HINT)
    try:
        info: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        raise NotStandalone(f"the file is not a {fmt} image qemu-img can read") from None
    return info


def references(info: dict[str, Any]) -> list[str]:
    """What an image reads besides itself, in words (no names): empty when standalone."""
    found = []
    if info.get("backing-filename") or info.get("full-backing-filename"):
        found.append("a backing file")
    data = (info.get("format-specific") or {}).get("data") or {}
    if data.get("data-file"):
        found.append("an external data file")
    extents = data.get("extents") or []
    if any(e.get("filename") != info.get("filename") for e in extents):
        found.append("extents in other files")
    return found


def header_references(path: Path, fmt: str) -> list[str]:
    """What the header says the image reads elsewhere, before qemu opens anything (it would
    open a data file or a sparse VMDK's extents to probe them: a FIFO there would hang it)."""
    with open(path, "rb") as image:
        head = image.read(80).ljust(80, b"\0")
    if fmt == "qcow2":
        backing_offset, version = struct.unpack_from(">Q", head, 8)[0], struct.unpack_from(">I", head, 4)[0]
        incompatible = struct.unpack_from(">Q", head, 72)[0] if version >= 3 else 0
        found = ["a backing file"] if backing_offset else []
        return found + (["an external data file"] if incompatible & QCOW2_EXTERNAL_DATA_FILE else [])
    if fmt == "vmdk" and struct.unpack_from("<Q", head, 12)[0] == 0:  # capacity 0: an embedded descriptor
        return ["extents in other files"]
    return []


def check_standalone(path: Path, fmt: str) -> None:
    """Refuse ``path`` unless it is a ``fmt`` image (``fmt`` as :func:`detect_format` found)
    that reads no other file."""
    if fmt in _REFUSED:
        raise NotStandalone(f"the image is refused: {_REFUSED[fmt]}", hint=_UPLOAD_HINT)
    if fmt not in CONVERTIBLE:
        raise NotStandalone(f"the image format {fmt} is not taken", hint=_UPLOAD_HINT)
    if fmt == "raw":
        return  # read with -f raw: bytes, nothing more
    found = header_references(path, fmt) or references(_info(path, fmt))
    if found:
        raise NotStandalone(
            f"the image refers to another file ({', '.join(found)}): upload a standalone image",
            hint=_UPLOAD_HINT,
        )


def _convert(upload: Path, fmt: str, dest: Path, max_bytes: int | None) -> None:
    """``qemu-img convert`` to the site's format; with ``max_bytes``, under a file-size limit
    (RLIMIT_FSIZE): a small compressed image, or one whose clusters all point at the same
    data, expands to its whole virtual size, which would fill the server's disk before any
    quota saw the result. The limit leaves room for qcow2's own tables (a few clusters, and
    about 1/4096 of the data for L2 and refcounts): the quota, checked on the result, is the
    exact bound; this one only keeps the disk from filling."""
    convert: list[str | Path] = ["qemu-img", "convert", "-q", "-f", fmt, "-O", SITE_FORMAT, upload, dest]
    if max_bytes is not None:
        fsize = max_bytes + max_bytes // 1024 + QCOW2_TABLES
        convert = ["prlimit", f"--fsize={fsize}", "--", *convert]
    proc = run(convert, check=False)
    if proc.returncode == 0:
        return
    # Past the limit, the write fails with EFBIG, or SIGXFSZ ends qemu-img.
    if max_bytes is not None and (proc.returncode == -signal.SIGXFSZ or b"File too large" in proc.stderr):
        raise NotStandalone(
            f"the {fmt} image expands past the {max_bytes} bytes an image may be kept in here",
            hint="upload a smaller image, or ask for a larger storage quota",
        )
    raise NotStandalone(f"the {fmt} image could not be converted (damaged or encrypted?)")


def kept_bound(*limits: int | None) -> int | None:
    """The least of ``limits`` that are set (an upload limit, a quota's bytes left), or None."""
    return min((n for n in limits if n is not None), default=None)


def make_standalone(upload: Path, dest: Path, *, max_bytes: int | None = None) -> Path:
    """Check ``upload`` and convert it once to the site's format at ``dest``, at most
    ``max_bytes`` long (None: unbounded); ``upload`` is removed either way, and ``dest``
    exists only when all went well."""
    try:
        fmt = detect_format(upload)
        check_standalone(upload, fmt)
        _convert(upload, fmt, dest, max_bytes)
        if references(_info(dest, SITE_FORMAT)):  # cannot happen: a plain convert; checked anyway
            raise NotStandalone("the converted image refers to another file")
        dest.chmod(0o600)  # qemu-img makes it with the umask's mode; it is a user's disk
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    finally:
        upload.unlink(missing_ok=True)
    return dest


def check_chain(overlay: Path, base: Path) -> None:
    """Refuse a VM disk whose backing chain is anything but ``overlay`` → ``base``: the base
    was verified, so a base that grew a backing file or data file since, or an overlay
    pointing elsewhere, stops the deploy."""
    proc = run(
        ["qemu-img", "info", "--backing-chain", "--output=json", "-f", SITE_FORMAT, overlay],
        check=False,
        timeout=60,
    )
    check_chain_answer(proc.stdout if proc.returncode == 0 else b"", str(base))


def check_chain_answer(answer: bytes, base: str) -> None:
    """:func:`check_chain` on ``qemu-img info --backing-chain --output=json -f qcow2``'s
    ``answer``, wherever it ran (this host, or a host the ssh transfer driver made the overlay
    on, ``base`` being a path there)."""
    try:
        chain = json.loads(answer) if answer else None
    except ValueError:
        chain = None
    if not isinstance(chain, list) or len(chain) != 2:
        raise NotStandalone("the disk's backing chain is not exactly its overlay and the verified base")
    top, bottom = chain
    wanted = PurePosixPath(base)
    if (
        PurePosixPath(str(top.get("full-backing-filename"))) != wanted
        or PurePosixPath(str(bottom.get("filename"))) != wanted
    ):
        raise NotStandalone("the disk's backing chain does not end at the verified base")
    top_only = {k: v for k, v in top.items() if k not in ("backing-filename", "full-backing-filename")}
    if references(top_only) or references(bottom):
        raise NotStandalone("the disk's backing chain reads files other than the verified base")
