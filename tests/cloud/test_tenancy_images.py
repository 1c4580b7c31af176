"""Issue 17, point 1: an image is data, never a pointer to host files.

A hostile cloud user crafts images that make qemu read a host file: qcow2 with a backing file
(absolute, relative, ``json:{…}`` and protocol names) or an external data file, VMDK
descriptors of several ``createType``s whose extents are ``/etc/passwd``, a sparse VMDK whose
embedded descriptor does the same, QED with a backing file, and a "raw" file shaped like a VMDK
descriptor. Each is refused at both front doors (EC2 ``UploadImage``, OCCI ``POST /storage``)
with a 400 naming no server path, and leaves nothing behind; every image accepted is kept only
as a standalone qcow2 converted with its detected format given (``cloud/standalone.py``).
``RegisterImage`` takes no server path from a cloud user, and the core refuses a cloud user's
DISK on a host file and re-checks every VM disk's chain at deploy.

qemu's own rules these attacks use: ``block/vmdk.c`` (``vmdk_probe`` takes text starting with
``version=N`` after comment lines; ``vmdk_open_vmdk4`` opens a sparse file's embedded
descriptor when its capacity is 0; extents are opened by name, relative to the descriptor),
``block/qcow2.c`` (backing file and ``data-file`` from the header), ``block.c``
(``json:`` pseudo-protocol filenames) — qemu 7.2 as Debian 12 ships it.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloud.deploy import CreateRequest, create_vm
from cloud.model import FILESYSTEM_MAKERS, parse_vm_template
from cloud.standalone import NotStandalone, check_chain, detect_format, make_standalone
from cloud.store import VmStore
from context.template import parse_template
from imagekit.errors import InputError
from imagekit.run import run
from tests.cloud.tenancy import Doors, error_code, error_text, names_no_server_path, open_doors

pytestmark = pytest.mark.timeout(120)

FLAT = b'RW 8 FLAT "/etc/passwd" 0\n'
SECRET = b"HOST SECRET: a file of the server no cloud user uploaded\n" * 64
DOORS = ("ec2", "occi")


@pytest.fixture
def doors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Doors]:
    with open_doors(tmp_path, monkeypatch) as both:
        yield both


def qemu_img(*args: str | Path) -> None:
    run(["qemu-img", *args])


def secret_file(work: Path) -> Path:
    path = work / "host-secret"
    path.write_bytes(SECRET)
    return path


def _descriptor(create_type: str, extent: str) -> bytes:
    return (
        f'# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="{create_type}"\n\n'
        f'# Extent description\n{extent}\n\nddb.adapterType = "ide"\n'
    ).encode()


def _write(work: Path, name: str, data: bytes) -> Path:
    path = work / name
    path.write_bytes(data)
    return path


def _backed(target: str) -> Callable[[Path], Path]:
    def make(work: Path) -> Path:
        path = work / "backed.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b", target, path, "1M")
        return path

    return make


def _data_file(work: Path) -> Path:
    path, data = work / "data-file.qcow2", work / "host-data"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={data},data_file_raw=on", path, "1M")
    data.write_bytes(SECRET)  # the data file is now a host file: the VM would read it as its disk
    return path


def _embedded_descriptor(work: Path) -> Path:
    """A sparse VMDK (KDMV) with capacity 0: qemu then opens its embedded descriptor's extents."""
    path = work / "embedded.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicSparse", path, "1M")
    data = bytearray(path.read_bytes())
    descriptor_sector, sectors = struct.unpack_from("<QQ", data, 28)
    struct.pack_into("<Q", data, 12, 0)
    text = _descriptor("monolithicFlat", 'RW 8 FLAT "/etc/passwd" 0')
    start = descriptor_sector * 512
    data[start : start + sectors * 512] = text.ljust(sectors * 512, b"\0")
    path.write_bytes(bytes(data))
    return path


def _vmdk_with_parent(work: Path) -> Path:
    """A delta VMDK whose parent is a VMDK of the host (parentFileNameHint)."""
    parent, path = work / "host-parent.vmdk", work / "delta.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", parent, "1M")
    qemu_img("create", "-q", "-f", "vmdk", "-F", "vmdk", "-b", parent, path)
    return path


def _qed_backed(work: Path) -> Path:
    path = work / "backed.qed"
    qemu_img("create", "-q", "-f", "qed", "-u", "-F", "raw", "-b", "/etc/passwd", path, "1M")
    return path


HOSTILE: dict[str, Callable[[Path], Path]] = {
    "qcow2-backing-absolute": _backed("/etc/passwd"),
    "qcow2-backing-relative": _backed("../../../../../../../../etc/passwd"),
    "qcow2-backing-json": _backed('json:{"file.filename":"/etc/passwd"}'),
    "qcow2-backing-json-driver": _backed(
        'json:{"driver":"raw","file":{"driver":"file","filename":"/etc/passwd"}}'
    ),
    "qcow2-backing-protocol": _backed("nbd://127.0.0.1:10809/export"),
    "qcow2-data-file": _data_file,
    "vmdk-monolithicFlat": lambda w: _write(
        w, "flat.vmdk", _descriptor("monolithicFlat", 'RW 8 FLAT "/etc/passwd" 0')
    ),
    "vmdk-monolithicFlat-relative": lambda w: _write(
        w, "rel.vmdk", _descriptor("monolithicFlat", 'RW 8 FLAT "../../../../../../etc/passwd" 0')
    ),
    "vmdk-twoGbMaxExtentFlat": lambda w: _write(
        w, "two.vmdk", _descriptor("twoGbMaxExtentFlat", 'RW 8 FLAT "/etc/passwd" 0')
    ),
    "vmdk-vmfs": lambda w: _write(w, "vmfs.vmdk", _descriptor("vmfs", 'RW 8 VMFS "/etc/passwd"')),
    "vmdk-embedded-descriptor": _embedded_descriptor,
    "vmdk-parent": _vmdk_with_parent,
    "raw-shaped-like-a-descriptor": lambda w: _write(
        w, "disk.img", b'version=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n' + FLAT
    ),
    "raw-descriptor-crlf-indented": lambda w: _write(
        w,
        "disk.raw",
        b'# x\r\n   \r\nversion=1\r\nCID=fffffffe\r\nparentCID=ffffffff\r\ncreateType="monolithicFlat"\r\n'
        + FLAT,
    ),
    "qed-backing": _qed_backed,
}


def test_each_hostile_image_really_reads_a_host_file(tmp_path: Path) -> None:
    """The attacks are real: qemu, left to itself, reads the host file through each (the ones
    qemu can open without the file in place: a descriptor is guessed as VMDK from its bytes)."""
    secret = secret_file(tmp_path)
    for name in (
        "vmdk-monolithicFlat",
        "vmdk-embedded-descriptor",
        "raw-shaped-like-a-descriptor",
        "raw-descriptor-crlf-indented",
    ):
        image = HOSTILE[name](tmp_path)
        out = tmp_path / f"{name}.out"
        run(["qemu-img", "convert", "-O", "raw", image, out])  # no -f: qemu guesses
        assert out.read_bytes()[:4096].startswith(Path("/etc/passwd").read_bytes()[:16]), name
    backed = _backed(str(secret))(tmp_path)
    out = tmp_path / "backed.out"
    run(["qemu-img", "convert", "-O", "raw", backed, out])
    assert out.read_bytes().startswith(SECRET[:64])


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("attack", sorted(HOSTILE))
def test_a_hostile_upload_is_refused_and_leaves_nothing(doors: Doors, door: str, attack: str) -> None:
    image = HOSTILE[attack](doors.tmp)
    response = doors.upload(door, "alice", image)
    assert response.status_code == 400, response.text
    message = error_text(response)
    assert any(w in message for w in ("refers to another file", "refused")), message
    assert names_no_server_path(message, doors.tmp, doors.state.root)
    assert doors.kept_files() == []
    assert doors.images(door, "alice") == []


def _pattern(size: int = 3 << 20) -> bytes:
    return bytes((n * 7 + n // 4096) % 251 for n in range(size))


def _as_raw(path: Path, fmt: str, work: Path) -> bytes:
    out = work / "read-back.raw"
    run(["qemu-img", "convert", "-f", fmt, "-O", "raw", path, out])
    return out.read_bytes()


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("fmt", ["raw", "qcow2", "vmdk", "vdi", "vhdx", "vpc"])
def test_every_upload_is_kept_only_as_a_standalone_qcow2(doors: Doors, door: str, fmt: str) -> None:
    data = _pattern()
    raw = doors.tmp / "source.raw"
    raw.write_bytes(data)
    image = doors.tmp / f"disk.{fmt}"
    run(["qemu-img", "convert", "-f", "raw", "-O", fmt, raw, image])
    response = doors.upload(door, "alice", image)
    assert response.status_code in (200, 201), response.text
    [kept] = doors.kept_files()
    assert kept.suffix == ".qcow2" and detect_format(kept) == "qcow2"
    info = json.loads(subprocess.check_output(["qemu-img", "info", "--output=json", "-f", "qcow2", kept]))
    assert "backing-filename" not in info and "data-file" not in json.dumps(info)
    disk = _as_raw(kept, "qcow2", doors.tmp)
    assert disk[: len(data)] == data and not disk[len(data) :].strip(b"\0")  # vpc rounds the size up


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"QFI\xfb\x00\x00\x00\x03", "qcow2"),
        (b"QFI\xfb\x00\x00\x00\x01", "qcow"),
        (b"QED\x00", "qed"),
        (b"KDMV", "vmdk"),
        (b"COWD", "vmdk-vmfs-sparse"),
        (b"# Disk DescriptorFile\nversion=1\n", "vmdk-descriptor"),
        (b"\n\n  version=3\n", "vmdk-descriptor"),
        (b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0\n", "raw"),  # cloop: qemu may guess, we read raw
        (b"Bochs Virtual HD Image\0", "raw"),
        (b"\0" * 4096, "raw"),
        (b"version=1", "vmdk-descriptor"),
        (b"xversion=1\n", "raw"),
    ],
)
def test_the_format_comes_from_the_bytes(tmp_path: Path, head: bytes, expected: str) -> None:
    path = tmp_path / "image"
    path.write_bytes(head + b"\0" * 1024)
    assert detect_format(path) == expected


def test_uploads_are_each_users_own(doors: Doors) -> None:
    """bob sees none of alice's uploads and cannot register their id."""
    image = doors.tmp / "mine.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", image, "1M")
    for door in DOORS:
        assert doors.upload(door, "alice", image).status_code in (200, 201)
        assert doors.images(door, "bob") == []
    [ami] = doors.images("ec2", "alice")
    response = doors.ec2_call("bob", "RegisterImage", ImageLocation=ami)
    assert (response.status_code, error_code(response)) == (400, "InvalidAMIID.NotFound")


# --- RegisterImage ---------------------------------------------------------------------------


def _server_paths(doors: Doors) -> list[str]:
    own = doors.tmp / "own.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", own, "1M")
    assert doors.ec2_upload("alice", own).status_code == 200
    [kept] = doors.kept_files()
    site = doors.site_dir / "site.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", site, "1M")
    return [
        "/etc/passwd",
        str(doors.state.root / "ec2-secrets.key"),
        str(doors.state.root / "state.db"),
        str(kept),  # even the user's own upload: by its ami- id, never by server path
        str(site),  # a site image: only an administrator registers one
        "../../etc/passwd",
        "~root/.ssh/id_rsa",
        "file:///etc/passwd",
        "marketplace:file:///etc/passwd",
        "/etc/passwd\0.qcow2",
    ]


def test_register_image_takes_no_server_path_from_a_cloud_user(doors: Doors) -> None:
    locations = _server_paths(doors)
    before = doors.images("ec2", "alice")
    for location in locations:
        response = doors.ec2_call("alice", "RegisterImage", ImageLocation=location, Name="x")
        assert response.status_code == 400, (location, response.text)
        assert error_code(response) in ("InvalidParameterValue", "InvalidAMIID.Malformed"), location
        assert names_no_server_path(error_text(response), doors.tmp, doors.state.root), location
    assert doors.images("ec2", "alice") == before


def test_an_administrator_registers_site_images_from_the_site_directories_only(doors: Doors) -> None:
    site = doors.site_dir / "site.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", site, "1M")
    (doors.site_dir / "escape.qcow2").symlink_to("/etc/passwd")
    ok = doors.ec2_call("root", "RegisterImage", ImageLocation=str(site), Name="site")
    assert ok.status_code == 200, ok.text
    for location in (
        "/etc/passwd",
        str(doors.site_dir / "escape.qcow2"),  # a link out of the directory
        str(doors.site_dir / ".." / "state" / "ec2-secrets.key"),
        str(doors.site_dir),
        "site.qcow2",  # relative
    ):
        response = doors.ec2_call("root", "RegisterImage", ImageLocation=location)
        assert response.status_code == 400, location
    assert len(doors.images("ec2", "root")) == 1


def test_marketplace_references_are_registered(doors: Doors) -> None:
    for location in ("marketplace:debian-12", "marketplace:LMJb8TGsMqgpEb0WC4DG8yM7lin"):
        response = doors.ec2_call("alice", "RegisterImage", ImageLocation=location)
        assert response.status_code == 200, response.text
    for location in ("marketplace:", "marketplace:two words", "marketplace:" + "x" * 300):
        response = doors.ec2_call("alice", "RegisterImage", ImageLocation=location)
        assert response.status_code == 400, location
    assert len(doors.images("ec2", "alice")) == 2


def test_a_host_path_in_the_catalogue_is_refused_at_run(doors: Doors) -> None:
    """An image row on a host path (registered before this rule, or by any later door) never
    becomes a cloud user's disk: the core refuses it, reserving nothing."""
    outside = doors.tmp / "outside.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", outside, "1M")
    bobs = doors.tmp / "bobs.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", bobs, "1M")
    assert doors.ec2_upload("bob", bobs).status_code == 200
    [bob_upload] = doors.kept_files()
    with doors.state.transaction() as db:
        for n, location in enumerate((str(outside), str(bob_upload), "/etc/passwd"), 10):
            db.execute(
                "INSERT INTO ec2_images (id, owner, owner_id, name, location, created)"
                " VALUES (?, 'alice', (SELECT id FROM cloud_users WHERE name = 'alice'), 'x', ?, '')",
                (n, location),
            )
    for n in (10, 11, 12):
        response = doors.ec2_call(
            "alice", "RunInstances", ImageId=f"ami-{n:08x}", MinCount="1", MaxCount="1"
        )
        assert response.status_code == 400, response.text
        assert names_no_server_path(error_text(response), doors.tmp, doors.state.root)
    assert VmStore(doors.state).list() == []


def test_a_cloud_users_uploaded_image_runs(doors: Doors) -> None:
    image = doors.tmp / "mine.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", image, "16M")
    assert doors.ec2_upload("alice", image).status_code == 200
    [ami] = doors.images("ec2", "alice")
    response = doors.ec2_call("alice", "RunInstances", ImageId=ami, MinCount="1", MaxCount="1")
    assert response.status_code == 200, response.text
    [record] = VmStore(doors.state).list()
    assert record.owner == "alice"


# --- the core: a cloud user's DISK, and every VM's disk chain ---------------------------------


def _template(work: Path, disk: str) -> Path:
    path = work / "vm.one"
    path.write_text(f'NAME = "t"\nMEMORY = 64\n{disk}\n')
    return path


def test_a_cloud_users_template_names_no_host_file(doors: Doors) -> None:
    """With ``confine`` (a front door's VM), a DISK on a file outside the user's directory is
    refused however it is named: SOURCE, a symlink, a build manifest, an image template."""
    mine = doors.tmp / "mine"
    mine.mkdir()
    outside = doors.tmp / "outside.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", outside, "1M")
    (mine / "link.qcow2").symlink_to(outside)
    (doors.tmp / "b.manifest.json").write_text(json.dumps({"outputs": [{"file": "outside.qcow2"}]}))
    image_template = doors.tmp / "image.one"
    image_template.write_text(f'ID = 7\nNAME = "img"\nPATH = "{outside}"\n')
    disks = [
        f'DISK = [ SOURCE = "{outside}" ]',
        'DISK = [ SOURCE = "/etc/passwd" ]',
        f'DISK = [ SOURCE = "{mine / "link.qcow2"}" ]',
        f'DISK = [ SOURCE = "{mine / ".." / "outside.qcow2"}" ]',
        f'DISK = [ SOURCE = "{doors.tmp / "b.manifest.json"}" ]',
        "DISK = [ IMAGE_ID = 7 ]",
        f'DISK = [ TYPE = "cdrom", SOURCE = "{outside}" ]',
    ]
    for disk in disks:
        request = CreateRequest.from_file(
            _template(doors.tmp, disk),
            hold=True,
            owner="alice",
            confine=(mine,),
            image_templates=(image_template,),
        )
        with pytest.raises(NotStandalone) as refused:
            create_vm(request, state=doors.state)
        assert names_no_server_path(str(refused.value), doors.tmp), disk
    assert VmStore(doors.state).list() == []
    good = mine / "good.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", good, "1M")
    request = CreateRequest.from_file(
        _template(doors.tmp, f'DISK = [ SOURCE = "{good}" ]'), hold=True, confine=(mine,)
    )
    assert create_vm(request, state=doors.state).owner


def test_a_hostile_file_in_the_users_directory_is_refused_at_deploy(doors: Doors) -> None:
    """What got into the directory some other way (an older server kept uploads as they came)
    is probed again: a backing file or a descriptor stops the VM."""
    mine = doors.tmp / "mine"
    mine.mkdir()
    for attack in ("qcow2-backing-absolute", "vmdk-monolithicFlat", "qcow2-data-file"):
        image = HOSTILE[attack](mine)
        template = _template(doors.tmp, f'DISK = [ SOURCE = "{image}" ]')
        with pytest.raises(NotStandalone):
            create_vm(CreateRequest.from_file(template, hold=True, confine=(mine,)), state=doors.state)
    assert VmStore(doors.state).list() == []


def test_the_disk_chain_is_overlay_then_the_verified_base(tmp_path: Path) -> None:
    base, other = tmp_path / "base.qcow2", tmp_path / "other.qcow2"
    for path in (base, other):
        qemu_img("create", "-q", "-f", "qcow2", path, "1M")
    overlay = tmp_path / "overlay.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, overlay)
    check_chain(overlay, base)
    with pytest.raises(NotStandalone, match="does not end at the verified base"):
        check_chain(overlay, other)
    # The base grows a backing file after it was verified: the chain is longer than two.
    qemu_img("rebase", "-u", "-f", "qcow2", "-F", "raw", "-b", str(secret_file(tmp_path)), base)
    with pytest.raises(NotStandalone, match="not exactly its overlay and the verified base"):
        check_chain(overlay, base)
    # A base with an external data file.
    data_base = _data_file(tmp_path)
    qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", data_base, overlay)
    with pytest.raises(NotStandalone, match="reads files other than the verified base"):
        check_chain(overlay, data_base)


def test_create_vm_stops_at_a_base_with_a_backing_file(tmp_path: Path, doors: Doors) -> None:
    """Even an operator's ``vm create``: a base that reads another file never boots."""
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b", str(secret_file(tmp_path)), base, "1M")
    with pytest.raises(NotStandalone):
        create_vm(
            CreateRequest.from_file(_template(tmp_path, f'DISK = [ SOURCE = "{base}" ]'), hold=True),
            state=doors.state,
        )
    [record] = VmStore(doors.state).list()
    assert record.state.value == "failed"


# --- point 10: the program that formats an fs disk -------------------------------------------


@pytest.mark.parametrize(
    "fmt", ["ext4 -E root_owner=0:0", "../../../bin/sh", "ext4;reboot", "$(id)", "btrfs", "EXT4 ", "swap2"]
)
def test_an_fs_format_outside_the_allow_list_is_refused(fmt: str) -> None:
    text = f'NAME = "t"\nMEMORY = 64\nDISK = [ TYPE = "fs", SIZE = 8, FORMAT = "{fmt}" ]\n'
    with pytest.raises(InputError, match="an fs disk is one of"):
        parse_vm_template(parse_template(text, "t.one"))


def test_occi_refuses_an_fs_format_outside_the_allow_list(doors: Doors) -> None:
    auth = ("alice", "alice-pw")
    for fmt in ("../../tmp/evil", "ext4 -q", "vfat; id"):
        body = (
            "<COMPUTE><NAME>x</NAME><INSTANCE_TYPE>small</INSTANCE_TYPE>"
            f'<STORAGE><FS size="8" format="{fmt}" dev="vdb"/></STORAGE></COMPUTE>'
        )
        response = doors.occi.post("/compute", content=body, auth=auth)
        assert response.status_code == 400 and "one of ext2" in response.text, response.text
    assert VmStore(doors.state).list() == []


@pytest.mark.parametrize(("fs", "magic"), [("ext2", (1080, b"\x53\xef")), ("vfat", (54, b"FAT1"))])
def test_fs_disks_are_made_by_the_listed_program(
    tmp_path: Path, doors: Doors, fs: str, magic: tuple[int, bytes]
) -> None:
    assert fs in FILESYSTEM_MAKERS
    template = _template(tmp_path, f'DISK = [ TYPE = "fs", SIZE = 40, FORMAT = "{fs}" ]')
    record = create_vm(CreateRequest.from_file(template, hold=True), state=doors.state)
    offset, expected = magic
    with open(record.directory / "disk0.raw", "rb") as disk:
        disk.seek(offset)
        assert disk.read(len(expected)) == expected


def test_an_uploaded_cd_is_attached_in_the_format_it_is_kept_in(doors: Doors) -> None:
    """Uploads are kept as qcow2, a CD included: QEMU is told so (never format=raw over a qcow2,
    never a guess)."""
    mine = doors.tmp / "mine"
    mine.mkdir()
    iso = doors.tmp / "cd.iso"
    iso.write_bytes(_pattern(1 << 20))
    kept = make_standalone(iso, mine / "cd.qcow2")
    template = _template(doors.tmp, f'DISK = [ TYPE = "cdrom", SOURCE = "{kept}" ]')
    record = create_vm(CreateRequest.from_file(template, hold=True, confine=(mine,)), state=doors.state)
    drives = [a for a in record.info["argv"] if "media=cdrom" in a]
    assert drives == [f"file={kept},format=qcow2,if=none,id=cd0,media=cdrom,readonly=on"]


@pytest.mark.parametrize(
    ("attack", "what"),
    [
        ("qcow2-data-file", "an external data file"),
        ("qcow2-backing-absolute", "a backing file"),
        ("vmdk-embedded-descriptor", "extents in other files"),
    ],
)
def test_the_header_is_read_before_qemu_opens_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, attack: str, what: str
) -> None:
    """qemu opens a qcow2's data file and a sparse VMDK's extents to probe them: a FIFO named
    there would hang the probe. The header refuses them first; qemu-img is never run."""
    from cloud import standalone

    image = HOSTILE[attack](tmp_path)
    if attack == "qcow2-data-file":
        (tmp_path / "host-data").unlink()
        os.mkfifo(tmp_path / "host-data")

    def no_qemu(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"qemu-img ran: {args}")

    monkeypatch.setattr(standalone, "run", no_qemu)
    with pytest.raises(NotStandalone, match=what):
        standalone.check_standalone(image, detect_format(image))
