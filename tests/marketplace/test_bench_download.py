"""bench/download.py end to end on a tiny image: every measurement runs and is reported (its
figures are not judged here: they need a quiet machine and a large image)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "download.py"
KINDS = {
    "hash-floor", "download-plain", "sha512sum", "download-sha512", "download-sha1-sha512",
    "transport", "four-hashes-serial", "download-gzip", "gunzip-alone",
}  # fmt: skip


@pytest.mark.slow  # a file server subprocess and every measurement: seconds, like bench/market.py's
def test_download_bench_reports_the_floor_the_downloads_and_the_load(tmp_path: Path) -> None:
    argv = [sys.executable, str(BENCH), "--size-mib", "1", "--rounds", "1", "--dir", str(tmp_path)]
    done = subprocess.run(argv, capture_output=True, timeout=300, cwd=BENCH.parents[1])
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    lines = [json.loads(line) for line in done.stdout.decode().splitlines()]
    measured = {x["kind"]: x for x in lines if x["kind"] != "summary"}
    assert set(measured) == KINDS
    assert all(len(x["load_avg_1m_runs"]) == 1 and x["median_cpu_s"] >= 0 for x in measured.values())
    summary = lines[-1]
    assert summary["kind"] == "summary" and len(summary["load_avg_1_5_15m"]) == 3
    assert set(summary["targets"]) == {
        "plain_time_vs_floor", "gzip_time_vs_plain", "sha512_only_time_vs_sha512sum",
    }  # fmt: skip
    assert summary["plain_cpu_vs_floor_plus_transport_cpu"] > 0
    assert summary["plain_time_vs_floor_least"] >= 1
    assert all(x["median_server_cpu_s"] >= 0 for x in measured.values())
    assert list(tmp_path.iterdir()) == []  # the bench cleans up after itself
