"""The shared primitives: run(), the error tree, state, the CLI's error contract."""

from __future__ import annotations

import io
import logging
import sys
import threading
from pathlib import Path

import pytest

from imagekit.cli import main
from imagekit.errors import CommandError, ImagekitError, InputError, VerificationError
from imagekit.log import StepTimings, live_detail, setup_logging, step
from imagekit.run import run
from imagekit.state import State


def test_run_captures_output() -> None:
    proc = run(["sh", "-c", "echo out; echo err >&2"])
    assert proc.stdout == b"out\n"
    assert proc.stderr == b"err\n"


def test_run_failure_names_tool_status_and_stderr_tail() -> None:
    with pytest.raises(CommandError) as info:
        run(["sh", "-c", "echo first >&2; echo 'last words' >&2; exit 3"], step="unpack")
    err = info.value
    assert err.returncode == 3
    assert str(err) == "unpack: sh exited with status 3: last words"
    assert "first" in err.stderr_tail


def test_run_missing_tool_is_127_with_hint() -> None:
    with pytest.raises(CommandError) as info:
        run(["/nonexistent/tool"])
    assert info.value.returncode == 127
    assert "not found" in str(info.value)
    assert info.value.hint


def test_run_environment_is_minimal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEKIT_LEAK", "x")
    out = run(["env"]).stdout.decode()
    assert "IMAGEKIT_LEAK" not in out
    assert "LANG=C.UTF-8" in out


def test_run_redacts_secrets_in_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="imagekit.run")
    run(["echo", "s3cret"], redact=["s3cret"])
    assert "s3cret" not in caplog.text
    assert "***" in caplog.text


def test_error_tree() -> None:
    assert issubclass(InputError, ImagekitError)
    assert str(InputError("bad key", where="f.tdl:3:4")) == "f.tdl:3:4: bad key"
    assert str(VerificationError("expired", rule="certificate-validity")) == "certificate-validity: expired"


def test_state_transactions_serialise_across_threads(tmp_path: Path) -> None:
    state = State.open(tmp_path / "st")
    with state.transaction() as db:
        db.execute("CREATE TABLE test_counter (n INTEGER NOT NULL)")
        db.execute("INSERT INTO test_counter VALUES (0)")

    def bump() -> None:
        for _ in range(20):
            with state.transaction() as db:
                (n,) = db.execute("SELECT n FROM test_counter").fetchone()
                db.execute("UPDATE test_counter SET n = ?", (n + 1,))

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    conn = state.db()
    assert conn.execute("SELECT n FROM test_counter").fetchone()[0] == 80
    conn.close()


def test_cli_without_command_shows_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert "COMMAND" in capsys.readouterr().out
    assert main(["market"]) == 0  # a group without its sub-command: the group's help
    out = capsys.readouterr().out
    assert out.startswith("usage: imagekit market") and "deprecate" in out


def test_vv_adds_the_libraries_debug_output(capsys: pytest.CaptureFixture[str]) -> None:
    """-v shows imagekit's debug lines (every command run); -vv also the libraries', named."""
    shown = {}
    try:
        for verbosity in (0, 1, 2):
            setup_logging(verbosity)
            logging.getLogger("imagekit.run").debug("$ true")
            logging.getLogger("httpx").debug("HTTP Request: GET /")
            shown[verbosity] = capsys.readouterr().err.splitlines()
    finally:
        setup_logging(0)
    assert shown[0] == []
    assert shown[1] == ["$ true"]
    assert shown[2] == ["imagekit.run: $ true", "httpx: HTTP Request: GET /"]


class _Terminal(io.StringIO):
    """A terminal that says when the running step's line was drawn a second time (the ticker)."""

    def __init__(self) -> None:
        super().__init__()
        self.redrawn = threading.Event()

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        written = super().write(text)
        if self.getvalue().count("\r\x1b[K  inner… ") >= 2:
            self.redrawn.set()
        return written


def test_step_on_a_terminal_is_a_live_line(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    setup_logging(0)
    try:
        timings = StepTimings()
        with step("outer", timings), step("inner", timings):
            assert terminal.redrawn.wait(timeout=30), "the live line was never redrawn"
    finally:
        setup_logging(0)  # back to a plain handler on the real stderr
    out = terminal.getvalue()
    assert "\r\x1b[K  inner… 0 s" in out
    assert "outer…\n" in out  # the parent's line is frozen when the nested step starts
    lines = [line.rsplit("\r\x1b[K", 1)[-1] for line in out.rstrip("\n").split("\n")]
    assert lines[-2].startswith("  inner: ") and lines[-1].startswith("outer: ")
    assert set(timings.seconds) == {"inner", "outer"}


def test_live_detail_shows_after_the_running_step_on_a_terminal_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    terminal, captured = _Terminal(), sys.stderr
    monkeypatch.setattr(sys, "stderr", terminal)
    setup_logging(0)
    try:
        with step("download"):
            assert live_detail("[####] 4/20 MiB")
    finally:
        setup_logging(0)
    assert "\r\x1b[Kdownload… 0 s [####] 4/20 MiB" in terminal.getvalue()
    monkeypatch.setattr(sys, "stderr", captured)
    setup_logging(0)
    with step("download"):
        assert not live_detail("[####] 4/20 MiB")  # not a terminal: the caller logs lines


def test_step_without_a_terminal_prints_plain_lines(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(0)
    with step("work"):
        pass
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.splitlines()[0] == "work…" and err.splitlines()[1].startswith("work: ")
