"""The sandbox inside the builder: post-commands through ``customize.in_chroot``, pre-commands
through mmdebstrap's hook, the tree check before root touches the tree again, and the recipe
sources a sandboxed build refuses. Needs root and the build user (see test_sandbox.py)."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagekit.builder import BuildOptions, build_image, customize, rootfs
from imagekit.builder.cache import StageCache
from imagekit.builder.sandbox import BuildUser, Sandbox, check_recipe_sources, check_tree, confined_hook
from imagekit.errors import CommandError, DataError, InputError
from imagekit.recipe import load_recipe
from imagekit.recipe.model import Command, ContentSource, File, OperatingSystem, Recipe, SourceFormat
from imagekit.run import run
from imagekit.state import State
from tests.builder.sandboxtree import sandboxed_tree
from tests.builder.standin import MMDEBSTRAP_STEP, StandIn
from tests.builder.test_sandbox import build_user, sandbox_for  # noqa: F401  (a fixture)
from tests.conftest import REPO


@pytest.fixture
def sandbox(build_user: BuildUser) -> Sandbox:  # noqa: F811
    return sandbox_for(build_user)


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """A host directory anyone may write: what root must not be led into."""
    directory = Path(tempfile.mkdtemp(prefix="imagekit-hostdir-"))
    directory.chmod(0o1777)
    (directory / "keep").write_text("host\n")
    yield directory
    for entry in directory.iterdir():
        entry.unlink()
    directory.rmdir()


def recipe(base: Path, **kw: object) -> Recipe:
    return Recipe(
        name="t", os=OperatingSystem("Debian", "12"), source_path=base / "t.appl",
        source_format=SourceFormat.APPL, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_post_commands_run_sandboxed_and_the_tree_keeps_the_images_owners(
    sandbox: Sandbox,
) -> None:
    with sandboxed_tree(sandbox) as tree:
        sandbox.unshift(tree)  # as the builder holds it between steps
        customize.in_chroot(
            tree, "id -u > /who\nchown 1000:1000 /who\n", step="command 'a'", sandbox=sandbox
        )
        assert (tree / "who").read_text() == "0\n"
        assert ((tree / "who").stat().st_uid, (tree / "etc").stat().st_uid) == (1000, 0)


def test_a_command_that_points_etc_at_the_host_fails_the_build(sandbox: Sandbox, host_dir: Path) -> None:
    """Afterwards the builder, as root, writes /etc/hostname, /etc/fstab …: it must not follow."""
    with sandboxed_tree(sandbox) as tree:
        sandbox.unshift(tree)
        with pytest.raises(DataError, match=r"the tree's /etc/\S+ leads outside the tree"):
            customize.in_chroot(
                tree, f"rm -r /etc\nln -s {host_dir} /etc\n", step="command 'a'", sandbox=sandbox
            )
    assert sorted(p.name for p in host_dir.iterdir()) == ["keep"]


def test_the_tree_check_passes_the_images_own_links(tmp_path: Path) -> None:
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "bin").symlink_to("usr/bin")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/mtab").symlink_to("../proc/self/mounts")
    check_tree(tmp_path)
    (tmp_path / "srv").symlink_to("/var")  # a data partition's mount point, split off as root
    check_tree(tmp_path)
    with pytest.raises(DataError, match="/srv/x leads outside"):
        check_tree(tmp_path, ("srv/x",))
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot/vmlinuz-6.1").symlink_to("/etc/shadow")
    with pytest.raises(DataError, match="/boot/vmlinuz-6.1 leads outside"):
        check_tree(tmp_path)


def test_pre_commands_are_confined_inside_mmdebstraps_namespace(sandbox: Sandbox, host_dir: Path) -> None:
    """mmdebstrap runs its hooks as root of its user namespace, with network (it fetches the
    packages); ours, with network, stands in for it. The hook takes the network away."""
    with socket.create_server(("127.0.0.1", 0)) as listener, sandboxed_tree(sandbox) as tree:
        port = listener.getsockname()[1]
        script = tree.parent / "pre-01.sh"
        script.write_text(f"echo ran > /pre\necho x > /proc/1/root{host_dir}/x || true\n"
                          f"exec bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}'\n")  # fmt: skip
        mmdebstrap_like: list[str | Path] = [
            *sandbox.namespaces(network=True),
            "sh",
            "-c",
            confined_hook(script),
            "hook",
            tree,
        ]
        with pytest.raises(CommandError, match="Network is unreachable"):
            run(sandbox.wrap(mmdebstrap_like, watch=tree), step="precommand")
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()
        assert (tree / "pre").read_text() == "ran\n"
    assert sorted(p.name for p in host_dir.iterdir()) == ["keep"]


def test_mmdebstrap_runs_unshared_as_the_build_user(sandbox: Sandbox, tmp_path: Path) -> None:
    seen: list[list[str]] = []

    def standin(argv: list[str], **_: object) -> subprocess.CompletedProcess[bytes]:
        seen.append([os.fspath(a) for a in argv])
        return subprocess.CompletedProcess(argv, 0, b"", b"")

    stage = rootfs.PackageStage(
        "bookworm", "amd64", ("deb http://m bookworm main",) * 3, ("a",), (("p", "true"),)
    )
    (tmp_path / "root").mkdir()
    rootfs.bootstrap(stage, tmp_path / "root", tmp_path, recipe_repos=(), runner=standin, sandbox=sandbox)
    (argv,) = seen
    assert argv[argv.index("setpriv") + 1] == f"--reuid={sandbox.user.uid}"
    assert "--mode=unshare" in argv and "--mode=root" not in argv and "--kill-child" not in argv
    hook = next(a for a in argv if a.startswith("--essential-hook=") and "pre-01.sh" in a)
    assert "--net" in hook and "pivot_root" in hook and hook.endswith("exit 1; }")


def test_a_sandboxed_build_reads_local_sources_in_the_recipes_directory_only(tmp_path: Path) -> None:
    (tmp_path / "motd").write_text("hi")
    check_recipe_sources(
        recipe(tmp_path, files=(File("/etc/motd", ContentSource.LOCAL, str(tmp_path / "motd")),))
    )
    shadow = File("/etc/x", ContentSource.LOCAL, str(tmp_path / ".." / "etc-shadow"))
    with pytest.raises(InputError, match="local files in the recipe's directory only"):
        check_recipe_sources(recipe(tmp_path, files=(shadow,)))
    local = Command("c", ContentSource.URL, "http://127.0.0.1:8080/script")
    with pytest.raises(InputError, match="does not fetch from this machine"):
        check_recipe_sources(recipe(tmp_path, post_commands=(local,)))


@pytest.mark.parametrize(("pre", "cached"), [((), 1), ((Command("p", ContentSource.RAW, "true"),), 0)])
def test_a_sandboxed_build_shares_no_stage_an_authors_code_made(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pre: tuple[Command, ...], cached: int
) -> None:
    """Pre-commands (or the recipe's own repositories) could poison a cached stage for the next
    author of the same stage: sandboxed, such a stage is neither taken from the cache nor put in."""
    monkeypatch.setenv("IMAGEKIT_SNAPSHOT", "20250520T000000Z")
    minimal = load_recipe(REPO / "recipes" / "debian-12-minimal.appl")
    boom = (Command("boom", ContentSource.RAW, "exit 2"),)
    recipe = dataclasses.replace(minimal, pre_commands=pre, post_commands=boom)
    state = State.open(tmp_path / "state")
    work = Path(tempfile.mkdtemp(prefix="imagekit-sandbox-work-"))  # pytest's tmp is closed to others
    work.chmod(0o711)
    try:
        options = BuildOptions(output_dir=tmp_path / "out", work_dir=work, sandbox=sandbox)
        standin = StandIn(fail="command 'boom'", returncode=2)
        with pytest.raises(CommandError):
            build_image(recipe, options, state=state, runner=standin)
    finally:
        work.rmdir()
    assert "--mode=unshare" in standin.argv(MMDEBSTRAP_STEP)
    assert len(StageCache.open(state).entries()) == cached


def test_build_with_a_missing_sandbox_user_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from imagekit.cli import main

    recipe = str(REPO / "recipes" / "debian-12-minimal.appl")
    argv = ["build", recipe, "-o", str(tmp_path / "out"), "--sandbox-user", "imagekit-no-such-user"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the build user 'imagekit-no-such-user' does not exist")
    assert not (tmp_path / "out").exists()


def test_a_sound_tree_passes_every_check_up_to_the_disk(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stand-in's tree (no kernel) goes through the package stage, customize and the checks
    before the disk: the first refusal is the disk step's own, not a false alarm of the sandbox."""
    monkeypatch.setenv("IMAGEKIT_SNAPSHOT", "20250520T000000Z")
    minimal = load_recipe(REPO / "recipes" / "debian-12-minimal.appl")
    work = Path(tempfile.mkdtemp(prefix="imagekit-sandbox-work-"))
    work.chmod(0o711)
    try:
        options = BuildOptions(output_dir=tmp_path / "out", work_dir=work, sandbox=sandbox)
        with pytest.raises(InputError, match="the image has no kernel in /boot"):
            build_image(minimal, options, state=State.open(tmp_path / "state"), runner=StandIn())
    finally:
        work.rmdir()
