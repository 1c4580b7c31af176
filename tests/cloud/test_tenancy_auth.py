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
import asyncio
import base64
import hashlib
import os
import re
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from xml.etree import ElementTree as ET

import pytest
from botocore.auth import SigV2Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from starlette.testclient import TestClient

from cloud import lifecycle
from cloud.accounts import delete_user, holdings
from cloud.commands import cloud as cloud_command
from cloud.cores import embedded
from cloud.deploy import CreateRequest, create_vm
from cloud.ec2.client import Endpoint, upload_request
from cloud.ec2.core import CoreBackend
from cloud.ec2.responses import API_VERSION
from cloud.ec2.server import create_app as ec2_app
from cloud.ec2.service import Region
from cloud.model import VmState
from cloud.occi.server import create_app as occi_app
from cloud.refusals import public_message
from cloud.upload_slots import UploadSlots
from cloud.users import CreatedUser, UserStore
from context.leases import NetworkStore
from context.network import network_from_template
from context.template import parse_template
from imagekit.cli import main
from imagekit.errors import InputError
from imagekit.state import State
from marketplace.site import PolicyRefused
from tests.cloud.blank import BlankLab
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


async def _post(app: Any, chunks: list[bytes], gate: asyncio.Event | None = None) -> tuple[int, bytes]:
    """POST ``chunks`` as a multipart upload; with ``gate``, the last chunk waits for it."""
    answer: dict[str, Any] = {"body": b""}
    pending = list(chunks)

    async def receive() -> dict[str, Any]:
        if len(pending) == 1 and gate is not None:
            await gate.wait()
        chunk = pending.pop(0) if pending else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    headers = [(k.encode(), v.encode()) for k, v in {"host": "testserver", **MULTIPART}.items()]
    scope = {"type": "http", "method": "POST", "path": "/", "query_string": b"", "headers": headers}
    await app({**scope, "asgi": {"version": "3.0"}, "http_version": "1.1", "scheme": "http"}, receive, send)
    return answer["status"], answer["body"]


def test_two_uploads_at_once_from_one_user(ec2: Ec2) -> None:
    """The real thing, on one event loop: while alice's first upload streams, her second is
    refused when its file begins; once the first ends, the slot is free again."""
    app = ec2.app(slots=UploadSlots(total=4, per_user=1))
    data = b"\3" * 4096
    fields = signed(ec2.alice, sha256=hashlib.sha256(data).hexdigest())
    body = list(form(fields, [data]))

    async def both() -> tuple[tuple[int, bytes], tuple[int, bytes]]:
        gate = asyncio.Event()
        first = asyncio.create_task(_post(app, body, gate))
        while not files(ec2.uploads):  # the first is writing its file, slot held (test timeout bounds it)
            await asyncio.sleep(0.01)
        second = await _post(app, body)
        gate.set()
        return await first, second

    (first_status, _), (second_status, second_body) = asyncio.run(both())
    assert (first_status, second_status) == (200, 503) and b"RequestLimitExceeded" in second_body
    assert asyncio.run(_post(app, body))[0] == 200
    assert len(files(ec2.uploads)) == 2


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
    monkeypatch.setattr("cloud.ec2.server.serve", lambda state, listener, **kw: seen.update(kw))
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


# --- 10. smaller doors: refusals, logins, private state -------------------------------------------

CORRUPT_QCOW2 = b"QFI\xfb\x00\x00\x00\x03" + b"\xff" * 504  # qemu-img: "Unsupported cluster size"
PUBLIC = 'NAME = "Public EC2"\nTYPE = "RANGED"\nNETWORK_ADDRESS = "10.7.0.0"\nNETWORK_SIZE = "C"\n'
ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])/[^\s'\"<>]")


def _ec2_query(ec2: Ec2, app: Any, params: dict[str, str]) -> Any:
    request = AWSRequest(method="POST", url="http://testserver/", data={**params, "Version": API_VERSION})
    SigV2Auth(Credentials(ec2.alice.user.access_key, ec2.alice.secret_key)).add_auth(request)
    with TestClient(app) as http:
        return http.post("/", data=dict(request.data))


def _assert_refused_privately(status: int, message: str, ec2: Ec2) -> None:
    assert 400 <= status < 500, message
    assert str(ec2.state.root.parent) not in message and not ABSOLUTE_PATH.search(message), message


def test_refusals_are_4xx_and_name_no_server_path(ec2: Ec2, monkeypatch: pytest.MonkeyPatch) -> None:
    """Old code: a policy refusal and an image qemu-img cannot read were EC2 500s; OCCI named
    the spool path (``/…/state/occi/uploads/.tmp-….part``) of a refused upload, and
    RegisterImage echoed a server path back."""
    monkeypatch.setenv("IMAGEKIT_ACCEL", "tcg")
    NetworkStore(ec2.state).create(network_from_template(parse_template(PUBLIC, "public.net")))

    def refused_by_policy(reference: str, **_: Any) -> Any:
        where = ec2.state.root / "images" / "cache.json"
        raise PolicyRefused(reference, (f"{where}: the endorser is not trusted", "expired"))

    monkeypatch.setattr("marketplace.site.obtain_image", refused_by_policy)
    app = ec2_app(
        ec2.state, Region("default", "http://testserver/"), compute=CoreBackend(ec2.state, hold=True)
    )
    # An image qemu-img cannot read is refused at the upload now (cloud/standalone.py), 4xx.
    upload = form(signed(ec2.alice, sha256=hashlib.sha256(CORRUPT_QCOW2).hexdigest()), [CORRUPT_QCOW2])
    answer = drive(app, MULTIPART, upload)
    _assert_refused_privately(
        answer.status, ET.fromstring(answer.body).findtext("Errors/Error/Message") or "", ec2
    )
    blank = ec2.state.root / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", blank, "1M"], check=True)
    good = blank.read_bytes()
    upload = form(signed(ec2.alice, sha256=hashlib.sha256(good).hexdigest()), [good])
    assert drive(app, MULTIPART, upload).status == 200  # ami-00000001
    assert (
        _ec2_query(ec2, app, {"Action": "RegisterImage", "ImageLocation": "marketplace:abc"}).status_code
        == 200
    )
    run = {"Action": "RunInstances", "MinCount": "1", "MaxCount": "1"}
    for params in (
        {**run, "ImageId": "ami-00000002"},  # PolicyRefused
        {"Action": "RegisterImage", "ImageLocation": str(ec2.state.root / "ec2-secrets.key.missing")},
        {**run, "ImageId": "ami-00000001", "InstanceType": "no-such-type"},
    ):
        answer = _ec2_query(ec2, app, params)
        message = ET.fromstring(answer.content).findtext("Errors/Error/Message") or ""
        _assert_refused_privately(answer.status_code, message, ec2)

    occi = occi_app(ec2.state, hold=True)
    alice = {**MULTIPART, **_basic("alice", "alice-pw")}
    xml = [("occixml", "<DISK><NAME>d</NAME></DISK>")]
    for body, path in (
        (form(xml, [CORRUPT_QCOW2]), "/storage"),
        (form([("occixml", "<DISK><NAME>d</NAME>")], [b"\0"]), "/storage"),
        ([b"<COMPUTE><NAME>x</NAME><INSTANCE_TYPE>nope</INSTANCE_TYPE></COMPUTE>"], "/compute"),
    ):
        answer = drive(occi, alice, body, path)
        _assert_refused_privately(answer.status, answer.body.decode(), ec2)


def test_the_path_filter_keeps_urls_and_numbers() -> None:
    assert public_message("cannot reach http://127.0.0.1:8081/a/b: refused") == (
        "cannot reach http://127.0.0.1:8081/a/b: refused"
    )
    assert (
        public_message("10.0.0.0/24, 1 / 2, '/srv//x/disk.img': bad")
        == "10.0.0.0/24, 1 / 2, 'disk.img': bad"
    )


def _scrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = hashlib.scrypt

    def counting(*args: Any, **kwargs: Any) -> bytes:
        calls.append(kwargs.get("n", 0))
        return real(*args, **kwargs)

    monkeypatch.setattr(hashlib, "scrypt", counting)
    return calls


def test_a_login_costs_the_same_for_unknown_users(ec2: Ec2, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted, not timed: the same scrypt calls at the same cost for a wrong password and for
    a name nobody has, directly and through OCCI's HTTP Basic (old code: none for an unknown
    name, so user names could be probed by the answer's time)."""
    users, calls = UserStore(ec2.state), _scrypt_calls(monkeypatch)

    def cost(name: str, password: str) -> list[int]:
        calls.clear()
        assert users.authenticate(name, password) is None
        return list(calls)

    sha1_hex = hashlib.sha1(b"guess", usedforsecurity=False).hexdigest()  # 1.4's clients send this
    for password in ("guess", sha1_hex, "x" * 1000):
        assert cost("alice", password) == cost("nobody", password) == cost("x" * 128, password) != []
    occi = occi_app(ec2.state, hold=True)
    costs = []
    for who in (_basic("alice", "guess"), _basic("nobody", "guess")):
        calls.clear()
        assert drive(occi, who, [b""], "/compute").status == 401
        costs.append(list(calls))
    assert costs[0] == costs[1] != []


def test_state_and_runtime_directories_are_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Made 0700; refused when another user owns them or others may write in them (old code
    took any: a runtime directory someone made first in /tmp held our QMP sockets)."""
    state = State.open(tmp_path / "new" / "state")
    assert stat.S_IMODE(state.root.stat().st_mode) == 0o700
    for mode in (0o777, 0o770, 0o722, 0o702):
        shared = tmp_path / f"shared-{mode:o}"
        shared.mkdir()
        shared.chmod(mode)
        with pytest.raises(InputError, match="writable"):
            State.open(shared)
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, 65534, 65534) if os.geteuid() == 0 else None
    theirs = foreign if os.geteuid() == 0 else Path("/")
    with pytest.raises(InputError, match="owned by uid"):
        State.open(theirs)
    plain = tmp_path / "a-file"
    plain.write_text("")
    with pytest.raises(InputError):
        State.open(plain)

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    runtime = embedded.runtime_dir(state)
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o700
    runtime.chmod(0o777)  # as if someone else had made it first, open to all
    with pytest.raises(InputError, match="writable"):
        embedded.runtime_dir(state)
    if os.geteuid() == 0:
        runtime.chmod(0o700)
        os.chown(runtime, 65534, 65534)
        with pytest.raises(InputError, match="owned by uid"):
            embedded.runtime_dir(state)


def test_the_state_database_contexts_overlays_and_uploads_are_0600(
    blank_lab: BlankLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = os.umask(0o022)  # a umask that would make files 0644
    try:
        state = blank_lab.state
        assert stat.S_IMODE(os.stat(state.db_path).st_mode) == 0o600
        record = create_vm(CreateRequest.from_file(blank_lab.template, hold=True), state=state)
        directory = Path(record.directory)
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        made = sorted(p.name for p in directory.iterdir() if p.suffix in (".qcow2", ".iso"))
        assert made == ["context.iso", "disk0.qcow2"]
        for name in made:
            assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name
        legacy = State.open(tmp_path / "legacy")
        legacy.db_path.touch(mode=0o644)
        legacy.db_path.chmod(0o644)
        with legacy.read():
            pass
        assert stat.S_IMODE(legacy.db_path.stat().st_mode) == 0o600
        alice = UserStore(state).create("alice", "pw")
        ec2 = Ec2(state, alice, state.root / "ec2" / "uploads", tmp_path)
        data = b"\1" * 4096
        answer = drive(
            ec2.app(), MULTIPART, form(signed(alice, sha256=hashlib.sha256(data).hexdigest()), [data])
        )
        assert answer.status == 200
        [stored] = files(ec2.uploads)
        assert stat.S_IMODE((ec2.uploads / stored).stat().st_mode) == 0o600
        assert stat.S_IMODE((ec2.uploads / stored).parent.stat().st_mode) == 0o700
        storage = form([("occixml", "<DISK><NAME>d</NAME></DISK>")], [data])
        occi = occi_app(state, hold=True)
        assert drive(occi, {**MULTIPART, **_basic("alice", "pw")}, storage, "/storage").status == 201
        [kept] = files(state.root / "occi" / "storage")
        assert stat.S_IMODE((state.root / "occi" / "storage" / kept).stat().st_mode) == 0o600
    finally:
        os.umask(old)


# --- 8. identities are never reused ---------------------------------------------------------------


def _alice_owns_something_of_every_kind(ec2: Ec2, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Through both doors: an EC2 key pair, upload and held instance; an OCCI STORAGE,
    NETWORK and held COMPUTE."""
    monkeypatch.setenv("IMAGEKIT_ACCEL", "tcg")
    NetworkStore(ec2.state).create(network_from_template(parse_template(PUBLIC, "public.net")))
    app = ec2_app(
        ec2.state, Region("default", "http://testserver/"), compute=CoreBackend(ec2.state, hold=True)
    )
    key = base64.b64encode(
        b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGm0bWz1w8d6pZ7xQ3hYk2f2lQ4uC1m9M6z0x0nq2m0a a@b"
    )
    imported = {"Action": "ImportKeyPair", "KeyName": "k", "PublicKeyMaterial": key.decode()}
    assert _ec2_query(ec2, app, imported).status_code == 200
    disk = b"\0" * 65536
    upload = form(signed(ec2.alice, sha256=hashlib.sha256(disk).hexdigest()), [disk])
    assert drive(app, MULTIPART, upload).status == 200
    run = {"Action": "RunInstances", "ImageId": "ami-00000001", "MinCount": "1", "MaxCount": "1"}
    assert _ec2_query(ec2, app, {**run, "KeyName": "k"}).status_code == 200, "RunInstances"
    occi = occi_app(ec2.state, hold=True)
    alice = _basic("alice", "alice-pw")
    storage = form([("occixml", "<DISK><NAME>d</NAME></DISK>")], [disk])
    assert drive(occi, {**MULTIPART, **alice}, storage, "/storage").status == 201
    net = b"<NIC><NAME>alices</NAME><ADDRESS>10.5.0.0</ADDRESS><SIZE>C</SIZE></NIC>"
    assert drive(occi, alice, [net], "/network").status == 201
    compute = (
        b"<COMPUTE><NAME>c</NAME><INSTANCE_TYPE>small</INSTANCE_TYPE>"
        b"<STORAGE><DISK image='1' dev='sda'/></STORAGE><NETWORK><NIC network='1'/></NETWORK></COMPUTE>"
    )
    answer = drive(occi, alice, [compute], "/compute")
    assert answer.status == 201, answer.body
    return {"ec2": app, "occi": occi}


def test_a_user_who_owns_live_resources_is_not_deleted(ec2: Ec2, monkeypatch: pytest.MonkeyPatch) -> None:
    """Old code deleted the account and left its VMs running, its files stored and its rows
    owned by a name the next ``user create alice`` would have been given."""
    _alice_owns_something_of_every_kind(ec2, monkeypatch)
    before = holdings(ec2.state, ec2.alice.user)
    assert (len(before.vms), len(before.images), len(before.storages), len(before.networks)) == (2, 1, 1, 1)
    assert before.key_pairs == ("k",)
    with pytest.raises(InputError, match="still owns 2 VMs") as err:
        delete_user(ec2.state, "alice")
    assert "--cascade" in (err.value.hint or "")
    assert main(["user", "delete", str(ec2.alice.user.id)]) == 1
    assert UserStore(ec2.state).get("alice") == ec2.alice.user
    assert holdings(ec2.state, ec2.alice.user) == before


def test_cascade_ends_and_removes_everything_and_the_identity_is_retired(
    ec2: Ec2, monkeypatch: pytest.MonkeyPatch
) -> None:
    doors = _alice_owns_something_of_every_kind(ec2, monkeypatch)
    bob = _bob(ec2)
    assert bob.user.id == ec2.alice.user.id + 1
    assert main(["user", "delete", "alice", "--cascade"]) == 0
    users = UserStore(ec2.state)
    with pytest.raises(InputError, match="no user"):
        users.get("alice")
    states = {r.vmid: r.state for r in lifecycle.list_vms(ec2.state, owner_id=ec2.alice.user.id)}
    assert set(states.values()) == {VmState.DONE}
    with ec2.state.read() as db:
        for table in ("ec2_images", "occi_storage", "occi_networks", "ec2_keypairs"):
            assert list(db.execute(f"SELECT * FROM {table}")) == [], table  # noqa: S608
    assert [n.name for n in NetworkStore(ec2.state).list()] == ["Public EC2"]
    assert files(ec2.uploads) == [] and files(ec2.state.root / "occi" / "storage") == []
    # alice's keys open nothing any more; her name and id go to nobody.
    assert _ec2_query(ec2, doors["ec2"], {"Action": "CreateKeyPair", "KeyName": "k"}).status_code == 401
    with pytest.raises(InputError, match="never reused"):
        users.create("alice", "pw")
    users.delete("bob")  # the highest id, retired: SQLite alone would give it out again
    carol = users.create("carol", "pw")
    assert carol.user.id == bob.user.id + 1
    assert drive(doors["occi"], _basic("alice", "pw"), [b""], "/compute").status == 401
