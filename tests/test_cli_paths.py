"""Every path argument of the CLI, given what users give it: a missing file, a directory, a path
under a regular file, an unreadable file or unwritable directory, a full disk. Each answer is one
line ``error: …`` naming the path, exit status 1, never a traceback (issue 8, point 7).

Unreadable and full need a subprocess: as root, read permission is only enforced once the
process drops CAP_DAC_OVERRIDE (``setpriv``), and the full disk is a one-page tmpfs mounted in a
private mount namespace (``unshare -m``), so nothing outside the test sees it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from imagekit.cli import main
from marketplace.signing import sign_entry

from .conftest import FIXTURES, REPO
from .marketplace.entries import make_ca, make_endorser


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]  # "{p}" is the path under test, other "{…}" valid inputs of _world()
    role: str  # "in": read; "out": a file written; "dir": a directory created when missing


OS = ("--os", "debian", "--os-version", "12", "--os-arch", "x86_64")
SIGN = ("--cert", "{cert}", "--key", "{key}")
VM = ("--user", "{user}", "--image", "{image_tpl}")
CASES = [
    Case("recipe validate", ("recipe", "validate", "{p}.appl"), "in"),
    Case("recipe show", ("recipe", "show", "{p}.tdl"), "in"),
    Case("recipe convert", ("recipe", "convert", "{p}.appl", "--to", "tdl"), "in"),
    Case("recipe convert -o", ("recipe", "convert", "{recipe}", "--to", "tdl", "-o", "{p}"), "out"),
    Case("build", ("build", "{p}.appl", "-o", "{tmp}/build-out"), "in"),
    Case("context parse", ("context", "parse", "{p}"), "in"),
    Case("context render", ("context", "render", "{p}", *VM), "in"),
    Case(
        "context render --user",
        ("context", "render", "{vm}", "--user", "{p}", "--image", "{image_tpl}"),
        "in",
    ),
    Case(
        "context render --image", ("context", "render", "{vm}", "--user", "{user}", "--image", "{p}"), "in"
    ),
    Case("context render -o", ("context", "render", "{vm}", *VM, "-o", "{p}"), "out"),
    Case("context iso", ("context", "iso", "{p}", *VM, "-o", "{tmp}/c.iso"), "in"),
    Case("context iso -o", ("context", "iso", "{vm}", *VM, "-o", "{p}"), "out"),
    Case("net create", ("net", "create", "{p}"), "in"),
    Case("metadata create", ("market", "metadata", "create", "{p}", "-o", "{tmp}/m.xml", *OS), "in"),
    Case(
        "metadata create --manifest",
        ("market", "metadata", "create", "--manifest", "{p}", "-o", "{tmp}/m"),
        "in",
    ),
    Case("metadata create -o", ("market", "metadata", "create", "{image}", "-o", "{p}", *OS), "out"),
    Case("metadata sign", ("market", "metadata", "sign", "{p}", *SIGN, "-o", "{tmp}/s.xml"), "in"),
    Case(
        "metadata sign --cert",
        ("market", "metadata", "sign", "{unsigned}", "--cert", "{p}", "--key", "{key}", "-o", "{tmp}/s.xml"),
        "in",
    ),  # fmt: skip
    Case(
        "metadata sign --key",
        (
            "market",
            "metadata",
            "sign",
            "{unsigned}",
            "--cert",
            "{cert}",
            "--key",
            "{p}",
            "-o",
            "{tmp}/s.xml",
        ),
        "in",
    ),  # fmt: skip
    Case("metadata sign -o", ("market", "metadata", "sign", "{unsigned}", *SIGN, "-o", "{p}"), "out"),
    Case("metadata verify", ("market", "metadata", "verify", "{p}"), "in"),
    Case("metadata verify --trust", ("market", "metadata", "verify", "{signed}", "--trust", "{p}"), "in"),
    Case(
        "metadata verify --config",
        ("market", "metadata", "verify", "{signed}", "--trust", "{ca}", "--config", "{p}"),
        "in",
    ),  # fmt: skip
    Case("metadata show", ("market", "metadata", "show", "{p}"), "in"),
    Case("market upload", ("market", "upload", "{p}", "--endpoint", "http://127.0.0.1:9"), "in"),
    Case("market reindex --config", ("market", "reindex", "--config", "{p}", "--data", "{tmp}/data"), "in"),
    Case("market reindex --data", ("market", "reindex", "--data", "{p}"), "dir"),
    Case("--state", ("--state", "{p}", "net", "list"), "dir"),
]


def _world(tmp_path: Path, state: Path) -> dict[str, str]:
    """Valid inputs for the arguments not under test, and the state they need."""
    ca = make_ca()
    signer = make_endorser(ca, "paths@example.org")
    cert, key = signer.write(tmp_path / "pki", "signer")
    ca_pem, _ = ca.write(tmp_path / "pki", "ca")
    unsigned = FIXTURES / "marketplace" / "minimal-unsigned.xml"
    signed = tmp_path / "signed.xml"
    signed.write_bytes(sign_entry(unsigned.read_bytes(), cert=signer.cert, key=signer.key))
    image = tmp_path / "disk.raw"
    image.write_bytes(b"imagekit test image\n")
    examples = REPO / "etc" / "examples"
    for net in ("private.net", "public.net"):
        assert main(["--state", str(state), "net", "create", str(examples / net)]) == 0
    return {
        "tmp": str(tmp_path),
        "recipe": str(REPO / "recipes" / "debian-12-minimal.appl"),
        "vm": str(examples / "vm-demo.one"),
        "user": str(examples / "alice.user"),
        "image_tpl": str(examples / "debian.image"),
        "image": str(image),
        "unsigned": str(unsigned),
        "signed": str(signed),
        "cert": str(cert),
        "key": str(key),
        "ca": str(ca_pem),
    }


def _argv(case: Case, path: Path, world: dict[str, str]) -> list[str]:
    return [arg.replace("{p}", str(path)).format(**world) for arg in case.argv]


def _run(argv: list[str]) -> dict[str, object]:
    """``main(argv)`` in this process: its status and stderr, or the exception that escaped."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status: object = main(argv)
    except BaseException as exc:  # noqa: B036 (the point is to see anything that escapes)
        status = f"{type(exc).__name__}: {exc}"
    return {"argv": argv, "status": status, "stderr": err.getvalue()}


def _assert_one_line_errors(results: list[dict[str, object]]) -> None:
    bad = []
    for r in results:
        lines = str(r["stderr"]).splitlines()
        ok = r["status"] == 1 and len(lines) == 1 and lines[0].startswith("error: ")
        if not ok or "Traceback" in str(r["stderr"]):
            bad.append(f"{r['argv']} → {r['status']}: {r['stderr']!r}")
    assert bad == [], "\n".join(bad)


def _prepare(kind: str, case: Case, base: Path) -> Path:
    """The path under test for ``kind``; what it should resolve to is made here."""
    suffix = next((a[len("{p}") :] for a in case.argv if a.startswith("{p}")), "")
    if kind == "missing":
        # An input that is not there; for an output, a parent directory that is not there.
        return base / "missing" / "x" if case.role != "in" else base / "missing"
    if kind == "directory":
        (base / f"a-directory{suffix}").mkdir(parents=True)
        return base / "a-directory"
    if kind == "under-a-file":
        base.mkdir(parents=True, exist_ok=True)
        (base / "plain").write_text("x")
        return base / "plain" / "x"
    if kind == "unreadable":
        if case.role == "in":
            base.mkdir(parents=True)
            (base / f"secret{suffix}").write_text("x")
            (base / f"secret{suffix}").chmod(0)
            return base / "secret"
        (base / "locked").mkdir(parents=True)
        (base / "locked").chmod(0o555)
        return base / "locked" / "x"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "directory", "under-a-file"])
def test_missing_directory_and_not_a_directory(kind: str, tmp_path: Path, _isolated_state: Path) -> None:
    world = _world(tmp_path, _isolated_state)
    results = []
    for n, case in enumerate(CASES):
        if case.role == "dir" and kind in ("missing", "directory"):
            continue  # created on demand, as documented; an existing one is what it wants
        results.append(_run(_argv(case, _prepare(kind, case, tmp_path / f"case-{n}"), world)))
    _assert_one_line_errors(results)


def _drive() -> None:
    """The subprocess side of test_unreadable_and_full_disk: argv lists in, results out."""
    print(json.dumps([_run(argv) for argv in json.load(sys.stdin)]))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a private tmpfs and to drop DAC overrides")
def test_unreadable_and_full_disk(tmp_path: Path, _isolated_state: Path) -> None:
    for tool in ("unshare", "setpriv", "mount"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (util-linux)")
    world = _world(tmp_path, _isolated_state)
    full = tmp_path / "full"
    full.mkdir()
    argvs = []
    for n, case in enumerate(CASES):
        argvs.append(_argv(case, _prepare("unreadable", case, tmp_path / f"case-{n}"), world))
        if case.role != "in":
            argvs.append(_argv(case, full / f"case-{n}", world))
    # One page of tmpfs, filled: every write to it fails with ENOSPC.
    script = 'mount -t tmpfs -o size=4k tmpfs "$0" && head -c 4096 /dev/zero > "$0/fill" && exec "$@"'
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(full),
         "setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c",
         "from tests.test_cli_paths import _drive; _drive()"],
        input=json.dumps(argvs), capture_output=True, text=True, cwd=REPO, check=False,
        env={**os.environ, "IMAGEKIT_STATE": str(_isolated_state)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    assert len(results) == len(argvs)
    _assert_one_line_errors(results)


def test_full_standard_output(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with open("/dev/full", "w") as full:
        monkeypatch.setattr(sys, "stdout", full)
        assert main(["recipe", "show", str(REPO / "recipes" / "debian-12-minimal.appl")]) == 1
        monkeypatch.undo()
    assert capsys.readouterr().err == "error: standard output: No space left on device\n"
