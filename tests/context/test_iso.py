"""Context ISOs: read back by pycdlib, isoinfo, xorriso, blkid and cloud-init's three readers."""

from __future__ import annotations

import io
import os
import subprocess
import time
from pathlib import Path
from unittest import mock

import pycdlib
import pycdlib.dr
import pytest
import yaml
from cloudinit import helpers
from cloudinit.net.network_state import parse_net_config_data
from cloudinit.sources import DataSourceConfigDrive, DataSourceNoCloud
from cloudinit.sources import DataSourceOpenNebula as ds
from cloudinit.sources.helpers import openstack
from hypothesis import given, settings
from hypothesis import strategies as st

from context.contextsh import parse_context_sh
from context.iso import (
    DIR_MODE,
    FILE_MODE,
    IsoEntry,
    IsoFlavor,
    build_iso,
    master,
    opennebula_entries,
)
from context.isolayout import sectors
from context.model import Lease, ResolvedContext
from imagekit.atomic import write_atomically
from imagekit.errors import InputError

MAC0, MAC1 = "02:00:0a:00:00:05", "02:00:c0:a8:01:0a"
VARIABLES = {
    "HOSTNAME": "web-7",
    "NETWORK": "YES",
    "ETH0_IP": "10.0.0.5",
    "ETH0_MAC": MAC0,
    "ETH0_MASK": "255.255.255.0",
    "ETH0_GATEWAY": "10.0.0.1",
    "ETH0_DNS": "10.0.0.2 8.8.8.8",
    "ETH0_SEARCH_DOMAIN": "example.org",
    "ETH0_MTU": "1400",
    "ETH1_IP": "192.168.1.10",
    "ETH1_MAC": MAC1,
    "ETH1_MASK": "255.255.0.0",
    "ETH1_GATEWAY": "",
    "SSH_PUBLIC_KEY": "ssh-ed25519 AAAAC3Nza first@host\n# a comment\n\nssh-rsa AAAAB3Nza second@host",
    "QUOTED": 'it\'s "$(odd)"\n`x`\n',
    "TARGET": "hdb",
}


def _ctx(files: tuple[Path, ...] = (), **extra: str) -> ResolvedContext:
    leases = (Lease(0, "public", "10.0.0.5", MAC0, 7), Lease(1, "private", "192.168.1.10", MAC1, 7))
    return ResolvedContext(7, {**VARIABLES, **extra}, files=files, leases=leases)


def _extract(data: bytes, dest: Path) -> dict[str, int]:
    """Copy every file of the ISO (by Rock Ridge name) under ``dest``; return path → RR mode."""
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    modes: dict[str, int] = {}
    try:
        for root, dirs, files in iso.walk(rr_path="/"):
            for name in dirs + files:
                rr_path = f"{root.rstrip('/')}/{name}"
                record = iso.get_record(rr_path=rr_path)
                assert isinstance(record, pycdlib.dr.DirectoryRecord) and record.rock_ridge is not None
                modes[rr_path] = record.rock_ridge.get_file_mode()
                target = dest / rr_path.lstrip("/")
                if name in dirs:
                    target.mkdir(parents=True, exist_ok=True)
                else:
                    out = io.BytesIO()
                    iso.get_file_from_iso_fp(out, rr_path=rr_path)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(out.getvalue())
    finally:
        iso.close()
    return modes


def _tool(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, check=True, text=True).stdout


@pytest.fixture
def payload(tmp_path: Path) -> tuple[Path, ...]:
    src = tmp_path / "src"
    (src / "conf" / "sub").mkdir(parents=True)
    (src / "init.sh").write_text("#!/bin/sh\necho init\n")
    (src / "id_dsa.pub").write_text("ssh-dss AAAA user@host\n")
    (src / "conf" / "app.conf").write_text("key = value\n")
    (src / "conf" / "sub" / "Deep File.TXT").write_bytes(b"\x00\x01binary")
    os.chmod(src / "init.sh", 0o700)  # host modes must not leak onto the ISO
    return (src / "init.sh", src / "id_dsa.pub", src / "conf")


def test_opennebula_iso(tmp_path: Path, payload: tuple[Path, ...]) -> None:
    data = build_iso(_ctx(payload), IsoFlavor.OPENNEBULA)
    modes = _extract(data, tmp_path / "out")
    assert modes == {
        "/context.sh": 0o100444,
        "/init.sh": 0o100555,
        "/id_dsa.pub": 0o100444,
        "/conf": 0o040555,
        "/conf/app.conf": 0o100444,
        "/conf/sub": 0o040555,
        "/conf/sub/Deep File.TXT": 0o100444,
    }
    out = tmp_path / "out"
    assert parse_context_sh((out / "context.sh").read_bytes().decode()) == _ctx().variables
    assert (out / "conf" / "sub" / "Deep File.TXT").read_bytes() == b"\x00\x01binary"
    assert (out / "init.sh").read_text() == "#!/bin/sh\necho init\n"

    iso_path = tmp_path / "context.iso"
    write_atomically(iso_path, data)
    info = _tool(["isoinfo", "-d", "-i", str(iso_path)])
    assert "Volume id: CONTEXT" in info
    assert "Joliet with UCS level 3 found" in info
    assert "Rock Ridge signatures version 1 found" in info
    rr_listing = _tool(["isoinfo", "-R", "-l", "-i", str(iso_path)])
    assert any(
        line.startswith("-r-xr-xr-x") and line.endswith(" init.sh ") for line in rr_listing.splitlines()
    )
    assert any(
        line.startswith("-r--r--r--") and line.endswith(" context.sh ") for line in rr_listing.splitlines()
    )
    joliet = _tool(["isoinfo", "-J", "-f", "-i", str(iso_path)]).split()
    assert set(joliet) >= {"/context.sh", "/init.sh", "/conf/app.conf"}
    # stdio: a file, wherever it is (xorriso takes a path under /dev/, as /dev/shm, for a drive).
    found = _tool(["xorriso", "-indev", f"stdio:{iso_path}", "-find", "/", "-type", "f"])
    assert "'/conf/sub/Deep File.TXT'" in found
    blkid = _tool(["blkid", "-p", "-o", "export", str(iso_path)]).splitlines()
    assert "LABEL=CONTEXT" in blkid and "TYPE=iso9660" in blkid


def test_cloud_init_reads_opennebula_iso(tmp_path: Path) -> None:
    _extract(build_iso(_ctx(), IsoFlavor.OPENNEBULA), tmp_path)
    with mock.patch.object(ds, "get_physical_nics_by_mac", return_value={MAC0: "ens3", MAC1: "ens4"}):
        result = ds.read_context_disk_dir(str(tmp_path), mock.Mock(), asuser=None)
    assert result["metadata"]["QUOTED"] == VARIABLES["QUOTED"]
    assert result["metadata"]["local-hostname"] == "web-7"
    assert result["metadata"]["public-keys"] == [
        "ssh-ed25519 AAAAC3Nza first@host",
        "ssh-rsa AAAAB3Nza second@host",
    ]
    ens3 = result["network-interfaces"]["ethernets"]["ens3"]
    assert ens3["addresses"] == ["10.0.0.5/24"]
    assert ens3["gateway4"] == "10.0.0.1"


def test_same_input_same_bytes(payload: tuple[Path, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    entries = opennebula_entries(_ctx(payload))
    first = master(entries, "CONTEXT", reuse=False)  # laid out by pycdlib, not refilled
    # A clock a year and a second on, which any unpinned timestamp would show.
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 366 * 86400 + 1)
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        assert master(entries, "CONTEXT", reuse=False) == first
        assert build_iso(_ctx(payload), IsoFlavor.OPENNEBULA) == first
    finally:
        monkeypatch.undo()
        time.tzset()
    assert b"2010010100000000" in first  # the pinned volume dates
    assert build_iso(_ctx(payload, EXTRA="1"), IsoFlavor.OPENNEBULA) != first


def test_name_collision_is_an_error(tmp_path: Path, payload: tuple[Path, ...]) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "init.sh").write_text("echo other\n")
    with pytest.raises(InputError, match=r"would both be 'init.sh' on the ISO"):
        build_iso(_ctx((*payload, other / "init.sh")), IsoFlavor.OPENNEBULA)
    (other / "context.sh").write_text("X=1\n")
    with pytest.raises(InputError, match=r"would both be 'context.sh'"):
        build_iso(_ctx((other / "context.sh",)), IsoFlavor.OPENNEBULA)


def test_similar_names_get_distinct_iso9660_names(tmp_path: Path) -> None:
    names = ["a-b.txt", "a_b.txt", "A-B.TXT", "x" * 40 + ".conf", "x" * 40 + ".CONF"]
    for name in names:
        (tmp_path / name).write_text(name)
    data = build_iso(_ctx(tuple(tmp_path / n for n in names)), IsoFlavor.OPENNEBULA)
    _extract(data, tmp_path / "out")
    for name in names:
        assert (tmp_path / "out" / name).read_text() == name


def test_restricted_dirs(tmp_path: Path) -> None:
    with pytest.raises(
        InputError, match=r"CONTEXT.FILES: /etc/hostname: refused, .* restricted directory /etc$"
    ):
        build_iso(_ctx((Path("/etc/hostname"),)), IsoFlavor.OPENNEBULA)
    sneaky = tmp_path / "dir"
    sneaky.mkdir()
    (sneaky / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(InputError, match=r"passwd \(→ /etc/passwd\): refused"):
        build_iso(_ctx((sneaky,)), IsoFlavor.OPENNEBULA)
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key").write_text("k")
    with pytest.raises(InputError, match="restricted directory"):
        build_iso(_ctx((secret / "key",)), IsoFlavor.OPENNEBULA, restricted_dirs=[secret])
    allowed = build_iso(
        _ctx((secret / "key",)), IsoFlavor.OPENNEBULA, restricted_dirs=[tmp_path], safe_dirs=[secret]
    )
    assert b"k" in allowed


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"CONTEXT.FILES: .*/missing: No such file or directory"):
        build_iso(_ctx((tmp_path / "missing",)), IsoFlavor.OPENNEBULA)
    loop = tmp_path / "loop"
    loop.mkdir()
    (loop / "self").symlink_to(loop)
    with pytest.raises(InputError, match="symlink loop"):
        build_iso(_ctx((loop,)), IsoFlavor.OPENNEBULA)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(InputError, match="not a regular file or directory"):
        build_iso(_ctx((tmp_path / "fifo",)), IsoFlavor.OPENNEBULA)
    long_name = tmp_path / ("n" * 65)
    long_name.write_text("x")
    with pytest.raises(InputError, match="at most 64 characters"):
        build_iso(_ctx((long_name,)), IsoFlavor.OPENNEBULA)


def test_init_scripts_modes(tmp_path: Path) -> None:
    for name in ("init.sh", "setup.sh", "other.sh"):
        (tmp_path / name).write_text("true\n")
    files = tuple(tmp_path / n for n in ("init.sh", "setup.sh", "other.sh"))
    modes = _extract(
        build_iso(_ctx(files, INIT_SCRIPTS="setup.sh other.sh"), IsoFlavor.OPENNEBULA), tmp_path / "o"
    )
    assert (modes["/init.sh"], modes["/setup.sh"], modes["/other.sh"]) == (0o100444, 0o100555, 0o100555)


def test_nocloud_iso(tmp_path: Path) -> None:
    data = build_iso(_ctx(), IsoFlavor.NOCLOUD)
    iso_path = tmp_path / "seed.iso"
    write_atomically(iso_path, data)
    blkid = _tool(["blkid", "-p", "-o", "export", str(iso_path)]).splitlines()
    assert "LABEL=cidata" in blkid and "TYPE=iso9660" in blkid
    seed = tmp_path / "cloud" / "seed"  # where cloudinit.helpers.Paths looks for seeds
    _extract(data, seed / "nocloud")
    files = DataSourceNoCloud.util.pathprefix2dict(
        str(seed / "nocloud"),
        required=["user-data", "meta-data"],
        optional=["vendor-data", "network-config"],
    )
    assert yaml.safe_load(files["meta-data"]) == {"instance-id": "one-7", "local-hostname": "web-7"}
    user = files["user-data"].decode()
    assert user.startswith("#cloud-config\n")
    assert yaml.safe_load(user)["ssh_authorized_keys"] == [
        "ssh-ed25519 AAAAC3Nza first@host",
        "ssh-rsa AAAAB3Nza second@host",
    ]
    # The datasource itself, on a seed directory (device probing switched off).
    paths = helpers.Paths({"cloud_dir": str(tmp_path / "cloud")})
    source = DataSourceNoCloud.DataSourceNoCloud(
        {"datasource": {"NoCloud": {"fs_label": None}}}, None, paths
    )
    assert source._get_data()
    assert source.metadata["instance-id"] == "one-7"
    assert source.metadata["local-hostname"] == "web-7"
    netcfg = source.network_config
    assert netcfg["ethernets"]["eth0"]["match"] == {"macaddress": MAC0}
    assert netcfg["ethernets"]["eth1"]["addresses"] == ["192.168.1.10/16"]
    state = parse_net_config_data(netcfg)
    by_mac = {i["mac_address"]: i for i in state.iter_interfaces()}
    assert by_mac[MAC0]["mtu"] == 1400
    subnet = by_mac[MAC0]["subnets"][0]
    assert (subnet["address"], subnet["prefix"], subnet["gateway"]) == ("10.0.0.5", 24, "10.0.0.1")
    assert (subnet["dns_nameservers"], subnet["dns_search"]) == (["10.0.0.2", "8.8.8.8"], ["example.org"])
    assert (by_mac[MAC1]["subnets"][0]["netmask"], "gateway" in by_mac[MAC1]["subnets"][0]) == (
        "255.255.0.0",
        False,
    )


def test_nocloud_user_data(tmp_path: Path) -> None:
    raw = build_iso(_ctx(USER_DATA="#!/bin/sh\necho hi\n"), IsoFlavor.NOCLOUD)
    _extract(raw, tmp_path / "a")
    assert (tmp_path / "a" / "user-data").read_text() == "#!/bin/sh\necho hi\n"
    b64 = build_iso(_ctx(USERDATA="I2Nsb3VkLWNvbmZpZwp7fQo=", USERDATA_ENCODING="base64"), IsoFlavor.NOCLOUD)
    _extract(b64, tmp_path / "b")
    assert (tmp_path / "b" / "user-data").read_text() == "#cloud-config\n{}\n"
    with pytest.raises(InputError, match=r"CONTEXT.USER_DATA: USERDATA_ENCODING is base64 but"):
        build_iso(_ctx(USER_DATA="not base64!", USER_DATA_ENCODING="base64"), IsoFlavor.NOCLOUD)


def test_leases_without_eth_variables(tmp_path: Path) -> None:
    ctx = ResolvedContext(3, {"SET_HOSTNAME": "h"}, leases=(Lease(0, "n", "10.0.0.9", MAC0, 3),))
    _extract(build_iso(ctx, IsoFlavor.NOCLOUD), tmp_path)
    cfg = yaml.safe_load((tmp_path / "network-config").read_text())
    assert cfg == {
        "version": 2,
        "ethernets": {
            "eth0": {"match": {"macaddress": MAC0}, "set-name": "eth0", "addresses": ["10.0.0.9/24"]}
        },
    }


def test_configdrive_iso(tmp_path: Path) -> None:
    data = build_iso(_ctx(USER_DATA="#cloud-config\nruncmd: [true]\n"), IsoFlavor.CONFIGDRIVE)
    iso_path = tmp_path / "cd.iso"
    write_atomically(iso_path, data)
    blkid = _tool(["blkid", "-p", "-o", "export", str(iso_path)]).splitlines()
    assert "LABEL=config-2" in blkid and "TYPE=iso9660" in blkid
    _extract(data, tmp_path / "cd")
    result = DataSourceConfigDrive.read_config_drive(str(tmp_path / "cd"))
    meta = result["metadata"]
    assert meta["hostname"] == "web-7"
    assert meta["uuid"] == build_iso_uuid(tmp_path)
    assert sorted(meta["public_keys"].values()) == [
        "ssh-ed25519 AAAAC3Nza first@host",
        "ssh-rsa AAAAB3Nza second@host",
    ]
    assert result["userdata"] == b"#cloud-config\nruncmd: [true]\n"
    net = openstack.convert_net_json(result["networkdata"], known_macs={MAC0: "ens3", MAC1: "ens4"})
    physical = {c["name"]: c for c in net["config"] if c["type"] == "physical"}
    assert physical["ens3"]["mac_address"] == MAC0 and physical["ens3"]["mtu"] == 1400
    assert physical["ens3"]["subnets"][0]["address"] == "10.0.0.5"
    assert physical["ens3"]["subnets"][0]["routes"][0]["gateway"] == "10.0.0.1"
    assert physical["ens4"]["subnets"][0]["netmask"] == "255.255.0.0"
    assert [c["address"] for c in net["config"] if c["type"] == "nameserver"] == ["10.0.0.2", "8.8.8.8"]
    parse_net_config_data(net)  # a valid v1 config for cloud-init's renderers


def build_iso_uuid(tmp_path: Path) -> str:
    """The uuid is stable for a VM: a second build (another dir) gives the same one."""
    _extract(build_iso(_ctx(), IsoFlavor.CONFIGDRIVE), tmp_path / "again")
    return str(
        yaml.safe_load((tmp_path / "again" / "openstack" / "latest" / "meta_data.json").read_text())["uuid"]
    )


def test_write_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "out.iso"

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(InputError, match=r"out.iso: cannot write: No space left on device"):
        write_atomically(dest, b"x" * 10000)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    with pytest.raises(InputError, match="cannot write"):
        write_atomically(tmp_path / "no" / "such" / "dir.iso", b"x")
    dest.write_bytes(b"old")
    write_atomically(dest, b"new")
    assert dest.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.iso"]


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 5000), min_size=1, max_size=4),
    fill=st.binary(min_size=1, max_size=7),
    label=st.sampled_from(["CONTEXT", "cidata"]),
)
def test_layout_reuse_gives_pycdlib_bytes(sizes: list[int], fill: bytes, label: str) -> None:
    """A refilled layout is byte for byte what pycdlib writes for the new contents."""
    entries = [IsoEntry(("d",), None, DIR_MODE)]
    entries += [
        IsoEntry(("d", f"f{n}.txt"), (fill * size)[:size], FILE_MODE) for n, size in enumerate(sizes)
    ]
    entries.append(IsoEntry(("context.sh",), fill * 3, FILE_MODE))
    first = master(entries, label)  # learns (or reuses) the layout of this shape
    # Same shape (same sector counts), different contents and lengths.
    again = [
        IsoEntry(
            e.path, None if e.data is None else bytes(reversed(e.data))[: max(0, len(e.data) - 1)], e.mode
        )
        if e.data is None or sectors(len(e.data)) == sectors(max(0, len(e.data) - 1))
        else e
        for e in entries
    ]
    assert master(again, label) == master(again, label, reuse=False)
    assert first == master(entries, label, reuse=False)
