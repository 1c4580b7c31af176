"""Customise a root tree after the package stage: everything a recipe may change cheaply.

In TDL's order: files, then post-commands, then non-persisted repositories are removed. Before
that come the settings: hostname, fstab, root password and users (passwords are hashed with
``openssl passwd -6`` fed on stdin; the clear text is never written or logged), the context
agent and the first-boot units. Last, :func:`clean` makes the tree a template: no apt lists,
an empty machine-id, no SSH host keys.

Commands run chrooted in private mount and PID namespaces (:data:`~.rootfs.NAMESPACES`) with
/proc, /sys and /dev mounted there only: mounts and processes vanish with the command, whatever
happens to the build.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from imagekit.errors import CommandError, DataError, InputError
from imagekit.recipe.model import Recipe, User
from imagekit.run import Runner, run

from .disk import DiskLayout
from .firstboot import install_first_boot, write
from .reproducible import BuildInputs
from .rootfs import NAMESPACES, source_file_name
from .sandbox import Sandbox, check_tree
from .sources import content_bytes

_CHROOT_SETUP = (
    'mount -t proc proc "$1/proc" && mount -t sysfs sysfs "$1/sys" && mount --rbind /dev "$1/dev" '
    '&& exec chroot "$1" /bin/sh -e -s'
)
_POLICY_RC = "#!/bin/sh\n# imagekit: no services start while building\nexit 101\n"


def in_chroot(
    root: Path,
    script: str,
    *,
    step: str,
    env: Mapping[str, str] | None = None,
    runner: Runner = run,
    sandbox: Sandbox | None = None,
) -> None:
    """Run the shell ``script`` (fed on stdin, ``sh -e``) inside ``root``.

    With ``sandbox``, as root of a user namespace without network and under its limits
    (:mod:`.sandbox`): the tree's owners are shifted into the build user's range around it,
    and the tree is checked before the builder, as root, touches it again."""
    if sandbox is not None:
        sandbox.shift(root)
        try:
            sandbox.run_in_tree(root, script, step=step, env=env, runner=runner)
        finally:
            sandbox.unshift(root)
        check_tree(root)
        return
    try:
        runner(
            [*NAMESPACES, "sh", "-c", _CHROOT_SETUP, "sh", root],
            input=script.encode(),
            env={"DEBIAN_FRONTEND": "noninteractive", "HOME": "/root", **(env or {})},
            step=step,
        )
    except CommandError as err:
        if err.returncode == 127 and "unshare" in err.stderr_tail:
            raise
        # Name what failed (the script in the chroot), not the namespace wrapper around it.
        raise CommandError(["chroot", root, "/bin/sh"], err.returncode, err.stderr_tail, step=step) from None


def customize(
    recipe: Recipe,
    root: Path,
    layout: DiskLayout,
    *,
    install_agent: bool,
    inputs: BuildInputs | None = None,
    runner: Runner = run,
    sandbox: Sandbox | None = None,
) -> None:
    """Apply the recipe's settings, files and post-commands to ``root`` (the commands in
    ``sandbox`` when given).

    With ``inputs``, commands see ``SOURCE_DATE_EPOCH`` (shadow's password-change dates come
    from it) and password salts are derived from the inputs.
    """
    env = inputs.env() if inputs else None
    resolv = root / "etc/resolv.conf"
    policy = root / "usr/sbin/policy-rc.d"
    write(root, "/usr/sbin/policy-rc.d", _POLICY_RC, 0o755)
    # Post-commands may use the network (apt-get, curl): give them the host's resolver.
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    shutil.copyfile("/etc/resolv.conf", resolv)
    try:
        set_hostname(root, recipe.hostname)
        write(root, "/etc/fstab", layout.fstab())
        for part in layout.partitions:
            if part.mount != "/" and part.mount != "swap":
                (root / part.mount.lstrip("/")).mkdir(parents=True, exist_ok=True)
        set_accounts(recipe, root, inputs, runner=runner, sandbox=sandbox)
        write_files(recipe, root)
        if install_agent:
            from imagekit.agent import install_agent as install

            install(root)
        install_first_boot(root, cloud_init=recipe.context_agent.wants_cloud_init())
        for command in recipe.post_commands:
            what = f"command {command.name!r}"
            script = content_bytes(command.source, command.script, what=what)
            text = script.decode("utf-8", "replace")
            in_chroot(root, text, step=what, env=env, runner=runner, sandbox=sandbox)
        for repo in recipe.repositories:
            if not repo.persisted:
                (root / "etc/apt/sources.list.d" / source_file_name(repo)).unlink(missing_ok=True)
    finally:
        policy.unlink(missing_ok=True)
        resolv.unlink(missing_ok=True)


def set_hostname(root: Path, hostname: str) -> None:
    name = hostname or "localhost"
    write(root, "/etc/hostname", name + "\n")
    short = name.split(".")[0]
    aliases = f"{name} {short}" if short != name else name
    hosts = "127.0.0.1\tlocalhost\n"
    if name != "localhost":
        hosts += f"127.0.1.1\t{aliases}\n"
    hosts += (
        "::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n"
    )
    write(root, "/etc/hosts", hosts)


def hash_password(password: str, salt: str | None = None) -> str:
    """SHA-512 crypt of ``password``, computed by openssl from stdin (not argv, not logged).

    ``salt`` None: a random one. A reproducible build passes one derived from its inputs.
    """
    salted = ["-salt", salt] if salt else []
    out = run(
        ["openssl", "passwd", "-6", *salted, "-stdin"], input=password.encode() + b"\n", step="hash password"
    )
    return out.stdout.decode().strip()


def set_accounts(
    recipe: Recipe,
    root: Path,
    inputs: BuildInputs | None = None,
    *,
    runner: Runner = run,
    sandbox: Sandbox | None = None,
) -> None:
    script: list[str] = []
    entries: list[str] = []

    def hashed(name: str, password: str) -> str:
        return hash_password(password, inputs.salt(name) if inputs else None)

    if recipe.root_password:
        entries.append(f"root:{hashed('root', recipe.root_password)}")
    for user in recipe.users:
        for group in user.groups:
            script.append(f"getent group {shlex.quote(group)} >/dev/null || groupadd {shlex.quote(group)}")
        if user.name != "root":
            groups = f" -G {shlex.quote(','.join(user.groups))}" if user.groups else ""
            script.append(
                f"getent passwd {shlex.quote(user.name)} >/dev/null || "
                f"useradd -m -s /bin/bash{groups} {shlex.quote(user.name)}"
            )
        if user.password:
            entries.append(f"{user.name}:{hashed(user.name, user.password)}")
    if entries:
        # chpasswd -e reads the hashes from stdin, so they never appear on a command line.
        script.append("chpasswd -e <<'IMAGEKIT_EOF'\n" + "\n".join(entries) + "\nIMAGEKIT_EOF")
    if script:
        env = inputs.env() if inputs else None
        text = "\n".join(script) + "\n"
        in_chroot(root, text, step="users and passwords", env=env, runner=runner, sandbox=sandbox)
    for user in recipe.users:
        if user.ssh_keys:
            install_keys(root, user)


def _passwd_entry(root: Path, name: str) -> tuple[int, int, str]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2]), int(fields[3]), fields[5]
    raise InputError(f"users.{name}: the user does not exist in the image")


def install_keys(root: Path, user: User) -> None:
    uid, gid, home = _passwd_entry(root, user.name)
    ssh_dir = root / PurePosixPath(home).relative_to("/") / ".ssh"
    # The image's passwd names the home: it must not lead the builder (root) out of the tree.
    if not os.path.realpath(ssh_dir).startswith(os.path.realpath(root) + os.sep):
        raise DataError(f"users.{user.name}: the home directory {home} leads outside the image")
    ssh_dir.mkdir(parents=True, exist_ok=True)
    keys = ssh_dir / "authorized_keys"
    existing = keys.read_text() if keys.exists() else ""
    keys.write_text(existing + "".join(k.strip() + "\n" for k in user.ssh_keys))
    os.chmod(ssh_dir, 0o700)
    os.chmod(keys, 0o600)
    for path in (ssh_dir, keys):
        os.chown(path, uid, gid)


def write_files(recipe: Recipe, root: Path) -> None:
    for item in recipe.files:  # destinations absolute: imagekit.recipe.buildable checked them
        data = content_bytes(item.source, item.content, what=f"file {item.path}")
        dest = root / item.path.lstrip("/")
        if root.resolve() not in (dest.parent.resolve(), *dest.parent.resolve().parents):
            raise InputError(f"files: {item.path} points outside the image")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink():
            dest.unlink()
        dest.write_bytes(data)
        dest.chmod(item.mode if item.mode is not None else 0o644)


def clean(root: Path) -> None:
    """Make the tree a template: nothing host-, build- or instance-specific stays."""
    lists = root / "var/lib/apt/lists"
    for entry in lists.iterdir() if lists.is_dir() else ():
        if entry.is_file() and entry.name != "lock":
            entry.unlink()
    for pattern in ("var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "etc/ssh/ssh_host_*"):
        for path in root.glob(pattern):
            path.unlink()
    # An empty machine-id makes systemd treat the first boot as first boot and generate one.
    write(root, "/etc/machine-id", "")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    for log_file in ("var/log/dpkg.log", "var/log/alternatives.log", "var/log/bootstrap.log"):
        (root / log_file).unlink(missing_ok=True)
