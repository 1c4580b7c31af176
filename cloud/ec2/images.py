"""The EC2 image catalogue: ``ami-%08x`` ids for image locations, registered per user.

An image is a name and a location the core can deploy from, as a DISK's ``SOURCE``: an image
file, a build's ``*.manifest.json`` (checked against its SHA-256 at launch), or
``marketplace:ID`` (policy-checked and downloaded verified at launch). ``RegisterImage``
checks that a local location exists; the core verifies everything again when it deploys.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cloud.ec2.errors import invalid_parameter
from cloud.ec2.ids import image_id, select
from cloud.tenancy import check_resource_name
from cloud.users import User
from imagekit.errors import InputError
from imagekit.state import State

REMOTE_PREFIXES = ("marketplace:", "http://", "https://")


@dataclass(frozen=True)
class Ec2Image:
    id: int
    owner: str
    name: str
    location: str
    created: str


def _image(row: sqlite3.Row) -> Ec2Image:
    return Ec2Image(row["id"], row["owner"], row["name"], row["location"], row["created"])


def check_location(location: str) -> str:
    if location.startswith(REMOTE_PREFIXES):
        return location
    path = Path(location)
    if not path.is_absolute() or not path.is_file():
        raise invalid_parameter(
            f"ImageLocation {location!r} is not marketplace:ID, an entry URL or an absolute path to an image"
        )
    return location


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
                "SELECT i.name FROM ec2_images i JOIN cloud_users u ON u.name = i.owner WHERE u.admin = 1"
            )
            try:
                check_resource_name("image", name, taken=[r["name"] for r in site], admin=user.admin)
            except InputError as err:
                raise invalid_parameter(err.reason) from None
            # ids start at 1: ami-00000001 is the first image, as in econe.
            cur = db.execute(
                "INSERT INTO ec2_images (id, owner, name, location, created)"
                " VALUES ((SELECT COALESCE(MAX(id), 0) + 1 FROM ec2_images), ?, ?, ?, ?)",
                (user.name, name, check_location(location), created),
            )
            assert cur.lastrowid is not None
            if admit is not None:
                admit(db, cur.lastrowid)
        return Ec2Image(cur.lastrowid, user.name, name, location, created)

    def visible(self, user: User, ids: Sequence[int] = ()) -> list[Ec2Image]:
        """The user's images (an administrator's: all); only ``ids`` when given, each must be one."""
        with self.state.read() as db:
            rows = db.execute(
                "SELECT * FROM ec2_images WHERE ? OR owner = ? ORDER BY id", (user.admin, user.name)
            ).fetchall()
        images = [_image(r) for r in rows]
        if not ids:
            return images
        by_id = {i.id: i for i in images}
        return select(by_id, ids, "InvalidAMIID.NotFound", lambda n: f"image id '[{image_id(n)}]'")

    def deregister(self, user: User, number: int) -> None:
        self.visible(user, [number])
        with self.state.transaction() as db:
            db.execute("DELETE FROM ec2_images WHERE id = ?", (number,))
