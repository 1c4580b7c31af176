"""Warnings for valid recipes: asking for cloud-init alone loses one-context's scripts and files."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagekit.cli import main
from imagekit.recipe import load_recipe
from imagekit.recipe.advice import recipe_warnings
from imagekit.recipe.model import ContextAgent

APPL = """name: web
os: {{name: debian, version: 12, password: secret}}
hardware: {{partitions: {{"/": {{size: 2}}}}}}
imagekit:
  context_agent: {agent}
"""
TDL = """<template xmlns:ik="https://imagekit.dev/tdl/1">
  <name>web</name>
  <os><name>Debian</name><version>12</version><arch>x86_64</arch>
    <install type="url"><url>http://deb.debian.org/debian/</url></install></os>
  <ik:context-agent>{agent}</ik:context-agent>
</template>
"""


@pytest.mark.parametrize("agent", list(ContextAgent))
def test_only_cloud_init_alone_is_warned_about(agent: ContextAgent, tmp_path: Path) -> None:
    """cloud-init's OpenNebula datasource reads no START_SCRIPT, INIT_SCRIPTS or FILES.

    canonical/cloud-init (22.4.2, Debian 12's, and HEAD 0167c1b alike)
    cloudinit/sources/DataSourceOpenNebula.py:414-507 ``read_context_disk_dir`` takes from
    context.sh only SSH_KEY/SSH_PUBLIC_KEY (:463-473), the hostname keys (:477), USER_DATA or
    USERDATA with its encoding (:483-494) and ETHn_* for the network (:502); no other key of
    the file is acted on, so with cloud-init alone a VM's scripts and FILES never run.
    """
    path = tmp_path / "web.appl"
    path.write_text(APPL.format(agent=agent.value))
    warnings = recipe_warnings(load_recipe(path))
    if agent is ContextAgent.CLOUD_INIT:
        assert len(warnings) == 1
        assert all(k in warnings[0] for k in ("START_SCRIPT", "INIT_SCRIPTS", "FILES", "both"))
    else:
        assert warnings == ()


@pytest.mark.parametrize(("name", "text"), [("web.appl", APPL), ("web.tdl", TDL)])
def test_validate_warns_and_stays_valid(
    name: str, text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cloud_init = tmp_path / name
    cloud_init.write_text(text.format(agent="cloud-init"))
    both = tmp_path / f"both-{name}"
    both.write_text(text.format(agent="both"))
    assert main(["recipe", "validate", str(cloud_init), str(both)]) == 0
    out = capsys.readouterr()
    assert out.err.splitlines() == [f"warning: {cloud_init}: {recipe_warnings(load_recipe(cloud_init))[0]}"]
    assert f"{cloud_init}: valid" in out.out and f"{both}: valid" in out.out


def test_an_appl_without_a_root_password_is_warned_about(tmp_path: Path) -> None:
    """BoxGrinder's default root password was ``boxgrinder``; imagekit sets none (issue 11 point 13)."""
    from imagekit.recipe.advice import NO_ROOT_PASSWORD

    path = tmp_path / "bare.appl"
    path.write_text("name: bare\nos: {name: debian, version: 12}\n")
    assert recipe_warnings(load_recipe(path)) == (NO_ROOT_PASSWORD,)
