"""``imagekit build serve``: a sub-command of the ``build`` group, refused without its build user
(unless ``--allow-root-builds``); the real runner's command line and its failure line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloud.buildservice.queue import BuildOptions
from cloud.buildservice.runner import BuildFailed, build_argv, subprocess_runner
from cloud.buildservice.tokens import TokenStore
from cloud.buildservice.worker import BuildCancelled, BuildRequest
from cloud.users import UserStore
from imagekit.cli import build_parser, main
from imagekit.recipe.model import Firmware, OutputFormat
from imagekit.state import State


def test_build_verbs_are_sub_commands_beside_the_recipe(tmp_path: Path) -> None:
    """``build serve`` is a real sub-command of ``build`` (no argv rewrite): the verb's own options
    parse, and a first word that names no verb is still the recipe, options before or after it."""
    from cloud.commands.build_client import cmd_status
    from cloud.commands.build_service import cmd_serve
    from imagekit.commands.build import cmd_build

    parser = build_parser("build")
    serve = parser.parse_args(["--state", "s", "build", "serve", "--port", "1"])
    assert serve.func is cmd_serve and serve.port == 1 and serve.recipe is None
    status = parser.parse_args(["build", "status", "7", "--json"])
    assert status.func is cmd_status and status.json
    for argv in (["build", "recipes/serve.appl", "-o", "x"], ["build", "-o", "x", "recipes/serve.appl"]):
        recipe = parser.parse_args(argv)
        assert recipe.func is cmd_build and recipe.recipe == Path("recipes/serve.appl")
        assert recipe.output == Path("x")
    assert build_parser("build-service").parse_args(["build-service", "serve"]).func is cmd_serve


def test_serve_refuses_without_its_build_user(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Sandboxed builds are the default: no build user, no service (unless root builds are allowed)."""
    argv = ["--state", str(tmp_path / "state"), "build", "serve", "--port", "1"]
    assert main([*argv, "--build-user", "imagekit-no-such-user"]) == 1
    err = capsys.readouterr().err
    assert "'imagekit-no-such-user' does not exist" in err and "useradd" in err
    assert "--allow-root-builds" in err
    assert not (tmp_path / "state").exists()


def test_the_runner_builds_as_the_build_user(tmp_path: Path) -> None:
    argv = build_argv(tmp_path / "state", _request(tmp_path, ""), "imagekit-build")
    assert argv[argv.index("--sandbox-user") + 1] == "imagekit-build"
    (tmp_path / "root").mkdir()
    assert "--sandbox-user" not in build_argv(tmp_path / "state", _request(tmp_path / "root", ""))


def _request(tmp_path: Path, recipe: str, options: BuildOptions | None = None) -> BuildRequest:
    (tmp_path / "recipe").mkdir()
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "recipe" / "a.appl").write_text(recipe)
    log = (tmp_path / "log").open("ab")
    recipe_path = tmp_path / "recipe" / "a.appl"
    output = tmp_path / "artifacts"
    return BuildRequest(1, recipe_path, options or BuildOptions(), output, log, lambda: False)


def test_the_runner_passes_the_options(tmp_path: Path) -> None:
    options = BuildOptions((OutputFormat.QCOW2, OutputFormat.RAW), Firmware.UEFI, True)
    argv = build_argv(tmp_path / "state", _request(tmp_path, "", options))
    assert argv[-8:] == [
        "-o",
        str(tmp_path / "artifacts"),
        "--json",
        "--format",
        "qcow2,raw",
        "--firmware",
        "uefi",
        "--check-reproducible",
    ]


def test_the_runner_fails_with_the_builds_error_line(tmp_path: Path) -> None:
    """A real ``imagekit build`` child on a recipe it refuses: cheap, no root needed."""
    request = _request(tmp_path, "name: a\nos:\n  name: debian\n  version: '12'\nbogus_key: 1\n")
    with pytest.raises(BuildFailed) as caught:
        subprocess_runner(tmp_path / "state")(request)
    request.log.close()
    errors = [line for line in (tmp_path / "log").read_text().splitlines() if line.startswith("error: ")]
    assert caught.value.args[0] == errors[-1].removeprefix("error: ")
    assert "bogus_key" in caught.value.args[0]


def test_user_token_create_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = ["--state", str(tmp_path / "state")]
    UserStore(State.open(tmp_path / "state")).create("alice", "alice-password")
    assert main([*state, "user", "token", "create", "alice"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("ikb_") and len(token) > 40
    assert main([*state, "--json", "user", "token", "list", "alice"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [t["id"] for t in listed] == [1]
    assert token.startswith(listed[0]["prefix"]) and len(listed[0]["prefix"]) < 12
    tokens = TokenStore(State.open(tmp_path / "state"))
    assert tokens.owner(token) == 1
    assert main([*state, "user", "token", "revoke", "alice", "1"]) == 0
    assert tokens.owner(token) is None
    assert main([*state, "user", "token", "revoke", "alice", "1"]) == 1
    assert "no token 1" in capsys.readouterr().err


def test_the_runner_stops_a_cancelled_build(tmp_path: Path) -> None:
    """The real child gets SIGTERM at the first look at ``cancelled()``; the runner says so."""
    request = _request(tmp_path, "name: a\nos:\n  name: debian\n  version: '12'\n")
    cancelled = BuildRequest(
        request.job_id, request.recipe, request.options, request.output, request.log, lambda: True
    )
    with pytest.raises(BuildCancelled):
        subprocess_runner(tmp_path / "state")(cancelled)
    request.log.close()
