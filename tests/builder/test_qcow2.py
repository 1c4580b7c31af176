"""The qcow2 writer: what qemu-img reads back, what ``qemu-img check`` accepts, the same bytes
whatever the threads do, and holes left unallocated."""

from __future__ import annotations

import json
import random
from pathlib import Path

from imagekit.builder import qcow2
from imagekit.run import run

MIB = 2**20


def _raw(path: Path) -> Path:
    """64 MiB: compressible text, incompressible noise, a zero cluster written out, holes, and a
    last cluster cut short."""
    noise = random.Random(7)
    with open(path, "wb") as fh:
        fh.truncate(64 * MIB + 4096)
        fh.seek(0)
        fh.write(b"imagekit " * 20_000)
        fh.seek(3 * MIB + 1000)  # straddles clusters, starts mid-cluster
        fh.write(noise.randbytes(300_000))
        fh.seek(10 * MIB)
        fh.write(bytes(qcow2.CLUSTER))  # allocated zeros: no cluster for them
        fh.seek(40 * MIB)
        fh.write((noise.randbytes(512) + bytes(512)) * 2048)
        fh.seek(64 * MIB)
        fh.write(b"tail")
    return path


def test_qemu_img_reads_back_the_raw_disk_and_checks_it_clean(tmp_path: Path) -> None:
    raw = _raw(tmp_path / "disk.raw")
    image = tmp_path / "disk.qcow2"
    qcow2.write_qcow2(raw, image)
    info = json.loads(run(["qemu-img", "info", "--output=json", image]).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == 64 * MIB + 4096
    assert info["cluster-size"] == qcow2.CLUSTER
    assert info["format-specific"]["data"]["compression-type"] == "zstd"
    run(["qemu-img", "check", image])  # refcounts, L1/L2 flags and overlaps
    run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", raw, image])
    mapped = json.loads(run(["qemu-img", "map", "--output=json", image]).stdout)
    allocated = sum(e["length"] for e in mapped if e["data"])
    # text (3 clusters), noise (5), the half-noise run (32), the short tail; not the zero cluster
    assert allocated == (3 + 5 + 32) * qcow2.CLUSTER + 4096
    assert image.stat().st_size < 3 * MIB  # compressed; noise stored as is


def test_the_same_raw_disk_gives_the_same_bytes_with_any_threads(tmp_path: Path) -> None:
    raw = _raw(tmp_path / "disk.raw")
    written = []
    for threads in (1, 2, 5):
        image = tmp_path / f"{threads}.qcow2"
        qcow2.write_qcow2(raw, image, threads=threads)
        written.append(image.read_bytes())
    assert written[0] == written[1] == written[2]


def test_an_empty_disk_is_a_header_and_tables(tmp_path: Path) -> None:
    raw = tmp_path / "empty.raw"
    with open(raw, "wb") as fh:
        fh.truncate(2 * 2**30)  # four L2 tables' worth: none written
    image = tmp_path / "empty.qcow2"
    qcow2.write_qcow2(raw, image)
    run(["qemu-img", "check", image])
    run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", raw, image])
    assert image.stat().st_size == 4 * qcow2.CLUSTER  # header, L1, refcount table and block
