"""``vm create``: the pipeline's steps, each one's failure rolled back, images from every origin, hooks.

No QEMU runs here: VMs are created ``--hold`` (or the launch is made to fail). The verbs on
running VMs are in test_lifecycle.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cloud import deploy, hooks, lifecycle
from cloud.cores import CoreKind, embedded
from cloud.deploy import CreateRequest, create_vm
from cloud.model import VmState
from cloud.siteconfig import load_site
from cloud.store import VmStore
from context.leases import NetworkStore
from context.network import network_from_template
from context.template import parse_template
from imagekit.errors import CommandError, ImagekitError, InputError, VerificationError
from imagekit.state import State
from tests.cloud.blank import halting_disk

NET = 'NAME = "lan"\nTYPE = "RANGED"\nNETWORK_ADDRESS = "10.9.0.0"\nNETWORK_SIZE = "C"\n'


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A state with network "lan", a 16 MiB qcow2 base image, etc/ with hooks that log their arguments."""
    monkeypatch.setenv("IMAGEKIT_ACCEL", "tcg")
    state = State.open(tmp_path / "state")
    NetworkStore(state).create(network_from_template(parse_template(NET, "lan.net")))
    base = tmp_path / "base.qcow2"
    halting_disk(base)
    etc = tmp_path / "etc"
    etc.mkdir()
    hook_log = tmp_path / "hook-calls"
    script = tmp_path / "hook.sh"
    script.write_text(f'#!/bin/sh\necho "$@" >> {hook_log}\n')
    script.chmod(0o755)
    (etc / "oned.conf").write_text(
        f'VM_HOOK = [ name = "log", on = "create", command = "{script}",\n'
        '  arguments = "create $VMID $NAME $NIC[IP, NETWORK=\\"lan\\"]" ]\n'
        f'VM_HOOK = [ name = "done", on = "DONE", command = "{script}", arguments = "done $VMID" ]\n'
        f'VM_HOOK = [ name = "failed", on = "FAILED", command = "{script}", arguments = "failed $VMID" ]\n'
    )
    return {"state": state, "base": base, "etc": etc, "hooks": hook_log, "dir": tmp_path}


def _template(lab: dict[str, Any], body: str = "", *, disk: str | None = None) -> Path:
    path: Path = lab["dir"] / "vm.one"
    disk = disk or f'DISK = [ SOURCE = "{lab["base"]}" ]'
    path.write_text(
        f'NAME = "web"\nMEMORY = 64\n{disk}\nNIC = [ NETWORK = "lan" ]\n'
        'CONTEXT = [ NETWORK = "YES", HOSTNAME = "$NAME-$VMID", IP = "$NIC[IP, NETWORK=\\"lan\\"]" ]\n'
        + body
    )
    return path


def _leases(lab: dict[str, Any]) -> list[str]:
    return [lease.ip for lease in NetworkStore(lab["state"]).leases()]


def _hook_calls(lab: dict[str, Any]) -> list[str]:
    hooks.wait_for_hooks()
    path: Path = lab["hooks"]
    return path.read_text().splitlines() if path.exists() else []


def test_create_held_then_delete(lab: dict[str, Any]) -> None:
    state = lab["state"]
    record = create_vm(
        CreateRequest.from_file(_template(lab), hold=True, site=load_site(lab["etc"])), state=state
    )
    assert record.state is VmState.HOLD and record.owner and record.name == "web"
    assert [h.state for h in VmStore(state).history(record.vmid)] == ["pending", "prolog", "hold"]
    overlay = record.directory / "disk0.qcow2"
    info = json.loads(
        subprocess.run(["qemu-img", "info", "--output=json", overlay], capture_output=True).stdout
    )
    assert info["format"] == "qcow2" and info["backing-filename"] == str(lab["base"])
    assert (record.directory / "context.iso").is_file()
    assert _leases(lab) == ["10.9.0.1"]
    argv = record.info["argv"]
    assert f"file={overlay},format=qcow2,if=virtio,cache=unsafe" in argv  # the base is never written
    assert any(a.startswith("socket,id=net0,mcast=239.255.") for a in argv)
    assert _hook_calls(lab) == [f"create {record.vmid} web 10.9.0.1"]

    done = lifecycle.delete(state, record.vmid)
    assert done.state is VmState.DONE and done.reason == "deleted"
    assert _leases(lab) == [] and not overlay.exists() and not (record.directory / "context.iso").exists()
    assert _hook_calls(lab)[-1] == f"done {record.vmid}"
    with pytest.raises(InputError, match=f"VM {record.vmid} is done"):
        lifecycle.release(state, record.vmid)


def _break(monkeypatch: pytest.MonkeyPatch, target: Any, name: str) -> None:
    def broken(*args: object, **kwargs: object) -> Any:
        raise CommandError([name], 1, f"{name} broke")

    monkeypatch.setattr(target, name, broken)


@pytest.mark.parametrize("step", ["parse", "images", "context", "prolog", "hooks", "boot"])
def test_a_failing_step_rolls_back(lab: dict[str, Any], monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    """Issue 13 point 2: nothing stays reserved; from the context on, the record says where it failed."""
    template = _template(lab)
    if step == "parse":
        template = _template(lab, 'NOSUCH = "x"\n')
    elif step == "images":
        template = _template(lab, disk=f'DISK = [ SOURCE = "{lab["dir"] / "missing.qcow2"}" ]')
    elif step == "context":
        template = _template(lab, disk=f'DISK = [ SOURCE = "{lab["base"]}" ]\nCONTEXT = [ A = "b" ]')
    elif step == "prolog":
        _break(monkeypatch, deploy, "_context_iso")
    elif step == "hooks":
        # A hook that parses (etc/ is read when the command starts) but whose ARGUMENTS cannot
        # be resolved for this VM: the step fails.
        hook = 'VM_HOOK = [ on = "create", command = "/bin/true", arguments = "$NAME[" ]\n'
        (lab["etc"] / "oned.conf").write_text(hook)
    else:
        _break(monkeypatch, embedded, "launch")
    with pytest.raises(ImagekitError):
        create_vm(CreateRequest.from_file(template, site=load_site(lab["etc"])), state=lab["state"])
    assert _leases(lab) == []
    assert not embedded.runtime_path(lab["state"]).exists()  # no QMP directory left in $TMPDIR
    records = VmStore(lab["state"]).list()
    if step in ("parse", "images", "context"):
        assert records == []
        return
    [record] = records
    assert (record.state, record.step) == (VmState.FAILED, step)
    assert not list(record.directory.glob("*.qcow2")) and not list(record.directory.glob("*.iso"))
    if step != "hooks":  # a broken hook configuration cannot run the FAILED hook either
        assert _hook_calls(lab)[-1] == f"failed {record.vmid}"


def test_one_vms_hooks_run_in_the_order_of_their_events(tmp_path: Path) -> None:
    """A DONE hook that undoes what the CREATE hook did must not overtake a slow CREATE hook."""
    calls = tmp_path / "calls"
    slow = f"import sys, time; time.sleep(0.3); open({str(calls)!r}, 'a').write(sys.argv[1] + chr(10))"
    fast = f"import sys; open({str(calls)!r}, 'a').write(sys.argv[1] + chr(10))"
    fire = {
        hooks.HookEvent.CREATE: {"CREATE": [["register", sys.executable, "-c", slow, "create"]]},
        hooks.HookEvent.DONE: {"DONE": [["unregister", sys.executable, "-c", fast, "done"]]},
    }
    for event, table in fire.items():
        hooks.fire(event, table, 7, tmp_path)
    hooks.wait_for_hooks()
    assert calls.read_text().split() == ["create", "done"]
    logged = (tmp_path / hooks.HOOK_LOG).read_text().splitlines()
    assert [line.split()[1] for line in logged] == ["CREATE", "DONE"]


def test_swap_and_fs_disks_are_made_on_the_fly(lab: dict[str, Any]) -> None:
    disks = (
        f'DISK = [ SOURCE = "{lab["base"]}" ]\nDISK = [ TYPE = "swap", SIZE = 8 ]\n'
        'DISK = [ TYPE = "fs", SIZE = 8, FORMAT = "ext4" ]'
    )
    record = create_vm(CreateRequest.from_file(_template(lab, disk=disks), hold=True), state=lab["state"])
    swap = (record.directory / "disk1.raw").read_bytes()
    assert swap[4086:4096] == b"SWAPSPACE2"
    fs = (record.directory / "disk2.raw").read_bytes()
    assert fs[1080:1082] == b"\x53\xef"  # ext2/3/4 superblock magic
    assert f"file={record.directory / 'disk1.raw'},format=raw,if=virtio,id=disk1" in record.info["argv"]
    # Set up, never started: its QMP socket's directory in $TMPDIR is named, not made.
    assert Path(record.info["qmp"]).parent == embedded.runtime_path(lab["state"])
    assert not embedded.runtime_path(lab["state"]).exists()


def _manifest(lab: dict[str, Any], sha256: str) -> Path:
    manifest: Path = lab["dir"] / "base.manifest.json"
    output = {"format": "qcow2", "file": "base.qcow2", "checksums": {"sha256": sha256}}
    manifest.write_text(json.dumps({"name": "base", "firmware": "bios", "outputs": [output]}))
    return manifest


def test_a_build_output_is_checked_against_its_manifest(lab: dict[str, Any]) -> None:
    good = hashlib.sha256(lab["base"].read_bytes()).hexdigest()
    record = create_vm(
        CreateRequest.from_file(
            _template(lab, disk=f'DISK = [ SOURCE = "{_manifest(lab, good)}" ]'), hold=True
        ),
        state=lab["state"],
    )
    assert record.info["firmware"] == "bios"
    bad = _template(lab, disk=f'DISK = [ SOURCE = "{_manifest(lab, "0" * 64)}" ]')
    with pytest.raises(VerificationError, match="image.checksum"):
        create_vm(CreateRequest.from_file(bad, hold=True), state=lab["state"])


def test_an_image_template_names_the_file(lab: dict[str, Any]) -> None:
    image = lab["dir"] / "debian.image"
    image.write_text('NAME = "debian"\nID = 3\nPATH = "base.qcow2"\n')
    for disk in ('DISK = [ IMAGE = "debian" ]', "DISK = [ IMAGE_ID = 3 ]"):
        record = create_vm(
            CreateRequest.from_file(_template(lab, disk=disk), hold=True, image_templates=(image,)),
            state=lab["state"],
        )
        assert record.state is VmState.HOLD
    with pytest.raises(InputError, match=r"vm.one:3:1: DISK\[0\]: no image 'other'"):
        create_vm(
            CreateRequest.from_file(_template(lab, disk='DISK = [ IMAGE = "other" ]'), hold=True),
            state=lab["state"],
        )


def test_a_marketplace_image_is_verified_cached_and_held(lab: dict[str, Any], tmp_path: Path) -> None:
    """SOURCE=marketplace:ID through the site stage's real obtain_image: a signed entry on a
    loopback registry, the policy judged, the image downloaded verified into the state's cache,
    held while the VM exists; a policy that refuses the endorser refuses the VM, reserving nothing."""
    from marketplace.imagecache import image_path

    from ..marketplace.entries import ago, make_ca, make_endorser
    from ..marketplace.images import describe, endorse, listing
    from ..marketplace.loopback import loopback

    alice = make_endorser(make_ca("cloud test CA"), "alice@example.org", "Alice")
    content = lab["base"].read_bytes()
    policy = tmp_path / "policy.cfg"
    policy.write_text("[download]\nschemes = https http\nretries = 0\ntimeout = 10\n")
    refusing = tmp_path / "refusing.cfg"
    refusing.write_text("[endorsers]\nblacklistendorsers = alice@example.org\n[download]\nschemes = http\n")
    with loopback() as server:
        server.files["/base.qcow2"] = content
        m = describe(content, locations=(f"{server.url}/base.qcow2",), format="qcow2")
        server.files[f"/metadata/{m.identifier}"] = listing(endorse(m, alice, created=ago(days=1)))
        template = _template(lab, disk=f'DISK = [ SOURCE = "marketplace:{m.identifier}" ]')
        with pytest.raises(VerificationError, match="policy"):
            create_vm(
                CreateRequest.from_file(template, endpoint=server.url, site=load_site(policy=refusing)),
                state=lab["state"],
            )
        assert VmStore(lab["state"]).list() == [] and _leases(lab) == []
        request = CreateRequest.from_file(
            template, hold=True, endpoint=server.url, site=load_site(policy=policy)
        )
        record = create_vm(request, state=lab["state"])
    cached = image_path(lab["state"], m.identifier)
    assert cached.read_bytes() == content
    overlay = record.directory / "disk0.qcow2"
    info = json.loads(subprocess.check_output(["qemu-img", "info", "--output=json", overlay]))
    assert info["backing-filename"] == str(cached)

    def holders() -> list[str]:
        db = lab["state"].db()
        try:
            return [r[0] for r in db.execute("SELECT holder FROM site_image_holds").fetchall()]
        finally:
            db.close()

    assert holders() == [f"vm-{record.vmid}"]
    lifecycle.delete(lab["state"], record.vmid)
    assert holders() == []


def test_reconcile_finds_vanished_processes(lab: dict[str, Any]) -> None:
    """A VM whose QEMU is gone is unknown; one that was shutting down is done (pid + start time)."""
    state = lab["state"]
    store = VmStore(state)
    gone = subprocess.Popen(["true"])
    gone.wait()
    for vmid, was in ((10, VmState.RUNNING), (11, VmState.SHUTDOWN)):
        store.insert(
            vmid, name="x", owner="o", core=CoreKind.EMBEDDED, template="t", directory=lab["dir"] / str(vmid)
        )
        store.transition(vmid, was, pid=gone.pid, pid_start=12345)
    # Our own pid with a wrong start time: a reused pid is not the VM.
    store.insert(12, name="y", owner="o", core=CoreKind.EMBEDDED, template="t", directory=lab["dir"] / "12")
    start = embedded.process_start(os.getpid())
    assert start is not None
    store.transition(12, VmState.RUNNING, pid=os.getpid(), pid_start=start + 1)
    states = {r.vmid: (r.state, r.reason) for r in lifecycle.list_vms(state)}
    assert states[10] == (VmState.UNKNOWN, f"QEMU (pid {gone.pid}) is gone")
    assert states[11] == (VmState.DONE, "powered off")
    assert states[12][0] is VmState.UNKNOWN


def test_cli_create_held_list_and_show(lab: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    from imagekit.cli import main

    state = ["--state", str(lab["state"].root)]
    assert main([*state, "vm", "create", str(_template(lab)), "--hold", "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["state"] == "hold" and created["ips"] == ["10.9.0.1"]
    assert main([*state, "vm", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["ID", "USER", "NAME", "STAT", "IP", "TIME"]
    assert out[1].split()[:5] == [str(created["id"]), created["owner"], "web", "hold", "10.9.0.1"]
    assert main([*state, "vm", "show", str(created["id"]), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [h["state"] for h in shown["history"]] == ["pending", "prolog", "hold"]
    assert main([*state, "vm", "suspend", str(created["id"])]) == 1
    assert "is hold, not running" in capsys.readouterr().err
    bad = _template(lab, 'GRAPHICS = [ TYPE = "sdl" ]\n')
    assert main([*state, "vm", "create", str(bad)]) == 1
    assert f"{bad}:6:1: GRAPHICS.TYPE: this core offers vnc only" in capsys.readouterr().err


def test_failing_and_slow_hooks_are_logged_and_change_nothing(
    lab: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """oned.conf VM_HOOK (opennebula-1.4.md §2): run in the background, time-limited, logged."""
    monkeypatch.setattr(hooks, "HOOK_TIMEOUT", 1.0)
    failing = lab["dir"] / "failing.sh"
    failing.write_text('#!/bin/sh\necho "out-$1"\nexit 3\n')
    failing.chmod(0o755)
    (lab["etc"] / "oned.conf").write_text(
        f'VM_HOOK = [ name = "fails", on = "create", command = "{failing}", arguments = "$VMID" ]\n'
        'VM_HOOK = [ name = "slow", on = "create", command = "/bin/sleep", arguments = "30" ]\n'
    )
    record = create_vm(
        CreateRequest.from_file(_template(lab), hold=True, site=load_site(lab["etc"])), state=lab["state"]
    )
    hooks.wait_for_hooks()
    assert record.state is VmState.HOLD
    logged = (record.directory / hooks.HOOK_LOG).read_text()
    assert f" CREATE fails exit=3\n  out-{record.vmid}\n" in logged
    assert " CREATE slow exit=error\n" in logged and "timed out after 1 s" in logged


def test_hook_configuration_errors_are_located(tmp_path: Path) -> None:
    conf = parse_template('VM_HOOK = [ on = "boot", command = "/bin/true" ]\n', "oned.conf")
    with pytest.raises(InputError, match="oned.conf:1:1: VM_HOOK.ON: expected one of CREATE, RUNNING"):
        hooks.hooks_from_template(conf)
    conf = parse_template('VM_HOOK = [ on = "done", command = "notify" ]\n', "oned.conf")
    with pytest.raises(InputError, match="VM_HOOK.COMMAND: expected an absolute path"):
        hooks.hooks_from_template(conf)


def test_an_ssh_uplink_forwards_a_loopback_port(lab: dict[str, Any]) -> None:
    record = create_vm(CreateRequest.from_file(_template(lab), hold=True, ssh_port=2299), state=lab["state"])
    argv = record.info["argv"]
    uplink = [argv[i + 1] for i, a in enumerate(argv) if a == "-nic"]
    mac = f"52:54:00:00:00:{record.vmid:02x}"
    assert uplink == [f"user,model=virtio-net-pci,mac={mac},hostfwd=tcp:127.0.0.1:2299-:22"]


def test_cli_log_and_wait(lab: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    from imagekit.cli import main

    state = ["--state", str(lab["state"].root)]
    record = create_vm(CreateRequest.from_file(_template(lab), hold=True), state=lab["state"])
    (record.directory / "serial.log").write_bytes(b"SeaBIOS\nlogin: \n")
    assert main([*state, "vm", "log", str(record.vmid), "--follow"]) == 0  # held: no process to follow
    assert capsys.readouterr().out == "SeaBIOS\nlogin: \n"
    assert main([*state, "vm", "wait", str(record.vmid), "--state", "hold"]) == 0
    assert capsys.readouterr().out == f"VM {record.vmid}: hold\n"
    assert main([*state, "vm", "wait", str(record.vmid), "--state", "running", "--timeout", "0"]) == 1
    assert f"VM {record.vmid} is hold, not running, after 0 s" in capsys.readouterr().err
    lifecycle.delete(lab["state"], record.vmid)
    assert main([*state, "vm", "wait", str(record.vmid), "--state", "running"]) == 1
    assert f"VM {record.vmid} ended done (deleted), not running" in capsys.readouterr().err


def test_a_disk_with_save_is_kept_at_done(lab: dict[str, Any]) -> None:
    """DISK SAVE=yes (opennebula-1.4.md §1): the VM's disk outlives it, flattened."""
    template = _template(lab, disk=f'DISK = [ SOURCE = "{lab["base"]}", SAVE = "yes" ]')
    record = create_vm(CreateRequest.from_file(template, hold=True), state=lab["state"])
    lifecycle.delete(lab["state"], record.vmid)
    saved = lab["state"].root / "saved" / f"vm{record.vmid}-disk0.qcow2"
    info = json.loads(subprocess.check_output(["qemu-img", "info", "--output=json", saved]))
    assert info["format"] == "qcow2" and "backing-filename" not in info
    assert not (record.directory / "disk0.qcow2").exists()
