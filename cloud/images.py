"""Where each DISK's base image comes from, verified before any VM resource is reserved.

A DISK names its image one of four ways (``opennebula-1.4.md`` §1, issue 13 point 1):

- ``IMAGE``/``IMAGE_ID``: an image template (``--image FILE``) whose ``PATH`` (or ``SOURCE``)
  is the file, relative to the image template;
- ``SOURCE`` = a build's ``*.manifest.json``: its qcow2 output (else its first), checked against
  the manifest's SHA-256;
- ``SOURCE`` = ``marketplace:ID``, ``marketplace:TAG`` or an entry URL, or ``imagelist:ID`` (an
  image of a subscribed HEPiX list, also as ``IMAGE``): policy-checked and downloaded verified by
  ``marketplace.site.obtain_image`` into the state's image cache;
- ``SOURCE`` = any other path: a local image qemu-img can read.

Base images are only ever read: the VM writes to its own qcow2 overlay.

A cloud user's VM (``confine``: the directories its image files may be in) is held to what is
theirs (issue 17, point 1): a local file only inside those directories, never a build manifest
elsewhere; a marketplace image only through the site's registries and mirrors (point 4); and
every such base, downloaded ones included, detected and probed as standalone
(``cloud/standalone.py``) with its format named from its bytes, never guessed by qemu.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cloud.image_sources import SiteSources, inside
from cloud.model import DiskKind, DiskSpec, VmTemplate
from cloud.standalone import NotStandalone, check_standalone, detect_format
from context.vm import Image
from imagekit.diskimage import Firmware, image_format
from imagekit.errors import DataError, InputError, VerificationError
from imagekit.state import State

if TYPE_CHECKING:
    from marketplace.policy import SitePolicy

log = logging.getLogger(__name__)

MARKETPLACE_PREFIX = "marketplace:"
LISTED_PREFIX = "imagelist:"  # an image of a subscribed HEPiX list (marketplace/imagelist_images.py)
MANIFEST_SUFFIX = ".manifest.json"


@dataclass(frozen=True)
class BaseImage:
    disk: DiskSpec
    path: Path
    format: str
    origin: str  # in words, for `vm show`
    firmware: Firmware | None = None  # from a build manifest
    marketplace_id: str | None = None  # held in the image cache while the VM exists


def resolve_images(
    vm: VmTemplate,
    *,
    images: Sequence[Image],
    state: State,
    template_dir: Path,
    endpoint: str | None = None,
    policy: Callable[[], SitePolicy],
    confine: tuple[Path, ...] | None = None,
) -> tuple[BaseImage, ...]:
    """One verified base image per DISK of type disk or cdrom, in template order. ``policy``:
    the site policy for marketplace images (``SiteConfig.policy``, parsed at its first use);
    ``confine``: a cloud user's VM, its image files only inside these directories."""
    site = _Site(endpoint, policy, confine)
    return tuple(
        _resolve(disk, images, state, template_dir, site)
        for disk in vm.disks
        if disk.kind in (DiskKind.DISK, DiskKind.CDROM)
    )


@dataclass(frozen=True)
class _Site:
    endpoint: str | None
    policy: Callable[[], SitePolicy]
    confine: tuple[Path, ...] | None = None


def _resolve(
    disk: DiskSpec, images: Sequence[Image], state: State, template_dir: Path, site: _Site
) -> BaseImage:
    if disk.image is not None and disk.image.startswith(LISTED_PREFIX):  # IMAGE = "imagelist:ID" too
        return _from_marketplace(disk, disk.image, state, site)
    if disk.image is not None or disk.image_id is not None:
        path, origin = _from_repository(disk, images)
        return _local(disk, path, origin) if site.confine is None else _confined(disk, path, site.confine)
    source = disk.source or ""
    if source.startswith((MARKETPLACE_PREFIX, LISTED_PREFIX)) or source.startswith(("http://", "https://")):
        return _from_marketplace(disk, source, state, site)
    path = Path(source).expanduser()
    path = path if path.is_absolute() else template_dir / path
    if site.confine is not None:
        return _confined(disk, path, site.confine)
    if path.name.endswith(MANIFEST_SUFFIX):
        return _from_build(disk, path)
    return _local(disk, path, f"file {path}")


def _confined(disk: DiskSpec, path: Path, confine: tuple[Path, ...]) -> BaseImage:
    """A cloud user's local image: inside ``confine``, standalone, its format from its bytes
    (a CD too: an uploaded ISO is kept as qcow2). The refusal names no path: it goes back to
    the network."""
    if not inside(path, confine):
        raise NotStandalone(
            f"DISK[{disk.index}]: a cloud user's disk is an uploaded or a marketplace image,"
            " not a file of the server"
        )
    real = path.resolve()
    fmt = detect_format(real)
    check_standalone(real, fmt)
    return BaseImage(disk, real, fmt, f"image {real.name}")


def _local(disk: DiskSpec, path: Path, origin: str) -> BaseImage:
    if not path.is_file():
        raise InputError(f"DISK[{disk.index}]: no such image file {path}", where=disk.where)
    fmt = "raw" if disk.kind is DiskKind.CDROM else image_format(path)
    if disk.format and disk.kind is DiskKind.DISK and disk.format != fmt:
        raise InputError(
            f"DISK[{disk.index}].FORMAT: {disk.format} given, {path} is {fmt}", where=disk.where
        )
    return BaseImage(disk, path.resolve(), fmt, origin)


def _from_repository(disk: DiskSpec, images: Sequence[Image]) -> tuple[Path, str]:
    """The file of the image template a DISK names, and its origin in words."""
    found = next(
        (i for i in images if (disk.image is not None and i.name == disk.image) or i.id == disk.image_id),
        None,
    )
    wanted = repr(disk.image) if disk.image is not None else f"id {disk.image_id}"
    if found is None:
        raise InputError(
            f"DISK[{disk.index}]: no image {wanted} (give image templates with --image FILE)",
            where=disk.where,
        )
    location = found.template.single("PATH") or found.template.single("SOURCE")
    if not location:
        raise InputError("an image template needs PATH (the image file)", where=found.template.source)
    path = Path(location)
    if not path.is_absolute():
        path = Path(found.template.source).parent / path
    return path, f"image {found.name} (id {found.id})"


def _from_build(disk: DiskSpec, manifest_path: Path) -> BaseImage:
    try:
        manifest = json.loads(manifest_path.read_text())
        outputs = manifest["outputs"]
        chosen = next((o for o in outputs if o["format"] == "qcow2"), outputs[0])
        path = manifest_path.parent / chosen["file"]
        expected = chosen["checksums"]["sha256"]
    except FileNotFoundError:
        raise InputError(
            f"DISK[{disk.index}]: no such build manifest {manifest_path}", where=disk.where
        ) from None
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise DataError(f"{manifest_path}: not a build manifest ({exc})") from None
    base = _local(disk, path, f"build {manifest.get('name', '?')} {manifest_path.name}")
    digest = hashlib.sha256()
    with path.open("rb") as image:
        while chunk := image.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise VerificationError(f"{path}: SHA-256 differs from {manifest_path}", rule="image.checksum")
    firmware = Firmware(manifest["firmware"]) if manifest.get("firmware") in set(Firmware) else None
    return BaseImage(disk, base.path, base.format, base.origin, firmware)


def _from_marketplace(disk: DiskSpec, reference: str, state: State, site: _Site) -> BaseImage:
    from marketplace.client import endpoint as registry_endpoint
    from marketplace.site import obtain_image, parse_reference

    policy = site.policy()
    if site.confine is not None:  # a cloud user's: only the site's registries and mirrors
        sources = SiteSources(registries=(registry_endpoint(site.endpoint),), mirrors=policy.mirrors)
        if not reference.startswith(LISTED_PREFIX):  # a list's image: the subscribed list allows its URI
            try:
                entry = parse_reference(reference).endpoint or sources.registries[0]
            except VerificationError:
                raise NotStandalone(f"DISK[{disk.index}]: not a marketplace reference") from None
            if not sources.on_registry(entry):
                raise NotStandalone(f"DISK[{disk.index}]: the entry URL is not on this site's registry")
        policy = dataclasses.replace(policy, origins=sources.origins)
    cached = obtain_image(reference, policy=policy, endpoint=site.endpoint, state=state)
    log.info("DISK[%d]: %s is %s, endorsed by %s", disk.index, reference, cached.identifier, cached.endorser)
    fmt = detect_format(cached.path)  # from its bytes, not guessed by qemu; then probed
    check_standalone(cached.path, fmt)
    return BaseImage(
        disk,
        cached.path,
        fmt,
        f"marketplace {cached.identifier} ({cached.endorser})",
        None,
        cached.identifier,
    )


def hold(state: State, bases: Sequence[BaseImage], vmid: int) -> None:
    """Keep the VM's marketplace images in the cache while it exists."""
    if any(b.marketplace_id for b in bases):
        from marketplace.imagecache import hold_image

        for base in bases:
            if base.marketplace_id:
                hold_image(state, base.marketplace_id, f"vm-{vmid}")


def release(state: State, identifiers: Sequence[str], vmid: int) -> None:
    if identifiers:
        from marketplace.imagecache import release_image

        for identifier in identifiers:
            release_image(state, identifier, f"vm-{vmid}")
