"""Issue 17, second audit: attacks the first round of tenancy tests did not make.

- Ids and numbers in other digits. ``str.isdigit`` is true for "²" and "١" (Unicode digits),
  which ``int`` refuses or reads as another number: a request id, list index or size written so
  was a 500 at both doors (or another spelling of an id). Only ASCII digits are numbers.
- OCCI's ``dev``, ``ip`` and sizes. OpenNebula 1.4's oned writes a DISK's TARGET into the
  libvirt deployment file unescaped (``src/vmm/LibVirtDriverKVM.cc``:
  ``file << "\\t\\t\\t<target dev='" << target``), so a ``dev`` is a device name and nothing
  else; an ``ip`` is an IPv4 address; a SWAP or FS size is bounded (the disk is made on the
  server, and one larger than its file system takes was a prolog failure answered 500).
- Image bombs. A compressed qcow2 (or one whose clusters all point at one data cluster)
  expands to its whole virtual size when converted: the conversion was unbounded, so a small
  upload filled the server's disk before any quota looked at the result. It is now bounded by
  ``--max-upload`` and the user's storage left (RLIMIT_FSIZE on ``qemu-img convert``).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree as ET

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cloud import tenancy
from cloud.accounts import delete_user
from cloud.ec2 import keypairs
from cloud.occi.xml import MAX_VOLATILE_MIB
from cloud.quotas import QuotaChange, Quotas
from cloud.refusals import public_message
from cloud.remote import LocalRunner
from cloud.standalone import NotStandalone
from cloud.transfer import FrontEndTransfer, SshTransfer
from context.render import stored_context
from imagekit.run import run
from tests.cloud.tenancy import Doors, error_code, open_doors

pytestmark = pytest.mark.timeout(120)

SUPERSCRIPT_TWO, ARABIC_ONE = "\u00b2", "\u0661"


@pytest.fixture
def doors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Doors]:
    with open_doors(tmp_path, monkeypatch) as both:
        yield both


def _occi(doors: Doors, method: str, path: str, body: str = "") -> httpx.Response:
    response: httpx.Response = doors.occi.request(
        method, path, content=body.encode(), auth=("alice", "alice-pw")
    )
    return response


def _compute(storage: str = "", network: str = "") -> str:
    return (
        f"<COMPUTE><NAME>c</NAME><INSTANCE_TYPE>small</INSTANCE_TYPE><STORAGE>{storage}</STORAGE>"
        f"<NETWORK>{network}</NETWORK></COMPUTE>"
    )


def test_ec2_numbers_in_other_digits_are_refused(doors: Doors) -> None:
    """A list index, a count or a tag index in Unicode digits was a 500: an index so written is
    no index (the parameter is not one EC2 knows, and is ignored as such), a count is a 400.
    So was base64 (a public key, user data) holding a character that is not ASCII."""
    image = doors.tmp / "disk.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", image, "1M"])
    ami = ET.fromstring(doors.ec2_upload("alice", image).content).findtext("{*}imageId") or ""
    answers = [
        doors.ec2_call("alice", "DescribeInstances", **{f"InstanceId.{SUPERSCRIPT_TWO}": "i-00000001"}),
        doors.ec2_call("alice", "TerminateInstances", **{f"InstanceId.{ARABIC_ONE}": "i-00000001"}),
        doors.ec2_call(
            "alice", "CreateTags", **{"ResourceId.1": "i-00000001", f"Tag.{SUPERSCRIPT_TWO}.Key": "k"}
        ),
        doors.ec2_call("alice", "DescribeImages", **{f"ImageId.{SUPERSCRIPT_TWO}": "ami-00000001"}),
        doors.ec2_call("alice", "RunInstances", ImageId=ami, MinCount=SUPERSCRIPT_TWO, MaxCount="1"),
    ]
    answers += [
        doors.ec2_call("alice", "ImportKeyPair", KeyName="k", PublicKeyMaterial=SUPERSCRIPT_TWO),
        doors.ec2_call("alice", "ImportKeyPair", KeyName="k", PublicKeyMaterial="\ufeffc3NoLXJzYQ=="),
        doors.ec2_call(
            "alice", "RunInstances", ImageId=ami, MinCount="1", MaxCount="1", UserData="aGk=\u00e9"
        ),
    ]
    assert [r.status_code for r in answers] == [200, 400, 400, 200, 400, 400, 400, 400], [
        r.text for r in answers
    ]
    assert [error_code(r) for r in answers[-3:]] == ["InvalidParameterValue"] * 3
    assert [error_code(r) for r in answers[1:3]] == ["MissingParameter", "InvalidInstanceID.NotFound"]
    assert "MinCount must be a number" in answers[4].text


def test_occi_ids_in_other_digits_are_no_id(doors: Doors) -> None:
    """``/network/١`` is not network 1, ``/compute/²`` is no 500: every such id is missing."""
    made = _occi(doors, "POST", "/network", "<NIC><NAME>lan</NAME><ADDRESS>10.40.0.0</ADDRESS></NIC>")
    assert made.status_code == 201, made.text
    number = int(ET.fromstring(made.content).findtext("ID") or "")
    assert _occi(doors, "GET", f"/network/{number}").status_code == 200
    other = "".join(chr(0x0660 + int(d)) for d in str(number))  # the same id in Arabic-Indic digits
    for path in (f"/network/{other}", f"/compute/{SUPERSCRIPT_TWO}", f"/storage/{SUPERSCRIPT_TWO}"):
        for method in ("GET", "DELETE"):
            assert _occi(doors, method, path).status_code == 404, (method, path)
    assert _occi(doors, "GET", f"/network/{number}").status_code == 200  # not deleted by another spelling


@pytest.mark.parametrize(
    "storage, network",
    [
        (f'<DISK image="{SUPERSCRIPT_TWO}"/>', ""),
        (f'<SWAP size="{SUPERSCRIPT_TWO}" dev="vdb"/>', ""),
        ("", f'<NIC network="{SUPERSCRIPT_TWO}"/>'),
        ("", f'<NIC network="{ARABIC_ONE}"/>'),
    ],
)
def test_occi_numbers_in_other_digits_are_400(doors: Doors, storage: str, network: str) -> None:
    answer = _occi(doors, "POST", "/compute", _compute(storage, network))
    assert answer.status_code == 400, answer.text
    assert "must be a number" in answer.text


@pytest.mark.parametrize("size", [SUPERSCRIPT_TWO, ARABIC_ONE * 2])
def test_an_occi_network_size_in_other_digits_is_400(doors: Doors, size: str) -> None:
    body = f"<NIC><NAME>lan</NAME><ADDRESS>10.40.0.0</ADDRESS><SIZE>{size}</SIZE></NIC>"
    answer = _occi(doors, "POST", "/network", body)
    assert answer.status_code == 400, answer.text
    assert "NETWORK_SIZE: expected a number" in answer.text


@pytest.mark.parametrize(
    "storage, network, refusal",
    [
        ('<SWAP size="8" dev="vdb\'/&gt;&lt;source file=\'/etc/shadow"/>', "", "device name"),
        ('<SWAP size="8" dev="vdb&quot;, SOURCE=&quot;/etc/passwd"/>', "", "device name"),
        ('<FS size="8" dev="hd b"/>', "", "device name"),
        ('<SWAP size="8" dev="$NIC[IP]"/>', "", "device name"),
        (f'<SWAP size="{MAX_VOLATILE_MIB + 1}" dev="vdb"/>', "", "at most"),
        (f'<FS size="{MAX_VOLATILE_MIB * 1000}" dev="vdb"/>', "", "at most"),
        ("", '<NIC network="0" ip="10.8.0.7\'/&gt;&lt;x"/>', "IPv4"),
        ("", '<NIC network="0" ip="$NIC[IP]"/>', "IPv4"),
    ],
)
def test_occi_dev_ip_and_sizes_are_what_they_say(
    doors: Doors, storage: str, network: str, refusal: str
) -> None:
    """A ``dev`` that would add XML to 1.4's libvirt deployment file, an ``ip`` that is no
    address, a volatile disk larger than the bound: 400, and no VM is made."""
    answer = _occi(doors, "POST", "/compute", _compute(storage, network))
    assert answer.status_code == 400, answer.text
    assert refusal in answer.text
    assert ET.fromstring(_occi(doors, "GET", "/compute").content).findall("COMPUTE") == []


def test_occi_device_names_and_addresses_still_work(doors: Doors) -> None:
    answer = _occi(
        doors, "POST", "/compute", _compute('<SWAP size="8" dev="vdb"/>', '<NIC network="0" ip="10.8.0.7"/>')
    )
    assert answer.status_code == 201, answer.text
    assert 'dev="vdb"' in answer.text


# --- image bombs ----------------------------------------------------------------------------


def _bomb(work: Path, expanded_mib: int) -> Path:
    """A qcow2 of a few hundred KiB that converts to ``expanded_mib`` MiB (compressed clusters)."""
    raw, bomb = work / "bomb.raw", work / "bomb.qcow2"
    raw.write_bytes(b"A" * (expanded_mib << 20))
    run(["qemu-img", "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", raw, bomb])
    raw.unlink()
    return bomb


@pytest.mark.parametrize("door", ["ec2", "occi"])
def test_an_image_bomb_is_not_kept_past_the_upload_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, door: str
) -> None:
    """Under a 4 MiB ``--max-upload``, a 16 MiB image sent as ~100 KiB is refused (it was kept
    whole), and nothing of it stays; an image that fits is still taken."""
    with open_doors(tmp_path, monkeypatch, max_upload=4 << 20) as doors:
        bomb = _bomb(tmp_path, 16)
        assert bomb.stat().st_size < 1 << 20
        refused = doors.upload(door, "alice", bomb)
        assert refused.status_code == 400, refused.text
        assert "expands past the 4194304 bytes" in refused.text
        assert doors.kept_files() == [] and doors.images(door, "alice") == []
        assert doors.upload(door, "alice", _bomb(tmp_path, 2)).status_code in (200, 201)


@pytest.mark.parametrize("door", ["ec2", "occi"])
def test_an_image_bomb_stops_at_the_storage_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, door: str
) -> None:
    """With 3 MiB of storage left, the conversion stops there: it never wrote the whole 16 MiB
    to find the quota exceeded afterwards."""
    with open_doors(tmp_path, monkeypatch) as doors:
        Quotas(doors.state).set("alice", QuotaChange(storage_bytes=3 << 20))
        refused = doors.upload(door, "alice", _bomb(tmp_path, 16))
        assert refused.status_code == 400, refused.text
        assert "expands past the 3145728 bytes" in refused.text
        assert doors.kept_files() == []


# --- one resource, one spelling ---------------------------------------------------------------


def test_a_tag_is_kept_under_the_id_the_server_writes(doors: Doors) -> None:
    """``ami-000000001`` (nine digits) names image 1 as ``ami-00000001`` does: its tags are the
    image's (shown, counted toward the 50, forgotten with it), not a second set under another
    spelling that outlives the image and escapes the bound."""
    image = doors.tmp / "disk.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", image, "1M"])
    ami = ET.fromstring(doors.ec2_upload("alice", image).content).findtext("{*}imageId") or ""
    other = ami.replace("ami-", "ami-0")
    tagged = doors.ec2_call(
        "alice", "CreateTags", **{"ResourceId.1": other, "Tag.1.Key": "Name", "Tag.1.Value": "x"}
    )
    assert tagged.status_code == 200, tagged.text
    shown = doors.ec2_call("alice", "DescribeTags").text
    assert f"<resourceId>{ami}</resourceId>" in shown and "<key>Name</key>" in shown
    many = {f"Tag.{n}.Key": f"k{n}" for n in range(1, 50)}  # with Name: the 50 an image may have
    assert doors.ec2_call("alice", "CreateTags", **{"ResourceId.1": ami, **many}).status_code == 200
    over = doors.ec2_call("alice", "CreateTags", **{"ResourceId.1": other, "Tag.1.Key": "one-more"})
    assert over.status_code == 400, over.text
    assert doors.ec2_call("alice", "DeregisterImage", ImageId=other).status_code == 200
    with doors.state.read() as db:
        assert db.execute("SELECT COUNT(*) FROM ec2_tags").fetchone()[0] == 0


# --- names that look like the site's ------------------------------------------------------------

LOOKALIKES = [
    "Public\u00a0EC2",  # a no-break space
    "Public  EC2",  # two spaces
    "\uff30\uff55\uff42\uff4c\uff49\uff43 \uff25\uff23\uff12",  # full-width letters
    "Public EC2\u200b",  # a zero-width space
    "Public\u2028EC2",  # a line separator
    "Public\nEC2",
    "\uff17",  # a full-width 7: an id to a reader
]


@pytest.mark.parametrize("name", LOOKALIKES)
def test_a_name_that_reads_as_the_sites_is_refused_at_both_doors(doors: Doors, name: str) -> None:
    """What ``Public EC2`` (or an id) looks like to a reader is refused as it is, at OCCI's
    ``POST /network`` and EC2's ``ImportKeyPair`` and ``RegisterImage``."""
    escaped = name.replace("\n", "&#10;")
    body = f"<NIC><NAME>{escaped}</NAME><ADDRESS>10.40.0.0</ADDRESS></NIC>"
    occi = _occi(doors, "POST", "/network", body)
    assert occi.status_code == 400, occi.text
    openssh = serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    key = base64.b64encode(ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(*openssh))
    imported = doors.ec2_call("alice", "ImportKeyPair", KeyName=name, PublicKeyMaterial=key.decode())
    registered = doors.ec2_call("alice", "RegisterImage", ImageLocation="marketplace:debian-12", Name=name)
    assert (imported.status_code, registered.status_code) == (400, 400), (imported.text, registered.text)
    pool = ET.fromstring(_occi(doors, "GET", "/network").content)
    assert [n.get("href") for n in pool] == ["http://testserver/network/0"]  # the site's alone


def test_names_of_other_scripts_are_still_names(doors: Doors) -> None:
    made = _occi(
        doors, "POST", "/network", "<NIC><NAME>réseau öffentlich</NAME><ADDRESS>10.40.0.0</ADDRESS></NIC>"
    )
    assert made.status_code == 201, made.text


# --- no path of this host in a refusal ----------------------------------------------------------


@pytest.mark.parametrize(
    "message, public",
    [
        ("cannot open file:/srv/cloud/state/state.db", "cannot open file:state.db"),
        (
            "Could not open 'file:///srv/cloud/state/ec2-secrets.key'",
            "Could not open 'file:ec2-secrets.key'",
        ),
        ("nbd:unix:/run/imagekit/vm3.sock: refused", "nbd:unix:vm3.sock: refused"),
        ("http://127.0.0.1:8081/registry/metadata/x: 404", "http://127.0.0.1:8081/registry/metadata/x: 404"),
        ("see http://[::1]:80/a/b", "see http://[::1]:80/a/b"),
    ],
)
def test_a_path_after_a_scheme_is_cut_too(message: str, public: str) -> None:
    """qemu and the marketplace name files as ``file:/x``, ``file:///x`` and ``unix:/x``: those
    are this host's paths as much as ``/x`` (the filter took them for URLs); URLs stay whole."""
    assert public_message(message) == public


# --- values XML cannot carry ----------------------------------------------------------------------


def test_a_value_xml_cannot_carry_is_refused_not_a_failure(doors: Doors) -> None:
    """A NUL or control character in a key name, an id or a tag: lxml refuses such text, so an
    error echoing it was no answer at all (the request failed), and a tag value holding it
    would have broken every later listing of it, the administrator's included."""
    image = doors.tmp / "disk.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", image, "1M"])
    ami = ET.fromstring(doors.ec2_upload("alice", image).content).findtext("{*}imageId") or ""
    refused = [
        doors.ec2_call("alice", "RunInstances", ImageId=ami, MinCount="1", MaxCount="1", KeyName="k\x00"),
        doors.ec2_call("alice", "DescribeKeyPairs", **{"KeyName.1": "\x01"}),
        doors.ec2_call("alice", "DeleteTags", **{"ResourceId.1": "x\x1b[2J"}),
        doors.ec2_call(
            "alice", "CreateTags", **{"ResourceId.1": ami, "Tag.1.Key": "k", "Tag.1.Value": "v\x00"}
        ),
    ]
    assert [r.status_code for r in refused] == [400] * len(refused), [r.text for r in refused]
    assert [error_code(r) for r in refused] == [
        "InvalidKeyPair.NotFound",
        "InvalidKeyPair.NotFound",
        "InvalidID",
        "InvalidParameterValue",
    ]
    for name in ("alice", "root"):
        listed = doors.ec2_call(name, "DescribeTags")
        assert listed.status_code == 200, listed.text


# --- bounds on what a user keeps ------------------------------------------------------------------


def _public_key() -> str:
    openssh = serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    line = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(*openssh)
    return base64.b64encode(line).decode()


def test_key_pairs_are_bounded_per_user(doors: Doors, monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS's 5000 key pairs per user (3 here) and 16 KiB per public key: past them,
    ``KeyPairLimitExceeded`` and ``InvalidParameterValue``; another user keeps their own room."""
    monkeypatch.setattr(keypairs, "MAX_KEY_PAIRS", 3)
    made = [
        doors.ec2_call("alice", "ImportKeyPair", KeyName=f"k{n}", PublicKeyMaterial=_public_key())
        for n in range(4)
    ]
    assert [r.status_code for r in made] == [200, 200, 200, 400]
    assert error_code(made[-1]) == "KeyPairLimitExceeded"
    listed = doors.ec2_call("alice", "DescribeKeyPairs").text
    assert listed.count("<keyName>") == 3
    assert (
        doors.ec2_call("bob", "ImportKeyPair", KeyName="k", PublicKeyMaterial=_public_key()).status_code
        == 200
    )
    huge = base64.b64encode(b"ssh-ed25519 " + base64.b64encode(b"\0\0\0\x0bssh-ed25519" + b"A" * (16 << 10)))
    refused = doors.ec2_call("bob", "ImportKeyPair", KeyName="big", PublicKeyMaterial=huge.decode())
    assert refused.status_code == 400 and "longer than 16384 bytes" in refused.text


def test_a_users_own_networks_are_bounded(doors: Doors, monkeypatch: pytest.MonkeyPatch) -> None:
    """OCCI's ``POST /network`` makes at most MAX_OWN_NETWORKS per user (2 here): 403 past them,
    as a quota; deleting one makes room; an administrator is not bounded."""
    monkeypatch.setattr(tenancy, "MAX_OWN_NETWORKS", 2)

    def network(name: str, who: str = "alice") -> httpx.Response:
        body = f"<NIC><NAME>{name}</NAME><ADDRESS>10.40.0.0</ADDRESS></NIC>"
        response: httpx.Response = doors.occi.post(
            "/network", content=body.encode(), auth=(who, f"{who}-pw")
        )
        return response

    made = [network(f"n{n}") for n in range(3)]
    assert [r.status_code for r in made] == [201, 201, 403], made[-1].text
    assert "at most 2 networks" in made[-1].text
    assert network("b1", "bob").status_code == 201
    first = ET.fromstring(made[0].content).findtext("ID")
    assert _occi(doors, "DELETE", f"/network/{first}").status_code == 204
    assert network("n3").status_code == 201
    assert [network(f"r{n}", "root").status_code for n in range(3)] == [201] * 3


# --- the chain re-checked wherever a transfer driver makes the overlay ---------------------------


def _based(tmp_path: Path, backed: bool) -> Path:
    """A base image; ``backed``: one that grew a backing file (a host file) after it was verified."""
    secret = tmp_path / "host-secret.raw"
    secret.write_bytes(b"secret" * 1024)
    base = tmp_path / ("backed.qcow2" if backed else "base.qcow2")
    if backed:
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", secret, base])
    else:
        run(["qemu-img", "create", "-q", "-f", "qcow2", base, "1M"])
    return base


@pytest.mark.parametrize("driver", ["local", "ssh"])
def test_every_transfer_driver_checks_the_overlays_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, driver: str
) -> None:
    """The pipeline that places VMs on hosts makes overlays through the transfer drivers
    (``cloud/transfer.py``), not ``deploy.py``: each now checks the chain is overlay → the
    verified base (the ssh driver on the host, with ``qemu-img info --backing-chain`` there),
    so a base that reads a host file stops the prolog there too."""
    monkeypatch.chdir(tmp_path)  # the ssh driver's "host" is this machine, its home the cwd
    tm = FrontEndTransfer(tmp_path / "vms") if driver == "local" else SshTransfer(LocalRunner())
    assert tm.clone(1, 0, _based(tmp_path, backed=False), "qcow2").endswith("disk0.qcow2")
    with pytest.raises(NotStandalone, match="backing chain"):
        tm.clone(2, 0, _based(tmp_path, backed=True), "qcow2")


# --- nothing of a deleted user passes to the next ------------------------------------------------


def test_a_deleted_users_image_tags_pass_to_no_one(doors: Doors) -> None:
    """Image ids are handed out again (``MAX(id) + 1``): ``DeregisterImage`` forgets an image's
    tags and quota for that reason, and so must ``user delete --cascade``, or the next user's
    image with the same id shows the deleted user's tags (and counts toward their 50)."""
    image = doors.tmp / "disk.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", image, "1M"])
    ami = ET.fromstring(doors.ec2_upload("alice", image).content).findtext("{*}imageId") or ""
    tag = {"ResourceId.1": ami, "Tag.1.Key": "Name", "Tag.1.Value": "alice-private"}
    assert doors.ec2_call("alice", "CreateTags", **tag).status_code == 200
    delete_user(doors.state, "alice", cascade=True)
    again = ET.fromstring(doors.ec2_upload("bob", image).content).findtext("{*}imageId") or ""
    assert again == ami  # the id is handed out again…
    for call in ("DescribeTags", "DescribeImages"):
        assert "alice-private" not in doors.ec2_call("bob", call).text  # …without alice's tags
    with doors.state.read() as db:
        owners = {r[0] for r in db.execute("SELECT owner FROM cloud_quota_images")}
    assert owners == {"bob"}


# --- a key comment reaches the VM whole ------------------------------------------------------------


def test_a_key_comment_reaches_the_vm_whole_and_one_key_is_one_key(doors: Doors) -> None:
    """OpenSSH comments hold blanks ("alice laptop $UNAME"): the VM gets the line exactly as
    sent (it got only the first word). Material of two lines is refused: the second would be
    another authorised key, taken in silence (it was dropped in silence)."""
    image = doors.tmp / "disk.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", image, "1M"])
    ami = ET.fromstring(doors.ec2_upload("alice", image).content).findtext("{*}imageId") or ""
    line = base64.b64decode(_public_key()).decode() + ' alice  laptop $UNAME $NIC[IP] "x"'
    material = base64.b64encode(line.encode() + b"\n").decode()
    assert (
        doors.ec2_call("alice", "ImportKeyPair", KeyName="k", PublicKeyMaterial=material).status_code == 200
    )
    run_one = doors.ec2_call("alice", "RunInstances", ImageId=ami, MinCount="1", MaxCount="1", KeyName="k")
    vmid = int((ET.fromstring(run_one.content).findtext(".//{*}instanceId") or "")[2:], 16)
    context = stored_context(doors.state, vmid)
    assert context is not None and context["SSH_PUBLIC_KEY"] == context["EC2_PUBLIC_KEY"] == line
    second = base64.b64decode(_public_key()).decode()
    for text in (f"{line}\n{second}\n", f"{line}\r{second}", line.replace("alice", "alice\x1b[2J")):
        answer = doors.ec2_call(
            "alice",
            "ImportKeyPair",
            KeyName="k2",
            PublicKeyMaterial=base64.b64encode(text.encode()).decode(),
        )
        assert answer.status_code == 400, answer.text
