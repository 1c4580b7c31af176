"""Transfer drivers (issue 21, point 5): ``ssh`` against a real sshd (tests/cloud/sshd.py), and
``local``/``shared`` on the front end.

1.4's ``tm_ssh`` (OpenNebula ``src/tm_mad/ssh/tm_clone.sh``:44 ``ssh $DST_HOST mkdir -p
$DST_DIR`` and :54 ``scp $SRC $DST``, at 156fda7; ``tm_delete.sh``:34 ``$SSH $SRC_HOST rm -rf
$SRC_PATH`` and ``tm_mv.sh``:42-46, the copy back of a SAVE disk, at 1bf174c) copied the image
for every VM; imagekit copies the verified base once per host and checks it by checksum before
each use.
"""

from __future__ import annotations

import hashlib
import json
import pwd
from pathlib import Path

import pytest

from cloud.hosts import Host, HostStore, host_spec, parse_address
from cloud.images import BaseImage
from cloud.model import VmTemplate, parse_vm_template
from cloud.remote import LocalRunner, SshRunner, SshSettings, load_ssh_settings
from cloud.transfer import CACHE_DIR, VMS_DIR, FrontEndTransfer, SshTransfer, stage, transfer_for
from context.template import parse_template
from imagekit.errors import InputError, VerificationError
from imagekit.run import run
from imagekit.state import State

from .sshd import SimulatedHost, SshLab


def _base(path: Path, size: str = "8M") -> Path:
    run(["qemu-img", "create", "-q", "-f", "qcow2", path, size])
    run(["qemu-io", "-c", "write -P 0x11 0 64k", path])  # some content of its own
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _runner(lab: SshLab, host: SimulatedHost) -> SshRunner:
    return SshRunner(host.user, parse_address(host.address), load_ssh_settings(lab.etc))


def _info(lab: SshLab, host: SimulatedHost, path: str) -> dict[str, object]:
    info: dict[str, object] = json.loads(lab.ssh(host, f"qemu-img info --output=json {path}"))
    return info


def test_ssh_copies_the_base_once_into_the_hosts_cache(ssh_hosts: SshLab, tmp_path: Path) -> None:
    host, other = ssh_hosts.hosts
    base = _base(tmp_path / "base.qcow2")
    tm = SshTransfer(_runner(ssh_hosts, host))
    first = tm.clone(1, 0, base, "qcow2")
    cached = host.home / CACHE_DIR / _sha(base)
    assert first == f"{host.home}/{VMS_DIR}/1/disk0.qcow2"
    assert _sha(cached) == _sha(base)
    assert cached.stat().st_uid == pwd.getpwnam(host.user).pw_uid  # the host's own copy
    assert _info(ssh_hosts, host, first)["backing-filename"] == str(cached)
    assert Path(first).stat().st_mode & 0o777 == 0o600  # the VM's disk, its user's only
    assert Path(first).parent.stat().st_mode & 0o777 == 0o700
    copied = cached.stat().st_ino
    second = tm.clone(2, 0, base, "qcow2")
    assert cached.stat().st_ino == copied  # reused, not copied again
    assert _info(ssh_hosts, host, second)["backing-filename"] == str(cached)
    assert not (other.home / ".imagekit").exists()  # nothing is shared between hosts
    assert [p.name for p in (host.home / CACHE_DIR).iterdir()] == [_sha(base)]  # no .part left


def test_a_corrupted_cached_copy_is_replaced(ssh_hosts: SshLab, tmp_path: Path) -> None:
    host = ssh_hosts.hosts[0]
    base = _base(tmp_path / "base.qcow2")
    tm = SshTransfer(_runner(ssh_hosts, host))
    tm.clone(1, 0, base, "qcow2")
    cached = host.home / CACHE_DIR / _sha(base)
    with cached.open("r+b") as f:  # a bit flipped on the host's disk
        f.seek(70000)
        f.write(b"\xff")
    assert _sha(cached) != _sha(base)
    overlay = tm.clone(2, 0, base, "qcow2")
    assert _sha(cached) == _sha(base)
    assert _info(ssh_hosts, host, overlay)["backing-filename"] == str(cached)


class _Corrupting:
    """A runner whose copies arrive damaged (a broken link, a full disk on the host)."""

    def __init__(self, inner: SshRunner, lab: SshLab, host: SimulatedHost) -> None:
        self.inner, self.lab, self.host = inner, lab, host
        self.name = inner.name
        self.run, self.script, self.get = inner.run, inner.script, inner.get

    def put(self, local: Path, remote: str, *, step: str = "transfer") -> None:
        self.inner.put(local, remote, step=step)
        self.lab.ssh(self.host, f"printf junk >> {remote}")


def test_a_copy_that_arrives_damaged_is_refused(ssh_hosts: SshLab, tmp_path: Path) -> None:
    host = ssh_hosts.hosts[0]
    base = _base(tmp_path / "base.qcow2")
    tm = SshTransfer(_Corrupting(_runner(ssh_hosts, host), ssh_hosts, host))
    with pytest.raises(VerificationError, match="does not match its SHA-256"):
        tm.clone(1, 0, base, "qcow2")
    assert list((host.home / CACHE_DIR).iterdir()) == []  # neither the copy nor its .part


def test_epilog_copies_save_disks_back_and_cleans_the_host(ssh_hosts: SshLab, tmp_path: Path) -> None:
    host = ssh_hosts.hosts[1]
    base = _base(tmp_path / "base.qcow2")
    iso = tmp_path / "context.iso"
    iso.write_bytes(b"CD001" * 100)
    tm = SshTransfer(_runner(ssh_hosts, host))
    overlay = tm.clone(5, 0, base, "qcow2")
    ssh_hosts.ssh(host, f"qemu-io -c 'write -P 0x5a 1M 64k' {overlay}")  # what the VM wrote
    context = Path(tm.context(5, iso))
    assert context.read_bytes() == iso.read_bytes() and context.stat().st_mode & 0o777 == 0o600
    swap = tm.mkimage(5, 1, 4, "swap")
    assert ssh_hosts.ssh(host, f"dd if={swap} bs=1 skip=4086 count=10 2>/dev/null") == "SWAPSPACE2"
    saved = tm.epilog(5, (0,), tmp_path / "saved")
    assert saved == [tmp_path / "saved" / "vm5-disk0.qcow2"]
    info = json.loads(run(["qemu-img", "info", "--output=json", saved[0]]).stdout)
    assert "backing-filename" not in info  # flattened: it stands on its own on the front end
    run(["qemu-io", "-c", "read -P 0x5a 1M 64k", "-c", "read -P 0x11 0 64k", saved[0]])
    assert not (host.home / VMS_DIR / "5").exists()
    assert (host.home / CACHE_DIR / _sha(base)).exists()  # the cache stays for the next VM


def test_paths_on_the_host_come_from_ids_and_digests_only(tmp_path: Path) -> None:
    tm = SshTransfer(LocalRunner())
    base = _base(tmp_path / "base.qcow2")
    with pytest.raises(InputError, match="format"):
        tm.clone(1, 0, base, "qcow2 -o backing_file=/etc/shadow")
    with pytest.raises(InputError, match="not a disk"):
        tm.clone(1, -1, base, "qcow2")


def _host(state: State, tm: str, address: str | None = "alice@127.0.0.1:2222") -> Host:
    return HostStore(state).create(host_spec(f"h-{tm}", im="kvm", vmm="qemu", tm=tm, address=address))


def test_transfer_for_picks_the_hosts_driver(tmp_path: Path) -> None:
    state = State.open(tmp_path / "state")
    vms, settings = state.root / "vms", SshSettings()
    with pytest.raises(InputError, match="--tm local is for localhost only"):
        transfer_for(_host(state, "local"), vms, settings)
    assert transfer_for(_host(state, "shared"), vms, settings) == FrontEndTransfer(vms)
    ssh = transfer_for(_host(state, "ssh"), vms, settings)
    assert isinstance(ssh, SshTransfer) and isinstance(ssh.runner, SshRunner)
    assert ssh.runner.address == parse_address("alice@127.0.0.1:2222")
    assert transfer_for(HostStore(state).get("localhost"), vms, settings) == FrontEndTransfer(vms)


def test_local_and_shared_make_the_files_on_the_front_end(tmp_path: Path) -> None:
    """Same paths on the host as here (1.4's tm_nfs): the overlay is backed by the front end's
    verified image itself and nothing is copied."""
    base = _base(tmp_path / "base.qcow2")
    tm = FrontEndTransfer(tmp_path / "vms")
    overlay = Path(tm.clone(3, 0, base, "qcow2"))
    assert overlay == tmp_path / "vms" / "3" / "disk0.qcow2" and overlay.stat().st_mode & 0o777 == 0o600
    info = json.loads(run(["qemu-img", "info", "--output=json", overlay]).stdout)
    assert info["backing-filename"] == str(base)
    iso = tmp_path / "ctx.iso"
    iso.write_bytes(b"iso")
    assert Path(tm.context(3, iso)).read_bytes() == b"iso"
    assert Path(tm.mkimage(3, 1, 4, "swap")).stat().st_size == 4 << 20
    run(["qemu-io", "-c", "write -P 0x22 0 4k", overlay])
    saved = tm.epilog(3, (0,), tmp_path / "saved")
    run(["qemu-io", "-c", "read -P 0x22 0 4k", saved[0]])
    assert sorted(p.name for p in (tmp_path / "vms" / "3").iterdir()) == []
    assert base.exists()


_TEMPLATE = """NAME = "staged"
MEMORY = 64
DISK = [ SOURCE = "base.qcow2", SAVE = "yes" ]
DISK = [ TYPE = "cdrom", SOURCE = "cd.raw" ]
DISK = [ TYPE = "swap", SIZE = 4 ]
"""


def _bases(tmp_path: Path, *, missing_cd: bool = False) -> tuple[VmTemplate, list[BaseImage]]:
    vm = parse_vm_template(parse_template(_TEMPLATE, "staged.one"))
    base = _base(tmp_path / "base.qcow2")
    cd = tmp_path / "cd.raw"
    if not missing_cd:
        cd.write_bytes(b"CD001" * 1000)
    return vm, [BaseImage(vm.disks[0], base, "qcow2", "test"), BaseImage(vm.disks[1], cd, "raw", "test")]


def test_stage_runs_the_prolog_on_an_ssh_host(ssh_hosts: SshLab, tmp_path: Path) -> None:
    host = ssh_hosts.hosts[0]
    vm, bases = _bases(tmp_path)
    iso = tmp_path / "context.iso"
    iso.write_bytes(b"context")
    staged = stage(SshTransfer(_runner(ssh_hosts, host)), 9, vm, bases, iso)
    vm_dir, cache = f"{host.home}/{VMS_DIR}/9", host.home / CACHE_DIR
    assert [(d.index, d.kind.value, d.path, d.format, d.readonly) for d in staged.disks] == [
        (0, "disk", f"{vm_dir}/disk0.qcow2", "qcow2", False),
        (1, "cdrom", str(cache / _sha(bases[1].path)), "raw", True),  # the CD as it is, cached once
        (2, "swap", f"{vm_dir}/disk2.raw", "raw", False),
    ]
    assert staged.context == f"{vm_dir}/context.iso" and staged.save == (0,)
    assert Path(staged.context).read_bytes() == b"context"


def test_a_failed_stage_leaves_nothing_on_the_host(ssh_hosts: SshLab, tmp_path: Path) -> None:
    host = ssh_hosts.hosts[0]
    vm, bases = _bases(tmp_path, missing_cd=True)
    with pytest.raises(FileNotFoundError):
        stage(SshTransfer(_runner(ssh_hosts, host)), 10, vm, bases, None)
    assert not (host.home / VMS_DIR / "10").exists()  # the overlay made before is gone


def test_stage_on_the_front_end(tmp_path: Path) -> None:
    vm, bases = _bases(tmp_path)
    staged = stage(FrontEndTransfer(tmp_path / "vms"), 4, vm, bases, None)
    vm_dir = tmp_path / "vms" / "4"
    assert [d.path for d in staged.disks] == [
        str(vm_dir / "disk0.qcow2"),
        str(bases[1].path),
        str(vm_dir / "disk2.raw"),
    ]
    assert staged.context is None and staged.save == (0,)
