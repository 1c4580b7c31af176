"""Build service benchmark: N builds of the shipped cloud recipe submitted at once, against the
same builds run one after the other with ``imagekit build``; and the service's overhead on one
warm build.

Prints JSON lines, measured one after the other on this machine, all sharing one state
directory (so one package cache: every build after the first is warm):

- ``local_warm``: one ``imagekit build`` (a child process, as the service runs it) to warm the
  cache, then one more, timed: the reference for the overhead.
- ``service_single``: one build through the service (uvicorn on loopback, HTTP Basic): submit,
  wait (polling every 0.2 s), fetch every artifact (checked against its SHA-256) with the
  provenance; against ``local_warm`` (target: at most 10 % more), with and without the fetch
  (``fetch_seconds``: the images cross loopback HTTP and are hashed again).
  ``service_side_seconds`` is the service's own queued → finished, ``queue_wait_seconds`` its
  queued → claimed; ``service_process_cpu_seconds`` the CPU this process (the service and the
  client, not the build's child) used from submission to the last artifact: unlike the wall
  times it hardly moves with the machine's load. ``--rounds N`` measures ``local_warm`` and
  ``service_single`` N times, interleaved, and adds their medians (``service_single_median``);
  ``--overhead-only`` stops there.
- ``sequential``: N ``imagekit build`` runs one after the other: total time.
- ``service_1_worker`` / ``service_2_workers``: N builds submitted at once; total time from the
  first submission to the last build finished, and each build's queue wait (claimed - queued):
  mean and max. The second worker is another ``Worker`` on the same queue in the service's
  process (the claim is the queue's compare-and-set, so it is what a second worker process on
  the same database does).

A real build needs root, mmdebstrap and the Debian mirror: without them it prints one
``skipped`` line. ``--stand-in SECONDS`` replaces the build with a child that sleeps that long
and writes a small image: the service's own costs (queue, HTTP, provenance, fetch), anywhere.

    .venv/bin/python bench/buildservice.py [--builds 10] [--stand-in 2.0] [--rounds 3] [--overhead-only]

Measured 2026-12-05 with ``--builds 2`` on a shared 2-core machine (load average 9-13; ten
builds were not run there): warm build 22.6 s locally, 28.0 s through the service of which
23.2 s service-side and the rest the fetch (+24 % with the fetch, +3 % without); two builds
46.6 s sequential, 48.5 s on one worker, 35.9 s on two (0.77). ``--stand-in 5 --builds 10``:
local 5.1 s, service 5.5 s (+8 %); ten builds 50.6 s sequential, 51.2 s on one worker (mean
queue wait 22.5 s), 26.0 s on two (0.51, mean wait 9.6 s).

The fetch and the service's CPU, measured again (``--rounds 3 --overhead-only``, the code
before and after one after the other, load average 6-8): each HTTP Basic request cost a ~50 ms
scrypt check (the client's polls during the build, then one per artifact), Starlette sent an
artifact in 64 KiB pieces (a thread hop each) and httpx read it in 64 KiB ``bytes`` copied
through h11. Now a verified password is remembered (``UserStore``), artifacts go out 1 MiB at a
time and are read with ``http.client`` into one 1 MiB buffer. Medians of 3: warm build 10.5 s
before / 7.6 s after locally; overhead with the fetch 28.7 % → 1.4 %, without 15.0 % → -3.6 %;
fetch (6 artifacts, 186 MB) 1.44 → 0.40 s; service process CPU 2.68 → 0.64 s. A second pair at
load 6-12: 30.5 % → 6.4 %, fetch 0.92 → 0.75 s, CPU 2.28 → 0.78 s. Single runs range from
-13 % to +46 % at this load: compare medians, and the CPU figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Run as a script, bench/ comes first on sys.path and bench/context.py would shadow the
# context package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import httpx  # noqa: E402
import uvicorn  # noqa: E402

from cloud.buildservice.client import BuildClient  # noqa: E402
from cloud.buildservice.queue import Limits, Step  # noqa: E402
from cloud.buildservice.runner import subprocess_runner  # noqa: E402
from cloud.buildservice.server import ServiceConfig, create_app  # noqa: E402
from cloud.buildservice.worker import BuildRequest, Runner, Worker  # noqa: E402
from cloud.users import UserStore  # noqa: E402
from imagekit.state import State  # noqa: E402

REPO = _HERE.parent
RECIPE = REPO / "recipes" / "debian-12-cloud.tdl"
POLL = 0.2


def emit(**fields: object) -> None:
    print(
        json.dumps({"bench": "buildservice", **fields, "load_avg_1m": round(os.getloadavg()[0], 1)}),
        flush=True,
    )


def stand_in_argv(seconds: float, output: Path) -> list[str]:
    """A child that sleeps ``seconds`` and writes a 1 MiB image into ``output``."""
    image = output / "debian-12-cloud.qcow2"
    script = f"import time; time.sleep({seconds}); open({str(image)!r}, 'wb').write(bytes(1 << 20))"
    return [sys.executable, "-c", script]


def stand_in_runner(seconds: float) -> Runner:
    def run(request: BuildRequest) -> tuple[Step, ...]:
        subprocess.run(stand_in_argv(seconds, request.output), check=True, stderr=request.log)
        return (Step("stand-in", seconds),)

    return run


def local_build(state_root: Path, out: Path, stand_in: float | None) -> float:
    """One ``imagekit build`` (or the stand-in's child) from start to exit, in seconds."""
    out.mkdir(parents=True)
    if stand_in is not None:
        argv = stand_in_argv(stand_in, out)
    else:
        argv = [
            sys.executable,
            "-m",
            "imagekit",
            "--state",
            str(state_root),
            "build",
            str(RECIPE),
            "-o",
            str(out),
        ]
    start = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, cwd=RECIPE.parent)
    shutil.rmtree(out, ignore_errors=True)
    return time.monotonic() - start


@contextlib.contextmanager
def service(state: State, runner: Runner, workers: int, builds: int) -> Iterator[BuildClient]:
    limits = Limits(concurrent=workers, queued=builds + 1, storage_bytes=1 << 50)
    app = create_app(state, ServiceConfig(limits=limits, log_poll=POLL), runner)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run)
    thread.start()
    extra: list[threading.Thread] = []
    try:
        while not server.started:
            time.sleep(0.05)
        own = app.state.service
        for number in range(1, workers):
            worker = Worker(own.queue, own.workspaces, runner, limits, name=f"bench-{number}", poll=POLL,
                            provenance=own.workers[0].provenance)  # fmt: skip
            extra.append(threading.Thread(target=worker.loop, args=(own.stop,)))
            extra[-1].start()
        port = server.servers[0].sockets[0].getsockname()[1]
        auth = httpx.BasicAuth("bench", "bench-password")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=auth, timeout=600) as http:
            yield BuildClient(http)
    finally:
        server.should_exit = True
        thread.join()
        for t in extra:
            t.join()


def submit_all(client: BuildClient, count: int, builds: Path) -> dict[str, Any]:
    ids = [client.submit(RECIPE, {})["id"] for _ in range(count)]
    done = []
    for job_id in ids:
        done.append(client.wait(job_id, on_change=lambda b: None, poll=POLL))
        shutil.rmtree(builds / str(job_id) / "artifacts", ignore_errors=True)  # ten images need not pile up
    total = max(b["finished"] for b in done) - min(b["created"] for b in done)
    failed = [b["error"] for b in done if b["state"] != "succeeded"]
    waits = [b["started"] - b["created"] for b in done if b["started"]]
    return {
        "seconds": round(total, 1),
        "builds": count,
        "failed": failed,
        "queue_wait_mean_s": round(sum(waits) / len(waits), 1) if waits else None,
        "queue_wait_max_s": round(max(waits), 1) if waits else None,
    }


def service_single(state: State, runner: Runner, work: Path, mode: str, local_s: float) -> dict[str, float]:
    """One build through the service, fetched: its overheads against ``local_s``."""
    with service(state, runner, 1, 1) as client:
        cpu_before = time.process_time()  # this process: the service and the client, not the build
        start = time.monotonic()
        build = client.wait(client.submit(RECIPE, {})["id"], on_change=lambda b: None, poll=POLL)
        built_s = time.monotonic() - start
        fetched = client.fetch(build["id"], work / "fetched")
        single_s = time.monotonic() - start
        cpu_s = time.process_time() - cpu_before
    shutil.rmtree(work / "fetched", ignore_errors=True)
    figures = {
        "seconds": round(single_s, 1), "local_seconds": round(local_s, 1),
        "service_side_seconds": round(build["finished"] - build["created"], 1),
        "fetch_seconds": round(single_s - built_s, 2),
        "queue_wait_seconds": round(build["started"] - build["created"], 2),
        "service_process_cpu_seconds": round(cpu_s, 2),
        "overhead_pct": round(100 * (single_s - local_s) / local_s, 1),
        "overhead_without_fetch_pct": round(100 * (built_s - local_s) / local_s, 1),
    }  # fmt: skip
    emit(what="service_single", mode=mode, state=build["state"], artifacts=len(fetched), **figures,
         target_overhead_pct=10)  # fmt: skip
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builds", type=int, default=10, help="builds submitted at once (default 10)")
    parser.add_argument(
        "--stand-in", type=float, metavar="SECONDS", help="a sleeping child instead of a build"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="local and service single builds, interleaved (medians)"
    )
    parser.add_argument(
        "--overhead-only", action="store_true", help="only the single-build overhead, not the N builds"
    )
    args = parser.parse_args()
    if args.stand_in is None and (os.geteuid() != 0 or shutil.which("mmdebstrap") is None):
        emit(what="all", skipped="a real build needs root and mmdebstrap (or give --stand-in SECONDS)")
        return 0
    with tempfile.TemporaryDirectory(prefix="imagekit-bench-buildservice-") as tmp:
        work = Path(tmp)
        state = State.open(work / "state")
        UserStore(state).create("bench", "bench-password")
        runner = (
            stand_in_runner(args.stand_in) if args.stand_in is not None else subprocess_runner(state.root)
        )
        mode = "stand-in" if args.stand_in is not None else "debian-12-cloud"

        local_build(state.root, work / "warmup", args.stand_in)
        singles = []
        for _ in range(args.rounds):  # interleaved: local, service, local, service …
            local_s = local_build(state.root, work / "local", args.stand_in)
            emit(what="local_warm", mode=mode, seconds=round(local_s, 1))
            singles.append(service_single(state, runner, work, mode, local_s))
        if args.rounds > 1:
            median = {key: statistics.median(s[key] for s in singles) for key in singles[0]}
            emit(what="service_single_median", mode=mode, rounds=args.rounds, **median)
        if args.overhead_only:
            return 0

        sequential = sum(
            local_build(state.root, work / f"seq-{n}", args.stand_in) for n in range(args.builds)
        )
        emit(what="sequential", mode=mode, builds=args.builds, seconds=round(sequential, 1))
        for workers in (1, 2):
            with service(state, runner, workers, args.builds) as client:
                result = submit_all(client, args.builds, state.root / "builds")
            name = "service_1_worker" if workers == 1 else "service_2_workers"
            ratio = round(result["seconds"] / sequential, 2)
            emit(what=name, mode=mode, workers=workers, ratio_to_sequential=ratio, **result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
