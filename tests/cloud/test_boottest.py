"""boot-test: verifying an agent report against the context, and real boots of built images."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cloud.boottest import _nics, expected_hostname, verify_report
from context.model import Lease, ResolvedContext
from imagekit.agent import AgentReport, NicReport
from imagekit.cli import main
from imagekit.diskimage import Firmware, boot_firmware
from imagekit.errors import VerificationError
from imagekit.run import run
from tests.conftest import build_once, shipped

REPO = Path(__file__).resolve().parents[2]
MAC = "02:00:c0:a8:7a:01"
VARS = {
    "SET_HOSTNAME": "boot test_0",
    "ETH0_MAC": MAC,
    "ETH0_IP": "192.168.122.1",
    "SSH_PUBLIC_KEY": "ssh-ed25519 AAAA k",
}


def _report(**kw: Any) -> AgentReport:
    base: dict[str, Any] = {
        "status": "ok",
        "hostname": "boot-test-0",
        "nics": (NicReport("ETH0", "enp0s1", MAC, "192.168.122.1", 24),),
        "user": "root",
        "ssh_keys": 1,
        "init_scripts": ("init.sh:0",),
    }
    return AgentReport(**{**base, **kw})


def test_a_complete_report_passes() -> None:
    checks = verify_report(_report(), VARS, demo=True)
    assert checks == [
        "hostname boot-test-0",
        f"enp0s1 {MAC} 192.168.122.1",
        "1 SSH key(s) for root",
        "init script init.sh ran",
    ]


@pytest.mark.parametrize(
    ("report", "rule"),
    [
        (_report(status="no-context"), "boot-test.context"),
        (_report(hostname="debian"), "boot-test.hostname"),
        (_report(nics=()), "boot-test.nic"),
        (_report(nics=(NicReport("ETH0", "enp0s1", MAC, "10.0.2.15"),)), "boot-test.nic"),
        (_report(ssh_keys=0), "boot-test.ssh"),
        (_report(init_scripts=("init.sh:1",)), "boot-test.init"),
        (_report(init_scripts=()), "boot-test.init"),
        (_report(status="error", errors=("dns: x",)), "boot-test.agent"),
    ],
)
def test_what_is_missing_fails(report: AgentReport, rule: str) -> None:
    with pytest.raises(VerificationError) as info:
        verify_report(report, VARS, demo=True)
    assert info.value.rule == rule


def test_expected_hostname_follows_one_context() -> None:
    assert expected_hostname({"SET_HOSTNAME": "-my host!-", "HOSTNAME": "x"}) == "my-host"
    assert expected_hostname({"HOSTNAME": "h.example.org"}) == "h.example.org"
    assert expected_hostname({}) == ""


def test_nics_come_from_leases_else_from_eth_macs() -> None:
    lease = Lease(0, "n", "10.0.0.1", "02:00:0A:00:00:01")
    assert [n.mac for n in _nics(ResolvedContext(0, {}, (), (lease,)))] == ["02:00:0a:00:00:01"]
    hand = {"ETH10_MAC": "02:00:00:00:00:0a", "ETH2_MAC": "02:00:00:00:00:02", "ETH3_MAC": ""}
    assert [n.mac for n in _nics(ResolvedContext(0, hand))] == ["02:00:00:00:00:02", "02:00:00:00:00:0a"]


def test_detect_firmware_from_the_boot_sector(tmp_path: Path) -> None:
    img = tmp_path / "a.img"
    img.write_bytes(b"\0" * 1024 * 1024)
    assert boot_firmware(img, "raw") is Firmware.UEFI
    # Another image in its place (a new upload) is read again, not answered from memory.
    syslinux = tmp_path / "b.img"
    syslinux.write_bytes(b"\xfa\x31\xc0" + b"\0" * (1024 * 1024 - 3))  # syslinux's mbr.bin starts so
    syslinux.replace(img)
    assert boot_firmware(img, "raw") is Firmware.BIOS
    qcow2 = tmp_path / "a.qcow2"
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", img, qcow2])
    assert boot_firmware(qcow2, "qcow2") is Firmware.BIOS


def test_missing_image_is_an_input_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["boot-test", str(tmp_path / "none.qcow2")]) == 1
    assert "no such image file" in capsys.readouterr().err


def test_serial_log_in_a_missing_directory_fails_before_booting(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\0" * 1024 * 1024)
    args = ["--state", str(tmp_path / "state"), "boot-test", str(image)]
    assert main([*args, "--serial-log", str(tmp_path / "missing" / "serial.log")]) == 1
    assert f"{tmp_path / 'missing'}: --serial-log: no such directory" in capsys.readouterr().err
    assert not (tmp_path / "state" / "kvm-probe.json").exists()  # nothing was booted or probed


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--cpus", "0"], "--cpus: expected 1 to 64, got 0"),
        (["--cpus", "65"], "--cpus: expected 1 to 64, got 65"),
        (["--memory", "16"], "--memory: expected at least 64 MiB, got 16"),
    ],
)
def test_guest_size_out_of_range_fails_before_booting(
    option: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\0" * 1024 * 1024)
    assert main(["--state", str(tmp_path / "state"), "boot-test", str(image), *option]) == 1
    assert capsys.readouterr().err.strip().endswith(message)
    assert not (tmp_path / "state" / "kvm-probe.json").exists()


# --- real boots (TCG): the shipped recipes' images, built once per session by tests/builder ---


@pytest.mark.slow
@pytest.mark.vm
def test_boot_test_bios_default_context(minimal_image: Any, tmp_path: Path) -> None:
    """The CLI as a user runs it: the demo context (hostname, NIC, SSH key, init script)."""
    log = tmp_path / "serial.log"
    proc = subprocess.run(
        [
            REPO / ".venv/bin/imagekit",
            "--state",
            tmp_path / "state",
            "boot-test",
            minimal_image.path,
            "--firmware",
            "bios",
            "--json",
            "--serial-log",
            log,
        ],
        capture_output=True,
        timeout=900,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "IMAGEKIT_ACCEL": "tcg"},
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    result = json.loads(proc.stdout)
    assert result["agent"] == "imagekit" and result["firmware"] == "bios"
    report = result["report"]
    assert report["status"] == "ok" and report["hostname"] == "boot-test-0"
    assert report["nics"][0]["mac"] == "02:00:c0:a8:7a:01" and report["nics"][0]["ip"] == "192.168.122.1"
    assert report["ssh_keys"] == 1 and report["init_scripts"] == ["init.sh:0"]
    console = log.read_text(errors="replace")
    assert "IMAGEKIT-BOOT-TEST-MARKER boot-test-0 192.168.122.1" in console
    assert "ordering cycle" not in console.lower()  # systemd would silently drop a unit
    print(f"BIOS boot-to-context-applied: {result['seconds']} s")


@pytest.mark.slow
@pytest.mark.vm
def test_boot_test_uefi_with_a_template(
    cloud_image: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user template: a FIXED network lease, START_SCRIPT, a password and a second key."""
    monkeypatch.setenv("IMAGEKIT_ACCEL", "tcg")
    state = tmp_path / "state"
    (tmp_path / "lan.net").write_text(
        'NAME = "lan"\nTYPE = "FIXED"\nGATEWAY = "10.1.0.254"\nDNS = "10.1.0.253"\n'
        'NETWORK_MASK = "255.255.0.0"\nLEASES = [ IP = "10.1.2.3", MAC = "02:00:0a:01:02:03" ]\n'
    )
    (tmp_path / "vm.one").write_text(
        'NAME = "web"\nNIC = [ NETWORK = "lan" ]\nCONTEXT = [ NETWORK = "YES", HOSTNAME = "web-$VMID",\n'
        '  USERNAME = "ops", PASSWORD = "s3cret",\n'
        '  SSH_PUBLIC_KEY = "ssh-ed25519 AAAAone a\nssh-ed25519 AAAAtwo b",\n'
        '  START_SCRIPT = "echo IMAGEKIT-START-SCRIPT-RAN > /dev/ttyS0" ]\n'
    )
    assert main(["--state", str(state), "net", "create", str(tmp_path / "lan.net")]) == 0
    capsys.readouterr()
    log = tmp_path / "serial.log"
    code = main(
        [
            "--state",
            str(state),
            "boot-test",
            str(cloud_image.path),
            "--context",
            str(tmp_path / "vm.one"),
            "--firmware",
            "uefi",
            "--serial-log",
            str(log),
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    assert "context applied by imagekit" in out.out and "(uefi, tcg)" in out.out
    assert "ok  hostname web-0" in out.out and "02:00:0a:01:02:03 10.1.2.3" in out.out
    assert "ok  2 SSH key(s) for ops" in out.out
    console = log.read_text(errors="replace")
    assert "IMAGEKIT-START-SCRIPT-RAN" in console
    assert '"password":true' in console and '"start_script":0' in console
    assert "ordering cycle" not in console.lower()


def _agent_image(tmp_path_factory: pytest.TempPathFactory, state_dir: Path, agent: str) -> Path:
    """The shipped cloud recipe with another ``context_agent``, built once per run.

    Both variants install the same packages (the cloud-init one lists the few imagekit's agent
    would add, which a Debian base has anyway), so they share one cached package stage: the
    builder bootstraps it once and the other build restores it, a cold build fewer per run."""
    import dataclasses

    from imagekit.agent import AGENT_PACKAGES
    from imagekit.recipe.model import ContextAgent, Package

    recipe = shipped("debian-12-cloud.tdl")
    packages = recipe.packages + tuple(Package(name) for name in AGENT_PACKAGES)
    recipe = dataclasses.replace(
        recipe, name=f"debian-12-{agent}", context_agent=ContextAgent(agent), packages=packages
    )
    return build_once(tmp_path_factory, f"{agent}-image", recipe, state_dir).path


@pytest.fixture(scope="session")
def cloud_init_image(tmp_path_factory: pytest.TempPathFactory, build_state_dir: Path) -> Path:
    """The shipped cloud recipe asking for cloud-init instead of imagekit's agent."""
    return _agent_image(tmp_path_factory, build_state_dir, "cloud-init")


@pytest.fixture(scope="session")
def both_agents_image(tmp_path_factory: pytest.TempPathFactory, build_state_dir: Path) -> Path:
    """The shipped cloud recipe asking for imagekit's agent and cloud-init."""
    return _agent_image(tmp_path_factory, build_state_dir, "both")


def _boot_demo(image: Path, flavor: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str]:
    """boot-test with the demo context (etc/boot-test) on a ``flavor`` medium: result, console."""
    from cloud.boottest import BootTest, boot_test
    from context.flavor import IsoFlavor
    from imagekit.state import State

    monkeypatch.setenv("IMAGEKIT_ACCEL", "tcg")
    log = tmp_path / "serial.log"
    test = BootTest(image=image, flavor=IsoFlavor(flavor), firmware=Firmware.BIOS, keep_log=log, timeout=900)
    result = boot_test(test, state=State.open(tmp_path / "state"))
    return result, " ".join(log.read_text(errors="replace").split())


CLOUD_INIT_DEMO_CHECKS = [
    "cloud-init datasource DataSourceOpenNebula",
    "hostname boot-test-0 (cloud-init)",
    "02:00:c0:a8:7a:01 192.168.122.1 (cloud-init)",
    "1 SSH key(s) (cloud-init)",
]


@pytest.mark.slow
@pytest.mark.vm
@pytest.mark.timeout(1800)
def test_cloud_init_alone_reads_an_opennebula_cd(
    cloud_init_image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``context_agent: cloud-init`` image applies an OpenNebula CONTEXT CD (issue 11 point 18).

    canonical/cloud-init 22.4.2 cloudinit/sources/DataSourceOpenNebula.py: find_candidate_devs
    looks for LABEL=CONTEXT (:288-300); read_context_disk_dir checks the parse user exists
    (:433-441) and parse_shell_config runs context.sh through ``sudo -u nobody bash -e``
    (:303-304, :314, :369-370) — without sudo "Error processing context.sh" (:446-449) and
    DataSourceNone. It then takes the hostname (:477), SSH_PUBLIC_KEY (:463-473) and the ETHn_*
    network (:502). boot-test passes only on DataSourceOpenNebula with all three applied.
    """
    result, console = _boot_demo(cloud_init_image, "opennebula", tmp_path, monkeypatch)
    assert result.agent == "cloud-init" and result.report is None
    assert list(result.checks) == CLOUD_INIT_DEMO_CHECKS
    assert "Error processing context.sh" not in console
    assert "IMAGEKIT-CONTEXT" not in console  # the imagekit agent was not installed


@pytest.mark.slow
@pytest.mark.vm
@pytest.mark.timeout(1800)
def test_both_agents_are_checked(
    both_agents_image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``context_agent: both``: imagekit's agent runs the init script, cloud-init applies the
    rest too, and boot-test checks both verdicts (issue 8 point 6)."""
    result, console = _boot_demo(both_agents_image, "opennebula", tmp_path, monkeypatch)
    assert result.agent == "both" and result.report is not None and result.report.cloud_init
    assert result.checks[0] == "hostname boot-test-0" and "init script init.sh ran" in result.checks
    assert list(result.checks[-4:]) == CLOUD_INIT_DEMO_CHECKS
    assert "IMAGEKIT-BOOT-TEST-MARKER" in console


@pytest.mark.slow
@pytest.mark.vm
@pytest.mark.timeout(1800)
def test_boot_test_cloud_init_with_a_nocloud_seed(
    cloud_init_image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recipe may ask for cloud-init: it reads the same resolved context from a NoCloud seed."""
    result, console = _boot_demo(cloud_init_image, "nocloud", tmp_path, monkeypatch)
    assert result.agent == "cloud-init"
    assert result.checks[0] == "cloud-init datasource DataSourceNoCloud"
    assert list(result.checks[1:]) == CLOUD_INIT_DEMO_CHECKS[1:]
    # cloud-init's own network table: the static address of the lease on the NIC with its MAC.
    assert "| eth0 | True | 192.168.122.1 | 255.255.255.0 | global | 02:00:c0:a8:7a:01 |" in console
    assert "IMAGEKIT-CONTEXT" not in console  # the imagekit agent was not installed
    assert "ordering cycle" not in console.lower()  # a cycle once dropped cloud-init's main stage
