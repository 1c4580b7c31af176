"""Key pairs: public keys imported per user (``ImportKeyPair``), named, fingerprinted as EC2 does.

Only public keys are kept (there is no ``CreateKeyPair``: the private key would have to leave
the server). A user's key pairs go when the user is deleted. Fingerprints are EC2's for
imported keys: RSA, the MD5 of the key blob as ``ssh-keygen -E md5 -l`` prints it (RFC 4716
section 4); ED25519 and ECDSA, the base64 SHA-256 of the blob.
"""

from __future__ import annotations

import base64
import hashlib
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cloud.ec2.errors import Ec2Error, invalid_parameter
from cloud.ec2.ids import select
from cloud.tenancy import check_resource_name
from cloud.users import User
from imagekit.errors import InputError
from imagekit.state import State

# AWS's bounds: 5000 key pairs per user and region (its default quota, refused with
# KeyPairLimitExceeded), a public key of at most 16 KiB (an RSA key of 16384 bits is 2.8 KiB).
MAX_KEY_PAIRS, MAX_PUBLIC_KEY = 5000, 16 << 10
_KEY_TYPES = {
    "ssh-rsa": "rsa",
    "ssh-ed25519": "ed25519",
    "ecdsa-sha2-nistp256": "ecdsa",
    "ecdsa-sha2-nistp384": "ecdsa",
    "ecdsa-sha2-nistp521": "ecdsa",
}


@dataclass(frozen=True)
class KeyPair:
    id: int
    name: str
    public_key: str
    key_type: str
    fingerprint: str
    created: str

    @property
    def key_pair_id(self) -> str:
        return f"key-{self.id:017x}"


def parse_public_key(material: bytes) -> tuple[str, str, str]:
    """``(public key line, key type, fingerprint)`` of an OpenSSH public key line."""
    if len(material) > MAX_PUBLIC_KEY:
        raise invalid_parameter(f"PublicKeyMaterial is longer than {MAX_PUBLIC_KEY} bytes")
    try:
        lines = [line.strip() for line in material.decode("ascii").splitlines() if line.strip()]
        # One key, its comment kept whole (blanks and all) as the VM will get it, never a
        # second line: that would be a second authorised key.
        [line] = lines
        algorithm, encoded, *comment = line.split(None, 2)
        blob = base64.b64decode(encoded, validate=True)
    except (UnicodeDecodeError, ValueError):  # not ASCII, not one line, not base64
        raise invalid_parameter("PublicKeyMaterial is not one OpenSSH public key line") from None
    if not line.isprintable():
        raise invalid_parameter("PublicKeyMaterial holds control characters")
    if algorithm not in _KEY_TYPES:
        raise invalid_parameter(f"Unsupported key type {algorithm[:30]!r}")
    # The blob starts with its own algorithm name: a key labelled with another type is refused.
    length = int.from_bytes(blob[:4], "big")
    if blob[4 : 4 + length] != algorithm.encode():
        raise invalid_parameter("PublicKeyMaterial is not an OpenSSH public key")
    if algorithm == "ssh-rsa":
        digest = hashlib.md5(blob, usedforsecurity=False).hexdigest()
        fingerprint = ":".join(digest[i : i + 2] for i in range(0, 32, 2))
    else:
        fingerprint = base64.b64encode(hashlib.sha256(blob).digest()).decode()
    return " ".join([algorithm, encoded, *comment]), _KEY_TYPES[algorithm], fingerprint


def _check_name(name: str) -> str:
    if not name or len(name) > 255 or not name.isascii() or not name.isprintable():
        raise invalid_parameter("KeyName must be 1-255 printable ASCII characters")
    try:
        return check_resource_name("key pair", name)
    except InputError as err:
        raise invalid_parameter(err.reason) from None


def _key_pair(row: sqlite3.Row) -> KeyPair:
    return KeyPair(
        row["id"], row["name"], row["public_key"], row["key_type"], row["fingerprint"], row["created"]
    )


class KeyPairStore:
    def __init__(self, state: State) -> None:
        self.state = state

    def import_key(self, user: User, name: str, material: bytes) -> KeyPair:
        line, key_type, fingerprint = parse_public_key(material)
        created = datetime.now(UTC).replace(microsecond=0).isoformat()
        with self.state.transaction() as db:
            try:
                cur = db.execute(
                    "INSERT INTO ec2_keypairs (user_id, name, public_key, key_type, fingerprint, created)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (user.id, _check_name(name), line, key_type, fingerprint, created),
                )
            except sqlite3.IntegrityError:
                raise Ec2Error("InvalidKeyPair.Duplicate", f"The keypair '{name}' already exists.") from None
            assert cur.lastrowid is not None
            count = db.execute("SELECT COUNT(*) FROM ec2_keypairs WHERE user_id = ?", (user.id,)).fetchone()[
                0
            ]
            if count > MAX_KEY_PAIRS:  # rolls the insert back
                raise Ec2Error("KeyPairLimitExceeded", f"A user has at most {MAX_KEY_PAIRS} key pairs")
        return KeyPair(cur.lastrowid, name, line, key_type, fingerprint, created)

    def describe(self, user: User, names: Sequence[str] = ()) -> list[KeyPair]:
        """The user's key pairs (only ``names`` when given: each must exist)."""
        with self.state.read() as db:
            rows = db.execute("SELECT * FROM ec2_keypairs WHERE user_id = ? ORDER BY name", (user.id,))
            found = [_key_pair(r) for r in rows]
        if not names:
            return found
        by_name = {k.name: k for k in found}
        return select(by_name, names, "InvalidKeyPair.NotFound", lambda name: f"key pair '{name}'")

    def get(self, user: User, name: str) -> KeyPair:
        return self.describe(user, [name])[0]

    def delete(self, user: User, name: str) -> None:
        """Deleting a key pair that does not exist succeeds, as in EC2."""
        with self.state.transaction() as db:
            db.execute("DELETE FROM ec2_keypairs WHERE user_id = ? AND name = ?", (user.id, name))
