"""A build that fails leaves nothing behind: no image, no temporary tree, no half-made cache entry.

The package stage and the chroot are a stand-in (``build_image``'s runner, tests/builder/standin.py):
what is tested is the pipeline's handling of the failure, not mmdebstrap. Real builds, and a real
interrupted one, are in test_images.py.
"""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
import threading
import time
from pathlib import Path

import pytest

from imagekit.builder import BuildOptions, build_image, require_tools, rootfs
from imagekit.builder.cache import StageCache
from imagekit.errors import CommandError, NetworkError
from imagekit.recipe import load_recipe
from imagekit.recipe.model import Command, ContentSource, File, Firmware, OutputFormat, Recipe
from imagekit.run import Argv
from imagekit.state import State

from ..conftest import REPO
from .standin import MMDEBSTRAP_STEP, StandIn


@pytest.fixture
def minimal(monkeypatch: pytest.MonkeyPatch) -> Recipe:
    """The shipped minimal recipe, with the archive state pinned (no Debian mirror is asked)."""
    monkeypatch.setenv("IMAGEKIT_SNAPSHOT", "20250520T000000Z")
    return load_recipe(REPO / "recipes" / "debian-12-minimal.appl")


@pytest.mark.parametrize(
    ("change", "standin", "error", "message"),
    [
        ({"post_commands": (Command("boom", ContentSource.RAW, "echo oops >&2; exit 3"),)},
         StandIn(fail="command 'boom'", returncode=3, stderr="oops"), CommandError,
         "command 'boom': chroot exited with status 3: oops"),
        ({"files": (File("/etc/x", ContentSource.URL, "http://127.0.0.1:9/x"),)}, StandIn(), NetworkError,
         "file /etc/x: cannot fetch http://127.0.0.1:9/x"),
    ],
)  # fmt: skip
def test_failed_build_leaves_no_image_and_no_temp_tree(
    minimal: Recipe,
    tmp_path: Path,
    change: dict[str, object],
    standin: StandIn,
    error: type[Exception],
    message: str,
) -> None:
    recipe = dataclasses.replace(minimal, **change)  # type: ignore[arg-type]
    out, work = tmp_path / "out", tmp_path / "work"
    options = BuildOptions(output_dir=out, work_dir=work)
    with pytest.raises(error, match=message) as caught:
        build_image(recipe, options, state=State.open(tmp_path / "state"), runner=standin)
    if isinstance(caught.value, CommandError):
        assert caught.value.returncode == 3 and "oops" in caught.value.stderr_tail
    assert list(out.iterdir()) == []
    assert list(work.iterdir()) == []


def test_a_failed_package_stage_leaves_no_image_no_tree_and_no_cache_entry(
    minimal: Recipe, tmp_path: Path
) -> None:
    """A pre-command fails inside mmdebstrap (its essential hook says which): the build stops
    there, naming the step, and nothing is cached for the next build to reuse."""
    recipe = dataclasses.replace(minimal, pre_commands=(Command("boom", ContentSource.RAW, "exit 1"),))
    failed = "imagekit: precommand 'boom' failed"
    standin = StandIn(fail=MMDEBSTRAP_STEP, returncode=1, stderr=f"E: hook failed\n{failed}")
    out, work = tmp_path / "out", tmp_path / "work"
    state = State.open(tmp_path / "state")
    with pytest.raises(CommandError, match=f"install packages \\(mmdebstrap\\): .*{failed}") as caught:
        build_image(recipe, BuildOptions(output_dir=out, work_dir=work), state=state, runner=standin)
    assert caught.value.returncode == 1
    own = f"--essential-hook={rootfs.NO_HOST_KEYS_HOOK}"
    hooks = [a for a in standin.argv(MMDEBSTRAP_STEP) if a.startswith("--essential-hook=") and a != own]
    assert len(hooks) == 1 and f"echo {shlex.quote(failed)} >&2; exit 1" in hooks[0]
    assert [step for step, _ in standin.calls] == [MMDEBSTRAP_STEP]  # nothing ran after it
    assert list(out.iterdir()) == [] and list(work.iterdir()) == []
    assert StageCache.open(state).entries() == []


def test_a_failure_after_the_package_stage_keeps_the_stage_cached(minimal: Recipe, tmp_path: Path) -> None:
    """A post-command that fails costs its fix a rebuild of the customize step only: the
    package stage was cached before it ran, and the next build restores it."""
    recipe = dataclasses.replace(minimal, post_commands=(Command("boom", ContentSource.RAW, "exit 2"),))
    state = State.open(tmp_path / "state")
    options = BuildOptions(output_dir=tmp_path / "out", work_dir=tmp_path / "work")
    with pytest.raises(CommandError):
        build_image(recipe, options, state=state, runner=StandIn(fail="command 'boom'", returncode=2))
    [entry] = StageCache.open(state).entries()
    again = StandIn(fail="command 'boom'", returncode=2)
    with pytest.raises(CommandError):
        build_image(recipe, options, state=state, runner=again)
    assert MMDEBSTRAP_STEP not in [step for step, _ in again.calls]
    assert StageCache.open(state).entries()[0].hits == entry.hits + 1


class SlowStandIn(StandIn):
    """mmdebstrap takes a while: long enough for a second build of the same set to arrive."""

    def __call__(
        self, argv: Argv, *, step: str | None = None, **kw: object
    ) -> subprocess.CompletedProcess[bytes]:
        if step == MMDEBSTRAP_STEP:
            time.sleep(0.5)
        return super().__call__(argv, step=step, **kw)


def test_two_builds_of_one_package_set_at_once_bootstrap_it_once(minimal: Recipe, tmp_path: Path) -> None:
    """Two builds started together (a build service's workers, a test session's images) with
    the same package stage: one runs mmdebstrap, the other waits and restores its cache entry."""
    recipe = dataclasses.replace(minimal, post_commands=(Command("boom", ContentSource.RAW, "exit 2"),))
    state_dir = tmp_path / "state"
    State.open(state_dir)
    runners = [SlowStandIn(fail="command 'boom'", returncode=2) for _ in range(2)]

    def build(n: int) -> None:
        options = BuildOptions(output_dir=tmp_path / f"out{n}", work_dir=tmp_path / f"work{n}")
        with pytest.raises(CommandError, match="boom"):
            build_image(recipe, options, state=State.open(state_dir), runner=runners[n])

    threads = [threading.Thread(target=build, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    bootstraps = [MMDEBSTRAP_STEP in [step for step, _ in r.calls] for r in runners]
    assert sorted(bootstraps) == [False, True]
    [entry] = StageCache.open(State.open(state_dir)).entries()
    assert entry.hits == 1


def test_missing_tool_is_named(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="check build tools: unshare not found") as caught:
        require_tools(Firmware.BIOS, (OutputFormat.QCOW2,), path=str(tmp_path))
    assert caught.value.hint and "make setup" in caught.value.hint
