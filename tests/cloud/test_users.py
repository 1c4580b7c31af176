"""Cloud users: scrypt password hashes, EC2 secrets sealed under the state directory's key."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sqlite3
from pathlib import Path

import pytest

import cloud.users as users_module
from cloud.users import KEY_FILE, UserStore, check_password, hash_password
from imagekit.cli import main
from imagekit.errors import DataError, InputError
from imagekit.state import State

SITE_PASSWORD_COST = users_module.PASSWORD_COST  # read at import, before any test lowers it


@pytest.fixture
def users(_isolated_state: Path) -> UserStore:
    return UserStore(State.open(_isolated_state))


def test_password_hash_is_salted_scrypt_and_verifies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(users_module, "PASSWORD_COST", SITE_PASSWORD_COST)  # tests/conftest.py lowers it
    first, second = hash_password("pw"), hash_password("pw")
    assert first.startswith("scrypt-sha1$16384$8$1$") and first != second
    assert check_password("pw", first) and check_password("pw", second)
    assert not check_password("pW", first)


def test_the_sha1_digest_a_14_client_sends_is_accepted() -> None:
    """OpenNebula 1.4's OCCI client sends ``Digest::SHA1.hexdigest(password)`` as the Basic
    auth password (OpenNebula/one 04171ed src/cloud/occi/lib/OCCIClient.rb:60, Client#initialize)."""
    stored = hash_password("s3cret")
    digest = hashlib.sha1(b"s3cret").hexdigest()
    assert check_password(digest, stored) and check_password(digest.upper(), stored)
    assert not check_password(hashlib.sha1(b"other").hexdigest(), stored)
    # A hash stored before the digest was (scrypt of the password itself) still verifies it.
    salt = b"0123456789abcdef"
    old = hashlib.scrypt(b"s3cret", salt=salt, n=2**14, r=8, p=1, maxmem=64 * 2**20)
    legacy = f"scrypt$16384$8$1${base64.b64encode(salt).decode()}${base64.b64encode(old).decode()}"
    assert check_password("s3cret", legacy) and not check_password(digest, legacy)
    with pytest.raises(DataError, match="unknown kind"):
        check_password("s3cret", legacy.replace("scrypt$", "bcrypt$", 1))


def test_create_returns_keys_once_and_stores_the_secret_sealed(users: UserStore) -> None:
    created = users.create("alice", "pw")
    assert created.user.access_key.startswith("AKIK") and len(created.user.access_key) == 20
    assert users.credentials(created.user.access_key) == (created.user, created.secret_key)
    assert users.credentials("AKIKNOSUCHKEY") is None
    db = sqlite3.connect(users.state.db_path)
    stored = db.execute("SELECT password, secret FROM cloud_users").fetchone()
    assert created.secret_key.encode() not in stored[1] and "pw" not in stored[0].split("$")
    key = users.state.root / KEY_FILE
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32


def test_secret_keys_are_40_letters_and_digits(users: UserStore) -> None:
    """Never a leading "-", which ``-S SECRET`` (econe's option, ours) takes for an option: CI
    once drew such a key and ``imagekit ec2 describe-images -S -…`` failed."""
    secrets = [users.create(f"user{n}", "pw").secret_key for n in range(8)]
    assert all(re.fullmatch(r"[A-Za-z0-9]{40}", secret) for secret in secrets), secrets


def test_a_sealed_secret_is_bound_to_its_access_key(users: UserStore) -> None:
    alice, bob = users.create("alice", "a"), users.create("bob", "b")
    db = sqlite3.connect(users.state.db_path)
    with db:
        db.execute(
            "UPDATE cloud_users SET secret = (SELECT secret FROM cloud_users WHERE name = 'alice')"
            " WHERE name = 'bob'"
        )
    assert users.credentials(alice.user.access_key) is not None
    with pytest.raises(DataError, match="does not decrypt"):
        users.credentials(bob.user.access_key)


def test_a_key_file_readable_by_others_is_refused(users: UserStore) -> None:
    users.create("alice", "a")
    (users.state.root / KEY_FILE).chmod(0o644)
    with pytest.raises(DataError, match="readable by others"):
        UserStore(users.state).credentials(users.get("alice").access_key)


def test_names_passwords_and_duplicates(users: UserStore) -> None:
    users.create("alice", "a", admin=True)
    with pytest.raises(InputError, match="already exists"):
        users.create("alice", "b")
    for bad in ("", "a b", "-x", "x:y"):
        with pytest.raises(InputError, match="invalid user name"):
            users.create(bad, "pw")
    with pytest.raises(InputError, match="empty"):
        users.create("carol", "")
    assert users.authenticate("alice", "a") == users.get("alice")
    assert users.get("alice").admin
    assert users.authenticate("alice", "b") is None and users.authenticate("nobody", "a") is None


def test_a_verified_password_is_checked_once_until_it_changes(
    users: UserStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP Basic on every request costs one scrypt per password, not one per request; a
    changed password or a deleted user is not let in by what was remembered."""
    users.create("alice", "first-password")
    checks: list[str] = []
    real_check = users_module.check_password

    def counted(password: str, stored: str) -> bool:
        checks.append(password)
        return real_check(password, stored)

    monkeypatch.setattr(users_module, "check_password", counted)
    assert users.authenticate("alice", "first-password") is not None
    assert users.authenticate("alice", "first-password") is not None
    assert users.authenticate("alice", "wrong-password") is None
    assert checks == ["first-password", "wrong-password"]
    users.set_password("alice", "second-password")
    assert users.authenticate("alice", "first-password") is None
    assert users.authenticate("alice", "second-password") is not None
    users.delete("alice")
    assert users.authenticate("alice", "second-password") is None


def test_cli_create_list_show_passwd_delete(
    users: UserStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pw = tmp_path / "pw"
    pw.write_text("first\n")
    assert main(["user", "create", "alice", "--password-file", str(pw), "--admin"]) == 0
    out = capsys.readouterr().out.splitlines()
    access = out[1].removeprefix("EC2_ACCESS_KEY=")
    secret = out[2].removeprefix("EC2_SECRET_KEY=")
    assert users.credentials(access) == (users.get("alice"), secret)

    assert main(["user", "show", "alice", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["admin"] is True and shown["access_key"] == access and secret not in json.dumps(shown)
    assert main(["user", "list"]) == 0
    assert "alice" in capsys.readouterr().out

    pw.write_text("second\n")
    assert main(["user", "passwd", "alice", "--password-file", str(pw)]) == 0
    assert users.authenticate("alice", "second") and not users.authenticate("alice", "first")

    assert main(["user", "delete", "alice"]) == 0
    assert main(["user", "show", "alice"]) == 1
    assert "no user 'alice'" in capsys.readouterr().err
