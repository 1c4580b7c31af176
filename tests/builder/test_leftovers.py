"""What a build killed outright (SIGKILL: no clean-up runs) leaves, and who removes it.

The build here is real up to its post-commands (the package stage and the chroot are the
stand-in of tests/builder/standin.py), run in a child process that is SIGKILLed while a
post-command runs: its workspace stays with the root's overlay still mounted. The next build in
that work directory, or ``imagekit cache gc``, unmounts and removes it; a live build's is never
touched.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagekit.builder import BuildOptions, build_image
from imagekit.builder.workspace import PREFIX, mounts_under, reclaim
from imagekit.cli import main
from imagekit.errors import CommandError
from imagekit.recipe import load_recipe
from imagekit.recipe.model import Command, ContentSource, Recipe
from imagekit.state import State

from ..conftest import REPO
from .standin import StandIn

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the root's overlay is mounted as root")

SNAPSHOT = "20250520T000000Z"
CHILD = """
import dataclasses, sys, time
from pathlib import Path
from imagekit.builder import BuildOptions, build_image
from imagekit.recipe import load_recipe
from imagekit.recipe.model import Command, ContentSource
from imagekit.state import State
from tests.builder.standin import StandIn

class Hang(StandIn):
    def __call__(self, argv, *, step=None, **kw):
        if step == "command 'hang'":
            print("hanging", flush=True)
            sys.stdin.read()  # until the test closes it (or kills this process)
        return super().__call__(argv, step=step, **kw)

recipe, out, work, state = sys.argv[1:]
hang = (Command("hang", ContentSource.RAW, "true"),)
recipe = dataclasses.replace(load_recipe(Path(recipe)), post_commands=hang)
options = BuildOptions(output_dir=Path(out), work_dir=Path(work))
build_image(recipe, options, state=State.open(Path(state)), runner=Hang())
"""


@pytest.fixture
def minimal(monkeypatch: pytest.MonkeyPatch) -> Recipe:
    monkeypatch.setenv("IMAGEKIT_SNAPSHOT", SNAPSHOT)
    return load_recipe(REPO / "recipes" / "debian-12-minimal.appl")


@pytest.fixture
def builds(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:  # whatever a failed test left running
        proc.kill()
        proc.wait()


def start_build(tmp_path: Path, work: Path, n: int, started: list[subprocess.Popen[str]]) -> Path:
    """A build in a child process, hanging in its post-command; its workspace."""
    before = set(work.glob(f"{PREFIX}*"))
    env = {**os.environ, "IMAGEKIT_SNAPSHOT": SNAPSHOT, "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = [sys.executable, "-c", CHILD, str(REPO / "recipes" / "debian-12-minimal.appl")]
    argv += [str(tmp_path / f"out{n}"), str(work), str(tmp_path / "state")]
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env
    )
    started.append(proc)
    assert proc.stdout is not None and proc.stdout.readline() == "hanging\n"
    [base] = set(work.glob(f"{PREFIX}*")) - before
    assert mounts_under(base) == [base / "root"]  # the root is an overlay
    return base


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def test_the_next_build_removes_what_a_killed_build_left(
    minimal: Recipe, tmp_path: Path, builds: list[subprocess.Popen[str]]
) -> None:
    work = tmp_path / "work"
    base = start_build(tmp_path, work, 0, builds)
    kill(builds[0])
    assert mounts_under(base) == [base / "root"] and (base / "owner").is_file()  # what it left
    recipe = dataclasses.replace(minimal, post_commands=(Command("boom", ContentSource.RAW, "exit 2"),))
    options = BuildOptions(output_dir=tmp_path / "out", work_dir=work)
    standin = StandIn(fail="command 'boom'", returncode=2)
    with pytest.raises(CommandError, match="boom"):
        build_image(recipe, options, state=State.open(tmp_path / "state"), runner=standin)
    assert mounts_under(work) == []
    assert list(work.iterdir()) == []


def test_cache_gc_removes_a_killed_builds_workspace_never_a_live_ones(
    tmp_path: Path, builds: list[subprocess.Popen[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    dead, live = start_build(tmp_path, work, 0, builds), start_build(tmp_path, work, 1, builds)
    kill(builds[0])
    gc = ["--state", str(tmp_path / "state"), "cache", "gc", "--kept", "1", "--json"]
    assert main(gc) == 0
    assert json.loads(capsys.readouterr().out)["workspaces_removed"] == [str(dead)]
    assert not dead.exists() and mounts_under(dead) == []
    assert mounts_under(live) == [live / "root"] and (live / "root" / "etc" / "passwd").is_file()
    kill(builds[1])
    assert reclaim(work) == [live] and list(work.iterdir()) == []


def test_what_is_not_a_dead_builds_workspace_is_left_alone(tmp_path: Path) -> None:
    older = tmp_path / f"{PREFIX}older"  # made before workspaces had an owner: no one can tell
    (older / "root").mkdir(parents=True)
    planted = tmp_path / f"{PREFIX}planted"
    planted.symlink_to(older)
    assert reclaim(tmp_path) == []
    assert (older / "root").is_dir() and planted.is_symlink()
