"""Every test file is collected.

pytest's default norecursedirs once dropped all of tests/build/ (now tests/builder/).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import COLLECTED_FILES, LONG_TIMEOUTS, REPO, costliest_first, pytest_collection_modifyitems


def test_every_test_file_is_collected(pytestconfig: pytest.Config) -> None:
    on_disk = {str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py")}
    collected = COLLECTED_FILES if _whole_suite(pytestconfig) else _collect_in_a_subprocess()
    assert on_disk - collected == set()
    assert "tests/builder/test_images.py" in collected


def _whole_suite(config: pytest.Config) -> bool:
    """This session started from pyproject's testpaths: what it collected is the answer. An
    xdist worker is handed the controller's arguments, so there they are the testpaths."""
    if config.args_source is pytest.Config.ArgsSource.TESTPATHS:
        return True
    given = {(config.invocation_params.dir / arg).resolve() for arg in config.args}
    return hasattr(config, "workerinput") and given == {REPO / path for path in config.getini("testpaths")}


def _collect_in_a_subprocess() -> set[str]:
    listed = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert listed.returncode == 0, listed.stdout + listed.stderr
    return {line.split("::")[0] for line in listed.stdout.splitlines() if "::" in line}


class _Item:
    """The part of a pytest item the tier hook looks at."""

    path = Path("/elsewhere/test_x.py")

    def __init__(self, fixtures: list[str], marks: list[str]) -> None:
        self.fixturenames = fixtures
        self.marks: list[pytest.MarkDecorator] = [getattr(pytest.mark, name) for name in marks]

    def iter_markers(self) -> list[pytest.Mark]:
        return [m.mark for m in self.marks]

    def get_closest_marker(self, name: str) -> pytest.Mark | None:
        return next((m for m in self.iter_markers() if m.name == name), None)

    def add_marker(self, marker: pytest.MarkDecorator) -> None:
        self.marks.append(marker)


def test_tiers_and_timeouts() -> None:
    builds = _Item(["tmp_path", "minimal_image"], [])
    browser = _Item(["page"], ["browser"])
    fast = _Item(["tmp_path"], [])
    database = _Item(["dsn", "pg_server"], [])
    pytest_collection_modifyitems([builds, browser, fast, database])  # type: ignore[list-item]
    assert builds.get_closest_marker("slow") is not None
    assert [m.args for m in builds.iter_markers() if m.name == "timeout"] == [(LONG_TIMEOUTS["slow"],)]
    assert [m.args for m in browser.iter_markers() if m.name == "timeout"] == [(LONG_TIMEOUTS["browser"],)]
    assert [m.name for m in fast.iter_markers()] == []
    assert [m.name for m in database.iter_markers()] == ["postgres", "timeout"]


def test_the_costliest_tests_run_first() -> None:
    """Under xdist: each image's first user (its build), boots of built images, the slow tier,
    the other VM tests, the browser and database tiers, then the rest."""
    fast, later_fast = _Item(["tmp_path"], []), _Item([], [])
    blank_vm = _Item(["tmp_path"], ["vm"])
    minimal, cloud = _Item(["minimal_image", "build_state_dir"], ["slow"]), _Item(["cloud_image"], ["slow"])
    minimal_boot = _Item(["minimal_image"], ["slow", "vm"])
    database, load = _Item(["pg_server"], ["postgres"]), _Item([], ["slow"])
    rebuild = _Item(["build_state_dir"], ["slow"])
    given: list[Any] = [fast, blank_vm, database, minimal, load, rebuild, minimal_boot, later_fast, cloud]
    expected: list[Any] = [minimal, cloud, minimal_boot, load, rebuild, blank_vm, database, fast, later_fast]
    assert costliest_first(given) == expected


def test_a_build_sharing_another_ones_package_stage_runs_after_the_boots() -> None:
    """both_agents_image restores cloud_init_image's package stage: its first user is handed out
    after the cold builds and the boots, when that stage is cached, not beside its bootstrap."""
    both = _Item(["both_agents_image"], ["slow", "vm"])
    cloud_init, cloud_init_boot = (_Item(["cloud_init_image"], ["slow", "vm"]) for _ in range(2))
    minimal, load = _Item(["minimal_image"], ["slow"]), _Item([], ["slow"])
    given: list[Any] = [load, both, cloud_init, minimal, cloud_init_boot]
    expected: list[Any] = [cloud_init, minimal, cloud_init_boot, both, load]
    assert costliest_first(given) == expected
    alone: list[Any] = [load, both]  # with no run building the other one, it is a cold build
    expected = [both, load]
    assert costliest_first(alone) == expected
