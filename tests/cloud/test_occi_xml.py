"""OCCI request bodies and STORAGE upload limits, in process (no server, no VM).

COMPUTE's ``DISK image= dev=``, ``SWAP size= dev=``, ``FS size= dev=`` and ``NIC network= ip=``
are OpenNebula/one release-1.4 ``src/cloud/occi/lib/OCCIServer.rb`` post_compute's (and
``src/cloud/occi/etc/templates/small.erb``); FS without a format takes occi-server.conf's
FS_FORMAT (ext3); post_storage wants the ``occixml`` and ``file`` parts (400 otherwise).
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from cloud.occi.server import create_app
from cloud.occi.xml import DiskRef, NicRef, parse_compute, parse_state
from cloud.users import UserStore
from context.leases import NetworkStore
from context.network import network_from_template
from context.template import parse_template
from imagekit.httperror import HttpError
from imagekit.state import State


def test_compute_request_is_parsed_once() -> None:
    body = (
        b"<COMPUTE><NAME>web</NAME><INSTANCE_TYPE>large</INSTANCE_TYPE><STORAGE>"
        b'<DISK image="3" dev="sda1"/><SWAP size="1024" dev="sda2"/><FS size="100" dev="sdb"/>'
        b'</STORAGE><NETWORK><NIC network="2" ip="10.0.0.9"/><NIC network="4"/></NETWORK></COMPUTE>'
    )
    request = parse_compute(body)
    assert (request.name, request.instance_type) == ("web", "large")
    assert request.disks == (
        DiskRef("disk", "sda1", storage=3),
        DiskRef("swap", "sda2", size=1024),
        DiskRef("fs", "sdb", size=100, format="ext3"),
    )
    assert request.nics == (NicRef(2, "10.0.0.9"), NicRef(4))
    assert parse_state(b"<COMPUTE><ID>1</ID><STATE>Stopped</STATE></COMPUTE>") == "stopped"


def _compute(inner: str) -> bytes:
    return f"<COMPUTE><INSTANCE_TYPE>small</INSTANCE_TYPE>{inner}</COMPUTE>".encode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_compute('<STORAGE><DISK dev="sda"/></STORAGE>'), "DISK/@image"),
        (_compute('<STORAGE><SWAP size="x" dev="a"/></STORAGE>'), "SWAP/@size"),
        (_compute("<STORAGE><CDROM/></STORAGE>"), "STORAGE/CDROM"),
        (_compute("<NETWORK><NIC/></NETWORK>"), "NIC/@network"),
        (b"<COMPUTE><NAME>x</NAME></COMPUTE>", "INSTANCE_TYPE"),
        (b"<NIC/>", "expected a <COMPUTE>"),
    ],
)
def test_bad_compute_requests_name_the_element(body: bytes, message: str) -> None:
    with pytest.raises(HttpError) as err:
        parse_compute(body)
    assert err.value.status == 400 and message in err.value.message


def _basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


@pytest.fixture
def http(tmp_path: Path) -> TestClient:
    state = State.open(tmp_path / "state")
    UserStore(state).create("alice", "pw")
    UserStore(state).create("root", "root-pw", admin=True)
    NetworkStore(state).create(network_from_template(parse_template(SITE_NET, "site.net")))
    return TestClient(create_app(state, max_upload=4096), headers=_basic("alice", "pw"))


SITE_NET = 'NAME = "public"\nTYPE = "RANGED"\nNETWORK_ADDRESS = "10.4.0.0"\nNETWORK_SIZE = "C"\n'


def test_site_networks_are_shared_and_kept(http: TestClient) -> None:
    """A network made outside OCCI (onevnet) is listed and usable by every user; only an
    administrator deletes it (403 for a user)."""
    assert '/network/0"' in http.get("/network").text
    assert "<NAME>public</NAME>" in http.get("/network/0").text
    assert http.delete("/network/0").status_code == 403
    assert http.delete("/network/0", headers=_basic("root", "root-pw")).status_code == 204
    assert http.get("/network/0").status_code == 404


def test_storage_upload_needs_both_parts_and_a_bounded_size(http: TestClient) -> None:
    xml = "<DISK><NAME>d</NAME></DISK>"
    missing = http.post("/storage", data={"occixml": xml})
    assert missing.status_code == 400 and "file" in missing.text
    assert http.post("/storage", files={"file": ("d.img", b"x")}).status_code == 400
    large = http.post("/storage", data={"occixml": xml}, files={"file": ("d.img", b"x" * 8192)})
    assert large.status_code == 413
    assert http.post("/storage", content=b"<DISK/>").status_code == 400  # not multipart
    made = http.post("/storage", data={"occixml": xml}, files={"file": ("d.img", b"x" * 100)})
    assert made.status_code == 201 and "<NAME>d</NAME>" in made.text and "<SIZE>1</SIZE>" in made.text
    assert http.get("/storage").text.count("<DISK ") == 1
