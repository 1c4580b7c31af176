"""The EC2 image catalogue: ``ami-%08x`` ids for image locations, registered per user.

An image is a name and a location the core can deploy from, as a DISK's ``SOURCE``: the
user's own upload (stored by the server, converted to a standalone qcow2), ``marketplace:ID``
or ``marketplace:TAG`` or an entry URL on the site's registry (policy-checked and downloaded
verified at launch), or, registered by an administrator, an image file in a site image
directory. ``RegisterImage`` takes nothing else (:func:`check_location`, issue 17 points 1
and 4); the core verifies everything again when it deploys.

What ``DescribeImages`` shows as an image's location (:meth:`ImageStore.shown_location`) is
never a path on this host: a marketplace reference or registry URL as registered, and for an
image file kept here ``upload:NAME`` (the user's upload) or ``site:NAME`` (an administrator's
site image), NAME being the image's name (an upload's: the file name the client sent).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from cloud.ec2.errors import invalid_parameter
from cloud.ec2.ids import image_id, select
from cloud.image_sources import SiteSources, inside
from cloud.tenancy import check_resource_name
from cloud.users import User
from imagekit.errors import InputError, VerificationError
from imagekit.state import State

MARKETPLACE = "marketplace:"
LISTED = "imagelist:"  # an image of a HEPiX list the administrator subscribed to
UPLOADED, SITE_IMAGE = "upload:", "site:"  # what DescribeImages shows for a file kept here
MAX_REFERENCE = 256
_WHAT = (
    "ImageLocation must be marketplace:ID, marketplace:TAG, an entry URL on this site's registry,"
    " imagelist:ID (an image of a subscribed HEPiX list),"
    " or the ami- id of an image you uploaded (UploadImage)"
)


@dataclass(frozen=True)
class Ec2Image:
    id: int
    owner: str  # the owner's name, shown (imageOwnerId)
    name: str
    location: str
    created: str
    owner_id: int | None = None  # the cloud user's id: what ownership is checked by


def _image(row: sqlite3.Row) -> Ec2Image:
    return Ec2Image(row["id"], row["owner"], row["name"], row["location"], row["created"], row["owner_id"])


def check_location(location: str, user: User, sources: SiteSources) -> str:
    """RegisterImage's ``ImageLocation``, refused unless it is ``marketplace:ID|TAG``, an entry
    URL on the site's registry, ``imagelist:ID``, or, for an administrator, a file in a site image directory
    (``--site-images``). Decided before any connection; the refusal names no server path."""
    text = location.strip()
    body = text.removeprefix(LISTED) if text.startswith(LISTED) else text.removeprefix(MARKETPLACE)
    if "://" in body:  # a URL: only an entry URL on the registry (else a tag: sent to it as one)
        return _entry_url(text, sources)
    if text.startswith((MARKETPLACE, LISTED)):  # LISTED: the subscribed lists are the allow-list
        if (
            not body
            or len(body) > MAX_REFERENCE
            or not all(c.isprintable() and not c.isspace() for c in body)
        ):
            raise invalid_parameter(
                f"marketplace:ID|TAG or imagelist:ID takes 1 to {MAX_REFERENCE} printable characters"
            )
        return text
    path = Path(text)
    if user.admin and path.is_absolute() and inside(path, sources.image_dirs):
        return str(path.resolve())
    raise invalid_parameter(_WHAT)


def _entry_url(text: str, sources: SiteSources) -> str:
    from marketplace.site import parse_reference

    url = text.removeprefix(MARKETPLACE)
    if urlsplit(url).scheme.lower() not in ("http", "https"):
        raise invalid_parameter(f"{_WHAT}; a URL is http or https")
    try:
        parse_reference(text)
    except VerificationError:
        raise invalid_parameter(f"{text[:200]!r} is not a marketplace entry URL (…/metadata/ID)") from None
    if not sources.on_registry(url):
        registries = ", ".join(sources.registries) or "none configured"
        raise invalid_parameter(f"{text[:200]!r} is not on this site's registry ({registries})")
    return text


class ImageStore:
    def __init__(self, state: State) -> None:
        self.state = state

    def register(
        self,
        user: User,
        name: str,
        location: str,
        *,
        admit: Callable[[sqlite3.Connection, int], None] | None = None,
    ) -> Ec2Image:
        """A new image of ``user``; ``admit(db, id)`` (the quota's) runs in the same transaction."""
        created = datetime.now(UTC).replace(microsecond=0).isoformat()
        with self.state.transaction() as db:
            site = db.execute(
                "SELECT i.name FROM ec2_images i JOIN cloud_users u ON u.id = i.owner_id WHERE u.admin = 1"
            )
            try:
                check_resource_name("image", name, taken=[r["name"] for r in site], admin=user.admin)
            except InputError as err:
                raise invalid_parameter(err.reason) from None
            # ids start at 1: ami-00000001 is the first image, as in econe.
            cur = db.execute(
                "INSERT INTO ec2_images (id, owner, owner_id, name, location, created)"
                " VALUES ((SELECT COALESCE(MAX(id), 0) + 1 FROM ec2_images), ?, ?, ?, ?, ?)",
                (user.name, user.id, name, location, created),
            )
            assert cur.lastrowid is not None
            if admit is not None:
                admit(db, cur.lastrowid)
        return Ec2Image(cur.lastrowid, user.name, name, location, created, user.id)

    def visible(self, user: User, ids: Sequence[int] = ()) -> list[Ec2Image]:
        """The user's images (an administrator's: all); only ``ids`` when given, each must be one."""
        with self.state.read() as db:
            rows = db.execute(
                "SELECT * FROM ec2_images WHERE ? OR owner_id = ? ORDER BY id", (user.admin, user.id)
            ).fetchall()
        images = [_image(r) for r in rows]
        if not ids:
            return images
        by_id = {i.id: i for i in images}
        return select(by_id, ids, "InvalidAMIID.NotFound", lambda n: f"image id '[{image_id(n)}]'")

    def shown_location(self, image: Ec2Image) -> str:
        """``image``'s location as a client may see it: no path of this host (the docstring)."""
        if not Path(image.location).is_absolute():
            return image.location  # marketplace:ID|TAG, an entry URL on the site's registry
        name = Path(image.name).name  # a site image registered by path and no Name: its file's
        uploads = self.state.root / "ec2" / "uploads"
        return f"{UPLOADED if Path(image.location).is_relative_to(uploads) else SITE_IMAGE}{name}"

    def deregister(self, user: User, number: int) -> None:
        self.visible(user, [number])
        with self.state.transaction() as db:
            db.execute("DELETE FROM ec2_images WHERE id = ?", (number,))
