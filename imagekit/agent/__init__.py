"""The in-image context agent: a bash script and a systemd unit that apply an OpenNebula
CONTEXT CD at boot with one-context's semantics (see ``imagekit-context.sh`` for what it does).

The builder installs it into a root tree, ``imagekit customize`` uploads the same
:data:`AGENT_FILES` through libguestfs:

    from imagekit.agent import install_agent, AGENT_PACKAGES
    packages += AGENT_PACKAGES
    install_agent(rootfs)   # after the packages are in

The agent prints one line on the serial console; :func:`parse_report` reads it back.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath

from imagekit.atomic import write_atomically
from imagekit.errors import DataError, InputError

#: Debian packages the agent needs beyond a minbase system with systemd (bash, coreutils,
#: util-linux, mount and passwd are already there; listed so nothing depends on that).
AGENT_PACKAGES: tuple[str, ...] = ("iproute2", "util-linux", "mount", "passwd", "kmod")

#: Commands the agent runs; ``customize`` checks an existing image has them.
AGENT_COMMANDS: tuple[str, ...] = (
    "bash", "ip", "blkid", "mount", "umount", "chpasswd", "useradd", "getent", "base64",
    "timeout", "env", "awk", "sed", "grep",
)  # fmt: skip

REPORT_PREFIX = "IMAGEKIT-CONTEXT "
UNIT_NAME = "imagekit-context.service"
SCRIPT_PATH = PurePosixPath("/usr/local/sbin/imagekit-context")
UNIT_PATH = PurePosixPath("/etc/systemd/system") / UNIT_NAME
#: The enablement symlink systemctl enable would create (WantedBy=multi-user.target).
ENABLE_LINK = PurePosixPath("/etc/systemd/system/multi-user.target.wants") / UNIT_NAME


@dataclass(frozen=True)
class AgentFile:
    path: PurePosixPath  # absolute, inside the image
    mode: int
    content: bytes


def _data(name: str) -> bytes:
    return resources.files(__name__).joinpath(name).read_bytes()


AGENT_FILES: tuple[AgentFile, ...] = (
    AgentFile(SCRIPT_PATH, 0o755, _data("imagekit-context.sh")),
    AgentFile(UNIT_PATH, 0o644, _data("imagekit-context.service")),
)


def install_agent(root: Path) -> None:
    """Install the agent into the root tree ``root`` and enable its unit (no chroot needed)."""
    if not root.is_dir():
        raise InputError("not a directory", where=str(root))
    for f in AGENT_FILES:
        dest = root / f.path.relative_to("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(dest, f.content, mode=f.mode)
    link = root / ENABLE_LINK.relative_to("/")
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(str(UNIT_PATH))


@dataclass(frozen=True)
class NicReport:
    name: str
    device: str
    mac: str
    ip: str
    prefix: int | None = None
    gateway: str = ""
    mtu: str = ""


@dataclass(frozen=True)
class AgentReport:
    """The agent's console line, parsed. ``status`` is ``ok``, ``error`` or ``no-context``."""

    status: str
    hostname: str = ""
    nics: tuple[NicReport, ...] = ()
    user: str = ""
    ssh_keys: int = 0
    password: bool = False
    start_script: int | None = None
    init_scripts: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    uptime: str = ""
    cloud_init: bool = False  # cloud-init is installed and enabled too (context_agent: both)
    user_data: int | None = None  # the user-data script's exit status, when it ran this boot
    user_data_ran_before: bool = False  # it had already run for this VM (it runs once)

    def init_script_status(self) -> dict[str, str]:
        """``{"init.sh": "0"}``: each init script and its exit status (or ``missing``)."""
        return dict(item.rpartition(":")[::2] for item in self.init_scripts)


_LINE = re.compile(re.escape(REPORT_PREFIX) + r"(\{.*\})")


def find_report(text: str) -> AgentReport | None:
    """The first agent line in console output ``text`` (None if there is none yet)."""
    for line in text.splitlines():
        m = _LINE.search(line)
        if m:
            return parse_report(m.group(1))
    return None


def parse_report(payload: str) -> AgentReport:
    try:
        data = json.loads(payload)
        nics = tuple(
            NicReport(
                name=str(n["name"]),
                device=str(n["device"]),
                mac=str(n["mac"]).lower(),
                ip=str(n["ip"]),
                prefix=None if n.get("prefix") is None else int(n["prefix"]),
                gateway=str(n.get("gateway", "")),
                mtu=str(n.get("mtu", "")),
            )
            for n in data.get("nics", [])
        )
        return AgentReport(
            status=str(data["status"]),
            hostname=str(data.get("hostname", "")),
            nics=nics,
            user=str(data.get("user", "")),
            ssh_keys=int(data.get("ssh_keys", 0)),
            password=bool(data.get("password", False)),
            start_script=None if data.get("start_script") is None else int(data["start_script"]),
            init_scripts=tuple(str(s) for s in data.get("init_scripts", [])),
            files=tuple(str(s) for s in data.get("files", [])),
            errors=tuple(str(s) for s in data.get("errors", [])),
            uptime=str(data.get("uptime", "")),
            cloud_init=bool(data.get("cloud_init", False)),
            user_data=None if data.get("user_data") is None else int(data["user_data"]),
            user_data_ran_before=bool(data.get("user_data_ran_before", False)),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"malformed agent report {payload[:200]!r}: {exc}") from None
