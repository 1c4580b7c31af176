"""The build sandbox against a recipe's escape attempts, run directly on the primitive (a tiny
tree of host tools instead of an image, so each case takes a second or two).

Each attempt is a post-command's script; each must fail with a one-line error and leave the host
as it was. Needs root (to drop to the build user) and creates the build user if it is missing,
as tools/setup does."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagekit.builder.sandbox import PIDS_CGROUP_V1, BuildUser, Limits, Sandbox
from imagekit.errors import CommandError, InputError
from tests.builder.sandboxtree import sandboxed_tree
from tests.waiting import wait_until

USER = "imagekit-build"


@pytest.fixture(scope="module")
def build_user() -> BuildUser:
    try:
        return BuildUser.lookup(USER)
    except InputError:
        subprocess.run(
            ["useradd", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
             "--user-group", USER],
            check=True,
        )  # fmt: skip
        return BuildUser.lookup(USER)


def sandbox_for(user: BuildUser, **limits: int) -> Sandbox:
    defaults = {"processes": 64, "wall_seconds": 20, "tree_bytes": 64 << 20, "file_bytes": 16 << 20}
    return Sandbox(user, Limits(**{**defaults, **limits}))


@pytest.fixture
def sandbox(build_user: BuildUser) -> Sandbox:
    return sandbox_for(build_user)


@pytest.fixture
def tree(sandbox: Sandbox) -> Iterator[Path]:
    with sandboxed_tree(sandbox) as root:
        yield root


@pytest.fixture
def victim() -> Iterator[Path]:
    """A host file anyone may write (0666 in a 1777 directory): only the confinement protects it."""
    directory = Path(tempfile.mkdtemp(prefix="imagekit-victim-", dir="/tmp"))
    directory.chmod(0o1777)
    path = directory / "file"
    path.write_text("untouched\n")
    path.chmod(0o666)
    yield path
    path.unlink()
    directory.rmdir()


def fails(sandbox: Sandbox, tree: Path, script: str) -> str:
    with pytest.raises(CommandError) as caught:
        sandbox.run_in_tree(tree, script, step="command 'attack'")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("command 'attack': ")
    return message


def in_namespace(tree: Path) -> list[int]:
    """Host processes still in the PID namespace whose id the script wrote to /pidns first:
    exact even while other builds of the same user run (make test runs tests in parallel)."""
    wanted = (tree / "pidns").read_text().strip()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if (
                os.readlink(entry / "ns/pid") == wanted
                and "\nState:\tZ" not in (entry / "status").read_text()
            ):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def gone(tree: Path) -> None:
    """The namespace's processes are gone: killed with its init, and done dying within seconds
    (without a pids cgroup to empty, the kernel tears the namespace down after the command
    returns; a process left running would be there for its whole sleep)."""
    wait_until(lambda: not in_namespace(tree), timeout=5, what="the namespace's processes to go")


BOMB = "readlink /proc/self/ns/pid > /pidns\nbomb() { bomb | bomb & }\nbomb\nsleep 30\n"


def test_commands_run_as_root_inside_and_an_unprivileged_uid_outside(sandbox: Sandbox, tree: Path) -> None:
    sandbox.run_in_tree(tree, "id -u > /uid\necho made > /made\n", step="command 'ok'")
    assert (tree / "uid").read_text() == "0\n"
    assert (tree / "made").stat().st_uid == sandbox.user.subuid != 0


def test_shift_and_unshift_keep_setuid_bits_and_leave_symlinks_alone(sandbox: Sandbox, tree: Path) -> None:
    target = tree / "usr/bin/true"
    target.chmod(0o4755)
    os.chown(target, sandbox.user.subuid, sandbox.user.subgid)
    target.chmod(0o4755)
    sandbox.unshift(tree)
    assert (target.stat().st_uid, target.stat().st_mode & 0o7777) == (0, 0o4755)
    assert (tree / "bin").lstat().st_uid == 0 and os.readlink(tree / "bin") == "usr/bin"
    os.chown(tree / "etc", 70000, 70000, follow_symlinks=False)  # past the 65536 ids inside
    sandbox.shift(tree)
    assert (target.stat().st_uid, target.stat().st_mode & 0o7777) == (sandbox.user.subuid, 0o4755)
    assert (tree / "etc").stat().st_uid == sandbox.user.subuid + 65534


@pytest.mark.parametrize(
    "path", ["/proc/1/root{victim}", "/proc/self/root/../..{victim}", "/proc/1/cwd/../../..{victim}"]
)
def test_writing_outside_the_tree_through_proc_fails(
    sandbox: Sandbox, tree: Path, victim: Path, path: str
) -> None:
    fails(sandbox, tree, f"echo escaped > {path.format(victim=victim)}\n")
    assert victim.read_text() == "untouched\n"


def test_the_host_root_is_gone_after_pivot_root(sandbox: Sandbox, tree: Path, victim: Path) -> None:
    """Not even a second chroot from / reaches the host: there is no host root left to reach."""
    message = fails(sandbox, tree, f"ls /proc/1/root{victim.parent} >&2\ncat /proc/1/root{victim}\n")
    assert "No such file" in message


def test_mounting_a_host_disk_fails_and_mounts_stay_inside(sandbox: Sandbox, tree: Path) -> None:
    script = "mount -t tmpfs scratch /mnt\ntouch /mnt/inside\nmknod /disk b 8 0\nmount /disk /mnt\n"
    message = fails(sandbox, tree, script)
    assert "mknod" in message
    assert str(tree) not in Path("/proc/self/mountinfo").read_text()
    assert not (tree / "mnt/inside").exists()  # the tmpfs went with the namespace


def test_the_host_network_is_unreachable(sandbox: Sandbox, tree: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        message = fails(sandbox, tree, f"exec bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}'\n")
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert "unreachable" in message or "refused" in message


def test_a_fork_bomb_stops_at_the_process_limit(build_user: BuildUser) -> None:
    sandbox = sandbox_for(build_user, processes=32)
    parent = None
    if sandbox.has_pids_cgroup():  # a parent of our own, to see the build's cgroup go
        parent = Path(tempfile.mkdtemp(prefix="imagekit-test-", dir=PIDS_CGROUP_V1))
        sandbox = dataclasses.replace(sandbox, cgroup_parent=parent)
    try:
        with sandboxed_tree(sandbox) as tree:
            message = fails(sandbox, tree, BOMB)
            assert not in_namespace(tree)
        if parent is not None:
            assert "process limit: " in message and "(at most 32 processes)" in message
            assert not [p for p in parent.iterdir() if p.is_dir()]
        else:  # RLIMIT_NPROC alone: the shell's own line
            assert "fork" in message or "time limit" in message
    finally:
        if parent is not None:
            parent.rmdir()


@pytest.mark.slow  # a load test: the bomb runs at the limit until the time limit ends it (~5 s)
def test_without_a_cgroup_rlimit_nproc_bounds_a_fork_bomb(build_user: BuildUser) -> None:
    """Where no pids cgroup can be made, RLIMIT_NPROC on the host uid holds the bomb at the
    limit until the time limit ends it (sampled from the host while it runs)."""
    sandbox = dataclasses.replace(sandbox_for(build_user, processes=32, wall_seconds=4), cgroup_parent=None)
    peak = 0
    done = threading.Event()

    def sample(tree: Path) -> None:
        nonlocal peak
        while not done.is_set():
            if (tree / "pidns").exists():
                peak = max(peak, len(in_namespace(tree)))
            time.sleep(0.05)

    with sandboxed_tree(sandbox) as tree:
        sampler = threading.Thread(target=sample, args=(tree,))
        sampler.start()
        try:
            message = fails(sandbox, tree, BOMB)
        finally:
            done.set()
            sampler.join()
        gone(tree)
    assert "time limit" in message or "fork" in message
    assert 0 < peak <= 32


def test_filling_the_disk_stops_at_the_tree_limit(build_user: BuildUser) -> None:
    sandbox = sandbox_for(build_user, tree_bytes=32 << 20, file_bytes=8 << 20)
    with sandboxed_tree(sandbox) as tree:
        message = fails(
            sandbox, tree, "i=0\nwhile :; do head -c 4000000 /dev/zero > /fill$i; i=$((i+1)); done\n"
        )
        written = sum(p.stat().st_size for p in tree.glob("fill*"))
    assert "disk limit: the tree grew past 33554432 bytes" in message
    assert 32 << 20 < written < 1 << 30


def test_one_huge_file_stops_at_the_file_limit(build_user: BuildUser) -> None:
    sandbox = sandbox_for(build_user, file_bytes=1 << 20)
    with sandboxed_tree(sandbox) as tree:
        message = fails(sandbox, tree, "head -c 5000000 /dev/zero > /huge\n")
        assert (tree / "huge").stat().st_size == 1 << 20
    assert "File size limit exceeded" in message


@pytest.mark.parametrize("pids_cgroup", [True, False])
def test_a_command_that_never_ends_stops_at_the_time_limit(build_user: BuildUser, pids_cgroup: bool) -> None:
    """With or without a pids cgroup to empty, the namespace goes at once: its init dies with
    unshare (a killed command's namespace once lived on until its own sleep ended)."""
    sandbox = sandbox_for(build_user, wall_seconds=1)
    if not pids_cgroup:
        sandbox = dataclasses.replace(sandbox, cgroup_parent=None)
    with sandboxed_tree(sandbox) as tree:
        message = fails(sandbox, tree, "readlink /proc/self/ns/pid > /pidns\nsleep 6\ntouch /late\n")
        gone(tree)
        assert not (tree / "late").exists()  # killed, not left to finish
    assert message.endswith("time limit: still running after 1 s; stopped")


def test_setuid_files_made_inside_are_not_setuid_root_on_the_host(sandbox: Sandbox, tree: Path) -> None:
    """A setuid-root shell made inside is setuid to an unprivileged host uid, and the workspace
    (0710 root:first subordinate gid) is closed to every other host user."""
    sandbox.run_in_tree(tree, "cp /bin/bash /rootshell\nchmod 4755 /rootshell\n", step="command 'suid'")
    made = (tree / "rootshell").stat()
    assert made.st_uid == sandbox.user.subuid and made.st_mode & 0o4000
    base = tree.parent.stat()
    assert (base.st_uid, base.st_gid, base.st_mode & 0o777) == (0, sandbox.user.subgid, 0o710)


def test_host_setuid_programs_grant_nothing_inside(sandbox: Sandbox, tree: Path) -> None:
    """A setuid program owned by the host's root (not mapped inside) runs without its bit; one
    owned by the namespace's root keeps it, and that root is nobody on the host."""
    for name, owner in (("hostid", 0), ("nsid", sandbox.user.subuid)):
        (tree / "usr/bin" / name).write_bytes((tree / "usr/bin/id").read_bytes())
        os.chown(tree / "usr/bin" / name, owner, owner)
        os.chmod(tree / "usr/bin" / name, 0o4755)
    script = "setpriv --reuid=1000 --regid=1000 --clear-groups hostid -u >> /euid\n"
    script += "setpriv --reuid=1000 --regid=1000 --clear-groups nsid -u >> /euid\n"
    sandbox.run_in_tree(tree, script, step="command 'setuid'")
    assert (tree / "euid").read_text().split() == ["1000", "0"]


def test_a_missing_build_user_is_named_with_how_to_create_it() -> None:
    with pytest.raises(InputError) as caught:
        BuildUser.lookup("imagekit-no-such-user")
    assert "imagekit-no-such-user" in str(caught.value) and "useradd" in (caught.value.hint or "")


def test_a_user_without_subordinate_ids_is_refused(tmp_path: Path) -> None:
    (tmp_path / "subuid").write_text("someone:100000:65536\n")
    (tmp_path / "subgid").write_text("")
    with pytest.raises(InputError, match="subordinate ids"):
        BuildUser.lookup("nobody", etc=tmp_path)
