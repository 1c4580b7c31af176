"""Key pairs: OpenSSH public keys parsed and fingerprinted, stored per user, gone with the user."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from cloud.ec2.errors import Ec2Error
from cloud.ec2.keypairs import KeyPairStore, parse_public_key
from cloud.users import UserStore
from imagekit.state import State


def _openssh(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def test_key_types_and_refusals() -> None:
    assert parse_public_key(_openssh(ec.generate_private_key(ec.SECP256R1())) + b" me@host")[1] == "ecdsa"
    line, kind, _ = parse_public_key(_openssh(ed25519.Ed25519PrivateKey.generate()) + b" me@host\n")
    assert kind == "ed25519" and line.endswith(" me@host")
    ed_blob = _openssh(ed25519.Ed25519PrivateKey.generate()).split()[1]
    for bad in [
        b"ssh-rsa " + ed_blob,  # labelled with another type than its blob says
        b"ssh-dss " + base64.b64encode(b"\x00\x00\x00\x07ssh-dss"),
        b"ssh-ed25519 !!!",
        b"ssh-ed25519",
        b"\xff\xfe",
    ]:
        with pytest.raises(Ec2Error) as err:
            parse_public_key(bad)
        assert err.value.code == "InvalidParameterValue"


def test_key_pairs_go_with_their_user(_isolated_state: object) -> None:
    state = State.open(_isolated_state)  # type: ignore[arg-type]
    users, keys = UserStore(state), KeyPairStore(state)
    alice = users.create("alice", "pw").user
    bob = users.create("bob", "pw").user
    material = _openssh(ed25519.Ed25519PrivateKey.generate())
    keys.import_key(alice, "k", material)
    keys.import_key(bob, "k", material)  # names are per user
    with pytest.raises(Ec2Error, match="already exists"):
        keys.import_key(alice, "k", material)
    with pytest.raises(Ec2Error) as err:
        keys.import_key(alice, "", material)
    assert err.value.code == "InvalidParameterValue"
    users.delete("alice")
    assert keys.describe(alice) == [] and [k.name for k in keys.describe(bob)] == ["k"]
