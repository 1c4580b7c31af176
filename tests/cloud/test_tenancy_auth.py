"""Tenant isolation (issue 17), the authentication classes: authentication before bytes,
signatures that cover what they authorise, identities never reused, and the smaller doors
(4xx refusals without server paths, logins that cost the same, private state files).

Uploads are driven in process (``test_uploads.drive``) so "refused before it was read" is the
count of body bytes the app asked for. econe's client sent its signed fields before the file
(OpenNebula/one ``src/cloud/ec2/lib/EC2QueryClient.rb:243-248``, ``upload_image``), so refusing
a file that comes first costs no 1.4 client anything.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from starlette.testclient import TestClient

from cloud.commands import cloud as cloud_command
from cloud.ec2.client import Endpoint, upload_request
from cloud.ec2.responses import API_VERSION
from cloud.occi.server import create_app as occi_app
from cloud.upload_slots import UploadSlots
from cloud.users import CreatedUser, UserStore
from tests.cloud.test_uploads import MULTIPART, Ec2, drive, ec2, files, form, head, signed, zeros

__all__ = ["ec2"]  # the fixture, shared with test_uploads

pytestmark = pytest.mark.timeout(120)

MiB = 1 << 20


def _images(ec2: Ec2) -> list[Any]:
    with ec2.state.read() as db:
        return list(db.execute("SELECT * FROM ec2_images"))


def _nothing_kept(ec2: Ec2) -> None:
    assert files(ec2.state.root / "ec2") == [] and files(ec2.spool) == []
    assert _images(ec2) == []


# --- 5. authentication before bytes --------------------------------------------------------------


@pytest.mark.parametrize(
    "split",
    [
        "all-fields-after-the-file",
        "signature-after-the-file",
        "no-fields-at-all",
        "the-hash-after-the-file",
    ],
)
def test_an_upload_whose_signed_fields_follow_the_file_stores_nothing(ec2: Ec2, split: str) -> None:
    """Old code staged such a file in ``uploads/.staging`` and kept it when the signature
    held at the end: an anonymous client could make the server write as much as it liked."""
    data = list(zeros(3))
    fields = signed(ec2.alice, sha256=hashlib.sha256(b"".join(data)).hexdigest())
    cut = {
        "all-fields-after-the-file": 0,
        "signature-after-the-file": [k for k, _ in fields].index("Signature"),
        "no-fields-at-all": 0,
        "the-hash-after-the-file": [k for k, _ in fields].index("ImageSha256"),
    }[split]
    before = [
        f for i, f in enumerate(fields) if i < cut or (split == "signature-after-the-file" and i > cut)
    ]
    after = [] if split == "no-fields-at-all" else [f for f in fields if f not in before]
    answer = drive(ec2.app(allow_unhashed_uploads=True), MULTIPART, form(before, data, after))
    assert answer.status in (400, 401) and answer.code() in ("AuthFailure", "InvalidParameterValue")
    assert answer.read == len(head(before)), "the file was read before the refusal"
    assert b"before the file part" in answer.body
    _nothing_kept(ec2)


def test_an_upload_signed_by_header_is_refused_before_the_file(ec2: Ec2) -> None:
    """A SigV4 header signs the body's hash, which a streamed multipart upload cannot carry:
    on old code such a request (``x-amz-content-sha256: UNSIGNED-PAYLOAD``) was taken with its
    form fields and file signed by nothing."""
    request = AWSRequest(method="POST", url="http://testserver/", data=b"")
    request.headers["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD"
    SigV4Auth(Credentials(ec2.alice.user.access_key, ec2.alice.secret_key), "ec2", "default").add_auth(
        request
    )
    headers = {**MULTIPART, **{k.lower(): v for k, v in request.headers.items()}}
    answer = drive(ec2.app(), headers, form([("Action", "UploadImage")], zeros(2)))
    assert (answer.status, answer.code(), answer.read) == (401, "AuthFailure", 0)
    _nothing_kept(ec2)


def _bob(ec2: Ec2) -> CreatedUser:
    return UserStore(ec2.state).create("bob", "bob-pw")


def test_ec2_uploads_at_once_are_bounded_per_user_and_in_total(ec2: Ec2) -> None:
    """Slots are held by authenticated uploads only; a full user or a full server is EC2's
    throttling answer (``RequestLimitExceeded``, 503), refused when the file begins."""
    bob = _bob(ec2)
    slots = UploadSlots(total=2, per_user=1)
    app = ec2.app(slots=slots)
    with slots.take(ec2.alice.user.id):  # alice's one upload is streaming
        mine = drive(app, MULTIPART, form(signed(ec2.alice), zeros(2)))
        assert (mine.status, mine.code()) == (503, "RequestLimitExceeded")
        assert b"this user" in mine.body and mine.read == len(head(signed(ec2.alice)))
        with slots.take(9999):  # …and someone else's: the server is full
            full = drive(app, MULTIPART, form(signed(bob), zeros(2)))
            assert (full.status, full.code()) == (503, "RequestLimitExceeded")
        unsigned = drive(app, MULTIPART, form([], zeros(2), signed(bob)))  # holds no slot
        assert unsigned.status == 401
    _nothing_kept(ec2)
    data = b"\1" * 4096
    for account in (ec2.alice, ec2.alice, bob):  # each ended upload gave its slot back
        ok = drive(app, MULTIPART, form(signed(account, sha256=hashlib.sha256(data).hexdigest()), [data]))
        assert ok.status == 200, ok.body
    bad = drive(app, MULTIPART, form(signed(bob), [data]))  # wrong hash: refused, slot given back
    assert bad.status == 400
    assert slots.total == 2 and not slots._held


def _basic(name: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def test_occi_authenticates_before_reading_and_bounds_uploads(ec2: Ec2) -> None:
    """Every OCCI route checks HTTP Basic before it reads a byte (so it did before); STORAGE
    uploads at once are bounded: 429 when the user's share is full, 503 when the server's is."""
    _bob(ec2)
    slots = UploadSlots(total=2, per_user=1)
    app = occi_app(ec2.state, hold=True, slots=slots)
    xml = [("occixml", "<DISK><NAME>d</NAME></DISK>")]
    for who in (_basic("alice", "wrong"), _basic("mallory", "x"), {}):
        for path in ("/storage", "/compute", "/network"):
            answer = drive(app, {**MULTIPART, **who}, form(xml, zeros(64)), path)
            assert (answer.status, answer.read) == (401, 0)
    alice = {**MULTIPART, **_basic("alice", "alice-pw")}
    with slots.take(ec2.alice.user.id):
        busy = drive(app, alice, form(xml, zeros(2)), "/storage")
        assert (busy.status, busy.read) == (429, 0)
        with slots.take(9999):
            full = drive(app, {**MULTIPART, **_basic("bob", "bob-pw")}, form(xml, zeros(2)), "/storage")
            assert (full.status, full.read) == (503, 0)
    assert files(ec2.state.root / "occi") == []
    assert drive(app, alice, form(xml, zeros(1)), "/storage").status == 201
    assert not slots._held


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cloud_command.register(parser)
    return parser.parse_args(argv)


def test_the_bounds_and_the_hash_setting_are_serve_options(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr("cloud.ec2.server.serve", lambda state, **kw: seen.update(kw))
    args = _parse(["serve", "ec2", "--max-uploads", "5", "--max-uploads-per-user", "3"])
    args.state, args.verbose = None, True
    args.func(args)
    assert (seen["slots"].total, seen["slots"].per_user, seen["allow_unhashed_uploads"]) == (5, 3, False)
    args = _parse(["serve", "ec2", "--allow-unhashed-uploads"])
    args.state, args.verbose = None, True
    args.func(args)
    assert seen["allow_unhashed_uploads"] is True and seen["slots"].per_user == 2
    for bad in (["--max-uploads", "0"], ["--max-uploads-per-user", "-1"], ["--max-uploads", "x"]):
        with pytest.raises(SystemExit):
            _parse(["serve", "occi", *bad])


# --- 6. signatures cover what they authorise ----------------------------------------------------


def _sigv4(ec2: Ec2, params: dict[str, str], *, payload: str, method: str = "POST") -> AWSRequest:
    if method == "GET":
        request = AWSRequest(method="GET", url="http://testserver/?" + urlencode(params))
    else:
        form_type = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
        request = AWSRequest(
            method="POST", url="http://testserver/", data=urlencode(params), headers=form_type
        )
    request.headers["X-Amz-Content-SHA256"] = payload
    SigV4Auth(Credentials(ec2.alice.user.access_key, ec2.alice.secret_key), "ec2", "default").add_auth(
        request
    )
    return request


def _send(ec2: Ec2, request: AWSRequest, body: bytes | None = None) -> Any:
    with TestClient(ec2.app()) as http:
        content = body if body is not None else request.body
        return http.request(
            request.method, request.url, headers=dict(request.headers.items()), content=content
        )


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_sigv4_without_the_payload_hash_is_refused(ec2: Ec2, method: str) -> None:
    """The parameters of a Query action travel in the body: a signature that leaves the body
    out (``UNSIGNED-PAYLOAD``) let anyone holding one signed request send any action with it;
    old code answered 200 and made the planted key pair. Streaming and odd spellings too."""
    describe = {"Action": "DescribeRegions", "Version": API_VERSION}
    swapped = urlencode({"Action": "CreateKeyPair", "KeyName": "planted", "Version": API_VERSION}).encode()
    for payload in ("UNSIGNED-PAYLOAD", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "unsigned-payload"):
        request = _sigv4(ec2, describe, payload=payload, method=method)
        for body in (None, swapped) if method == "POST" else (None,):
            answer = _send(ec2, request, body)
            assert answer.status_code == 401 and b"AuthFailure" in answer.content, payload
    with ec2.state.read() as db:
        assert list(db.execute("SELECT name FROM ec2_keypairs")) == []
    real = hashlib.sha256(b"" if method == "GET" else urlencode(describe).encode()).hexdigest()
    assert _send(ec2, _sigv4(ec2, describe, payload=real, method=method)).status_code == 200


def test_an_upload_must_match_the_signed_hash(ec2: Ec2) -> None:
    """A captured UploadImage replayed with another file, or a file cut or grown on the way,
    is discarded; the hash is checked after the stream, the file never catalogued."""
    data = list(zeros(2)) + [b"tail"]
    fields = signed(ec2.alice, sha256=hashlib.sha256(b"".join(data)).hexdigest())
    for other in (list(zeros(2)) + [b"TAIL"], list(zeros(2)), [*data, b"more"], [b""]):
        answer = drive(ec2.app(), MULTIPART, form(fields, other))
        assert (answer.status, answer.code()) == (400, "InvalidParameterValue"), answer.body
        assert b"ImageSha256" in answer.body
        _nothing_kept(ec2)
    assert drive(ec2.app(), MULTIPART, form(fields, data)).status == 200
    assert len(_images(ec2)) == 1


@pytest.mark.parametrize("value", ["", "abc", "g" * 64, "0" * 63, "0" * 65])
def test_a_malformed_signed_hash_is_refused_before_the_file(ec2: Ec2, value: str) -> None:
    fields = signed(ec2.alice, sha256=value)
    answer = drive(ec2.app(), MULTIPART, form(fields, zeros(64)))
    assert (answer.status, answer.code(), answer.read) == (400, "InvalidParameterValue", len(head(fields)))
    _nothing_kept(ec2)


def test_an_unhashed_upload_is_refused_unless_the_site_allows_it(ec2: Ec2) -> None:
    """econe's own fields carry no hash: refused by default before the file is read; a site
    serving econe-era clients turns the setting off (``--allow-unhashed-uploads``)."""
    econe = signed(ec2.alice, sha256=None)
    refused = drive(ec2.app(), MULTIPART, form(econe, zeros(64)))
    assert (refused.status, refused.code(), refused.read) == (400, "MissingParameter", len(head(econe)))
    assert b"ImageSha256" in refused.body
    _nothing_kept(ec2)
    taken = drive(ec2.app(allow_unhashed_uploads=True), MULTIPART, form(econe, zeros(2)))
    assert taken.status == 200, taken.body


def test_our_client_signs_the_files_hash(ec2: Ec2, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"\2" * 70000)
    endpoint = Endpoint("http://testserver/", ec2.alice.user.access_key, ec2.alice.secret_key)
    with open(image, "rb") as data:
        body = upload_request(endpoint, image, data).read()
    digest = hashlib.sha256(image.read_bytes()).hexdigest().encode()
    assert body.index(b'name="ImageSha256"\r\n\r\n' + digest) < body.index(b'name="file"')
    with open(image, "rb") as data, TestClient(ec2.app()) as http:  # hashes required (default)
        assert http.send(upload_request(endpoint, image, data)).status_code == 200
