"""Cloud users and their credentials, kept in the state database like ``oneuser`` keeps them.

    users = UserStore(State.open(state_dir()))
    created = users.create("alice", "s3cret")      # created.secret_key is shown once
    user, secret = users.credentials(created.user.access_key)   # to check an HMAC signature

Two secrets per user, protected differently because they are used differently:

- The **password** (HTTP Basic for OCCI, ``user passwd``) is only ever verified, so only a salted
  scrypt hash is stored (``scrypt-sha1$N$r$p$salt$hash``, base64). What is hashed is the
  password's SHA-1 hex digest, the form oneuser 1.4 kept it in and 1.4's OCCI client sends in
  place of the password (OpenNebula/one ``src/cloud/occi/lib/OCCIClient.rb``:
  ``Digest::SHA1.hexdigest``): either the password or that digest is accepted. Hashes made
  before (``scrypt$…``, of the password itself) still verify the password.
- The **EC2 secret key** must be known to recompute the HMAC of a signed request, so it cannot be
  hashed. It is stored encrypted with AES-256-GCM under a key kept in the state directory
  (``ec2-secrets.key``, mode 0600, created on first use); the access key is the associated data,
  so a ciphertext copied onto another user's row does not decrypt. Whoever can read both the
  database and the key file can recover the secrets: back them up apart, protect the directory.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import string
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from imagekit.errors import DataError, InputError
from imagekit.state import State

KEY_FILE = "ec2-secrets.key"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,127}")


@dataclass(frozen=True)
class ScryptCost:
    n: int
    r: int
    p: int


# scrypt cost of new hashes: 16 MiB and ~50 ms per check here; stored with each hash, so it can
# be raised later and old hashes still verify. (The test suite lowers it: tests/conftest.py.)
PASSWORD_COST = ScryptCost(2**14, 8, 1)
_ACCESS_KEY_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
# Letters and digits (238 bits in 40 characters): a secret key is given as ``-S SECRET`` to
# econe-style tools, which take one starting with "-" for an option (token_urlsafe's could).
_SECRET_KEY_ALPHABET = string.ascii_letters + string.digits
_SHA1_HEX = re.compile(r"[0-9a-fA-F]{40}")


def _unknown_user_hash() -> str:
    """Checked against when a login names no user: a hash of the current kind and cost that no
    password matches (its digest is not scrypt's output for any input anyone knows)."""
    cost, zeros = PASSWORD_COST, base64.b64encode(bytes(16)).decode()
    return f"scrypt-sha1${cost.n}${cost.r}${cost.p}${zeros}${base64.b64encode(bytes(64)).decode()}"


@dataclass(frozen=True)
class User:
    id: int
    name: str
    access_key: str
    admin: bool
    created: str


@dataclass(frozen=True)
class CreatedUser:
    """What ``create`` returns: the only time the secret key leaves the store unasked."""

    user: User
    secret_key: str


def _sha1_hex(password: str) -> str:
    return hashlib.sha1(password.encode(), usedforsecurity=False).hexdigest()


def hash_password(password: str) -> str:
    salt, cost = os.urandom(16), PASSWORD_COST
    digest = hashlib.scrypt(
        _sha1_hex(password).encode(), salt=salt, n=cost.n, r=cost.r, p=cost.p, maxmem=64 * 2**20
    )
    b64 = base64.b64encode
    return f"scrypt-sha1${cost.n}${cost.r}${cost.p}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` (or, for a ``scrypt-sha1`` hash, its SHA-1 hex digest as a 1.4
    client sends it) is the one ``stored`` was made from."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        expected = base64.b64decode(digest, validate=True)
        salt_bytes, cost = base64.b64decode(salt, validate=True), (int(n), int(r), int(p))
    except ValueError:
        raise DataError("stored password hash is malformed") from None
    if kind == "scrypt":
        candidates = [password]
    elif kind == "scrypt-sha1":
        candidates = [_sha1_hex(password)]
        if _SHA1_HEX.fullmatch(password):
            candidates.append(password.lower())
    else:
        raise DataError(f"stored password hash is of an unknown kind {kind!r}")
    found = False
    for candidate in candidates:
        got = hashlib.scrypt(
            candidate.encode(),
            salt=salt_bytes,
            n=cost[0],
            r=cost[1],
            p=cost[2],
            maxmem=64 * 2**20,
            dklen=len(expected),
        )
        found |= hmac.compare_digest(got, expected)
    return found


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InputError(
            f"invalid user name {name!r}",
            hint="1-128 characters: letters, digits, '_', '.', '@', '-' (not first)",
        )
    return name


def _check_password_text(password: str) -> str:
    if not password:
        raise InputError("the password is empty")
    return password


class SecretBox:
    """AES-256-GCM under the state directory's key file (created 0600 on first use)."""

    def __init__(self, key_path: Path) -> None:
        self.key_path = key_path
        self._aead: AESGCM | None = None

    def _key(self) -> AESGCM:
        if self._aead is None:
            self._aead = AESGCM(self._load_or_create())
        return self._aead

    def _load_or_create(self) -> bytes:
        try:
            fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            key = AESGCM.generate_key(bit_length=256)
            with os.fdopen(fd, "wb") as out:
                out.write(key)
                out.flush()
                os.fsync(out.fileno())
            return key
        mode = self.key_path.stat().st_mode & 0o777
        if mode & 0o077:
            raise DataError(f"{self.key_path}: key file is readable by others (mode {mode:o}); chmod 600")
        key = self.key_path.read_bytes()
        if len(key) != 32:
            raise DataError(f"{self.key_path}: not a 256-bit key ({len(key)} bytes)")
        return key

    def seal(self, plaintext: str, bound_to: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._key().encrypt(nonce, plaintext.encode(), bound_to.encode())

    def open(self, sealed: bytes, bound_to: str) -> str:
        try:
            return self._key().decrypt(sealed[:12], sealed[12:], bound_to.encode()).decode()
        except InvalidTag:
            raise DataError(f"the secret of {bound_to} does not decrypt with {self.key_path}") from None


MAX_VERIFIED = 4096  # remembered verified passwords per store (only right ones are remembered)


def _user(row: sqlite3.Row) -> User:
    return User(row["id"], row["name"], row["access_key"], bool(row["admin"]), row["created"])


class UserStore:
    def __init__(self, state: State) -> None:
        self.state = state
        self.box = SecretBox(state.root / KEY_FILE)
        # Passwords this store has verified, as an HMAC under a key of this process only, with
        # the stored hash they matched: a client sending HTTP Basic on every request (a build
        # service client polling, fetching) pays the scrypt once, not ~50 ms of CPU each time.
        self._verified_key = secrets.token_bytes(32)
        self._verified: dict[bytes, str] = {}

    def create(self, name: str, password: str, *, admin: bool = False) -> CreatedUser:
        _check_name(name)
        hashed = hash_password(_check_password_text(password))
        access_key = "AKIK" + "".join(secrets.choice(_ACCESS_KEY_ALPHABET) for _ in range(16))
        secret_key = "".join(secrets.choice(_SECRET_KEY_ALPHABET) for _ in range(40))
        sealed = self.box.seal(secret_key, access_key)
        created = datetime.now(UTC).replace(microsecond=0).isoformat()
        with self.state.transaction() as db:
            if db.execute("SELECT 1 FROM cloud_retired_users WHERE name = ?", (name,)).fetchone():
                raise InputError(
                    f"user name {name!r} belonged to a deleted user: names are never reused",
                    hint="choose another name",
                )
            try:
                # Past every id ever given, the deleted users' too (SQLite alone would hand the
                # highest id out again once its row is gone).
                cur = db.execute(
                    "INSERT INTO cloud_users (id, name, password, access_key, secret, admin, created)"
                    " VALUES ((SELECT 1 + MAX(COALESCE((SELECT MAX(id) FROM cloud_users), 0),"
                    " COALESCE((SELECT MAX(id) FROM cloud_retired_users), 0))), ?, ?, ?, ?, ?, ?)",
                    (name, hashed, access_key, sealed, int(admin), created),
                )
            except sqlite3.IntegrityError:
                raise InputError(f"user {name!r} already exists") from None
            assert cur.lastrowid is not None
        return CreatedUser(User(cur.lastrowid, name, access_key, admin, created), secret_key)

    def _row(self, column: str, value: str | int) -> sqlite3.Row | None:
        with self.state.read() as db:
            row: sqlite3.Row | None = db.execute(
                f"SELECT * FROM cloud_users WHERE {column} = ?", (value,)
            ).fetchone()
        return row

    def get(self, ref: str | int) -> User:
        """A user by id (a number) or by name."""
        row = self._row("id", int(ref)) if str(ref).isdigit() else self._row("name", str(ref))
        if row is None:
            raise InputError(f"no user {ref!r}", hint="`imagekit user list` shows them")
        return _user(row)

    def list(self) -> list[User]:
        with self.state.read() as db:
            return [_user(r) for r in db.execute("SELECT * FROM cloud_users ORDER BY id")]

    def delete(self, ref: str | int) -> None:
        """Remove the account (its key pairs go with it) and retire its id and name for good.
        ``cloud.accounts.delete_user`` first checks, or ends, what the user owns."""
        user = self.get(ref)
        deleted = datetime.now(UTC).replace(microsecond=0).isoformat()
        with self.state.transaction() as db:
            db.execute(
                "INSERT INTO cloud_retired_users (id, name, deleted) VALUES (?, ?, ?)",
                (user.id, user.name, deleted),
            )
            db.execute("DELETE FROM cloud_users WHERE id = ?", (user.id,))

    def set_password(self, ref: str | int, password: str) -> None:
        user = self.get(ref)
        hashed = hash_password(_check_password_text(password))
        with self.state.transaction() as db:
            db.execute("UPDATE cloud_users SET password = ? WHERE id = ?", (hashed, user.id))

    def authenticate(self, name: str, password: str) -> User | None:
        """The user when ``password`` is theirs (HTTP Basic), else None. An unknown name costs
        the same scrypt work as a wrong password, so names cannot be told apart by timing."""
        row = self._row("name", name)
        if row is None:
            check_password(password, _unknown_user_hash())
            return None
        proof = hmac.digest(self._verified_key, f"{name}\0{password}".encode(), "sha256")
        if self._verified.get(proof) == row["password"]:  # a changed password has another hash
            return _user(row)
        if not check_password(password, row["password"]):
            return None
        if len(self._verified) >= MAX_VERIFIED:
            self._verified.clear()
        self._verified[proof] = row["password"]
        return _user(row)

    def credentials(self, access_key: str) -> tuple[User, str] | None:
        """The user owning ``access_key`` and their EC2 secret key, or None."""
        row = self._row("access_key", access_key)
        if row is None:
            return None
        return _user(row), self.box.open(row["secret"], access_key)
