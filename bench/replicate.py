"""Replication benchmark: copying N signed entries between two local registries, against
uploading the same entries through the normal upload API in the same run.

    .venv/bin/python bench/replicate.py [--entries 20000] [--workers 2] [--repeat 3]

1. Generate N signed entries (bench/market.py's generator and cache; not a measured figure).
2. Upload them all over HTTP to a fresh ``imagekit market serve`` (verification, whitelist
   chain check, fsync, audit log, index): the baseline, entries/s.
3. ``imagekit market replicate --from`` that registry into a fresh data directory (every
   signature verified again on arrival, files fsynced, audit log, index): entries/s, and the
   ratio to step 2 (target: >= 5x). The copy is then audited and compared file by file.
4. Steps 2 and 3 again, ``--repeat`` pairs in all, each pair in directories of its own; a
   last line gives the medians (the target is read there).

Both steps also report the CPU seconds they cost (every process involved: the uploading client
and the server's tree; the replicating process with its verifying workers, and the source
server's tree): on a machine other work keeps busy, the wall-clock ratio follows the share of
the cores each step gets, while ``cpu_speedup`` (the ratio of CPU costs) depends on it less
(file-system work still costs more kernel time when others write: repeat, take medians).
``user_s`` and ``sys_s`` split them: the system time is mostly creating each entry's two
directories and file, the same three inodes in both steps, and its cost per inode follows what
else the file system does (an ext4 without a journal skips every inode deleted in the last
minutes when it allocates one, so creating after a mass delete costs many times more):
``user_speedup`` is the ratio of what the code itself spends.

Every result is one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.market import ENDORSERS, IMAGEKIT, Server, emit, generate, start_server, upload_all  # noqa: E402


def _tree_ticks(pid: int) -> dict[int, tuple[int, int]]:
    """CPU clock ticks (user, system) of ``pid`` and each of its descendants."""
    found: dict[int, tuple[int, int]] = {}
    pids = [pid]
    while pids:
        pid = pids.pop()
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            found[pid] = (int(fields[11]), int(fields[12]))
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as children:
                    pids.extend(int(c) for c in children.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def _cpu_of(ticks: dict[int, tuple[int, int]]) -> tuple[float, float]:
    """(user, system) CPU seconds of the ticks of several processes."""
    per_second = os.sysconf("SC_CLK_TCK")
    return sum(u for u, _ in ticks.values()) / per_second, sum(s for _, s in ticks.values()) / per_second


def _server_cpu(server: Server) -> tuple[float, float]:
    return _cpu_of(_tree_ticks(server.proc.pid))


def _run_measured(argv: list[str]) -> tuple[subprocess.CompletedProcess[str], tuple[float, float]]:
    """Run ``argv``; its result, and the (user, system) CPU seconds of its process tree
    (sampled every 50 ms: a worker's last 50 ms before it exits may be missed)."""
    seen: dict[int, tuple[int, int]] = {}
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        reader = concurrent.futures.ThreadPoolExecutor(1).submit(proc.communicate)
        while proc.poll() is None:
            for pid, ticks in _tree_ticks(proc.pid).items():
                seen[pid] = max(seen.get(pid, (0, 0)), ticks)
            time.sleep(0.05)
        out, err = reader.result()
    done = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    return done, _cpu_of(seen)


def _own_cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def _plus(*parts: tuple[float, float]) -> tuple[float, float]:
    return sum(u for u, _ in parts), sum(s for _, s in parts)


def _minus(after: tuple[float, float], before: tuple[float, float]) -> tuple[float, float]:
    return after[0] - before[0], after[1] - before[1]


def _files(data: Path) -> dict[str, bytes]:
    return {str(p.relative_to(data)): p.read_bytes() for p in (data / "metadata").rglob("*.xml")}


def _pair(
    root: Path, entries: list[tuple[str, bytes]], config: Path, args: argparse.Namespace
) -> dict[str, float]:
    """One (upload, replicate) pair in ``root``: their JSON lines; the figures the summary needs."""
    (root / "source").mkdir(parents=True)
    server = start_server(root / "source" / "data", config, args.workers)
    try:
        cpu = _plus(_server_cpu(server), _own_cpu())
        start = time.monotonic()
        failures = asyncio.run(upload_all(server.port, entries, args.upload_concurrency))
        upload_s = time.monotonic() - start
        upload_cpu = _minus(_plus(_server_cpu(server), _own_cpu()), cpu)
        emit(metric="upload", entries=len(entries), failed=len(failures), seconds=round(upload_s, 1),
             entries_per_s=round(len(entries) / upload_s, 1), cpu_s=round(sum(upload_cpu), 1),
             user_s=round(upload_cpu[0], 1), sys_s=round(upload_cpu[1], 1),
             load=round(os.getloadavg()[0], 2))  # fmt: skip
        replica = root / "replica" / "data"
        source = f"http://127.0.0.1:{server.port}"
        argv = [str(IMAGEKIT), "--json", "market", "replicate", "--from", source,
                "--data", str(replica), "--config", str(config)]  # fmt: skip
        cpu = _server_cpu(server)
        start = time.monotonic()
        done, replica_cpu = _run_measured(argv)
        replicate_s = time.monotonic() - start
        replicate_cpu = _plus(replica_cpu, _minus(_server_cpu(server), cpu))
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
         cpu_s=round(sum(replicate_cpu), 1), cpu_speedup=round(sum(upload_cpu) / sum(replicate_cpu), 1),
         user_s=round(replicate_cpu[0], 1), sys_s=round(replicate_cpu[1], 1),
         user_speedup=round(upload_cpu[0] / replicate_cpu[0], 1),
         identical=same, audit_ok=audit.returncode == 0, load=round(os.getloadavg()[0], 2))  # fmt: skip
    if failures or not same or audit.returncode != 0:
        raise SystemExit("the replica is not the source's copy (see the line above)")
    return {"upload_s": upload_s, "replicate_s": replicate_s,
            "upload_cpu_s": sum(upload_cpu), "replicate_cpu_s": sum(replicate_cpu)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2, help="source server worker processes")
    parser.add_argument("--upload-concurrency", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3, help="(upload, replicate) pairs, in turn")
    args = parser.parse_args()

    pki, entries, seconds, cached = generate(args.entries)
    emit(metric="generate", entries=len(entries), seconds=round(seconds, 1), cached=cached)
    # Every pair's files stay until the last pair ends: deleting 6 inodes per entry would slow
    # the next pair's creating (see the module docstring) more than anything measured here.
    with tempfile.TemporaryDirectory(prefix="imagekit-bench-replicate-") as tmp:
        root = Path(tmp)
        subjects = "\n".join(f"    CN=Endorser {i:02d},O=bench" for i in range(ENDORSERS))
        config = root / "marketplace.conf"
        config.write_text(f"[uploads]\npending = queue\nwhitelist =\n{subjects}\ntrust = {pki / 'ca.pem'}\n")
        pairs = [_pair(root / f"pair-{n}", entries, config, args) for n in range(args.repeat)]
    upload_s = statistics.median(p["upload_s"] for p in pairs)
    replicate_s = statistics.median(p["replicate_s"] for p in pairs)
    emit(metric="replicate_summary", entries=len(entries), pairs=len(pairs),
         upload_median_s=round(upload_s, 1), replicate_median_s=round(replicate_s, 1),
         speedup_median=round(statistics.median(p["upload_s"] / p["replicate_s"] for p in pairs), 2),
         speedup_of_medians=round(upload_s / replicate_s, 2), target_speedup=5,
         cpu_speedup_median=round(statistics.median(p["upload_cpu_s"] / p["replicate_cpu_s"]
                                                    for p in pairs), 2),
         load_avg_1_5_15m=[round(x, 2) for x in os.getloadavg()])  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
