"""Image uploads to the front doors: bounded by ``--max-upload``, parsed as they stream, an EC2
signature refused before a byte of the file is read, nothing left behind.

econe's client sends the SigV2 fields, then ``Signature``, then the ``file`` part
(OpenNebula/one ``src/cloud/ec2/lib/EC2QueryClient.rb:243-248`` at 096754b, ``upload_image``):
the server can check the signature when the file begins. An upload over the limit is EC2's
``EntityTooLarge`` (HTTP 400: AWS's code for an upload over the size limit, documented in
botocore ``data/s3/2006-03-01/service-2.json``; EC2 itself has no upload action). OCCI 1.4 had
no limit (``src/cloud/occi/OCCIServer.rb:316-336`` at 08e7b7b, ``post '/storage'``: Rack had
spooled the whole body to ``file[:tempfile]``; 400 only for a missing ``occixml`` or ``file``),
so its 413 is our choice, as for the XML bodies.

Most tests drive the ASGI app in process with a body generator, so "refused before it was
read" is a count of the bytes the app asked for, not a timing; the last ones go through
uvicorn (``imagekit cloud serve … --max-upload 1M``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import hashlib
import itertools
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import httpx
import pytest
from botocore.auth import SigV2Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from starlette.testclient import TestClient

from cloud.commands.cloud import upload_limit
from cloud.ec2.client import Endpoint, upload_image, upload_request
from cloud.ec2.responses import API_VERSION
from cloud.ec2.server import create_app as ec2_app
from cloud.ec2.service import Region
from cloud.occi.server import create_app as occi_app
from cloud.upload import DEFAULT_MAX_UPLOAD
from cloud.users import CreatedUser, UserStore
from imagekit.errors import InputError
from imagekit.run import run
from imagekit.state import State
from tests.cloud.serving import cloud_server

pytestmark = pytest.mark.timeout(120)

MiB = 1 << 20
BOUNDARY = "imagekit-upload-test"
MULTIPART = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
Fields = Sequence[tuple[str, str]]


# --- an ASGI client that counts what the app read ----------------------------------------------


@dataclass
class Answer:
    status: int
    body: bytes
    read: int  # body bytes the app asked for before it answered

    def code(self) -> str:
        return ET.fromstring(self.body).findtext("Errors/Error/Code") or ""


def drive(
    app: Any, headers: dict[str, str], body: Iterable[bytes], path: str = "/", *, hang_up: bool = False
) -> Answer:
    """POST ``body`` to ``path`` of ``app``, chunk by chunk as a chunked upload arrives; with
    ``hang_up`` the client disconnects where the body would go on."""
    chunks = iter(body)
    read = 0
    answer: dict[str, Any] = {"body": b""}

    async def receive() -> dict[str, Any]:
        nonlocal read
        chunk = next(chunks, None)
        if chunk is None:
            end = {"type": "http.disconnect"} if hang_up else {"type": "http.request", "body": b""}
            return end
        read += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    raw = [(k.encode(), v.encode()) for k, v in {"host": "testserver", **headers}.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw,
        "client": ("127.0.0.1", 40000),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))
    return Answer(answer["status"], answer["body"], read)


# --- multipart bodies --------------------------------------------------------------------------


def _field(name: str, value: str) -> bytes:
    return f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()


def head(before: Fields) -> bytes:
    """The fields before the file and the file part's headers: all a server needs to decide."""
    disposition = 'Content-Disposition: form-data; name="file"; filename="disk.img"'
    return b"".join(_field(k, v) for k, v in before) + f"--{BOUNDARY}\r\n{disposition}\r\n\r\n".encode()


def form(before: Fields, data: Iterable[bytes], after: Fields = ()) -> Iterator[bytes]:
    yield head(before)
    yield from data
    yield b"\r\n" + b"".join(_field(k, v) for k, v in after) + f"--{BOUNDARY}--\r\n".encode()


def zeros(count: int, size: int = MiB) -> Iterator[bytes]:
    """``count`` chunks of ``size`` bytes, made only when asked for."""
    return itertools.islice(itertools.repeat(b"\0" * size), count)


def signed(account: CreatedUser, *, secret: str | None = None, sha256: str | None = "0" * 64) -> Fields:
    """UploadImage fields, SigV2-signed as our client and econe sign them; with the file's
    ``ImageSha256`` as our client adds it (a placeholder by default, for uploads refused before
    their end), or without it (``sha256=None``) as econe sent them."""
    fields = {"Action": "UploadImage", "Version": API_VERSION}
    if sha256 is not None:
        fields["ImageSha256"] = sha256
    request = AWSRequest(method="POST", url="http://testserver/", data=fields)
    SigV2Auth(Credentials(account.user.access_key, secret or account.secret_key)).add_auth(request)
    return list(request.data.items())


def files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def kept_bytes(stored: Path) -> bytes:
    """What a VM reads of a kept upload: every upload is kept converted to a standalone qcow2
    (cloud/standalone.py), so its disk, read back as raw (a raw upload's last sector padded)."""
    with tempfile.TemporaryDirectory() as work:
        raw = Path(work) / "disk.raw"
        run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", stored, raw])
        return raw.read_bytes()


def same_disk(stored: Path, data: bytes) -> bool:
    disk = kept_bytes(stored)
    return disk[: len(data)] == data and not disk[len(data) :].strip(b"\0") and len(disk) - len(data) < 512


# --- EC2, in process ---------------------------------------------------------------------------


@dataclass
class Ec2:
    state: State
    alice: CreatedUser
    uploads: Path
    spool: Path  # the system temp dir, pointed here: nothing may be spooled there

    def app(self, **options: Any) -> Any:
        return ec2_app(self.state, Region("default", "http://testserver/"), **options)


@pytest.fixture
def ec2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Ec2:
    state = State.open(tmp_path / "state")
    spool = tmp_path / "tmp"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    alice = UserStore(state).create("alice", "alice-pw")
    return Ec2(state, alice, state.root / "ec2" / "uploads", spool)


def test_a_bad_signature_is_refused_before_a_byte_of_the_file_is_read(ec2: Ec2) -> None:
    before = signed(ec2.alice, secret="not-the-secret")
    answer = drive(ec2.app(), MULTIPART, form(before, zeros(1024)))  # 1 GiB, never made
    assert (answer.status, answer.code()) == (401, "AuthFailure")
    assert answer.read == len(head(before))
    assert files(ec2.uploads) == [] and files(ec2.spool) == []


def test_an_expired_signature_is_refused_before_the_file_too(ec2: Ec2) -> None:
    """A captured request replayed beyond the skew (15 min): ``RequestExpired``."""
    before = signed(ec2.alice)
    late = datetime.now(UTC) + timedelta(hours=1)
    answer = drive(ec2.app(clock=lambda: late), MULTIPART, form(before, zeros(1024)))
    assert (answer.status, answer.code()) == (400, "RequestExpired")
    assert answer.read == len(head(before)) and files(ec2.uploads) == []


def _watching(root: Path, data: Iterable[bytes], seen: list[list[Path]]) -> Iterator[bytes]:
    """``data``, noting the files under ``root`` each time the app asks for more."""
    for chunk in data:
        seen.append(files(root))
        yield chunk


def test_a_signed_upload_streams_to_the_users_directory(ec2: Ec2) -> None:
    seen: list[list[Path]] = []
    data = [bytes([n]) * MiB for n in range(3)] + [b"end"]
    fields = signed(ec2.alice, sha256=hashlib.sha256(b"".join(data)).hexdigest())
    answer = drive(ec2.app(), MULTIPART, form(fields, _watching(ec2.uploads, data, seen)))
    assert answer.status == 200, answer.body
    image_id = ET.fromstring(answer.body).findtext("{*}imageId") or ""
    assert image_id.startswith("ami-")
    # While it streamed, the file was a temporary name in alice's directory, never staged.
    partial = seen[2]
    assert [p.parent.name for p in partial] == ["alice"] and partial[0].name.startswith(".tmp-")
    [stored] = files(ec2.uploads)
    assert stored.parent == Path("alice") and stored.suffix == ".qcow2"  # the upload, converted
    assert same_disk(ec2.uploads / stored, b"".join(data))
    assert files(ec2.spool) == []  # not spooled by request.form()


def test_a_long_upload_does_not_expire(ec2: Ec2) -> None:
    """The signature is checked when the file begins, at the time the request began: the
    clock here moves an hour on after the first reading."""
    times = itertools.chain([datetime.now(UTC)], itertools.repeat(datetime.now(UTC) + timedelta(hours=1)))
    data = list(zeros(3))
    fields = signed(ec2.alice, sha256=hashlib.sha256(b"".join(data)).hexdigest())
    answer = drive(ec2.app(clock=lambda: next(times)), MULTIPART, form(fields, data))
    assert answer.status == 200, answer.body
    assert [p.parent.name for p in files(ec2.uploads)] == ["alice"]


def test_a_field_after_the_file_is_refused(ec2: Ec2) -> None:
    """With ``Signature`` before the file, every field must be: one added after it fails."""
    answer = drive(ec2.app(), MULTIPART, form(signed(ec2.alice), zeros(2), [("Action", "Other")]))
    assert (answer.status, answer.code()) == (400, "InvalidParameterValue")
    assert b"before the file part" in answer.body
    assert files(ec2.uploads) == []


def test_an_upload_over_the_limit_by_content_length_is_not_read(ec2: Ec2) -> None:
    headers = {**MULTIPART, "content-length": str(4 * MiB + 1)}
    answer = drive(ec2.app(max_upload=4 * MiB), headers, form(signed(ec2.alice), zeros(4)))
    assert (answer.status, answer.code(), answer.read) == (400, "EntityTooLarge", 0)
    assert files(ec2.uploads) == []


def test_a_streamed_upload_is_refused_when_it_crosses_the_limit(ec2: Ec2) -> None:
    fields = signed(ec2.alice)
    answer = drive(ec2.app(max_upload=4 * MiB), MULTIPART, form(fields, zeros(1024)))
    assert (answer.status, answer.code()) == (400, "EntityTooLarge")
    assert 4 * MiB < answer.read <= 5 * MiB + len(head(fields))
    assert files(ec2.uploads) == [] and files(ec2.spool) == []


def test_a_client_that_hangs_up_mid_upload_leaves_nothing(ec2: Ec2) -> None:
    fields = signed(ec2.alice)
    body = itertools.chain([head(fields)], zeros(3))
    answer = drive(ec2.app(), MULTIPART, body, hang_up=True)
    assert (answer.status, answer.code()) == (400, "IncompleteRequest")
    assert answer.read == len(head(fields)) + 3 * MiB
    assert files(ec2.uploads) == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (form([], [b"x"], [("file", "again")]), "AuthFailure"),  # unsigned
        ([b"--nonsense\r\n", b"\xff" * 100], "InvalidParameterValue"),  # no closing boundary
        (
            [b"--" + BOUNDARY.encode() + b"\r\nContent-Disposition: form-data\r\n\r\nx"],
            "InvalidParameterValue",
        ),
    ],
    ids=["unsigned", "garbage", "unnamed-part"],
)
def test_malformed_uploads_get_an_ec2_error(ec2: Ec2, body: Iterable[bytes], code: str) -> None:
    answer = drive(ec2.app(), MULTIPART, body)
    assert answer.code() == code and answer.status in (400, 401)
    assert files(ec2.uploads) == []


def test_our_client_sends_the_signature_before_the_file(ec2: Ec2, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"\1" * 4096)
    endpoint = Endpoint("http://testserver/", ec2.alice.user.access_key, ec2.alice.secret_key)
    with open(image, "rb") as data:
        body = upload_request(endpoint, image, data).read()
    assert body.index(b'name="Signature"') < body.index(b'name="file"')
    assert body.index(b'name="Timestamp"') < body.index(b'name="file"')
    # …so the server checks it first and writes the file to alice's directory, never staged.
    with open(image, "rb") as data, TestClient(ec2.app()) as http:
        assert http.send(upload_request(endpoint, image, data)).status_code == 200
    assert [p.parent.name for p in files(ec2.uploads)] == ["alice"]


# --- OCCI, in process --------------------------------------------------------------------------


def _basic(name: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


@pytest.fixture
def occi(ec2: Ec2) -> Callable[..., Any]:
    return lambda **options: occi_app(ec2.state, hold=True, **options)


def test_occi_uploads_over_the_limit_are_413_and_leave_nothing(ec2: Ec2, occi: Callable[..., Any]) -> None:
    app, alice = occi(max_upload=4 * MiB), {**MULTIPART, **_basic("alice", "alice-pw")}
    xml = [("occixml", "<DISK><NAME>d</NAME></DISK>")]
    declared = drive(app, {**alice, "content-length": str(8 * MiB)}, form(xml, zeros(8)), "/storage")
    assert (declared.status, declared.read) == (413, 0)
    streamed = drive(app, alice, form(xml, zeros(1024)), "/storage")
    assert streamed.status == 413 and 4 * MiB < streamed.read <= 5 * MiB + len(head(xml))
    spool = ec2.state.root / "occi"
    assert files(spool) == [] and files(ec2.spool) == []
    made = drive(app, alice, form(xml, zeros(2)), "/storage")  # one under the limit is taken
    # SIZE is the kept file's (1.4's): 2 MiB of zeros, kept as a qcow2 (cloud/standalone.py)
    assert made.status == 201 and b"<SIZE>1</SIZE>" in made.body
    assert [p.parent.name for p in files(spool)] == ["storage"]


def test_occi_checks_the_user_before_reading_the_upload(occi: Callable[..., Any]) -> None:
    answer = drive(occi(), {**MULTIPART, **_basic("alice", "wrong")}, form([], zeros(1024)), "/storage")
    assert (answer.status, answer.read) == (401, 0)


# --- the size option ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("64G", DEFAULT_MAX_UPLOAD),
        ("64GiB", 64 << 30),
        ("512M", 512 * MiB),
        ("1048576", MiB),
        ("2t", 2 << 40),
    ],
)
def test_max_upload_sizes(text: str, size: int) -> None:
    assert upload_limit(text) == size


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected a size"),
        ("G", "expected a size"),
        ("1.5G", "expected a size"),
        ("12x", "expected a size"),
        ("-1G", "expected a size"),
        ("0", "at least one byte"),
    ],
)
def test_bad_max_upload_sizes(text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        upload_limit(text)


# --- through uvicorn ---------------------------------------------------------------------------


def _chunked(before: Fields, size: int) -> Iterator[bytes]:
    """A body httpx sends chunked (no Content-Length): a generator."""
    yield from form(before, zeros(size // (64 << 10), 64 << 10))


def _left_by_a_killed_server(directory: Path) -> Path:
    directory.mkdir(parents=True)
    partial = directory / ".tmp-killed.part"
    partial.write_bytes(b"half an image")
    return partial


def test_ec2_server_refuses_oversized_uploads_and_keeps_serving(ec2: Ec2, tmp_path: Path) -> None:
    """Also: the partial upload a killed server left is removed when it starts again."""
    partial = _left_by_a_killed_server(ec2.uploads / "alice")
    with cloud_server("ec2", ec2.state.root, None, "--hold", "--max-upload", "1M") as url:
        declared = httpx.post(url, content=b"\0" * (2 * MiB), headers=MULTIPART, timeout=60)
        assert declared.status_code == 400
        assert ET.fromstring(declared.content).findtext("Errors/Error/Code") == "EntityTooLarge"
        unsigned = httpx.post(url, content=_chunked([], 2 * MiB), headers=MULTIPART, timeout=60)
        assert unsigned.status_code == 401  # refused when the file began, unsigned
        image = tmp_path / "small.img"
        image.write_bytes(b"\1" * 4096)
        alice = ec2.alice
        with pytest.raises(InputError, match="AuthFailure"):
            upload_image(Endpoint(url, alice.user.access_key, "wrong"), image)
        ami = upload_image(Endpoint(url, alice.user.access_key, alice.secret_key), image)
    assert ami.startswith("ami-") and not partial.exists()
    [stored] = files(ec2.uploads)
    assert stored.parent == Path("alice") and same_disk(ec2.uploads / stored, image.read_bytes())


def test_occi_server_refuses_oversized_uploads_and_keeps_serving(ec2: Ec2) -> None:
    xml = [("occixml", "<DISK><NAME>d</NAME></DISK>")]
    auth = httpx.BasicAuth("alice", "alice-pw")
    _left_by_a_killed_server(ec2.state.root / "occi" / "uploads")
    with cloud_server("occi", ec2.state.root, None, "--hold", "--max-upload", "1M") as url:
        storage = url + "storage"
        post = functools.partial(httpx.post, storage, headers=MULTIPART, auth=auth, timeout=60)
        declared, streamed = post(content=b"\0" * (2 * MiB)), post(content=_chunked(xml, 2 * MiB))
        assert (declared.status_code, streamed.status_code) == (413, 413)
        made = post(content=b"".join(_chunked(xml, 512 << 10)))
        assert made.status_code == 201, made.text
    assert [p.parent.name for p in files(ec2.state.root / "occi")] == ["storage"]
