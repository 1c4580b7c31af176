"""Images of subscribed HEPiX image lists are usable, not only listed (issue 18, point 3):
``imagelist:<dc:identifier>`` downloads from the list's ``hv:uri`` into the verified cache,
checked against ``hv:size`` and ``sl:checksum:sha512``, refused when the site policy refuses the
image or it is withdrawn or its list expired; a VM (``vm create`` with a held core, EC2
RegisterImage + RunInstances) boots from it. A loopback server serves the list and the image;
its request log shows what was (not) fetched."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from cloud.deploy import CreateRequest, create_vm
from cloud.siteconfig import load_site
from cloud.store import VmStore
from imagekit.cli import main
from imagekit.errors import VerificationError
from imagekit.run import run
from imagekit.state import State
from marketplace.config import MarketConfig, PendingPolicy
from marketplace.fetch import DownloadFailed
from marketplace.imagecache import list_images
from marketplace.imagelist import export_imagelist
from marketplace.imagelist_images import obtain_listed_image
from marketplace.imagelist_subscribe import subscribe, sync
from marketplace.metadata import Metadata
from marketplace.policy import load_policy
from marketplace.registry import Registry
from marketplace.signing import load_signer
from marketplace.site import PolicyRefused, obtain_image
from tests.cloud.tenancy import Doors, error_text, open_doors

from .entries import NOW, ago, make_ca, make_endorser
from .images import describe, endorse, write_policy
from .loopback import Behaviour, Loopback, loopback

pytestmark = pytest.mark.timeout(120)

CA = make_ca("image list CA")
ALICE = make_endorser(CA, "alice@example.org", "Alice")
HTTP = "[download]\nschemes = https http\nretries = 0\ntimeout = 10\n"


@dataclass
class Subscribed:
    """A state subscribed to a list (signed by Alice) that the loopback serves with its image."""

    server: Loopback
    state: State
    registry: Registry
    root: Path
    content: bytes

    @property
    def url(self) -> str:
        return f"{self.server.url}/imagelist"

    def publish(self, *entries: Metadata, hours_ago: int) -> None:
        for m in entries:
            self.registry.upload(endorse(m, ALICE, created=ago(hours=hours_ago)))
        signer = load_signer(*ALICE.write(self.root / "pki", ALICE.email))
        done = export_imagelist(self.registry, signer, base_url=self.server.url, now=ago(hours=hours_ago))
        self.server.files["/imagelist"] = done.signed

    def image_id(self, title: str = "vm image") -> str:
        with self.state.read() as db:
            row = db.execute("SELECT image FROM imagelist_images WHERE title = ?", (title,)).fetchone()
        return str(row[0])

    def fetched(self) -> list[str]:
        return [s.path for s in self.server.log if s.path != "/imagelist"]


def _qcow2(tmp: Path) -> bytes:
    path = tmp / "listed.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", path, "1M"])
    return path.read_bytes()


@pytest.fixture
def listed(tmp_path: Path) -> Iterator[Subscribed]:
    content = _qcow2(tmp_path)
    registry = Registry(MarketConfig(data_dir=tmp_path / "registry", pending=PendingPolicy.ACCEPT))
    ca, _ = CA.write(tmp_path / "pki", "ca")
    with loopback() as server:
        made = Subscribed(server, State.open(tmp_path / "state"), registry, tmp_path, content)
        server.files["/img"] = content
        made.publish(describe(content, title="vm image", locations=(f"{server.url}/img",)), hours_ago=5)
        subscribe(made.state, made.url, trust=ca)
        yield made


def test_download_by_imagelist_reference_verifies_and_caches(
    listed: Subscribed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = write_policy(tmp_path, HTTP)
    check = ["--state", str(listed.state.root), "market", "policy", "check", "--policy", str(policy)]
    assert main([*check, "--json", f"imagelist:{listed.image_id()}"]) == 0
    judged = json.loads(capsys.readouterr().out)
    assert judged["allowed"] is True and judged["uri"] == f"{listed.server.url}/img"
    assert listed.fetched() == []  # judging fetches nothing
    out = tmp_path / "out.img"
    argv = ["--state", str(listed.state.root), "market", "download", f"imagelist:{listed.image_id()}"]
    argv += ["--policy", str(policy), "--json", "-o", str(out)]
    assert main(argv) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["cached"] is False and shown["url"] == f"{listed.server.url}/img"
    assert shown["endorser"] == ALICE.email and shown["format"] == "qcow2"
    assert out.read_bytes() == listed.content
    [record] = list_images(listed.state)
    assert record.path.read_bytes() == listed.content and record.size == len(listed.content)
    # Again: from the cache, the policy judged again, nothing fetched.
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["cached"] is True
    assert listed.fetched() == ["/img"]


def test_a_refused_image_is_never_fetched(
    listed: Subscribed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = listed.image_id()
    refusing = {
        "blacklistendorsers": f"{HTTP}[endorsers]\nblacklistendorsers = {ALICE.email}\n",
        "is not one of ubuntu": f"{HTTP}[images]\nos = ubuntu\n",
    }
    for reason, text in refusing.items():
        policy_file = write_policy(tmp_path, text)
        policy = load_policy(policy_file)
        with pytest.raises(PolicyRefused, match=reason):
            obtain_image(f"imagelist:{image}", policy=policy, state=listed.state)
    check = ["--state", str(listed.state.root), "market", "policy", "check", "--policy", str(policy_file)]
    assert main([*check, f"imagelist:{image}"]) == 1
    assert "is not one of ubuntu" in capsys.readouterr().err
    policy_file = write_policy(tmp_path, HTTP)
    argv = ["--state", str(listed.state.root), "market", "download", "--policy", str(policy_file)]
    assert main([*argv, "imagelist:no-such-image"]) != 0
    [line] = [e for e in capsys.readouterr().err.splitlines() if e.startswith("error:")]
    assert line.endswith("imagelist:no-such-image: no subscribed image list has an image 'no-such-image'")
    assert main([*argv, "imagelist:"]) != 0
    assert listed.fetched() == [] and list_images(listed.state) == []


def test_withdrawn_and_expired_images_are_refused(listed: Subscribed, tmp_path: Path) -> None:
    policy = load_policy(write_policy(tmp_path, HTTP))
    image = listed.image_id()
    with pytest.raises(PolicyRefused, match="image list expired"):
        later = NOW + timedelta(days=60)
        obtain_listed_image(f"imagelist:{image}", policy=policy, state=listed.state, now=later)
    gone = dataclasses.replace(
        describe(listed.content, title="vm image", locations=(f"{listed.server.url}/img",)), deprecated="CVE"
    )
    listed.publish(gone, hours_ago=3)
    (report,) = sync(listed.state)
    assert report.withdrawn == (image,)
    with pytest.raises(PolicyRefused, match="withdrawn: no longer in the image list"):
        obtain_image(f"imagelist:{image}", policy=policy, state=listed.state)
    assert listed.fetched() == []


def test_size_and_sha512_of_the_list_are_checked(listed: Subscribed, tmp_path: Path) -> None:
    policy = load_policy(write_policy(tmp_path, HTTP))
    reference = f"imagelist:{listed.image_id()}"
    tampered = bytearray(listed.content)
    tampered[-1] ^= 1
    listed.server.files["/img"] = bytes(tampered)
    with pytest.raises(DownloadFailed, match="SHA-512 of the image do not match"):
        obtain_image(reference, policy=policy, state=listed.state)
    listed.server.files["/img"] = listed.content + b"x"
    with pytest.raises(DownloadFailed, match="larger than slreq:bytes"):
        obtain_image(reference, policy=policy, state=listed.state)
    assert list_images(listed.state) == []
    listed.server.files["/img"] = listed.content
    assert obtain_image(reference, policy=policy, state=listed.state).path.read_bytes() == listed.content


# --- booting: vm create (held core) and EC2 ----------------------------------------------------


@pytest.fixture
def doors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Doors]:
    # The front doors read etc/ once, where they start: the site's policy allows http here.
    etc = tmp_path / "etc"
    shutil.copytree(Path(__file__).parents[2] / "etc", etc)
    write_policy(etc, HTTP)
    monkeypatch.setenv("IMAGEKIT_ETC", str(etc))
    with open_doors(tmp_path / "cloud", monkeypatch) as both:
        yield both


def _vm(doors: Doors, disk: str, policy: Path, *, confined: bool = True) -> CreateRequest:
    template = doors.tmp / "vm.one"
    template.write_text(f'NAME = "m"\nMEMORY = 64\nDISK = [ {disk} ]\n')
    confine = (doors.tmp / "alice-uploads",) if confined else None
    site = load_site(policy=policy)
    return CreateRequest.from_file(
        template, site=site, hold=True, endpoint="http://127.0.0.1:9/registry", owner="alice",
        confine=confine,
    )  # fmt: skip


def _subscribe(doors: Doors, listed: Subscribed) -> str:
    subscribe(doors.state, listed.url, trust=CA.write(listed.root / "pki", "ca")[0])
    with doors.state.read() as db:
        return str(db.execute("SELECT image FROM imagelist_images").fetchone()[0])


def test_a_cloud_users_vm_boots_from_a_listed_image(
    listed: Subscribed, doors: Doors, tmp_path: Path
) -> None:
    """SOURCE or IMAGE = "imagelist:ID": the list's URI is fetched for a cloud user although it
    is neither the registry nor a mirror (the subscribed list is the allow-list); the image is
    held while the VM exists."""
    image = _subscribe(doors, listed)
    policy = write_policy(tmp_path, HTTP)
    first = create_vm(_vm(doors, f'SOURCE = "imagelist:{image}"', policy), state=doors.state)
    second = create_vm(_vm(doors, f'IMAGE = "imagelist:{image}"', policy), state=doors.state)
    [record] = list_images(doors.state)
    assert set(record.holders) == {f"vm-{first.vmid}", f"vm-{second.vmid}"}
    info = run(["qemu-img", "info", "--output=json", first.directory / "disk0.qcow2"]).stdout
    assert json.loads(info)["backing-filename-format"] == "qcow2"
    assert listed.fetched() == ["/img"]


def test_no_redirect_leaves_the_listed_uri_for_a_cloud_user(
    listed: Subscribed, doors: Doors, tmp_path: Path
) -> None:
    image = _subscribe(doors, listed)
    policy = write_policy(tmp_path, HTTP)
    with loopback() as elsewhere:
        elsewhere.files["/img"] = listed.content
        listed.server.behaviour["/img"] = Behaviour(redirect=f"{elsewhere.url}/img")
        with pytest.raises(VerificationError, match="redirect to .* refused"):
            create_vm(_vm(doors, f'SOURCE = "imagelist:{image}"', policy), state=doors.state)
        assert elsewhere.log == [] and VmStore(doors.state).list() == []
        # The administrator's own `vm create` follows the redirect (origins are not restricted).
        operator = _vm(doors, f'SOURCE = "imagelist:{image}"', policy, confined=False)
        assert create_vm(operator, state=doors.state)
        assert [s.path for s in elsewhere.log] == ["/img"]


def test_ec2_register_image_and_run_an_imagelist_image(
    listed: Subscribed, doors: Doors, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = _subscribe(doors, listed)
    for bad in ("imagelist:", "imagelist:two words", "imagelist:http://127.0.0.1:9/x"):
        assert doors.ec2_call("alice", "RegisterImage", ImageLocation=bad).status_code == 400, bad
    registered = doors.ec2_call("alice", "RegisterImage", ImageLocation=f"imagelist:{image}")
    assert registered.status_code == 200, registered.text
    [ami] = doors.images("ec2", "alice")
    ran = doors.ec2_call("alice", "RunInstances", ImageId=ami, MinCount="1", MaxCount="1")
    assert ran.status_code == 200, ran.text
    [vm] = VmStore(doors.state).list()
    assert vm.owner == "alice" and [r.holders for r in list_images(doors.state)] == [(f"vm-{vm.vmid}",)]
    # Withdrawn: a new VM is refused with the reason, and nothing is reserved.
    gone = dataclasses.replace(
        describe(listed.content, title="vm image", locations=(f"{listed.server.url}/img",)), deprecated="CVE"
    )
    listed.publish(gone, hours_ago=3)
    sync(doors.state)
    refused = doors.ec2_call("alice", "RunInstances", ImageId=ami, MinCount="1", MaxCount="1")
    assert refused.status_code == 400 and "withdrawn" in error_text(refused), refused.text
    assert len(VmStore(doors.state).list()) == 1
