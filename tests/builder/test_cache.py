from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from imagekit.builder import cache as cache_module
from imagekit.builder.cache import StageCache
from imagekit.cli import main
from imagekit.errors import InputError
from imagekit.state import State

KEYS = [c * 64 for c in "abc"]


def make_tree(path: Path, text: str) -> Path:
    (path / "etc").mkdir(parents=True)
    (path / "etc/thing").write_text(text)
    os.symlink("thing", path / "etc/link")
    return path


def test_store_restore_roundtrip(tmp_path: Path) -> None:
    cache = StageCache.open(State.open(tmp_path / "state"))
    tree = make_tree(tmp_path / "tree", "one")
    assert not cache.restore(KEYS[0], tmp_path)
    entry = cache.store(KEYS[0], tree, summary="bookworm/amd64, 1 packages")
    assert entry.path.is_file() and entry.size > 0
    dest = tmp_path / "dest"
    dest.mkdir()
    assert cache.restore(KEYS[0], dest)
    assert (dest / "etc/thing").read_text() == "one" and os.readlink(dest / "etc/link") == "thing"
    [listed] = cache.entries()
    assert listed.key == KEYS[0] and listed.hits == 1
    assert not list(cache.directory.glob(".*.part"))


def test_gc_keep_and_older_than(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = StageCache.open(State.open(tmp_path / "state"))
    tree = make_tree(tmp_path / "tree", "x")
    # A clock that ticks a second per reading orders the entries without waiting.
    start, ticks = time.time(), itertools.count()
    with monkeypatch.context() as patched:
        patched.setattr(cache_module, "time", SimpleNamespace(time=lambda: start + next(ticks)))
        for key in KEYS:
            cache.store(key, tree, summary=key[:1])
    assert [e.key for e in cache.entries()] == list(reversed(KEYS))
    removed = cache.gc(keep=2)
    assert [e.key for e in removed] == [KEYS[0]] and not cache.tarball(KEYS[0]).exists()
    assert cache.gc(older_than_days=1) == []
    with cache.state.transaction() as db:
        db.execute("UPDATE build_cache SET last_used = ? WHERE key = ?", (time.time() - 3 * 86400, KEYS[1]))
    assert [e.key for e in cache.gc(older_than_days=2)] == [KEYS[1]]
    assert [e.key for e in cache.entries()] == [KEYS[2]]
    with pytest.raises(InputError, match="--keep N or --older-than"):
        cache.gc()


def test_missing_tarball_is_dropped_from_the_listing(tmp_path: Path) -> None:
    cache = StageCache.open(State.open(tmp_path / "state"))
    cache.store(KEYS[0], make_tree(tmp_path / "tree", "x"), summary="s")
    cache.tarball(KEYS[0]).unlink()
    assert cache.entries() == []


def test_cli_list_and_gc(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    cache = StageCache.open(State.open(state))
    cache.store(KEYS[0], make_tree(tmp_path / "tree", "x"), summary="bookworm/amd64, 3 packages")
    assert main(["--state", str(state), "cache", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["entries"][0]["key"] == KEYS[0] and listed["entries"][0]["summary"].startswith("bookworm")
    assert main(["--state", str(state), "cache", "list"]) == 0
    assert "bookworm/amd64, 3 packages" in capsys.readouterr().out
    assert main(["--state", str(state), "cache", "gc", "--keep", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"][0]["key"] == KEYS[0]
    assert main(["--state", str(state), "cache", "gc"]) == 1
    assert "--keep N or --older-than" in capsys.readouterr().err
