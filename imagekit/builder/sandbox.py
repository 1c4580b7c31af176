"""Run a recipe's commands without real root: a user namespace owned by a dedicated build user.

    sandbox = Sandbox(BuildUser.lookup("imagekit-build"), Limits(processes=256))
    sandbox.shift(tree)                      # the tree's owners into the build user's range
    sandbox.run_in_tree(tree, script, step="command 'setup'")
    sandbox.unshift(tree)                    # back to the image's own owners, for the disk

The commands run as root *inside* a user namespace whose ids 0..65535 are the build user's
subordinate ids (``/etc/subuid``, mapped by ``newuidmap``, as ``mmdebstrap --mode=unshare``
maps them): on the host they are an unprivileged uid that owns nothing but the tree. Around
them, a root-owned wrapper (fixed code, below) enforces the limits:

- new mount, PID, network, IPC and UTS namespaces; the network one has only a loopback that is
  down, so nothing on the host or beyond is reachable;
- the tree becomes ``/`` by ``pivot_root`` and the host's root is detached, so ``/proc/1/root``,
  ``..`` and a second ``chroot`` all end inside the tree; ``/dev`` is a small tmpfs with only
  null, zero, full, random, urandom and tty bound in;
- a pids cgroup (``pids.max``) when the cgroup v1 pids hierarchy is writable, and always
  ``RLIMIT_NPROC`` on the build user: a fork bomb stops at the limit, and a command that hit
  the cgroup's limit is stopped (the build fails: it would not have worked anyway);
- ``RLIMIT_CPU`` per process, a wall-clock limit for the whole command and ``RLIMIT_FSIZE`` per
  file; the wrapper measures the tree (``du -sxb``) twice a second and kills the command once
  it passes ``tree_bytes`` (so the overshoot is bounded by what it writes in half a second).

What is not covered is in docs/author/build-service.md, "Threat model".
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import shlex
import shutil
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from imagekit.errors import CommandError, DataError, InputError
from imagekit.recipe.model import ContentSource, Recipe
from imagekit.run import Runner, run

# The range size mmdebstrap maps: ids 0..65535 inside.
ID_COUNT = 65536
PIDS_CGROUP_V1 = Path("/sys/fs/cgroup/pids")
MARK = "imagekit-sandbox: "
_IdMap = Callable[[int], int]

# Root-owned: joins the pids cgroup, applies the rlimits, drops to the build user and enters
# the namespaces; runs beside it a watcher for the tree's size and the wall-clock limit.
# $1 tree, $2 tree limit (bytes), $3 wall limit (s), $4 cgroup dir or "", $5 pids max;
# the rest is the command (prlimit … setpriv … unshare …), whose stdin is ours.
_WRAPPER = r"""
tree=$1 limit=$2 wall=$3 cg=$4 pids=$5
shift 5
if [ -n "$cg" ]; then mkdir "$cg" && echo "$pids" > "$cg/pids.max" || exit 125; fi
exec 3<&0
sh -c 'if [ -n "$1" ]; then echo $$ > "$1/cgroup.procs" || exit 125; fi; shift; exec "$@"' \
    sh "$cg" "$@" <&3 3<&- &
child=$!
exec 3<&-
(
    ticks=0
    while kill -0 "$child" 2>/dev/null; do
        used=$(du -sxb -- "$tree" 2>/dev/null | cut -f1)
        if [ "${used:-0}" -gt "$limit" ]; then
            echo "imagekit-sandbox: disk limit: the tree grew past $limit bytes; stopped" >&2
            kill -KILL "$child"; exit 0
        fi
        if [ "$ticks" -ge $((wall * 2)) ]; then
            echo "imagekit-sandbox: time limit: still running after $wall s; stopped" >&2
            kill -KILL "$child"; exit 0
        fi
        if [ -n "$cg" ] && ! grep -q '^max 0$' "$cg/pids.events"; then
            kill -KILL "$child"; exit 0
        fi
        ticks=$((ticks + 1))
        sleep 0.5 </dev/null >/dev/null 2>&1  # holds no pipe of ours: run() need not wait for it
    done
) &
watcher=$!
wait "$child"
status=$?
kill "$watcher" 2>/dev/null
wait "$watcher" 2>/dev/null
if [ -n "$cg" ]; then
    refused=$(sed -n 's/^max //p' "$cg/pids.events" 2>/dev/null)
    # The namespace's init is gone; stragglers of its teardown go now, then the cgroup. Before
    # the verdict below: a bomb's last "Cannot fork" lines must not push it out of stderr's tail.
    for try in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
        for p in $(cat "$cg/cgroup.procs" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
        rmdir "$cg" 2>/dev/null && break
        sleep 0.25
    done
    if [ "$status" -ne 0 ] && [ "${refused:-0}" -gt 0 ]; then
        echo "imagekit-sandbox: process limit: $refused forks refused (at most $pids processes)" >&2
    fi
fi
exit "$status"
"""

# Inside the namespaces, as root there: the tree becomes / and the host's root goes away
# (detached by the host's umount, $2, run from the old root: the tree may not have one yet).
# $1 is the tree; the script to run comes on stdin.
_ENTER_TREE = r"""
set -e
r=$1
mount --rbind "$r" "$r"
mount -t proc -o nosuid,nodev,noexec proc "$r/proc"
mount -t tmpfs -o mode=755,size=1m,nosuid dev "$r/dev"
for d in null zero full random urandom tty; do : > "$r/dev/$d"; mount --bind "/dev/$d" "$r/dev/$d"; done
mkdir "$r/dev/pts" "$r/dev/shm"
mount -t tmpfs -o size=64m,nosuid,nodev shm "$r/dev/shm"
ln -s /proc/self/fd "$r/dev/fd"
ln -s /proc/self/fd/0 "$r/dev/stdin"
ln -s /proc/self/fd/1 "$r/dev/stdout"
ln -s /proc/self/fd/2 "$r/dev/stderr"
mkdir -p "$r/.imagekit-host"
cd "$r"
pivot_root . .imagekit-host
"/.imagekit-host$2" -l /.imagekit-host
rmdir /.imagekit-host
cd /
exec /bin/sh -e -s
"""


@dataclass(frozen=True)
class BuildUser:
    """The Unix user the builds run as, with its subordinate id ranges."""

    name: str
    uid: int
    gid: int
    subuid: int
    subgid: int

    @classmethod
    def lookup(cls, name: str, *, etc: Path = Path("/etc")) -> BuildUser:
        hint = (
            f"create it: useradd --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "
            f"--user-group {name} (Debian adds its /etc/subuid and /etc/subgid ranges)"
        )
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise InputError(f"the build user {name!r} does not exist", hint=hint) from None
        if entry.pw_uid == 0:
            raise InputError(f"the build user {name!r} is root; builds need an unprivileged user")
        subuid = _subordinate(etc / "subuid", name, entry.pw_uid)
        subgid = _subordinate(etc / "subgid", name, entry.pw_uid)
        if subuid is None or subgid is None:
            raise InputError(f"the build user {name!r} has no {ID_COUNT} subordinate ids", hint=hint)
        return cls(name, entry.pw_uid, entry.pw_gid, subuid, subgid)


def _subordinate(path: Path, name: str, uid: int) -> int | None:
    """The first range of at least ID_COUNT ids that ``path`` gives the user (by name or uid)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        owner, _, rest = line.partition(":")
        start, _, count = rest.partition(":")
        if owner in (name, str(uid)) and start.isdigit() and count.isdigit() and int(count) >= ID_COUNT:
            return int(start)
    return None


@dataclass(frozen=True)
class Limits:
    processes: int = 512
    cpu_seconds: int = 3600
    wall_seconds: int = 3600
    file_bytes: int = 8 << 30
    tree_bytes: int = 16 << 30


@dataclass(frozen=True)
class Sandbox:
    user: BuildUser
    limits: Limits = Limits()
    cgroup_parent: Path | None = PIDS_CGROUP_V1  # None: RLIMIT_NPROC only

    def namespaces(self, *, network: bool = False) -> list[str]:
        """``unshare`` as the build user: ids 0..65535 inside are its subordinate ids."""
        u, n = self.user, ID_COUNT
        argv = [
            "unshare",
            f"--map-users={u.subuid},0,{n}",
            f"--map-groups={u.subgid},0,{n}",
            "--setuid=0",
            "--setgid=0",
        ]
        argv += ["--mount", "--propagation=private", "--pid", "--fork", "--kill-child", "--ipc", "--uts"]
        if not network:
            argv.append("--net")
        # unshare sets --kill-child's death signal before --setuid, which clears it: set again,
        # the namespace's init dies with unshare and takes every process in it along (without a
        # pids cgroup to empty, a killed command's namespace would otherwise live on).
        return [*argv, "setpriv", "--pdeathsig=KILL"]

    def wrap(self, command: Sequence[str | os.PathLike[str]], *, watch: Path) -> list[str]:
        """``command`` (already inside :meth:`namespaces` or ``mmdebstrap --mode=unshare``) as
        the build user, under the limits, with ``watch`` measured for the disk limit."""
        lim, u = self.limits, self.user
        cgroup = self._cgroup()
        return [
            "sh",
            "-c",
            _WRAPPER,
            "sh",
            str(watch),
            str(lim.tree_bytes),
            str(lim.wall_seconds),
            str(cgroup or ""),
            str(lim.processes),
            "prlimit",
            # With a cgroup, pids.max is the limit and RLIMIT_NPROC (counted per host uid, so
            # shared by concurrent builds) only a backstop.
            f"--nproc={lim.processes * (4 if cgroup else 1)}",
            f"--cpu={lim.cpu_seconds}",
            f"--fsize={lim.file_bytes}",
            "--core=0",
            "setpriv",
            f"--reuid={u.uid}",
            f"--regid={u.gid}",
            # The workspace is 0710 root:subgid; the user's own processes (mmdebstrap outside
            # its namespace) reach it through this one supplementary group.
            f"--groups={u.subgid}",
            "--inh-caps=-all",
            *(os.fspath(part) for part in command),
        ]

    def has_pids_cgroup(self) -> bool:
        """True when a pids cgroup can be made for each command (else RLIMIT_NPROC alone)."""
        parent = self.cgroup_parent
        return parent is not None and (parent / "cgroup.procs").exists() and os.access(parent, os.W_OK)

    def _cgroup(self) -> Path | None:
        if not self.has_pids_cgroup() or self.cgroup_parent is None:
            return None
        return self.cgroup_parent / f"imagekit-build-{uuid.uuid4().hex[:12]}"

    def run_in_tree(
        self,
        tree: Path,
        script: str,
        *,
        step: str,
        env: Mapping[str, str] | None = None,
        runner: Runner = run,
    ) -> None:
        """Run the shell ``script`` (``sh -e`` on stdin) with ``tree`` as its root, without
        network. ``tree`` must be shifted (:meth:`shift`). A limit hit is a one-line error."""
        argv = self.wrap([*self.namespaces(), *enter_tree(tree)], watch=tree)
        full_env = {"DEBIAN_FRONTEND": "noninteractive", "HOME": "/root", **(env or {})}
        try:
            runner(argv, input=script.encode(), env=full_env, step=step)
        except CommandError as err:
            raise explain(err, step=step) from None

    def prepare_workspace(self, base: Path) -> None:
        """Let the namespace's root (host uid = the user's first subordinate id) reach the tree
        through ``base`` by group, and nobody else: 0710 root:subgid. Every directory above
        ``base`` must let others search it."""
        for parent in base.resolve().parents:
            if not parent.stat().st_mode & 0o001:
                raise InputError(
                    "the build user cannot reach the work directory: a directory above it is closed",
                    where=str(parent),
                    hint="build in a directory whose parents others may search (--workdir, TMPDIR)",
                )
        os.chown(base, 0, self.user.subgid)
        base.chmod(0o710)

    def shift(self, tree: Path) -> None:
        """Image ids → the build user's range (before commands run in the tree); an id the
        range cannot hold becomes its nobody, never an id of someone else's range."""
        _chown_tree(
            tree,
            lambda uid: _outside(uid, self.user.subuid),
            lambda gid: _outside(gid, self.user.subgid),
        )

    def unshift(self, tree: Path) -> None:
        """Back to the image's ids (for the disk); ids outside the range become 65534 (nobody)."""
        _chown_tree(
            tree,
            lambda uid: _inside(uid, self.user.subuid),
            lambda gid: _inside(gid, self.user.subgid),
        )


def enter_tree(tree: Path | str) -> list[str]:
    """The command that makes ``tree`` the root (in new mount and PID namespaces already) and
    runs ``sh -e`` there on our stdin."""
    umount = os.path.realpath(shutil.which("umount") or "/usr/bin/umount")
    return ["sh", "-c", _ENTER_TREE, "sh", os.fspath(tree), umount]


def confined_hook(script: Path) -> str:
    """An mmdebstrap hook (``--mode=unshare``: it runs as root of mmdebstrap's user namespace)
    that runs ``script`` in the tree ``$1`` as :meth:`Sandbox.run_in_tree` does, without network."""
    ns = ["unshare", "--mount", "--propagation=private", "--pid", "--fork", "--kill-child", "--net"]
    *command, _tree, umount = enter_tree("TREE")
    return f'{shlex.join([*ns, *command])} "$1" {shlex.quote(umount)} < {shlex.quote(str(script))}'


def _outside(image_id: int, start: int) -> int:
    """An image id as the host sees it inside the range; an id past it as nobody (65534)."""
    return start + (image_id if 0 <= image_id < ID_COUNT else 65534)


def _inside(host_id: int, start: int) -> int:
    inner = host_id - start
    return inner if 0 <= inner < ID_COUNT else 65534


def _chown_tree(tree: Path, uid_map: _IdMap, gid_map: _IdMap) -> None:
    """Change every entry's owners without following symlinks; setuid/setgid bits survive."""
    for dirpath, dirnames, filenames in os.walk(tree):
        # Each directory once, as its own dirpath; symlinks to directories are not descended.
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        for name in [*filenames, *links, None]:
            path = dirpath if name is None else os.path.join(dirpath, name)
            st = os.lstat(path)
            os.chown(path, uid_map(st.st_uid), gid_map(st.st_gid), follow_symlinks=False)
            # chown clears setuid/setgid on regular files; restore them (not on symlinks).
            if st.st_mode & 0o6000 and not os.path.islink(path):
                os.chmod(path, st.st_mode & 0o7777)


def explain(err: CommandError, *, step: str) -> CommandError:
    """A sandbox limit that stopped the command as its one-line error, else ``err`` as is."""
    marks = [line for line in err.stderr_tail.splitlines() if line.startswith(MARK)]
    if not marks:
        return CommandError(["sandbox"], err.returncode, err.stderr_tail, step=step)
    return CommandError(["sandbox"], err.returncode, marks[-1].removeprefix(MARK), step=step)


# What the builder's own steps, as root, write or read in the tree after untrusted code (the
# package stage, the recipe's commands) ran there: none of it may lead outside the tree.
ROOT_SIDE_PATHS = (
    "etc/fstab",
    "etc/hostname",
    "etc/hosts",
    "etc/passwd",
    "etc/machine-id",
    "etc/resolv.conf",
    "etc/apt/sources.list.d/x",
    "etc/systemd/system/x",
    "etc/systemd/system/multi-user.target.wants/x",
    "etc/systemd/system/ssh.service.wants/x",
    "etc/network/interfaces",
    "etc/cloud/cloud.cfg.d/x",
    "etc/ssh/x",
    "usr/sbin/policy-rc.d",
    "usr/local/sbin/x",
    "usr/local/lib/x",
    "usr/lib/x",
    "usr/bin/x",
    "var/lib/apt/lists/x",
    "var/lib/dpkg/status",
    "var/lib/dpkg/info/x",
    "var/lib/dbus/machine-id",
    "var/cache/apt/archives/x",
    "var/log/x",
    "boot/x",
    "home/x",
    "root/x",
)
ROOT_SIDE_GLOBS = ("boot/*", "usr/share/doc/*/copyright", "home/*/.ssh/*", "root/.ssh/*")


def check_tree(root: Path, extra: tuple[str, ...] = ()) -> None:
    """Refuse a tree in which a path the builder follows as root leads outside it (a symlink
    to the host's /etc, say): the recipe's code made the tree, the builder must not be its tool.
    Symlinks elsewhere in the tree are the image's business and stay as they are."""
    top = os.path.realpath(root)
    candidates = [*ROOT_SIDE_PATHS, *extra]
    for pattern in ROOT_SIDE_GLOBS:
        candidates += [str(p.relative_to(root)) for p in root.glob(pattern)]
    for relative in candidates:
        resolved = os.path.realpath(root / relative)
        if resolved != top and not resolved.startswith(top + os.sep):
            raise DataError(
                f"the tree's /{relative} leads outside the tree (a symlink): refusing to follow it as root"
            )


def check_recipe_sources(recipe: Recipe) -> None:
    """The builder reads ``local:`` sources as root: for a sandboxed build they must lie in the
    recipe's own directory (the service's upload), and ``url:`` sources may not name this
    machine (the builder fetches them, outside the sandbox)."""
    base = os.path.realpath(recipe.source_path.parent)
    items = [(f"file {f.path}", f.source, f.content) for f in recipe.files]
    items += [
        (f"command {c.name!r}", c.source, c.script) for c in (*recipe.pre_commands, *recipe.post_commands)
    ]
    for what, source, content in items:
        if source is ContentSource.LOCAL and not os.path.realpath(content).startswith(base + os.sep):
            raise InputError(f"{what}: a sandboxed build reads local files in the recipe's directory only")
        if source is ContentSource.URL and _names_this_machine(content):
            raise InputError(
                f"{what}: a sandboxed build does not fetch from this machine ({content.strip()})"
            )


def _names_this_machine(url: str) -> bool:
    host = urllib.parse.urlsplit(url.strip()).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified or address.is_link_local
