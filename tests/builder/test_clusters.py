"""A rebuild's qcow2 from the clusters an earlier build compressed (issue 20, point 2): the same
bytes as compressing everything, only the changed clusters compressed, a foreign or damaged
cluster file ignored, and the checksums taken from memory instead of reading the file back."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
import zstandard

from imagekit.builder import manifest, publish, qcow2
from imagekit.builder.cache import StageCache
from imagekit.builder.clusters import ClusterStore
from imagekit.log import StepTimings
from imagekit.recipe.model import OutputFormat
from imagekit.state import State

from .test_publish import built

MIB = 2**20


def _raw(path: Path, *, seed: int = 3) -> Path:
    """8 MiB with text, noise (stored uncompressed) and holes."""
    noise = random.Random(seed)
    with open(path, "wb") as fh:
        fh.truncate(8 * MIB)
        fh.write(b"imagekit rebuild " * 30_000)
        fh.seek(5 * MIB)
        fh.write(noise.randbytes(200_000))
    return path


def _cluster(raw: Path, index: int) -> bytes:
    with open(raw, "rb") as fh:
        fh.seek(index * qcow2.CLUSTER)
        return fh.read(qcow2.CLUSTER)


class _NoCompression:
    def __init__(self, **_: object) -> None:
        raise AssertionError("a known cluster was compressed again")


def test_known_clusters_give_the_same_bytes_without_compressing_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = _raw(tmp_path / "disk.raw")
    plain = tmp_path / "plain.qcow2"
    first = qcow2.write_qcow2(raw, plain)
    store = ClusterStore(tmp_path / "k.clusters")
    store.save_if_stale(qcow2.write_qcow2(raw, tmp_path / "first.qcow2", known=store.load()))
    assert first.reused == 0 and (tmp_path / "first.qcow2").read_bytes() == plain.read_bytes()

    monkeypatch.setattr(zstandard, "ZstdCompressor", _NoCompression)
    handed: list[Sequence[qcow2.Buffer]] = []
    again = qcow2.write_qcow2(raw, tmp_path / "again.qcow2", known=store.load(), on_bytes=handed.append)
    assert (tmp_path / "again.qcow2").read_bytes() == plain.read_bytes() == b"".join(handed[0])
    assert again.reused == len(again.clusters) == len(first.clusters) > 0


def test_a_changed_cluster_alone_is_compressed(tmp_path: Path) -> None:
    raw = _raw(tmp_path / "disk.raw")
    store = ClusterStore(tmp_path / "k.clusters")
    store.save_if_stale(qcow2.write_qcow2(raw, tmp_path / "a.qcow2", known=store.load()))
    with open(raw, "r+b") as fh:  # one byte in the second cluster, and a new cluster in a hole
        fh.seek(qcow2.CLUSTER + 17)
        fh.write(b"X")
        fh.seek(7 * MIB)
        fh.write(b"new")
    rebuilt = qcow2.write_qcow2(raw, tmp_path / "b.qcow2", known=store.load())
    qcow2.write_qcow2(raw, tmp_path / "cold.qcow2")
    assert (tmp_path / "b.qcow2").read_bytes() == (tmp_path / "cold.qcow2").read_bytes()
    assert rebuilt.reused == len(rebuilt.clusters) - 2


def test_the_clusters_follow_a_new_file_set_and_stay_for_small_changes(tmp_path: Path) -> None:
    """A new file moves every cluster after it (mkfs.ext4 -d): the next rebuilds are made of
    the clusters of the build that moved them, not of the first build's."""
    raw = _raw(tmp_path / "disk.raw")
    store = ClusterStore(tmp_path / "k.clusters")
    store.save_if_stale(qcow2.write_qcow2(raw, tmp_path / "a.qcow2", known=store.load()))
    content = raw.read_bytes()
    raw.write_bytes(b"+" * 4096 + content[:-4096])  # everything shifted by a block
    shifted = qcow2.write_qcow2(raw, tmp_path / "b.qcow2", known=store.load())
    assert shifted.reused * 2 < len(shifted.clusters)
    store.save_if_stale(shifted)
    again = qcow2.write_qcow2(raw, tmp_path / "c.qcow2", known=store.load())
    assert again.reused == len(again.clusters)

    with open(raw, "r+b") as fh:  # a small change: the file is not written again
        fh.write(b"-")
    before = store.path.stat()
    small = qcow2.write_qcow2(raw, tmp_path / "d.qcow2", known=store.load())
    store.save_if_stale(small)
    assert small.reused == len(small.clusters) - 1
    after = store.path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_cluster_file_from_another_writer_or_damaged_is_ignored_and_replaced(tmp_path: Path) -> None:
    raw = _raw(tmp_path / "disk.raw")
    written = qcow2.write_qcow2(raw, tmp_path / "a.qcow2")
    store = ClusterStore(tmp_path / "k.clusters")
    store.path.write_bytes(b"imagekit qcow2 clusters 2 " + json.dumps({"zstd": "0.0.1"}).encode() + b"\n")
    assert store.load() == {} and not store.current()
    store.save_if_stale(qcow2.write_qcow2(raw, tmp_path / "b.qcow2", known=store.load()))
    assert store.current() and set(store.load()) == {
        hashlib.sha256(_cluster(raw, c.index)).digest() for c in written.clusters
    }
    content = store.path.read_bytes()
    store.path.write_bytes(content[:-100])  # cut short: the last record's data is gone
    assert store.load() == {}


def test_the_qcow2_checksums_come_from_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _raw(tmp_path / "work.raw")
    read_back: list[Path] = []

    def reading(path: Path, name: str) -> str:
        read_back.append(path)
        return ""

    monkeypatch.setattr(manifest, "_digest", reading)
    done = publish.publish_outputs(
        raw, (OutputFormat.QCOW2,), tmp_path / "tiny", built(), timings=StepTimings(), started=0.0
    )
    [output] = done.outputs
    content = output.path.read_bytes()
    assert read_back == []
    assert output.checksums == {name: hashlib.new(name, content).hexdigest() for name in manifest.ALGORITHMS}


def test_a_stage_and_its_clusters_go_together(tmp_path: Path) -> None:
    cache = StageCache.open(State.open(tmp_path / "state"))
    (tmp_path / "tree").mkdir()
    key = "d" * 64
    cache.store(key, tmp_path / "tree", summary="s")
    store = cache.clusters(key)
    store.save_if_stale(qcow2.write_qcow2(_raw(tmp_path / "disk.raw"), tmp_path / "a.qcow2"))
    assert store.path.parent == cache.directory and store.current()
    assert [e.key for e in cache.gc(keep=0)] == [key]
    assert not store.path.exists()
