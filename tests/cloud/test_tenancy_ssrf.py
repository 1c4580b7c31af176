"""Issue 17, point 4: no server-side request forgery.

The server contacts, for a cloud user, only the registry endpoint the site configured (the one
``vm create`` and ``imagekit market`` use: ``--endpoint``, ``$IMAGEKIT_MARKET``, the local
default) and the mirrors of ``etc/policy.cfg``. ``RegisterImage`` refuses an entry URL
anywhere else (another host, port, path prefix or scheme; credentials, dot segments, another
spelling of an address) with a clear 400 before any connection; when a VM is made, the core
refuses an entry URL off the registry again, tries no image location outside the registries
and mirrors, and follows no redirect out of them. A loopback server stands for "elsewhere":
its request log shows it was never contacted.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from cloud.deploy import CreateRequest, create_vm
from cloud.ec2.server import create_app as ec2_app
from cloud.ec2.service import Region
from cloud.siteconfig import load_site
from cloud.standalone import NotStandalone
from cloud.store import VmStore
from imagekit.errors import VerificationError
from imagekit.run import run
from marketplace.origins import within
from tests.cloud.tenancy import REGISTRY, URL, Doors, error_code, error_text, open_doors
from tests.marketplace.entries import ago, make_ca, make_endorser
from tests.marketplace.images import describe, endorse, listing
from tests.marketplace.loopback import Behaviour, Loopback, loopback

pytestmark = pytest.mark.timeout(120)

ID = "LMJb8TGsMqgpEb0WC4DG8yM7lin"
ALICE = make_endorser(make_ca("tenancy CA"), "alice@example.org", "Alice")


@pytest.fixture
def doors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Doors]:
    with open_doors(tmp_path, monkeypatch) as both:
        yield both


@pytest.fixture
def elsewhere() -> Iterator[Loopback]:
    with loopback() as server:
        yield server


@pytest.mark.parametrize(
    ("url", "inside"),
    [
        ("http://127.0.0.1:9/registry/metadata/X", True),
        ("HTTP://127.0.0.1:9/registry", True),
        ("http://127.0.0.1:9/registry/", True),
        ("http://127.0.0.1:10/registry/metadata/X", False),
        ("https://127.0.0.1:9/registry/metadata/X", False),
        ("http://localhost:9/registry/metadata/X", False),
        ("http://127.0.0.1:9/registryx/metadata/X", False),
        ("http://127.0.0.1:9/other/metadata/X", False),
        ("http://127.0.0.1:9/registry/../other", False),
        ("http://127.0.0.1:9/registry/%2e%2e/other", False),
        ("http://127.0.0.1:9/registry/%2E%2E%2Fother", False),
        ("http://127.0.0.1:9/registry/.", False),
        ("http://x@127.0.0.1:9/registry/metadata/X", False),
        ("http://127.0.0.1:9\\@evil.example/registry", False),
        ("http://127.0.0.1:99999/registry", False),
        ("http://127.0.0.1:nine/registry", False),
        ("gopher://127.0.0.1:9/registry", False),
        ("file:///registry", False),
    ],
)
def test_within_the_registry(url: str, inside: bool) -> None:
    assert within(url, ("http://127.0.0.1:9/registry",)) is inside


def test_within_default_ports_and_mirrors() -> None:
    assert within("https://market.example.org:443/m/img", ("https://market.example.org/m",))
    assert within("http://market.example.org/m/img", ("http://market.example.org:80/m/",))
    assert not within("http://market.example.org:8080/m/img", ("http://market.example.org/m",))
    assert within("file:///srv/mirror/img", ("file:///srv/mirror",))
    assert not within("file:///srv/mirror/../../etc/passwd", ("file:///srv/mirror",))


def _off_registry(elsewhere: Loopback) -> list[str]:
    other = elsewhere.url.removeprefix("http://")
    entry = f"/registry/metadata/{ID}"
    return [
        f"http://{other}{entry}",  # another port (and a server that listens)
        f"marketplace:http://{other}{entry}",
        f"http://localhost:9{entry}",  # another name for the host
        f"http://[::1]:9{entry}",
        f"http://2130706433:9{entry}",  # 127.0.0.1 spelt as a number
        f"https://127.0.0.1:9{entry}",  # another scheme
        f"http://127.0.0.1:9/other/metadata/{ID}",  # another path prefix
        f"http://127.0.0.1:9/registryx/metadata/{ID}",
        f"http://127.0.0.1:9/registry/../other/metadata/{ID}",
        f"http://127.0.0.1:9/registry/%2e%2e/other/metadata/{ID}",
        f"http://127.0.0.1:9@{other}{entry}",  # credentials: the host is after the @
        f"http://{other}/latest/meta-data/",  # not even an entry
        f"gopher://{other}{entry}",
        f"ftp://{other}{entry}",
        f"file:///etc/passwd/metadata/{ID}",
    ]


def test_register_image_refuses_entry_urls_off_the_registry_before_connecting(
    doors: Doors, elsewhere: Loopback
) -> None:
    for location in _off_registry(elsewhere):
        response = doors.ec2_call("alice", "RegisterImage", ImageLocation=location)
        assert (response.status_code, error_code(response)) == (400, "InvalidParameterValue"), location
        message = error_text(response)
        assert any(w in message for w in ("registry", "marketplace:ID", "entry URL")), message
    assert elsewhere.log == []
    assert doors.images("ec2", "alice") == []


def test_entry_urls_on_the_registry_are_registered(doors: Doors) -> None:
    for location in (
        f"{REGISTRY}/metadata/{ID}",
        f"marketplace:{REGISTRY}/metadata/{ID}/alice@example.org/2024-01-01T00:00:00Z",
        f"HTTP://127.0.0.1:9/registry/metadata/{ID}",
    ):
        response = doors.ec2_call("alice", "RegisterImage", ImageLocation=location)
        assert response.status_code == 200, (location, response.text)
    refused = doors.ec2_call("alice", "RegisterImage", ImageLocation=f"{REGISTRY}/metadata/not-an-id")
    assert refused.status_code == 400 and "entry URL" in error_text(refused)


def test_the_server_takes_the_registry_the_site_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, elsewhere: Loopback
) -> None:
    """Without explicit sources the EC2 app reads the site's: $IMAGEKIT_MARKET (the endpoint
    every marketplace command uses) and etc/policy.cfg's mirrors."""
    from cloud.users import UserStore
    from imagekit.state import State

    from .tenancy import Doors

    monkeypatch.setenv("IMAGEKIT_MARKET", "https://market.example.org/reg")
    state = State.open(tmp_path / "state")
    alice = UserStore(state).create("alice", "pw")
    with TestClient(ec2_app(state, Region("default", URL)), base_url=URL) as client:
        doors = Doors(state, {"alice": alice}, client, client, tmp_path, tmp_path)
        ok = doors.ec2_call(
            "alice", "RegisterImage", ImageLocation=f"https://market.example.org/reg/metadata/{ID}"
        )
        assert ok.status_code == 200, ok.text
        off = doors.ec2_call("alice", "RegisterImage", ImageLocation=f"{elsewhere.url}/reg/metadata/{ID}")
        assert off.status_code == 400 and "https://market.example.org/reg" in error_text(off)
    assert elsewhere.log == []


# --- when the VM is made ---------------------------------------------------------------------


def _policy(tmp_path: Path, mirrors: str = "") -> Path:
    path = tmp_path / "policy.cfg"
    path.write_text(f"[download]\nschemes = https http\nretries = 0\ntimeout = 10\nmirrors = {mirrors}\n")
    return path


def _image(tmp_path: Path, *backing: str) -> bytes:
    path = tmp_path / "market.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", *backing, path, "1M"])
    return path.read_bytes()


def _publish(registry: Loopback, content: bytes, location: str) -> str:
    """A signed entry on ``registry`` whose image is at ``location``; its identifier."""
    m = describe(content, locations=(location,), format="qcow2")
    registry.files[f"/metadata/{m.identifier}"] = listing(endorse(m, ALICE, created=ago(days=1)))
    return m.identifier


def _vm(
    doors: Doors, source: str, registry: Loopback, policy: Path, *, confined: bool = True
) -> CreateRequest:
    template = doors.tmp / "vm.one"
    template.write_text(f'NAME = "m"\nMEMORY = 64\nDISK = [ SOURCE = "{source}" ]\n')
    confine = (doors.tmp / "alice-uploads",) if confined else None
    return CreateRequest.from_file(
        template,
        site=load_site(policy=policy),
        hold=True,
        endpoint=registry.url,
        owner="alice",
        confine=confine,
    )


def test_a_cloud_users_marketplace_image_comes_from_the_registry(doors: Doors, tmp_path: Path) -> None:
    content = _image(tmp_path)
    with loopback() as registry:
        registry.files["/img"] = content
        identifier = _publish(registry, content, f"{registry.url}/img")
        record = create_vm(
            _vm(doors, f"marketplace:{identifier}", registry, _policy(tmp_path)), state=doors.state
        )
    overlay = record.directory / "disk0.qcow2"
    info = json.loads(subprocess.check_output(["qemu-img", "info", "--output=json", overlay]))
    assert info["backing-filename-format"] == "qcow2"  # detected from the bytes, then probed


def test_no_location_outside_the_registry_and_mirrors_is_tried(
    doors: Doors, tmp_path: Path, elsewhere: Loopback
) -> None:
    content = _image(tmp_path)
    elsewhere.files["/img"] = content
    with loopback() as registry:
        identifier = _publish(registry, content, f"{elsewhere.url}/img")
        request = _vm(doors, f"marketplace:{identifier}", registry, _policy(tmp_path))
        with pytest.raises(VerificationError, match="not on the site's registry or a configured mirror"):
            create_vm(request, state=doors.state)
        assert elsewhere.log == []
        # The operator's own `vm create` still downloads from where the signed entry says.
        create_vm(
            _vm(doors, f"marketplace:{identifier}", registry, _policy(tmp_path), confined=False),
            state=doors.state,
        )
    assert [s.path for s in elsewhere.log] == ["/img"]


def test_a_configured_mirror_is_used_instead(doors: Doors, tmp_path: Path, elsewhere: Loopback) -> None:
    content = _image(tmp_path)
    with loopback() as registry, loopback() as mirror:
        mirror.files["/mirror/img"] = content
        identifier = _publish(registry, content, f"{elsewhere.url}/img")
        policy = _policy(tmp_path, mirrors=f"{mirror.url}/mirror")
        assert create_vm(_vm(doors, f"marketplace:{identifier}", registry, policy), state=doors.state)
    assert [s.path for s in mirror.log] == ["/mirror/img"] and elsewhere.log == []


def test_no_redirect_leaves_the_registry(doors: Doors, tmp_path: Path, elsewhere: Loopback) -> None:
    content = _image(tmp_path)
    elsewhere.files["/img"] = content
    with loopback() as registry:
        registry.behaviour["/img"] = Behaviour(redirect=f"{elsewhere.url}/img")
        identifier = _publish(registry, content, f"{registry.url}/img")
        with pytest.raises(VerificationError, match="redirect to .* refused: not on the site's registry"):
            create_vm(
                _vm(doors, f"marketplace:{identifier}", registry, _policy(tmp_path)), state=doors.state
            )
    assert elsewhere.log == [] and VmStore(doors.state).list() == []


def test_an_entry_url_off_the_registry_is_refused_at_deploy_before_connecting(
    doors: Doors, tmp_path: Path, elsewhere: Loopback
) -> None:
    with loopback() as registry:
        for source in (f"{elsewhere.url}/metadata/{ID}", f"marketplace:{elsewhere.url}/metadata/{ID}"):
            with pytest.raises(NotStandalone, match="not on this site's registry"):
                create_vm(_vm(doors, source, registry, _policy(tmp_path)), state=doors.state)
        with pytest.raises(NotStandalone, match="not a marketplace reference"):
            create_vm(
                _vm(doors, f"{elsewhere.url}/latest/meta-data", registry, _policy(tmp_path)),
                state=doors.state,
            )
        assert registry.log == []
    assert elsewhere.log == []


def test_a_downloaded_image_that_reads_a_host_file_is_refused(doors: Doors, tmp_path: Path) -> None:
    """Point 1 for downloads: a signed, policy-accepted entry whose image has a backing file."""
    content = _image(tmp_path, "-u", "-F", "raw", "-b", "/etc/passwd")
    with loopback() as registry:
        registry.files["/img"] = content
        identifier = _publish(registry, content, f"{registry.url}/img")
        for confined in (True, False):
            request = _vm(doors, f"marketplace:{identifier}", registry, _policy(tmp_path), confined=confined)
            with pytest.raises(NotStandalone, match="backing file"):
                create_vm(request, state=doors.state)
    assert VmStore(doors.state).list() == []


def test_the_site_sources_are_the_registry_and_policy_mirrors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloud.image_sources import site_sources

    monkeypatch.setenv("IMAGEKIT_MARKET", "https://market.example.org/reg/")
    monkeypatch.setenv("IMAGEKIT_ETC", str(tmp_path))  # no policy.cfg: no mirrors
    assert site_sources().origins == ("https://market.example.org/reg",)
    _policy(tmp_path, mirrors="https://mirror.example.org/images/\n    file:///srv/mirror")
    sources = site_sources(image_dirs=[tmp_path / "site" / ".."])
    assert sources.mirrors == ("https://mirror.example.org/images", "file:///srv/mirror")
    assert sources.image_dirs == (tmp_path.resolve(),)
    assert sources.on_registry("https://market.example.org/reg/metadata/X")
    assert not sources.on_registry("https://mirror.example.org/images/metadata/X")  # entries: registry only


def test_occi_never_fetches_a_storage_url(doors: Doors, tmp_path: Path, elsewhere: Loopback) -> None:
    """OCCI's ``<URL>`` of a STORAGE is a note the user keeps, never a location the server reads:
    the image is the uploaded file, whatever the URL names."""
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\1" * 4096)
    for url in (f"{elsewhere.url}/img", "file:///etc/passwd", "http://169.254.169.254/latest/"):
        with open(image, "rb") as data:
            response = doors.occi.post(
                "/storage",
                data={"occixml": f"<DISK><NAME>d</NAME><URL>{url}</URL></DISK>"},
                files={"file": ("disk.raw", data)},
                auth=("alice", "alice-pw"),
            )
        assert response.status_code == 201, response.text
    assert elsewhere.log == []
