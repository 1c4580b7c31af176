"""The build service's signed provenance: DSSE (the spec's own vectors), the in-toto statement
of a build through the service, ``imagekit build verify-provenance``, and the link from a signed
marketplace entry (``market metadata create --provenance``)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from starlette.testclient import TestClient

from cloud.buildservice.provenance import BUILD_TYPE, KEY_NAME, PROVENANCE_NAME, service_key
from cloud.buildservice.queue import Step
from cloud.buildservice.server import ServiceConfig, create_app
from cloud.buildservice.worker import RECIPE_DIGEST_FILE, BuildRequest
from cloud.users import UserStore
from imagekit.cli import main
from imagekit.dsse import (
    PAYLOAD_TYPE_INTOTO,
    Envelope,
    Signature,
    key_id,
    load_public_key,
    pae,
    parse_envelope,
    public_pem,
    sign_envelope,
    verify_envelope,
)
from imagekit.errors import DataError, VerificationError
from imagekit.intoto import SLSA_PROVENANCE_V1, STATEMENT_V1, Subject, statement_bytes, verify_provenance
from imagekit.state import State
from marketplace.metadata import parse_metadata
from marketplace.provenance_link import provenance_link
from tests.cloud.buildservice_standin import DISK, StandIn, basic, recipe_tar, running, workspace_of
from tests.marketplace.pki import shared_pki, write
from tests.waiting import wait_until

ALICE = basic("alice", "alice-password")
BUILDER = "https://builds.example.org"
MANIFEST = {
    "name": "web",
    "os": {"name": "debian", "version": "12", "arch": "x86_64"},
    "inputs": {
        "recipe_hash": "ab" * 32,
        "archive": "pinned:20250520T000000Z",
        "source_date_epoch": 1747699200,
        "firmware": "bios",
        "mirror": "http://deb.debian.org/debian",
    },
    "packages": [{"name": "libc6", "version": "2.36-9+deb12u10", "arch": "amd64"}],
}

# secure-systems-lab/dsse testvectors/vectors.json: Ed25519 key "A" (seed), its "single-signature"
# envelope; protocol.md "Test Vectors": the PAE of "hello world" and an ECDSA P-256 signature.
VECTOR_SEED = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
VECTOR_PAYLOAD = b'{"_type":"https://in-toto.io/Statement/v1"}'
VECTOR_SIG = "2WAfaHm5jluo0w+0rk8uVkluELJYWjSmU9x7EUzx+AyteDGJ4/nqyJXfmAUVFIAoQafWm7AxBZNw5M9ixNHiCA=="
VECTOR_PAE = (
    "445353457631203238206170706c69636174696f6e2f766e642e696e2d746f746f2b6a736f6e203433207b225f74797065"
    "223a2268747470733a2f2f696e2d746f746f2e696f2f53746174656d656e742f7631227d"
)
P256_X = 46950820868899156662930047687818585632848591499744589407958293238635476079160
P256_Y = 5640078356564379163099075877009565129882514886557779369047442380624545832820
P256_SIG = "A3JqsQGtVsJ2O2xqrI5IcnXip5GToJ3F+FnZ+O88SjtR6rDAajabZKciJTfUiHqJPcIAriEGAHTVeCUjW2JIZA=="


def _vector_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTOR_SEED))


def test_pae_is_the_specs_encoding() -> None:
    """protocol.md: ``DSSEv1 29 http://example.com/HelloWorld 11 hello world``; vectors.json:
    byte lengths (29 for the 28 characters of ``application/vnd.exämple+json``), an empty body
    as ``0 `` with its space."""
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert pae(PAYLOAD_TYPE_INTOTO, VECTOR_PAYLOAD).hex() == VECTOR_PAE
    assert pae("application/vnd.exämple+json", b"x").startswith(b"DSSEv1 29 application/vnd.ex\xc3\xa4mple")
    assert pae(PAYLOAD_TYPE_INTOTO, b"") == b"DSSEv1 28 application/vnd.in-toto+json 0 "


def test_an_ed25519_signature_is_the_vectors_and_verifies() -> None:
    """Ed25519 is deterministic: signing the vector's payload with key A gives its ``sig``."""
    envelope = sign_envelope(PAYLOAD_TYPE_INTOTO, VECTOR_PAYLOAD, _vector_key())
    assert base64.b64encode(envelope.signatures[0].sig).decode() == VECTOR_SIG
    public = _vector_key().public_key()
    line = envelope.to_json_line()
    assert verify_envelope(parse_envelope(line, source="v"), public, payload_type=PAYLOAD_TYPE_INTOTO) == (
        VECTOR_PAYLOAD
    )
    urlsafe = json.dumps(
        {"payloadType": PAYLOAD_TYPE_INTOTO, "payload": base64.urlsafe_b64encode(VECTOR_PAYLOAD).decode(),
         "signatures": [{"sig": base64.urlsafe_b64encode(envelope.signatures[0].sig).decode().rstrip("=")}]}
    ).encode()  # fmt: skip
    assert verify_envelope(parse_envelope(urlsafe, source="v"), public, payload_type=PAYLOAD_TYPE_INTOTO)
    swapped = Envelope("application/vnd.example.other+json", VECTOR_PAYLOAD, envelope.signatures)
    with pytest.raises(VerificationError, match="DSSE signature: no signature verifies"):
        verify_envelope(swapped, public, payload_type="application/vnd.example.other+json")


def test_the_specs_ecdsa_p256_example_verifies() -> None:
    """protocol.md's example: ECDSA P-256/SHA-256, the signature as raw ``r || s``."""
    public = ec.EllipticCurvePublicNumbers(P256_X, P256_Y, ec.SECP256R1()).public_key()
    example = Envelope(
        "http://example.com/HelloWorld", b"hello world", (Signature(base64.b64decode(P256_SIG)),)
    )
    assert verify_envelope(example, public, payload_type="http://example.com/HelloWorld") == b"hello world"
    with pytest.raises(VerificationError):
        verify_envelope(Envelope(example.payload_type, b"hello world!", example.signatures), public,
                        payload_type=example.payload_type)  # fmt: skip


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"", "expected one DSSE envelope"),
        (b"{}\n{}\n", "got 2"),
        (
            b'{"payloadType": "x", "payload": "e30=", "signatures": []}',
            "signatures: expected a non-empty list",
        ),
        (b'{"payloadType": "x", "payload": "!!", "signatures": [{"sig": "AA=="}]}', "payload: not base64"),
        (b"[1]", "not a DSSE envelope"),
    ],
)
def test_a_malformed_envelope_is_a_one_line_data_error(line: bytes, message: str) -> None:
    with pytest.raises(DataError, match=message) as caught:
        parse_envelope(line, source="p.jsonl")
    assert "\n" not in str(caught.value)


def _statement(subjects: list[Subject], predicate_type: str = SLSA_PROVENANCE_V1) -> bytes:
    return statement_bytes(subjects, predicate_type, {"runDetails": {"builder": {"id": BUILDER}}})


def test_verify_provenance_finds_each_tampering() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    disk = Subject("disk.qcow2", hashlib.sha256(DISK).hexdigest())
    line = sign_envelope(PAYLOAD_TYPE_INTOTO, _statement([disk]), key).to_json_line()
    files = {"disk.qcow2": disk.sha256}
    assert verify_provenance(line, key.public_key(), files, source="p").statement.builder_id == BUILDER

    def refused(data: bytes, files: dict[str, str], key_used: Any = None) -> str:
        with pytest.raises((VerificationError, DataError)) as caught:
            verify_provenance(data, key_used or key.public_key(), files, source="p")
        return str(caught.value)

    doc = json.loads(line)
    forged = statement_bytes([Subject("disk.qcow2", "0" * 64)], SLSA_PROVENANCE_V1, {})
    doc["payload"] = base64.b64encode(forged).decode()
    assert refused(json.dumps(doc).encode(), files).startswith("DSSE signature: no signature verifies")
    assert refused(line, {"disk.qcow2": "1" * 64}) == (
        f"provenance subject: disk.qcow2: SHA-256 {'1' * 64} is not the provenance's {disk.sha256}"
    )
    assert refused(line, {**files, "extra.raw": "2" * 64}).startswith(
        "provenance subject: extra.raw: no subject"
    )
    assert (
        refused(line, {}) == "provenance subject: disk.qcow2: a subject of the provenance, but no such file"
    )
    other = ed25519.Ed25519PrivateKey.generate().public_key()
    assert refused(line, files, other).startswith("DSSE signature")
    wrong_type = sign_envelope(PAYLOAD_TYPE_INTOTO, _statement([disk], "https://example.org/x"), key)
    assert refused(wrong_type.to_json_line(), files).startswith("provenance type: predicateType")
    not_a_statement = sign_envelope(
        PAYLOAD_TYPE_INTOTO, b'{"_type": "https://in-toto.io/Statement/v0.1"}', key
    )
    assert "expected 'https://in-toto.io/Statement/v1'" in refused(not_a_statement.to_json_line(), files)
    for subjects in ([1], [{"name": "a", "digest": {"sha256": "short"}}], [{"digest": "x"}], []):
        payload = json.dumps(
            {"_type": STATEMENT_V1, "subject": subjects, "predicateType": SLSA_PROVENANCE_V1}
        )
        bad = sign_envelope(PAYLOAD_TYPE_INTOTO, payload.encode(), key).to_json_line()
        assert refused(bad, files).startswith("p: subject")


# The service, with a stand-in build that writes a manifest listing inputs and packages.


class ManifestStandIn(StandIn):
    def __call__(self, request: BuildRequest) -> tuple[Step, ...]:
        steps = super().__call__(request)
        if "own-provenance" in request.recipe.read_text():
            (request.output / PROVENANCE_NAME).write_text("{}")
        if "rewrite-digest" in request.recipe.read_text():
            (request.output.parent / RECIPE_DIGEST_FILE).write_text("0" * 64)
        (request.output / "manifest.json").write_text(json.dumps(MANIFEST))
        return steps


@pytest.fixture
def state(tmp_path: Path) -> State:
    state = State.open(tmp_path / "state")
    UserStore(state).create("alice", "alice-password")
    return state


@pytest.fixture
def client(state: State) -> Iterator[TestClient]:
    with TestClient(
        create_app(state, ServiceConfig(log_poll=0.01, builder_id=BUILDER), ManifestStandIn())
    ) as c:
        c.headers.update(ALICE)
        yield c


def _build(client: TestClient, recipe: str = "name: web") -> tuple[dict[str, Any], bytes]:
    body = recipe_tar({"web.appl": recipe})
    job_id = client.post("/builds", content=body, params={"format": "qcow2", "firmware": "bios"}).json()[
        "id"
    ]
    finished = ("succeeded", "failed")
    wait_until(lambda: client.get(f"/builds/{job_id}").json()["state"] in finished, timeout=10, what="build")
    answer: dict[str, Any] = client.get(f"/builds/{job_id}").json()
    return answer, body


def test_a_succeeded_build_has_a_signed_slsa_statement(client: TestClient, state: State) -> None:
    build, body = _build(client)
    assert build["state"] == "succeeded"
    listed = {a["name"]: a["sha256"] for a in build["artifacts"]}
    served = client.get(f"/builds/{build['id']}/provenance")
    assert (
        served.status_code == 200 and hashlib.sha256(served.content).hexdigest() == listed[PROVENANCE_NAME]
    )
    key = load_public_key(client.get("/provenance-key", headers={"authorization": ""}).content, source="k")
    payload = verify_envelope(
        parse_envelope(served.content, source="p"), key, payload_type=PAYLOAD_TYPE_INTOTO
    )
    statement = json.loads(payload)
    assert statement["_type"] == STATEMENT_V1 and statement["predicateType"] == SLSA_PROVENANCE_V1
    assert statement["subject"] == [
        {"name": name, "digest": {"sha256": digest}}
        for name, digest in listed.items()
        if name != PROVENANCE_NAME
    ]
    definition, run = statement["predicate"]["buildDefinition"], statement["predicate"]["runDetails"]
    assert definition["buildType"] == BUILD_TYPE
    assert definition["externalParameters"] == {
        "recipe": {"name": "web.appl", "digest": {"sha256": hashlib.sha256(body).hexdigest()}},
        "options": {"formats": ["qcow2"], "firmware": "bios", "check_reproducible": False},
    }
    assert definition["internalParameters"] == {
        "recipe_hash": "ab" * 32, "source_date_epoch": 1747699200, "firmware": "bios"
    }  # fmt: skip
    assert definition["resolvedDependencies"] == [
        {"name": "debian-archive", "uri": "http://deb.debian.org/debian",
         "annotations": {"archiveState": "pinned:20250520T000000Z"}},
        {"name": "libc6", "uri": "pkg:deb/debian/libc6@2.36-9%2Bdeb12u10?arch=amd64&distro=debian-12"},
    ]  # fmt: skip
    assert run["builder"]["id"] == BUILDER and run["metadata"]["invocationId"] == str(build["id"])
    assert run["metadata"]["startedOn"] <= run["metadata"]["finishedOn"]
    assert run["metadata"]["finishedOn"].endswith("Z") and len(run["metadata"]["finishedOn"]) == 20
    assert (
        workspace_of(state.root, build["id"]) / "artifacts" / PROVENANCE_NAME
    ).read_bytes() == served.content


def test_the_recipe_digest_is_the_one_recorded_before_the_build_ran(client: TestClient) -> None:
    build, body = _build(client, "name: rewrite-digest")
    served = client.get(f"/builds/{build['id']}/provenance").content
    statement = json.loads(parse_envelope(served, source="p").payload)
    recipe = statement["predicate"]["buildDefinition"]["externalParameters"]["recipe"]
    assert recipe["digest"]["sha256"] == hashlib.sha256(body).hexdigest()


def test_no_provenance_for_a_failed_build_nor_one_that_wrote_its_own(client: TestClient) -> None:
    failed, _ = _build(client, "name: fail")
    assert failed["state"] == "failed"
    assert client.get(f"/builds/{failed['id']}/provenance").status_code == 404
    own, _ = _build(client, "name: own-provenance")
    assert (
        own["state"] == "failed"
        and own["error"] == f"provenance: the build wrote a file named {PROVENANCE_NAME} itself"
    )
    assert own["artifacts"] == []


def test_the_service_key_is_made_once_private_and_kept(tmp_path: Path) -> None:
    first = service_key(tmp_path / "svc")
    path = tmp_path / "svc" / KEY_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and isinstance(first, ed25519.Ed25519PrivateKey)
    assert service_key(tmp_path / "svc").public_key() == first.public_key()
    assert [p.name for p in (tmp_path / "svc").iterdir()] == [KEY_NAME]
    os.chmod(path, 0o644)
    with pytest.raises(DataError, match="readable by others"):
        service_key(tmp_path / "svc")


# The client: fetch saves the provenance, verify-provenance checks it; the marketplace links it.


@pytest.fixture
def fetched(state: State, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    stand_in = ManifestStandIn()
    monkeypatch.setenv("IMAGEKIT_BUILD_PASSWORD", "alice-password")
    app = create_app(state, ServiceConfig(log_poll=0.01, builder_id=BUILDER), stand_in)
    with running(app, stand_in) as url:
        recipe = tmp_path / "recipe" / "web.appl"
        recipe.parent.mkdir()
        recipe.write_text("name: web\n")
        out = tmp_path / "out"
        assert (
            main(
                [
                    "build",
                    "submit",
                    str(recipe),
                    "--endpoint",
                    url,
                    "--user",
                    "alice",
                    "--wait",
                    "-o",
                    str(out),
                ]
            )
            == 0
        )
        yield url, out


def test_verify_provenance_of_a_fetched_build(
    fetched: tuple[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path, state: State
) -> None:
    url, out = fetched
    assert sorted(p.name for p in out.iterdir()) == ["disk.qcow2", "manifest.json", PROVENANCE_NAME]
    capsys.readouterr()
    assert main(["build", "verify-provenance", str(out), "--endpoint", url]) == 0
    assert (
        capsys.readouterr().out
        == f"verified: 2 artifacts of build 1 by {BUILDER} (key {_key_id(state)[:16]})\n"
    )
    key = tmp_path / "service.pem"
    key.write_bytes(_public_pem(state))
    assert main(["build", "verify-provenance", str(out / PROVENANCE_NAME), "--key", str(key), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["verified"] and answer["build"] == "1" and answer["key_id"] == _key_id(state)
    assert [s["name"] for s in answer["subjects"]] == ["disk.qcow2", "manifest.json"]

    (out / "disk.qcow2").write_bytes(b"tampered")
    assert main(["build", "verify-provenance", str(out), "--key", str(key)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: provenance subject: disk.qcow2: SHA-256 ") and err.count("\n") == 1
    assert main(["build", "verify-provenance", str(out), "--key", str(key), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["verified"] is False
    (out / "disk.qcow2").write_bytes(DISK)
    other = tmp_path / "other.pem"
    other.write_bytes(public_pem(ed25519.Ed25519PrivateKey.generate().public_key()))
    assert main(["build", "verify-provenance", str(out), "--key", str(other)]) == 1
    assert capsys.readouterr().err.startswith("error: DSSE signature: no signature verifies with the key")


def _public_pem(state: State) -> bytes:
    return public_pem(service_key(state.root / "build-service").public_key())


def _key_id(state: State) -> str:
    return key_id(service_key(state.root / "build-service").public_key())


def test_a_signed_entry_links_the_provenance_and_its_signature_covers_the_link(
    fetched: tuple[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _, out = fetched
    entry, signed = tmp_path / "entry.xml", tmp_path / "signed.xml"
    create = ["market", "metadata", "create", str(out / "disk.qcow2"), "--os", "debian",
              "--os-version", "12", "--os-arch", "x86_64", "-o", str(entry)]  # fmt: skip
    location = "https://images.example.org/web/provenance.intoto.jsonl"
    assert (
        main([*create, "--provenance", str(out / PROVENANCE_NAME), "--provenance-location", location]) == 0
    )
    link = provenance_link(parse_metadata(entry.read_bytes()))
    assert link is not None
    assert link.sha256 == hashlib.sha256((out / PROVENANCE_NAME).read_bytes()).hexdigest()
    assert (link.location, link.builder, link.build) == (location, BUILDER, "1")

    cert, key = write(shared_pki().ec, tmp_path / "id", "bob")
    assert (
        main(
            [
                "market",
                "metadata",
                "sign",
                str(entry),
                "--cert",
                str(cert),
                "--key",
                str(key),
                "-o",
                str(signed),
            ]
        )
        == 0
    )
    assert main(["market", "metadata", "verify", str(signed)]) == 0
    assert provenance_link(parse_metadata(signed.read_bytes())) == link
    tampered = tmp_path / "tampered.xml"
    tampered.write_bytes(signed.read_bytes().replace(link.sha256.encode(), b"0" * 64))
    capsys.readouterr()
    assert main(["market", "metadata", "verify", str(tampered)]) == 1
    assert capsys.readouterr().err.startswith("error: signature:")


def test_a_provenance_that_does_not_name_the_image_is_not_linked(
    fetched: tuple[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _, out = fetched
    other = tmp_path / "other.raw"
    other.write_bytes(b"another image" * 100)
    create = ["market", "metadata", "create", str(other), "--os", "debian", "--os-version", "12",
              "--os-arch", "x86_64", "-o", str(tmp_path / "e.xml")]  # fmt: skip
    capsys.readouterr()
    assert main([*create, "--provenance", str(out / PROVENANCE_NAME)]) == 1
    assert "the provenance names no file with this image's SHA-256" in capsys.readouterr().err
    assert main([*create, "--provenance", str(out / "manifest.json")]) == 1
    assert "not a build provenance" in capsys.readouterr().err
    assert not (tmp_path / "e.xml").exists()
