"""Remote hosts for the tests: OpenSSH's own ``sshd`` on a free loopback port, and Unix users.

:func:`start_ssh_lab` makes throw-away host and client keys, starts ``sshd -f CONFIG -p PORT -D``
(Debian's openssh-server, which ``tools/setup`` installs) listening on 127.0.0.1 only, and
creates simulated hosts, each a Unix user of its own with a home in a temporary directory,
reachable only through that sshd with the throw-away key: nothing is shared between the hosts
(each has its own ``~/.imagekit``, and its processes are its own). The lab writes an
``etc/hosts.conf`` for imagekit (identity, known_hosts with the lab's host key, strict checking)
so ``cloud/remote.py`` reaches the hosts as a site's front end would. ``stop``/``start`` take
the whole server down and up again on the same port, as a host that stops answering.

Needs root (useradd); :meth:`SshLab.close` removes the users and their homes.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from imagekit.run import run
from tests.processes import descendants

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")  # Debian's sshd refuses to start without it


@dataclass
class SimulatedHost:
    user: str
    home: Path
    port: int

    @property
    def address(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"


@dataclass
class SshLab:
    root: Path  # throw-away directory: keys, sshd_config, the hosts' homes
    port: int
    etc: Path  # an imagekit etc/ with hosts.conf pointing at the lab's keys
    hosts: list[SimulatedHost] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        self.process = subprocess.Popen(
            [SSHD, "-f", str(self.root / "sshd_config"), "-p", str(self.port), "-D", "-e"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(self.root / "sshd.log").open("ab"),
        )
        _wait_listening(self.port, self.process)

    def stop(self) -> None:
        """The host stops answering: no new connection, and the open ones (the front end's
        shared connections) are cut, as a host that goes down cuts them."""
        if self.process is not None and self.process.poll() is None:
            # sshd's per-connection processes, all of them: a session outlives its monitor.
            connections = descendants(self.process.pid)
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=10)
            for pid in connections:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.process = None

    def ssh(self, host: SimulatedHost, command: str, *, check: bool = True) -> str:
        """A shell command run as ``host``'s user through the lab's sshd (for the tests' own checks)."""
        done = run(
            ["ssh", "-F", "none", "-o", "BatchMode=yes",
             "-o", f"UserKnownHostsFile={self.root / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes",
             "-i", str(self.root / "client_key"), "-p", str(self.port),
             "-l", host.user, "127.0.0.1", command],
            check=check, timeout=60,
        )  # fmt: skip
        return done.stdout.decode()

    def close(self) -> None:
        self.stop()
        for host in self.hosts:
            run(["userdel", "--force", host.user], check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on port {port} within {timeout:g} s")


def _keygen(path: Path) -> str:
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "imagekit-test", "-f", str(path)])
    return Path(f"{path}.pub").read_text().strip()


def _config(root: Path, users: list[str]) -> str:
    return "\n".join([
        "ListenAddress 127.0.0.1",
        f"HostKey {root / 'host_key'}",
        f"PidFile {root / 'sshd.pid'}",
        f"AuthorizedKeysFile {root / 'authorized_keys'}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",  # the keys live under /tmp, which is world-writable (with its sticky bit)
        "PermitRootLogin no",
        f"AllowUsers {' '.join(users)}",
        "LogLevel ERROR",
        "MaxStartups 100:30:200",
        "Subsystem sftp /usr/lib/openssh/sftp-server",  # scp speaks SFTP (OpenSSH 9)
        "",
    ])  # fmt: skip


def start_ssh_lab(count: int = 2) -> SshLab:
    """A running sshd and ``count`` simulated hosts (see the module docstring)."""
    root = Path(tempfile.mkdtemp(prefix="imagekit-ssh-"))
    root.chmod(0o711)  # the hosts' users reach their homes below it, and nothing else
    tag = f"{os.getpid() % 100000:05d}"
    users = [f"ikh{tag}{chr(ord('a') + i)}" for i in range(count)]
    lab = SshLab(root=root, port=_free_port(), etc=root / "etc")
    try:
        _keygen(root / "host_key")
        client_pub = _keygen(root / "client_key")
        (root / "authorized_keys").write_text(client_pub + "\n")
        (root / "authorized_keys").chmod(0o644)
        host_pub = Path(f"{root / 'host_key'}.pub").read_text().split()
        (root / "known_hosts").write_text(f"[127.0.0.1]:{lab.port} {host_pub[0]} {host_pub[1]}\n")
        (root / "sshd_config").write_text(_config(root, users))
        for user in users:
            run(["userdel", "--force", "--remove", user], check=False)  # a crashed run's leftover
            home = root / user
            run(["useradd", "--home-dir", str(home), "--create-home", "--shell", "/bin/sh",
                 "--user-group", user])  # fmt: skip
            # "*": no password, and not locked ("!"), which sshd without PAM refuses outright.
            run(["usermod", "--password", "*", user])
            pwd.getpwnam(user)
            lab.hosts.append(SimulatedHost(user, home, lab.port))
        lab.etc.mkdir()
        (lab.etc / "hosts.conf").write_text(
            f'SSH_IDENTITY = "{root / "client_key"}"\n'
            f'SSH_KNOWN_HOSTS = "{root / "known_hosts"}"\n'
            'SSH_STRICT_HOST_KEY_CHECKING = "yes"\n'
            'SSH_CONNECT_TIMEOUT = "5"\n'
            'LIBVIRT_DAEMON = "session"\n'  # each host's user's own libvirtd (--vmm kvm hosts)
        )
        lab.start()
    except BaseException:
        lab.close()
        raise
    return lab
