"""The context agent on the build host: its files, its parser and a whole run against stubs.

The agent's real home is a booted guest (tests/boot); here ``ip``, ``useradd``, ``chpasswd``…
are stand-ins that log their arguments, and the files it writes land in a fake root.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from context.contextsh import RESERVED_NAMES, RESERVED_PREFIXES, render_context_sh
from imagekit.agent import (
    AGENT_FILES,
    ENABLE_LINK,
    SCRIPT_PATH,
    UNIT_PATH,
    AgentReport,
    find_report,
    install_agent,
    parse_report,
)
from imagekit.errors import DataError, InputError

SCRIPT = next(f for f in AGENT_FILES if f.path == SCRIPT_PATH).content
MAC = "02:00:c0:a8:7a:0a"


def test_install_agent_writes_files_and_enables_the_unit(tmp_path: Path) -> None:
    install_agent(tmp_path)
    script = tmp_path / "usr/local/sbin/imagekit-context"
    assert script.read_bytes() == SCRIPT
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    unit = tmp_path / UNIT_PATH.relative_to("/")
    assert "ExecStart=/usr/local/sbin/imagekit-context" in unit.read_text()
    link = tmp_path / ENABLE_LINK.relative_to("/")
    assert os.readlink(link) == str(UNIT_PATH)
    install_agent(tmp_path)  # idempotent
    assert os.readlink(link) == str(UNIT_PATH)


def test_install_agent_needs_a_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a directory"):
        install_agent(tmp_path / "missing")


def test_unit_runs_before_network_and_ssh() -> None:
    unit = next(f for f in AGENT_FILES if f.path == UNIT_PATH).content.decode()
    before = next(line for line in unit.splitlines() if line.startswith("Before="))
    for target in ("network-pre.target", "network-online.target", "ssh.service"):
        assert target in before
    assert "WantedBy=multi-user.target" in unit


def test_parse_report_and_find_it_in_console_noise() -> None:
    console = (
        "[  OK  ] Started foo\n"
        '\x1b[K IMAGEKIT-CONTEXT {"status":"ok","hostname":"vm-1","nics":[{"name":"ETH0","device":"enp0s1",'
        '"mac":"02:00:C0:A8:7A:0A","ip":"192.168.122.10","prefix":24}],"user":"root","ssh_keys":2,'
        '"password":true,"start_script":0,"init_scripts":["init.sh:0","b.sh:1"],"files":["context.sh"],'
        '"errors":[]}\r\n'
    )
    report = find_report(console)
    assert report is not None
    assert report.hostname == "vm-1"
    assert report.nics[0].mac == MAC and report.nics[0].ip == "192.168.122.10"
    assert report.init_script_status() == {"init.sh": "0", "b.sh": "1"}
    assert report.ssh_keys == 2 and report.password and report.start_script == 0
    assert find_report("no agent here\n") is None


def test_parse_report_rejects_garbage() -> None:
    with pytest.raises(DataError, match="malformed agent report"):
        parse_report('{"hostname": "x"}')
    with pytest.raises(DataError):
        parse_report("{not json")


# --- running the script --------------------------------------------------------------------


def _stub(bin_dir: Path, name: str, body: str = "") -> None:
    path = bin_dir / name
    path.write_text(f'#!/bin/sh\necho "{name} $*" >> "{bin_dir}/calls"\n{body}\nexit 0\n')
    path.chmod(0o755)


def _fake_host(tmp_path: Path) -> dict[str, str]:
    root, stubs, sysnet = tmp_path / "root", tmp_path / "stubs", tmp_path / "sys"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 old-name\n")
    (sysnet / "enp0s1").mkdir(parents=True)
    (sysnet / "enp0s1/address").write_text(MAC + "\n")
    (sysnet / "enp0s1/mtu").write_text("1400\n")
    stubs.mkdir()
    (tmp_path / "console").write_text("")
    for name in ("useradd", "chpasswd", "chown", "hostname", "modprobe", "udevadm", "blkid"):
        _stub(stubs, name, "cat > /dev/null" if name == "chpasswd" else "")
    # `ip -o -4 addr show dev X` is how the agent reads back what the kernel has.
    _stub(stubs, "ip", '[ "$1 $2" = "-o -4" ] && echo "2: enp0s1 inet 192.168.122.10/24 brd x scope global"')
    _stub(stubs, "getent", 'echo "root:x:0:0:root:/root:/bin/bash"')
    return {
        "PATH": os.environ["PATH"],
        "IMAGEKIT_CONTEXT_ROOT": str(root),
        "IMAGEKIT_CONTEXT_STUBS": str(stubs),
        "IMAGEKIT_CONTEXT_SYSNET": str(sysnet),
        "IMAGEKIT_CONTEXT_RUN_DIR": str(tmp_path / "run"),
        "IMAGEKIT_CONTEXT_CONSOLE": str(tmp_path / "console"),
    }


def _run_agent(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["bash", "-c", SCRIPT.decode(), "imagekit-context", *args],
        env=env,
        capture_output=True,
        timeout=60,
        check=True,
    )


def test_agent_applies_a_context(tmp_path: Path) -> None:
    env = _fake_host(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    cd = tmp_path / "cd"
    cd.mkdir()
    variables = {
        "SET_HOSTNAME": "web 1.example.org",  # the space becomes '-' as in one-context
        "ETH0_MAC": MAC.upper(),
        "ETH0_IP": "192.168.122.10",
        "ETH0_MASK": "255.255.255.0",
        "ETH0_GATEWAY": "192.168.122.254",
        "ETH0_DNS": "192.168.122.254 8.8.8.8",
        "ETH1_MAC": "02:00:00:00:00:99",  # no such NIC: an error, the rest still applies
        "SSH_PUBLIC_KEY": "ssh-ed25519 AAAAkey1 a@b\n\n# comment\nssh-rsa AAAAkey2 c@d",
        "PASSWORD_BASE64": "c2VjcmV0",
        "START_SCRIPT_BASE64": base64.b64encode(b'echo "start $ETH0_IP" > "$OUT/start"').decode(),
        "INIT_SCRIPTS": "a.sh b.sh missing.sh",
        "OUT": str(out),
        "MOTD": 'it\'s "quoted" $HOME `id`',
    }
    # IFS would break an agent that sources context.sh into its own shell (the writer refuses it).
    (cd / "context.sh").write_text(render_context_sh(variables) + "IFS='x'\n")
    (cd / "a.sh").write_text('#!/bin/sh\necho "a $ETH0_IP $(cat data.txt)" > "$OUT/a"\n')
    (cd / "b.sh").write_text("exit 3\n")  # no #!: run with /bin/sh like one-context
    (cd / "data.txt").write_text("payload")
    (cd / "a.sh").chmod(0o444)  # ISO files are read-only; the agent must still run them
    env["IMAGEKIT_CONTEXT_DIR"] = str(cd)

    proc = _run_agent(env)

    line = proc.stdout.decode().strip()
    assert line.startswith("IMAGEKIT-CONTEXT ")
    report = parse_report(line.split(" ", 1)[1])
    assert (tmp_path / "console").read_text().strip() == line
    assert report.status == "error"
    assert report.hostname == "web-1.example.org"
    assert [(n.device, n.ip, n.prefix, n.gateway, n.mtu) for n in report.nics] == [
        ("enp0s1", "192.168.122.10", 24, "192.168.122.254", "1400")
    ]
    assert report.errors == (
        "ETH1: no interface with MAC 02:00:00:00:00:99",
        "init_scripts: b.sh exited with status 3",
        "init_scripts: missing.sh is not on the CD",
    )
    assert report.ssh_keys == 2 and report.password and report.start_script == 0
    assert report.init_scripts == ("a.sh:0", "b.sh:3", "missing.sh:missing")
    assert set(report.files) == {"context.sh", "a.sh", "b.sh", "data.txt"}

    root = Path(env["IMAGEKIT_CONTEXT_ROOT"])
    assert (root / "etc/hostname").read_text() == "web-1.example.org\n"
    assert (root / "etc/hosts").read_text() == "127.0.0.1 localhost\n127.0.1.1\tweb-1.example.org web-1\n"
    assert (root / "etc/resolv.conf").read_text().splitlines()[1:] == [
        "nameserver 192.168.122.254",
        "nameserver 8.8.8.8",
    ]
    keys = root / "root/.ssh/authorized_keys"
    assert keys.read_text() == "ssh-ed25519 AAAAkey1 a@b\nssh-rsa AAAAkey2 c@d\n"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert (out / "start").read_text() == "start 192.168.122.10\n"
    assert (out / "a").read_text() == "a 192.168.122.10 payload\n"
    calls = (Path(env["IMAGEKIT_CONTEXT_STUBS"]) / "calls").read_text().splitlines()
    assert "ip -4 addr replace 192.168.122.10/24 dev enp0s1" in calls
    assert "ip -4 route replace default via 192.168.122.254 dev enp0s1" in calls
    assert "chpasswd " in calls  # plain password (PASSWORD_BASE64), not -e

    # A second boot: keys are not duplicated.
    _run_agent(env)
    assert keys.read_text().count("key1") == 1


def test_interfaces_the_context_configures_are_left_to_the_agent(tmp_path: Path) -> None:
    """The builder's ifupdown file asks DHCP for eth0; an interface the context configures
    becomes ``manual`` there (ifup would otherwise wait for a DHCP server the network may not
    have, at boot and again at shutdown), back to DHCP when the context no longer configures it;
    a file somebody else wrote is left alone."""
    from imagekit.builder.firstboot import INTERFACES_DHCP, INTERFACES_LOOPBACK

    env = _fake_host(tmp_path)
    root = Path(env["IMAGEKIT_CONTEXT_ROOT"])
    (root / "etc/network").mkdir()
    interfaces = root / "etc/network/interfaces"
    interfaces.write_text(INTERFACES_DHCP.replace("eth0", "enp0s1"))
    cd = tmp_path / "cd"
    cd.mkdir()
    env["IMAGEKIT_CONTEXT_DIR"] = str(cd)
    static = {"ETH0_MAC": MAC, "ETH0_IP": "192.168.122.10", "ETH0_MASK": "255.255.255.0"}

    (cd / "context.sh").write_text(render_context_sh(static))
    _run_agent(env)
    expected = INTERFACES_DHCP + "\nallow-hotplug enp0s1\niface enp0s1 inet manual\n"
    assert interfaces.read_text() == expected  # eth0 is not this host's: still DHCP

    (cd / "context.sh").write_text(render_context_sh({**static, "ETH0_METHOD": "dhcp"}))
    _run_agent(env)
    assert interfaces.read_text() == INTERFACES_DHCP

    for theirs in (INTERFACES_LOOPBACK, "# my own\nauto enp0s1\niface enp0s1 inet dhcp\n"):
        interfaces.write_text(theirs)
        (cd / "context.sh").write_text(render_context_sh(static))
        _run_agent(env)
        assert interfaces.read_text() == theirs
    assert not list((root / "etc/network").glob(".interfaces.*"))


def test_agent_without_a_cd_reports_no_context(tmp_path: Path) -> None:
    env = _fake_host(tmp_path)
    if any(Path("/dev").glob("sr*")):
        pytest.skip("this host has an optical drive; the agent would wait for it")
    proc = _run_agent(env)
    report = parse_report(proc.stdout.decode().split(" ", 1)[1])
    assert report.status == "no-context" and report.errors == ()


def test_agent_reports_a_cd_without_context_sh(tmp_path: Path) -> None:
    env = _fake_host(tmp_path)
    (tmp_path / "cd").mkdir()
    env["IMAGEKIT_CONTEXT_DIR"] = str(tmp_path / "cd")
    report = parse_report(_run_agent(env).stdout.decode().split(" ", 1)[1])
    assert report.status == "error"
    assert report.errors == ("the CONTEXT CD has no context.sh",)


def test_agent_refuses_a_fake_root_without_stubs(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "IMAGEKIT_CONTEXT_ROOT": str(tmp_path)}
    proc = subprocess.run(["bash", "-c", SCRIPT.decode(), "x"], env=env, capture_output=True, timeout=30)
    assert proc.returncode == 2


def _parse_with_agent(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "context.sh"
    path.write_text(text)
    proc = _run_agent({"PATH": os.environ["PATH"]}, "--print-context", str(path))
    parts = proc.stdout.decode().split("\0")[:-1]
    return dict(zip(parts[::2], parts[1::2], strict=True))


def test_agent_reads_old_style_double_quoted_files(tmp_path: Path) -> None:
    text = '# Context variables generated by OpenNebula\nhostname="vm-1"\nIP_PUBLIC="10.0.0.1"\nPATH="/x"\n'
    assert _parse_with_agent(tmp_path, text) == {"hostname": "vm-1", "IP_PUBLIC": "10.0.0.1", "PATH": "/x"}


_values = st.text(st.characters(codec="utf-8", blacklist_characters="\0"), max_size=40)
_keys = st.from_regex(r"[A-Z][A-Z0-9_]{0,10}", fullmatch=True).filter(
    lambda k: k not in RESERVED_NAMES and not k.startswith(RESERVED_PREFIXES)
)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=6))
def test_agent_parser_round_trips_context_sh(
    tmp_path_factory: pytest.TempPathFactory, variables: dict[str, str]
) -> None:
    """Whatever render_context_sh writes, the agent reads back unchanged (bash source semantics)."""
    tmp = tmp_path_factory.mktemp("ctx")
    # render_context_sh refuses reserved names (PATH, IFS…); the agent must survive them anyway,
    # so they are written by hand here.
    got = _parse_with_agent(tmp, render_context_sh(variables) + "PATH='/nowhere'\nIFS='x'\n")
    assert got.pop("PATH") == "/nowhere" and got.pop("IFS") == "x"
    assert got == variables


def test_agent_files_parse_as_json_line(tmp_path: Path) -> None:
    env = _fake_host(tmp_path)
    cd = tmp_path / "cd"
    cd.mkdir()
    (cd / "context.sh").write_text(render_context_sh({"HOSTNAME": 'we"ird\\name\ttab'}))
    env["IMAGEKIT_CONTEXT_DIR"] = str(cd)
    line = _run_agent(env).stdout.decode().strip()
    data = json.loads(line.split(" ", 1)[1])
    assert data["hostname"] == "we-ird-name-tab"
    assert data["status"] == "ok"


@pytest.mark.parametrize(
    ("installed", "disabled", "expected"), [(False, False, False), (True, False, True), (True, True, False)]
)
def test_agent_reports_whether_cloud_init_also_reads_the_context(
    tmp_path: Path, installed: bool, disabled: bool, expected: bool
) -> None:
    """With ``context_agent: both`` boot-test must also wait for cloud-init's verdict (issue 8.6)."""
    env = _fake_host(tmp_path)
    root = Path(env["IMAGEKIT_CONTEXT_ROOT"])
    if installed:
        (root / "usr/bin").mkdir(parents=True)
        _stub(root / "usr/bin", "cloud-init")
    if disabled:
        (root / "etc/cloud").mkdir(parents=True)
        (root / "etc/cloud/cloud-init.disabled").write_text("")
    (tmp_path / "cd").mkdir()
    (tmp_path / "cd/context.sh").write_text(render_context_sh({"SET_HOSTNAME": "h"}))
    env["IMAGEKIT_CONTEXT_DIR"] = str(tmp_path / "cd")
    report = parse_report(_run_agent(env).stdout.decode().split(" ", 1)[1])
    assert report.status == "ok" and report.cloud_init is expected


# --- user data ------------------------------------------------------------------------------


def _run_with_context(tmp_path: Path, env: dict[str, str], values: dict[str, str]) -> AgentReport:
    cd = tmp_path / "cd"
    cd.mkdir(exist_ok=True)
    (cd / "context.sh").write_text(render_context_sh(values))
    env["IMAGEKIT_CONTEXT_DIR"] = str(cd)
    return parse_report(_run_agent(env).stdout.decode().split(" ", 1)[1])


def test_agent_runs_a_user_data_script_once_per_vm(tmp_path: Path) -> None:
    """cloud-init's OpenNebula datasource reads USER_DATA (else USERDATA) and base64-decodes it
    when USERDATA_ENCODING is base64 (canonical/cloud-init
    cloudinit/sources/DataSourceOpenNebula.py, ``read_context_disk_dir``); a ``#!`` part runs
    once per instance (cloud-init's per-instance semaphore). econe puts the client's base64
    UserData in EC2_USER_DATA (OpenNebula/one src/cloud/ec2/lib/EC2QueryServer.rb, 2.0+)."""
    env = _fake_host(tmp_path)
    ran = tmp_path / "ran"
    script = f'#!/bin/sh\necho "ran in $PWD as VM $VMID" >> {ran}\n'
    encoded = base64.b64encode(script.encode()).decode()
    context = {"VMID": "7", "USER_DATA": encoded, "USERDATA_ENCODING": "base64"}

    first = _run_with_context(tmp_path, env, context)
    assert (first.status, first.user_data, first.user_data_ran_before) == ("ok", 0, False)
    assert ran.read_text() == f"ran in {tmp_path / 'run/cd'} as VM 7\n"
    marker = Path(env["IMAGEKIT_CONTEXT_ROOT"]) / "var/lib/imagekit-context/user-data.7"
    assert marker.read_text() == "0\n"

    again = _run_with_context(tmp_path, env, context)  # the next boot of the same VM
    assert (again.status, again.user_data, again.user_data_ran_before) == ("ok", None, True)
    assert ran.read_text().count("ran in") == 1

    other = _run_with_context(tmp_path, env, {**context, "VMID": "8"})  # another VM, same image
    assert other.user_data == 0 and ran.read_text().count("ran in") == 2


def test_agent_runs_econe_user_data_and_reports_failures(tmp_path: Path) -> None:
    env = _fake_host(tmp_path)
    script = base64.b64encode(b"#!/bin/bash\nexit 3\n").decode()
    report = _run_with_context(tmp_path, env, {"VMID": "1", "EC2_USER_DATA": script})
    assert (report.status, report.user_data) == ("error", 3)
    assert report.errors == ("user_data: exit status 3",)


@pytest.mark.parametrize(
    "values",
    [
        {"USER_DATA": "#cloud-config\nruncmd: [touch /x]\n"},  # cloud-init's, not ours
        {"USER_DATA": base64.b64encode(b"#!/bin/sh\ntrue\n").decode()},  # base64 without the encoding
    ],
    ids=["cloud-config", "undeclared-base64"],
)
def test_agent_leaves_user_data_that_is_not_a_script(tmp_path: Path, values: dict[str, str]) -> None:
    env = _fake_host(tmp_path)
    report = _run_with_context(tmp_path, env, {"VMID": "2", **values})
    assert (report.status, report.user_data, report.user_data_ran_before) == ("ok", None, False)
    assert not (Path(env["IMAGEKIT_CONTEXT_ROOT"]) / "var/lib/imagekit-context").exists()
