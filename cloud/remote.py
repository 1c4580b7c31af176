"""Running commands on a host: OpenSSH's client for the others, here for ``localhost`` (HID 0).

As 1.4's drivers did (``ssh $HOST cmd``, ``scp SRC DST``), a host is reached with the ``ssh`` and
``scp`` of the front end, never a library of our own: what a site set up for ``ssh node1``
(keys, agents, jump hosts in ``~/.ssh/config``) works here too. Every call goes through
:func:`imagekit.run.run`, non-interactively (``BatchMode=yes``: a missing key is an error,
never a prompt) and with a bounded ``ConnectTimeout``.

The remote side gets one command line, which its login shell splits again: every argument is
``shlex.quote``d there, so no host attribute or VM value can become an extra argument or shell
syntax. A script (a probe) goes over stdin to ``sh -s``: nothing is left on the host.

The SSH options come from ``ETC/hosts.conf`` (oned's template syntax), parsed once into
:class:`SshSettings`: ``SSH_IDENTITY`` (a private key file), ``SSH_KNOWN_HOSTS`` (a known_hosts
file), ``SSH_STRICT_HOST_KEY_CHECKING`` (``yes``, ``accept-new`` or ``no``; default ``yes``) and
``SSH_CONNECT_TIMEOUT`` (seconds, default 10), ``SSH_CONTROL_PERSIST`` (seconds an idle shared
connection stays open, default 60; 0: a connection per command) and ``LIBVIRT_DAEMON``
(``system`` or ``session``: the libvirt daemon a ``--vmm kvm`` host's ``qemu+ssh://`` URI
names, ``cloud/hostlibvirt.py``).

Commands to one host share one connection (OpenSSH's ``ControlMaster``, as OpenNebula's own
``~oneadmin/.ssh/config`` sets up): a deployment's dozen commands pay one key exchange instead
of a dozen. The sockets live in :data:`CONTROL_DIR`, a directory only this user may enter; one
that is not (made by someone else first) turns sharing off rather than trusting it.

    runner = runner_for(host, site.ssh)
    runner.run(["sha256sum", "--", ".imagekit/images/" + digest])
"""

from __future__ import annotations

import enum
import logging
import os
import shlex
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cloud.hosts import Address, Host
from context.template import load_template
from imagekit.errors import CommandError, InputError
from imagekit.run import run

log = logging.getLogger(__name__)

CONFIG_NAME = "hosts.conf"
# Short (a socket path holds 108 bytes; %C adds 40) and per user: never a directory others share.
CONTROL_DIR = Path(f"/tmp/imagekit-ssh-{os.getuid()}")
DEFAULT_TIMEOUT = 120.0  # a whole command on a host (a copy of an image gets its own)
SSH_UNREACHABLE = 255  # ssh's own exit status: the connection (not the command) failed
_CHECKING = ("yes", "accept-new", "no")
# A non-interactive login's PATH has no sbin directories for a user but root; mkswap, mkfs.* live
# there. The command runs as the arguments of this fixed script, so it stays a list of words.
_WITH_SBIN = ("sh", "-c", 'PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" exec "$@"', "sh")


class LibvirtDaemon(enum.StrEnum):
    """Which libvirt daemon a ``--vmm kvm`` host's URI names (``LIBVIRT_DAEMON``): the host's
    ``system`` one (1.4's ``qemu:///system``; the SSH user needs its socket's rights) or the SSH
    user's own ``session`` one (started on demand; QEMU runs as that user, TCG or /dev/kvm)."""

    SYSTEM = "system"
    SESSION = "session"


@dataclass(frozen=True)
class SshSettings:
    identity: Path | None = None
    known_hosts: Path | None = None
    strict_host_key_checking: str = "yes"
    connect_timeout: int = 10
    libvirt: LibvirtDaemon = LibvirtDaemon.SYSTEM
    control_persist: int = 60  # seconds; 0: no shared connections

    def options(self) -> list[str]:
        """The ``-o`` options every ssh and scp call gets."""
        options = [
            "-o", "BatchMode=yes",
            "-o", f"StrictHostKeyChecking={self.strict_host_key_checking}",
            "-o", f"ConnectTimeout={self.connect_timeout}",
            "-o", "ServerAliveInterval=15",
            "-o", "ServerAliveCountMax=2",
        ]  # fmt: skip
        if self.control_persist and _private_dir(CONTROL_DIR):
            options += ["-o", "ControlMaster=auto", "-o", f"ControlPath={CONTROL_DIR}/%C",
                        "-o", f"ControlPersist={self.control_persist}s"]  # fmt: skip
        if self.known_hosts is not None:
            options += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.identity is not None:
            options += ["-o", "IdentitiesOnly=yes", "-i", str(self.identity)]
        return options


def _private_dir(path: Path) -> bool:
    """``path`` is (made now if missing) a directory of this user that nobody else may enter."""
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.lstat()
    except OSError as err:
        log.warning("%s: %s: each SSH command opens its own connection", path, err.strerror)
        return False
    if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077:
        return True
    log.warning(
        "%s is not a private directory of this user: each SSH command opens its own connection", path
    )
    return False


def _value(path: Path, name: str) -> tuple[str, str] | None:
    tmpl = load_template(path)
    attr = tmpl.first(name)
    if attr is None:
        return None
    where = f"{tmpl.source}:{attr.line}:{attr.column}"
    if not isinstance(attr.value, str):
        raise InputError(f"{name}: expected a single value, got a vector", where=where)
    return attr.value, where


def load_ssh_settings(etc: Path) -> SshSettings:
    """``ETC/hosts.conf``'s SSH options; the defaults when the file is absent (called by
    ``cloud.siteconfig``)."""
    path = etc / CONFIG_NAME
    if not path.exists():
        return SshSettings()
    names = ("SSH_IDENTITY", "SSH_KNOWN_HOSTS", "SSH_STRICT_HOST_KEY_CHECKING", "SSH_CONNECT_TIMEOUT",
             "SSH_CONTROL_PERSIST", "LIBVIRT_DAEMON")  # fmt: skip
    values = {n: _value(path, n) for n in names}
    paths: dict[str, Path | None] = {}
    for name in ("SSH_IDENTITY", "SSH_KNOWN_HOSTS"):
        found = values[name]
        paths[name] = None
        if found and found[0]:
            if not Path(found[0]).is_absolute():
                raise InputError(f"{name}: an absolute path, got {found[0]!r}", where=found[1])
            paths[name] = Path(found[0])
    checking = SshSettings.strict_host_key_checking
    if (found := values["SSH_STRICT_HOST_KEY_CHECKING"]) is not None:
        if found[0] not in _CHECKING:
            raise InputError(f"SSH_STRICT_HOST_KEY_CHECKING: one of {', '.join(_CHECKING)}", where=found[1])
        checking = found[0]
    timeout = SshSettings.connect_timeout
    if (found := values["SSH_CONNECT_TIMEOUT"]) is not None:
        if not found[0].isdigit() or not 1 <= int(found[0]) <= 300:
            raise InputError(f"SSH_CONNECT_TIMEOUT: seconds, 1-300, got {found[0]!r}", where=found[1])
        timeout = int(found[0])
    persist = SshSettings.control_persist
    if (found := values["SSH_CONTROL_PERSIST"]) is not None:
        if not found[0].isdigit() or not 0 <= int(found[0]) <= 3600:
            raise InputError(f"SSH_CONTROL_PERSIST: seconds, 0-3600, got {found[0]!r}", where=found[1])
        persist = int(found[0])
    daemon = SshSettings.libvirt
    if (found := values["LIBVIRT_DAEMON"]) is not None:
        if found[0] not in tuple(LibvirtDaemon):
            raise InputError(f"LIBVIRT_DAEMON: one of {', '.join(LibvirtDaemon)}", where=found[1])
        daemon = LibvirtDaemon(found[0])
    return SshSettings(paths["SSH_IDENTITY"], paths["SSH_KNOWN_HOSTS"], checking, timeout, daemon, persist)


class HostUnreachable(CommandError):
    """ssh could not reach the host or log in (its own exit status 255), as opposed to a command
    that ran there and failed: the host stopped answering. ``reason`` is ssh's last word."""

    @property
    def reason(self) -> str:
        return self.stderr_tail


class Runner(Protocol):
    """Where a host's commands run."""

    @property
    def name(self) -> str: ...

    def run(
        self, argv: Sequence[str], *, input: bytes | None = None, timeout: float = DEFAULT_TIMEOUT,
        step: str = "remote",
    ) -> subprocess.CompletedProcess[bytes]: ...  # fmt: skip

    def script(self, text: str, *, timeout: float = DEFAULT_TIMEOUT, step: str = "remote") -> str: ...

    def put(self, local: Path, remote: str, *, step: str = "transfer") -> None: ...

    def get(self, remote: str, local: Path, *, step: str = "transfer") -> None: ...


@dataclass(frozen=True)
class LocalRunner:
    """This machine (localhost): the same calls, no SSH."""

    name: str = "localhost"

    def run(
        self, argv: Sequence[str], *, input: bytes | None = None, timeout: float = DEFAULT_TIMEOUT,
        step: str = "remote",
    ) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
        return run(list(argv), input=input, timeout=timeout, step=step)

    def script(self, text: str, *, timeout: float = DEFAULT_TIMEOUT, step: str = "remote") -> str:
        done = run(["sh", "-s"], input=text.encode(), timeout=timeout, step=step)
        return done.stdout.decode("utf-8", "replace")

    def put(self, local: Path, remote: str, *, step: str = "transfer") -> None:
        run(["cp", "--", local, remote], step=step)

    def get(self, remote: str, local: Path, *, step: str = "transfer") -> None:
        run(["cp", "--", remote, local], step=step)


def _target_host(address: Address) -> str:
    """The host as ssh takes it: an IPv6 address without its brackets."""
    return address.host[1:-1] if address.host.startswith("[") else address.host


@dataclass(frozen=True)
class SshRunner:
    """A host reached over SSH at ``address`` (checked by ``cloud.hosts.parse_address``)."""

    name: str
    address: Address
    settings: SshSettings

    def _ssh(self) -> list[str]:
        return ["ssh", *self.settings.options(), "-p", str(self.address.port), "-l", self.address.user]

    def run(
        self, argv: Sequence[str], *, input: bytes | None = None, timeout: float = DEFAULT_TIMEOUT,
        step: str = "remote",
    ) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
        """``argv`` on the host; every argument reaches it as one word, whatever it holds."""
        command = shlex.join([*_WITH_SBIN, *argv])
        full = [*self._ssh(), "--", _target_host(self.address), command]
        try:
            return run(full, input=input, timeout=timeout, step=step)
        except CommandError as err:
            raise self._failure(err, argv, step) from None

    def _failure(self, err: CommandError, argv: Sequence[str], step: str) -> CommandError:
        tail = err.stderr_tail.strip().splitlines()
        if err.returncode in (SSH_UNREACHABLE, -9):  # no connection, or no answer in time
            reason = tail[-1] if tail else "no answer"
            return HostUnreachable([f"ssh {self.address}"], err.returncode, reason, step=step)
        return CommandError([*argv], err.returncode, err.stderr_tail, step=f"{step} on {self.name}")

    def script(self, text: str, *, timeout: float = DEFAULT_TIMEOUT, step: str = "remote") -> str:
        """A shell script, over stdin to ``sh -s``: nothing is written on the host."""
        done = self.run(["sh", "-s"], input=text.encode(), timeout=timeout, step=step)
        return done.stdout.decode("utf-8", "replace")

    def _remote(self, path: str) -> str:
        return f"{self.address.user}@{self.address.host}:{path}"

    def _scp(self, source: str, target: str, step: str) -> None:
        # scp (SFTP since OpenSSH 9) takes the remote path as a path, not as shell words.
        argv = ["scp", "-q", *self.settings.options(), "-P", str(self.address.port), "--", source, target]
        try:
            run(argv, timeout=None, step=step)
        except CommandError as err:
            raise self._failure(err, [argv[0], source, target], step) from None

    def put(self, local: Path, remote: str, *, step: str = "transfer") -> None:
        self._scp(str(local), self._remote(remote), step)

    def get(self, remote: str, local: Path, *, step: str = "transfer") -> None:
        self._scp(self._remote(remote), str(local), step)


def runner_for(host: Host, settings: SshSettings) -> Runner:
    """Where ``host``'s commands run: here for localhost, over SSH for the others."""
    if host.local or host.address is None:
        return LocalRunner(host.name)
    return SshRunner(host.name, host.address, settings)
