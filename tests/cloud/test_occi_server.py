"""The OCCI service on loopback, driven by httpx: the seed's "Hello OCCI Cloud" walk and refusals.

Shapes and codes from OpenNebula/one (release-1.4) ``src/cloud/occi/lib/OCCIServer.rb``
(routes; create 201, PUT 202, DELETE 204; 400/401/404 with a text body; STATE stopped,
suspended, resume, cancel, done), ``VirtualMachineOCCI.rb`` (``<COMPUTE>`` with STORAGE/DISK
``href`` and NETWORK/NIC ``href``, ``ip``), ``VirtualNetworkOCCI.rb`` (``<NETWORK>`` ID, NAME,
ADDRESS, SIZE), ``ImageOCCI.rb`` (``<DISK>`` ID, NAME, SIZE, URL) and the pools
(``<COMPUTES><COMPUTE href=…/>``). VMs are created held (``--hold``): nothing boots here.
POST /compute answers PENDING (``OCCIServer.rb`` post_compute: ``vm.allocate``, ``vm.info``,
``to_occi``: oned records the VM pending and the scheduler is another process); the server's
own dispatcher then does the prolog and holds it.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree as ET

import httpx
import pytest

from cloud.users import UserStore
from imagekit.run import run
from imagekit.state import State
from tests.cloud.blank import halting_disk
from tests.cloud.serving import IMAGEKIT, cloud_server, make_tls

pytestmark = pytest.mark.timeout(120)

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "root": "root-pw"}


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("occi") / "state"
    users = UserStore(State.open(path))
    for name, password in PASSWORDS.items():
        users.create(name, password, admin=name == "root")
    return path


@pytest.fixture(scope="module")
def url(state: Path) -> Iterator[str]:
    with cloud_server("occi", state, None, "--hold") as running:
        yield running.rstrip("/")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("image") / "blank.qcow2"
    halting_disk(path)
    return path


def client(url: str, name: str = "alice", password: str | None = None, **kw: object) -> httpx.Client:
    auth = httpx.BasicAuth(name, password if password is not None else PASSWORDS[name])
    return httpx.Client(base_url=url, auth=auth, timeout=60, **kw)  # type: ignore[arg-type]


def xml(response: httpx.Response, status: int) -> ET.Element:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/xml")
    return ET.fromstring(response.content)


def eventually(http: httpx.Client, vmid: str, wanted: str, timeout: float = 60) -> ET.Element:
    """GET /compute/VMID until its STATE is ``wanted`` (the background prolog's end)."""
    deadline = time.monotonic() + timeout
    while (shown := xml(http.get(f"/compute/{vmid}"), 200)).findtext("STATE") != wanted:
        assert time.monotonic() < deadline, f"compute {vmid} never {wanted}: {shown.findtext('STATE')}"
        time.sleep(0.05)
    return shown


def upload(http: httpx.Client, image: Path, name: str = "blank") -> ET.Element:
    occixml = f"<DISK><NAME>{name}</NAME><URL>file://{image}</URL></DISK>"
    with open(image, "rb") as data:
        response = http.post("/storage", data={"occixml": occixml}, files={"file": ("blank.qcow2", data)})
    return xml(response, 201)


def compute_body(storage: str, network: str, instance_type: str = "small") -> str:
    return (
        f"<COMPUTE><NAME>hello</NAME><INSTANCE_TYPE>{instance_type}</INSTANCE_TYPE>"
        f'<STORAGE><DISK image="{storage}" dev="vda"/><SWAP size="64" dev="vdb"/></STORAGE>'
        f'<NETWORK><NIC network="{network}"/></NETWORK></COMPUTE>'
    )


def test_hello_occi_cloud(url: str, image: Path) -> None:
    """storage upload → network → compute (held) → show → PUT state → done (OCCIServer.rb)."""
    with client(url) as alice:
        disk = upload(alice, image)
        storage = disk.findtext("ID") or ""
        assert disk.findtext("NAME") == "blank" and disk.findtext("SIZE") == "1"
        pool = xml(alice.get("/storage"), 200)
        assert f"{url}/storage/{storage}" in [d.get("href") for d in pool.iter("DISK")]

        net = xml(
            alice.post(
                "/network",
                content=b"<NIC><NAME>occi-lan</NAME><ADDRESS>10.7.0.0</ADDRESS><SIZE>C</SIZE></NIC>",
            ),
            201,
        )
        network = net.findtext("ID") or ""
        assert (net.findtext("NAME"), net.findtext("ADDRESS"), net.findtext("SIZE")) == (
            "occi-lan",
            "10.7.0.0",
            "254",
        )
        assert f"{url}/network/{network}" in [
            n.get("href") for n in xml(alice.get("/network"), 200).iter("NIC")
        ]

        vm = xml(alice.post("/compute", content=compute_body(storage, network)), 201)
        vmid = vm.findtext("ID") or ""
        assert vm.findtext("STATE") == "PENDING" and vm.findtext("INSTANCE_TYPE") == "small"
        disks = [(d.get("type"), d.get("href"), d.get("dev")) for d in vm.iter("DISK")]
        assert disks == [("disk", f"{url}/storage/{storage}", "vda"), ("swap", None, "vdb")]
        [nic] = vm.iter("NIC")
        assert nic.get("href") == f"{url}/network/{network}" and (nic.get("ip") or "").startswith("10.7.0.")

        shown = eventually(alice, vmid, "HOLD")  # the server's dispatcher did the prolog
        assert shown.findtext("NAME") == "hello"
        assert f"{url}/compute/{vmid}" in [
            c.get("href") for c in xml(alice.get("/compute"), 200).iter("COMPUTE")
        ]

        refused = alice.put(f"/compute/{vmid}", content=b"<COMPUTE><STATE>suspended</STATE></COMPUTE>")
        assert refused.status_code == 400 and refused.headers["content-type"].startswith("text/plain")
        assert (
            alice.put(f"/compute/{vmid}", content=b"<COMPUTE><STATE>reboot</STATE></COMPUTE>").status_code
            == 400
        )
        assert alice.delete(f"/storage/{storage}").status_code == 400  # a live COMPUTE uses it

        done = xml(alice.put(f"/compute/{vmid}", content=b"<COMPUTE><STATE>DONE</STATE></COMPUTE>"), 202)
        assert done.findtext("STATE") == "DONE"
        assert alice.delete(f"/compute/{vmid}").status_code == 204
        assert alice.delete(f"/network/{network}").status_code == 204
        assert alice.get(f"/network/{network}").status_code == 404
        assert alice.delete(f"/storage/{storage}").status_code == 204
        assert alice.get(f"/storage/{storage}").status_code == 404


def test_unknown_instance_type_and_references_are_400(url: str, image: Path) -> None:
    """An unknown INSTANCE_TYPE is 400 ("Bad instance type"), so is a DISK naming no STORAGE
    ("Invalid image (N) referred"): OpenNebula/one release-1.4 src/cloud/occi/lib/OCCIServer.rb
    post_compute."""
    with client(url) as alice:
        storage = upload(alice, image).findtext("ID") or ""
        assert alice.post("/compute", content=compute_body(storage, "0", "huge")).status_code == 400
        assert alice.post("/compute", content=compute_body("999", "0")).status_code == 400
        missing = alice.post("/compute", content=b"<COMPUTE><NAME>x</NAME></COMPUTE>")
        assert missing.status_code == 400 and "INSTANCE_TYPE" in missing.text


def test_users_see_only_their_own(url: str, image: Path) -> None:
    """Another user's id is answered as a missing one (404); the administrator sees everything."""
    with client(url) as alice, client(url, "bob") as bob, client(url, "root") as root:
        storage = upload(alice, image, "mine").findtext("ID") or ""
        net = xml(
            alice.post("/network", content=b"<NIC><NAME>alice-net</NAME><ADDRESS>10.8.0.0</ADDRESS></NIC>"),
            201,
        )
        network = net.findtext("ID") or ""
        vmid = xml(alice.post("/compute", content=compute_body(storage, network)), 201).findtext("ID")
        for path in (f"/compute/{vmid}", f"/storage/{storage}", f"/network/{network}"):
            assert bob.get(path).status_code == 404
            assert bob.delete(path).status_code == 404
            assert root.get(path).status_code == 200
        assert (
            bob.put(f"/compute/{vmid}", content=b"<COMPUTE><STATE>done</STATE></COMPUTE>").status_code == 404
        )
        refused = bob.post("/compute", content=compute_body(storage, network))
        assert refused.status_code == 400 and "Invalid image" in refused.text
        assert list(xml(bob.get("/compute"), 200)) == []
        assert f"{url}/compute/{vmid}" in [c.get("href") for c in xml(root.get("/compute"), 200)]
        eventually(alice, str(vmid), "HOLD")


ENTITY_ATTACK = b"""<?xml version="1.0"?>
<!DOCTYPE lol [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<NIC><NAME>&lol2;</NAME><ADDRESS>10.9.0.0</ADDRESS></NIC>"""


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"<NIC><NAME>x</NAME>", 400),
        (b"<COMPUTE/>", 400),
        (b"<NIC><NAME>x</NAME></NIC>", 400),
        (ENTITY_ATTACK, 400),
        (b"<NIC><NAME>" + b"x" * (70 * 1024) + b"</NAME></NIC>", 413),
    ],
    ids=["malformed", "wrong-root", "no-address", "entities", "oversized"],
)
def test_bad_bodies_are_clean_errors(url: str, body: bytes, status: int) -> None:
    """Every refusal is a one-line text answer with 1.4's status; the service stays up."""
    with client(url) as alice:
        response = alice.post("/network", content=body)
        assert response.status_code == status
        assert response.headers["content-type"].startswith("text/plain") and "Traceback" not in response.text
        assert "lol" not in response.text
        assert alice.get("/network").status_code == 200


def test_an_image_reading_another_file_is_refused(url: str, image: Path, tmp_path: Path) -> None:
    """A qcow2 whose backing file is a host path would let the VM read it: refused with 400."""
    overlay = tmp_path / "overlay.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image), "-F", "qcow2", str(overlay)])
    with client(url) as alice, open(overlay, "rb") as data:
        before = len(list(xml(alice.get("/storage"), 200)))
        files = {"file": ("overlay.qcow2", data)}
        response = alice.post("/storage", data={"occixml": "<DISK><NAME>o</NAME></DISK>"}, files=files)
        assert response.status_code == 400 and "backing" in response.text
        assert len(list(xml(alice.get("/storage"), 200))) == before


def test_a_14_client_authenticates_with_the_passwords_sha1(url: str) -> None:
    """1.4's occi-* tools send SHA1(password) as the Basic password (OpenNebula/one 04171ed
    src/cloud/occi/lib/OCCIClient.rb:60); the digest of a wrong password is still refused."""
    digest = hashlib.sha1(PASSWORDS["alice"].encode()).hexdigest()
    with client(url, "alice", digest) as tool:
        assert tool.get("/compute").status_code == 200
    with client(url, "alice", hashlib.sha1(b"wrong").hexdigest()) as tool:
        assert tool.get("/compute").status_code == 401


def test_wrong_credentials_are_401(url: str) -> None:
    """HTTP Basic against the cloud users (OCCIServer.rb authenticate: 401)."""
    for name, password in (("alice", "wrong"), ("nobody", "x")):
        with client(url, name, password) as http:
            response = http.get("/compute")
        assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Basic")
    assert httpx.get(f"{url}/compute").status_code == 401
    with client(url) as alice:
        assert alice.get("/compute").status_code == 200
        assert alice.get("/compute/abc").status_code == 404
        assert alice.patch("/compute/1").status_code == 405


def test_tls_with_a_test_ca(tmp_path: Path, state: Path) -> None:
    """--certfile/--keyfile serve HTTPS; a client trusting the CA talks, one that does not is refused."""
    tls = make_tls(tmp_path)
    with cloud_server("occi", state, tls, "--hold") as running:
        with client(running, verify=ssl.create_default_context(cafile=tls.ca)) as alice:
            assert xml(alice.get("/storage"), 200).tag == "STORAGE"
        with pytest.raises(httpx.ConnectError), client(running) as untrusting:
            untrusting.get("/storage")


def _occi(url: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OCCI_URL": url, "OCCI_USER": "alice", "OCCI_PASSWORD": PASSWORDS["alice"]}
    return subprocess.run(
        [str(IMAGEKIT), "occi", *argv], env=env, capture_output=True, text=True, check=False
    )


def test_command_line_client(url: str, image: Path, tmp_path: Path) -> None:
    """``imagekit occi`` mirrors occi-storage, occi-network and occi-compute (OCCIClient.rb)."""
    (tmp_path / "disk.xml").write_text(f"<DISK><NAME>cli</NAME><URL>{image}</URL></DISK>")
    (tmp_path / "net.xml").write_text("<NIC><NAME>cli-net</NAME><ADDRESS>10.6.0.0</ADDRESS></NIC>")
    storage = ET.fromstring(_occi(url, "storage", "create", str(tmp_path / "disk.xml")).stdout).findtext(
        "ID"
    )
    network = ET.fromstring(_occi(url, "network", "create", str(tmp_path / "net.xml")).stdout).findtext("ID")
    (tmp_path / "vm.xml").write_text(compute_body(str(storage), str(network)))
    vmid = ET.fromstring(_occi(url, "compute", "create", str(tmp_path / "vm.xml")).stdout).findtext("ID")
    assert f"/compute/{vmid}" in _occi(url, "compute", "list").stdout
    with client(url) as alice:
        eventually(alice, str(vmid), "HOLD")
    assert "<STATE>HOLD</STATE>" in _occi(url, "compute", "show", str(vmid)).stdout
    (tmp_path / "done.xml").write_text(f"<COMPUTE><ID>{vmid}</ID><STATE>done</STATE></COMPUTE>")
    assert "<STATE>DONE</STATE>" in _occi(url, "compute", "update", str(tmp_path / "done.xml")).stdout
    gone = _occi(url, "storage", "show", "999")
    assert gone.returncode != 0 and "404" in gone.stderr and "Traceback" not in gone.stderr
    refused = _occi(url, "compute", "list", "--password", "wrong")
    assert refused.returncode != 0 and "401" in refused.stderr


def test_fs_disk_and_medium_type(url: str, image: Path) -> None:
    """Two STORAGEs of one name in one COMPUTE; FS gets occi-server.conf's FS_FORMAT (ext3) when
    none is given; INSTANCE_TYPE medium is 1.4's
    (OpenNebula/one release-1.4 src/cloud/occi/etc/templates/medium.erb)."""
    with client(url) as alice:
        storage, twin = (upload(alice, image, "same").findtext("ID") for _ in range(2))
        body = (
            "<COMPUTE><NAME>fs</NAME><INSTANCE_TYPE>medium</INSTANCE_TYPE><STORAGE>"
            f'<DISK image="{storage}" dev="vda"/><DISK image="{twin}" dev="vdb"/>'
            '<FS size="32" dev="vdc"/></STORAGE></COMPUTE>'
        )
        vm = xml(alice.post("/compute", content=body), 201)
        fs = [d.attrib for d in vm.iter("DISK") if d.get("type") == "fs"]
        assert fs == [{"type": "fs", "size": "32", "format": "ext3", "dev": "vdc"}]
        assert vm.findtext("INSTANCE_TYPE") == "medium" and list(vm.iter("NIC")) == []
        assert alice.delete(f"/compute/{vm.findtext('ID')}").status_code == 204
        assert xml(alice.get(f"/compute/{vm.findtext('ID')}"), 200).findtext("STATE") == "DONE"
