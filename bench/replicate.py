"""Replication benchmark: copying N signed entries between two local registries, against
uploading the same entries through the normal upload API in the same run.

    .venv/bin/python bench/replicate.py [--entries 20000] [--workers 2]

1. Generate N signed entries (bench/market.py's generator and cache; not a measured figure).
2. Upload them all over HTTP to a fresh ``imagekit market serve`` (verification, whitelist
   chain check, fsync, audit log, index): the baseline, entries/s.
3. ``imagekit market replicate --from`` that registry into a fresh data directory (every
   signature verified again on arrival, files fsynced, audit log, index): entries/s, and the
   ratio to step 2 (target: >= 5x). The copy is then audited and compared file by file.

Every result is one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.market import ENDORSERS, IMAGEKIT, emit, generate, start_server, upload_all  # noqa: E402


def _files(data: Path) -> dict[str, bytes]:
    return {str(p.relative_to(data)): p.read_bytes() for p in (data / "metadata").rglob("*.xml")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2, help="source server worker processes")
    parser.add_argument("--upload-concurrency", type=int, default=16)
    args = parser.parse_args()

    pki, entries, seconds, cached = generate(args.entries)
    emit(metric="generate", entries=len(entries), seconds=round(seconds, 1), cached=cached)
    with tempfile.TemporaryDirectory(prefix="imagekit-bench-replicate-") as tmp:
        root = Path(tmp)
        subjects = "\n".join(f"    CN=Endorser {i:02d},O=bench" for i in range(ENDORSERS))
        config = root / "marketplace.conf"
        config.write_text(f"[uploads]\npending = queue\nwhitelist =\n{subjects}\ntrust = {pki / 'ca.pem'}\n")
        (root / "source").mkdir()
        server = start_server(root / "source" / "data", config, args.workers)
        try:
            start = time.monotonic()
            failures = asyncio.run(upload_all(server.port, entries, args.upload_concurrency))
            upload_s = time.monotonic() - start
            emit(metric="upload", entries=len(entries), failed=len(failures), seconds=round(upload_s, 1),
                 entries_per_s=round(len(entries) / upload_s, 1))  # fmt: skip
            replica = root / "replica" / "data"
            source = f"http://127.0.0.1:{server.port}"
            argv = [str(IMAGEKIT), "--json", "market", "replicate", "--from", source,
                    "--data", str(replica), "--config", str(config)]  # fmt: skip
            start = time.monotonic()
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            replicate_s = time.monotonic() - start
        finally:
            server.stop = True
            server.proc.terminate()
            server.proc.wait()
        if done.returncode != 0:
            raise SystemExit(f"replicate failed: {done.stderr[-2000:]}")
        audit = subprocess.run([str(IMAGEKIT), "market", "audit", "--data", str(replica), "--config",
                                str(config)], capture_output=True, text=True, check=False)  # fmt: skip
        same = _files(replica) == _files(root / "source" / "data")
        emit(metric="replicate", entries=len(entries), seconds=round(replicate_s, 1),
             entries_per_s=round(len(entries) / replicate_s, 1),
             speedup=round(upload_s / replicate_s, 1), target_speedup=5,
             identical=same, audit_ok=audit.returncode == 0)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
