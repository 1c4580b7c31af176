"""Real sandboxed builds through ``mmdebstrap --mode=unshare`` (slow: Debian's archive, a
couple of minutes): the shipped webserver recipe, with a pre-command, twice from scratch as
``--check-reproducible`` builds it (its package set is no other build's: both builds are cold,
and two independent mmdebstrap runs, both in the sandbox, must give the same bytes); then, from
the package stage the session's minimal image cached, post-commands that try to get out, and a
fork bomb.

The pre-command runs as root of the namespace. The post-commands' attempts fail and are
recorded in the image, and the host saw nothing. The bomb fails the build with the sandbox's
one-line error. Needs root and the build user (test_sandbox.py)."""

from __future__ import annotations

import dataclasses
import json
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagekit.builder import BuildOptions, build_image
from imagekit.builder.sandbox import BuildUser, Limits, Sandbox
from imagekit.builder.verify import check_reproducible
from imagekit.errors import CommandError
from imagekit.recipe import load_recipe
from imagekit.recipe.model import Command, ContentSource, OutputFormat
from imagekit.run import run
from imagekit.state import State
from tests.builder.test_sandbox import build_user  # noqa: F401  (a fixture)
from tests.conftest import REPO, BuiltImage

pytestmark = pytest.mark.slow


@pytest.fixture
def work() -> Iterator[Path]:
    """A work directory others may search (pytest's tmp is closed): the build user's way in,
    in the temporary directory (sticky and searchable; make test's is a tmpfs)."""
    path = Path(tempfile.mkdtemp(prefix="imagekit-sandbox-work-"))
    path.chmod(0o711)
    yield path
    path.rmdir()


def raw_file(raw: Path, manifest: Path, name: str) -> str:
    root = next(p for p in json.loads(manifest.read_text())["partitions"] if p["mount"] == "/")
    return run(["debugfs", "-R", f"cat {name}", f"{raw}?offset={root['start']}"]).stdout.decode()


def attempt(label: str, command: str) -> str:
    """A post-command that records LABEL when the attempt failed, LABEL-escaped when it worked."""
    return f"if {command} 2>/dev/null; then echo {label}-escaped; else echo {label}; fi >> /root/r"


def test_the_webserver_recipe_rebuilds_byte_identical_in_the_sandbox(
    build_user: BuildUser,  # noqa: F811
    tmp_path: Path,
    work: Path,
) -> None:
    """The inheriting lighttpd appliance (files:, post:, variables) and a pre-command, built
    cold twice in the sandbox by ``--check-reproducible`` (issue 12 points 1 and 4)."""
    webserver = load_recipe(REPO / "recipes" / "webserver" / "webserver.appl")
    recipe = dataclasses.replace(
        webserver, pre_commands=(Command("pre", ContentSource.RAW, "id -u > /pre-uid"),)
    )
    sandbox = Sandbox(build_user, Limits(processes=256))
    options = BuildOptions(
        output_dir=tmp_path / "out", formats=(OutputFormat.RAW,), work_dir=work, sandbox=sandbox
    )
    report = check_reproducible(recipe, options, state=State.open(tmp_path / "state"))
    assert report.identical, (report.differences, report.manifest_keys, report.diffoscope)
    assert not report.first.cache.hit  # cold against cold: mmdebstrap's own output is compared
    raw = report.first.output(OutputFormat.RAW)
    assert raw_file(raw, report.first.manifest, "/pre-uid") == "0\n"
    assert "server.port = 8080" in raw_file(raw, report.first.manifest, "/etc/lighttpd/lighttpd.conf")
    assert not list(work.iterdir())


def test_post_commands_cannot_get_out_of_the_sandbox(
    build_user: BuildUser,  # noqa: F811
    minimal_image: BuiltImage,
    build_state_dir: Path,
    tmp_path: Path,
    work: Path,
) -> None:
    """From the run's package cache (the minimal recipe's stage, made by the session's
    unsandboxed build: a site's own, trusted), post-commands run in the sandbox."""
    victim = Path(tempfile.mkdtemp(prefix="imagekit-victim-", dir="/tmp"))
    victim.chmod(0o1777)
    minimal = load_recipe(REPO / "recipes" / "debian-12-minimal.appl")
    sandbox = Sandbox(build_user, Limits(processes=256))
    options = BuildOptions(
        output_dir=tmp_path / "out", formats=(OutputFormat.RAW,), work_dir=work, sandbox=sandbox
    )
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        attempts = (
            attempt("proc", f"echo x > /proc/1/root{victim}/x"),
            attempt("net", f"bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}'"),
            attempt("mknod", "mknod /root/disk b 8 0"),
            "id -u >> /root/r",
        )
        recipe = dataclasses.replace(
            minimal,
            post_commands=tuple(Command(f"try{n}", ContentSource.RAW, s) for n, s in enumerate(attempts)),
        )
        result = build_image(recipe, options, state=State.open(build_state_dir))
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert result.cache.hit
    raw = result.output(OutputFormat.RAW)
    assert raw_file(raw, result.manifest, "/root/r").split() == ["proc", "net", "mknod", "0"]
    assert list(victim.iterdir()) == []
    victim.rmdir()

    # The bomb goes off in the same sandbox.
    bomb = Command("bomb", ContentSource.RAW, "bomb() { bomb | bomb & }\nbomb\nsleep 600\n")
    with pytest.raises(CommandError) as caught:
        build_image(dataclasses.replace(recipe, post_commands=(bomb,)), options,
                    state=State.open(build_state_dir))  # fmt: skip
    assert str(caught.value).startswith("command 'bomb': sandbox exited with status ")
    assert "process limit: " in str(caught.value) and "\n" not in str(caught.value)
    assert not list(work.iterdir())
