"""boot-test's cloud-init verdict, against the console of a real boot (cloud-init 22.4.2).

``data/cloud-init-opennebula.console`` is an excerpt of the serial console of the
``context_agent: cloud-init`` image booted with etc/boot-test's context on an OpenNebula CD.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import cast

import pytest
from cloudinit.config.cc_ssh_authkey_fingerprints import _gen_fingerprint

from cloud.boottest import BootResult, BootTest, _watch
from cloud.cloud_init import (
    CloudInitExpectation,
    cloud_init_hostname,
    expect_cloud_init,
    key_fingerprint,
    verify_cloud_init,
)
from cloud.qemu import Accel, QemuVm, VmSpec
from context.flavor import IsoFlavor
from context.model import ResolvedContext
from imagekit.diskimage import Firmware
from imagekit.errors import VerificationError

CONSOLE = (Path(__file__).parent / "data" / "cloud-init-opennebula.console").read_text()
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l1GKJl imagekit-boot-test"
IP = "192.168.122.1"
DEMO = CloudInitExpectation("DataSourceOpenNebula", "boot-test-0", (("02:00:c0:a8:7a:01", IP),), (KEY,))


def test_a_context_cloud_init_applied_passes() -> None:
    assert verify_cloud_init(CONSOLE, DEMO) == [
        "cloud-init datasource DataSourceOpenNebula",
        "hostname boot-test-0 (cloud-init)",
        "02:00:c0:a8:7a:01 192.168.122.1 (cloud-init)",
        "1 SSH key(s) (cloud-init)",
    ]


@pytest.mark.parametrize(
    ("console", "want", "rule"),
    [
        # What issue 11 saw without sudo: context.sh fails to parse, cloud-init falls back.
        (CONSOLE.replace("DataSourceOpenNebula [seed=/dev/sr0][dsmode=net]", "DataSourceNone"), DEMO,
         "boot-test.datasource"),
        (CONSOLE, CloudInitExpectation("DataSourceNoCloud", ""), "boot-test.datasource"),
        (CONSOLE.replace("finished at", "is still at"), DEMO, "boot-test.cloud-init"),
        (CONSOLE.replace("boot-test-0 login:", "localhost login:"), DEMO, "boot-test.hostname"),
        (CONSOLE.replace("boot-test-0", "localhost"), DEMO, "boot-test.hostname"),
        (re.sub(r"boot-test-0 login:|root@boot-test-0", "", CONSOLE), DEMO, "boot-test.hostname"),
        (CONSOLE.replace("|      192.168.122.1      |", "|      10.0.2.15      |"), DEMO, "boot-test.nic"),
        (CONSOLE, CloudInitExpectation("DataSourceOpenNebula", "", (("02:00:c0:a8:7a:02", IP),)),
         "boot-test.nic"),
        (CONSOLE, CloudInitExpectation("DataSourceOpenNebula", "", (),
         ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIImagekitPlaceholderKeyReplaceMeWithYourOwn0000 other",)),
         "boot-test.ssh"),
        (CONSOLE.replace("2a:6f:ce", "2a:6f:cf"), DEMO, "boot-test.ssh"),
    ],
)  # fmt: skip
def test_what_cloud_init_did_not_apply_fails(console: str, want: CloudInitExpectation, rule: str) -> None:
    with pytest.raises(VerificationError) as info:
        verify_cloud_init(console, want)
    assert info.value.rule == rule


def test_without_a_serial_getty_the_host_keys_show_the_hostname() -> None:
    """On a loaded TCG host udev may time out on /dev/ttyS0 and the serial getty never starts;
    canonical/cloud-init 22.4.2 config/cloud.cfg.tmpl runs set_hostname before ssh, whose
    cc_ssh.py makes the instance's host keys (comment root@HOSTNAME) that cc_keys_to_console.py
    prints."""
    assert "hostname boot-test-0 (cloud-init)" in verify_cloud_init(
        CONSOLE.replace("boot-test-0 login:", ""), DEMO
    )


def test_a_key_that_does_not_decode_is_matched_by_its_comment() -> None:
    """cloud-init shows ``?`` for a body that is not base64 (the recipe's placeholder key)."""
    placeholder = (
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIImagekitPlaceholderKeyReplaceMeWithYourOwn0000 debian@example"
    )
    want = CloudInitExpectation("DataSourceOpenNebula", "", (), (placeholder,))
    assert verify_cloud_init(CONSOLE, want)[-1] == "1 SSH key(s) (cloud-init)"


@pytest.mark.parametrize(
    "body",
    ["AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l1GKJl", "AAAAkey1", "not base64!"],
)
def test_fingerprints_are_cloud_inits(body: str) -> None:
    """canonical/cloud-init 22.4.2 cloudinit/config/cc_ssh_authkey_fingerprints.py:50-62
    (``_gen_fingerprint``: sha256 of the base64-decoded body in colon pairs, ``?`` when it does
    not decode) is the oracle."""
    assert key_fingerprint(body) == _gen_fingerprint(body)


def test_expected_hostname_follows_the_datasource() -> None:
    """canonical/cloud-init 22.4.2 cloudinit/sources/DataSourceOpenNebula.py:477-480 takes the
    first of SET_HOSTNAME, HOSTNAME, PUBLIC_IP, IP_PUBLIC, ETH0_IP *present* in context.sh (an
    empty one too); cloudinit/sources/__init__.py:758-777 (``get_hostname``) turns an IPv4
    address into ``ip-a-b-c-d`` and keeps the first label of a dotted name."""
    ctx = ResolvedContext(3, {"HOSTNAME": "", "PUBLIC_IP": "10.0.0.9", "ETH0_IP": "10.1.1.1"})
    assert expect_cloud_init(ctx, IsoFlavor.OPENNEBULA).hostname == ""
    # context.seed skips empty hostname keys
    assert (
        expect_cloud_init(ctx, IsoFlavor.NOCLOUD).hostname == "ip-10-0-0-9"
    )  # context.seed skips empty ones
    named = ResolvedContext(3, {"SET_HOSTNAME": "web.example.org", "ETH0_MAC": "02:00:0A:00:00:01"})
    want = expect_cloud_init(named, IsoFlavor.CONFIGDRIVE)
    assert (want.datasource, want.hostname, want.nics) == ("DataSourceConfigDrive", "web", ())
    assert cloud_init_hostname("192.168.122.1") == "ip-192-168-122-1"


def test_wait_for_text_sees_an_unfinished_last_line(tmp_path: Path) -> None:
    """A getty prompt has no newline until someone types: wait_for_line would never see it."""
    vm = QemuVm(VmSpec(disk=tmp_path / "none.qcow2", disk_format="qcow2", firmware=Firmware.BIOS), tmp_path)
    vm.serial_log.write_text("Debian GNU/Linux 12 web ttyS0\n\nweb login: ")
    vm._proc = subprocess.Popen(["sleep", "60"])  # stands in for QEMU: running
    try:
        match = vm.wait_for_text(re.compile(r"(\S+) login: "), timeout=5)
        assert match is not None and match.group(1) == "web"
        assert vm.wait_for_line(re.compile("login:"), timeout=0) is None
    finally:
        vm._proc.kill()
        vm._proc.wait()


# --- boot-test's watch loop over a scripted console: which verdicts it waits for -------------


class ScriptedVm:
    """Stands in for QemuVm: the console is fixed, lines are handed out in order."""

    accel = Accel.TCG

    def __init__(self, console: str) -> None:
        self.text = console
        self.lines = console.splitlines()

    def elapsed(self) -> float:
        return 1.0

    def console(self) -> str:
        return self.text

    def wait_for_line(self, pattern: re.Pattern[str], timeout: float) -> str | None:
        while self.lines:
            line = self.lines.pop(0)
            if pattern.search(line):
                return line
        return None

    def wait_for_text(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str] | None:
        return pattern.search(self.text)


AGENT_LINE = (
    'IMAGEKIT-CONTEXT {"status":"ok","hostname":"boot-test-0","nics":[{"name":"ETH0","device":"eth0",'
    f'"mac":"02:00:c0:a8:7a:01","ip":"{IP}"}}],"user":"root","ssh_keys":1,"cloud_init":%s}}\n'
)
CTX = ResolvedContext(
    0, {"SET_HOSTNAME": "boot-test-0", "ETH0_MAC": "02:00:c0:a8:7a:01", "ETH0_IP": IP, "SSH_PUBLIC_KEY": KEY}
)


def _watch_console(console: str) -> BootResult:
    test = BootTest(image=Path("vm.qcow2"), template=Path("vm.one"))  # a template: not the demo
    return _watch(cast(QemuVm, ScriptedVm(console)), test, CTX, Firmware.BIOS, Accel.TCG, ())


def test_the_agent_alone_is_its_only_verdict() -> None:
    result = _watch_console(AGENT_LINE % "false")
    assert result.agent == "imagekit" and not any("cloud-init" in c for c in result.checks)


def test_with_both_agents_cloud_init_is_checked_too() -> None:
    result = _watch_console(AGENT_LINE % "true" + CONSOLE)
    assert result.agent == "both"
    assert result.checks[0] == "hostname boot-test-0" and list(result.checks[-4:]) == verify_cloud_init(
        CONSOLE, DEMO
    )


@pytest.mark.parametrize(
    ("console", "rule"),
    [
        (
            AGENT_LINE % "true" + CONSOLE.replace("DataSourceOpenNebula [seed", "DataSourceNone [seed"),
            "boot-test.datasource",
        ),
        (AGENT_LINE % "true" + CONSOLE.replace("finished at", "is at"), "boot-test.timeout"),
        (CONSOLE.replace("DataSourceOpenNebula [seed", "DataSourceNone [seed"), "boot-test.datasource"),
    ],
)
def test_a_cloud_init_that_read_no_context_fails_the_boot(console: str, rule: str) -> None:
    with pytest.raises(VerificationError) as info:
        _watch_console(console)
    assert info.value.rule == rule
