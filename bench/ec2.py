"""EC2 front door benchmark: 32 concurrent SigV4-signed clients on loopback, imagekit vs moto.

Two calls, each against ``imagekit cloud serve ec2 --hold`` and, as the anchor, moto's EC2
server (``moto_server``, the usual local EC2 endpoint; skipped with a note when not installed):

- ``DescribeInstances`` with 200 instances recorded (imagekit: in the core's pool, pending and
  never booted; moto: one RunInstances of 200);
- ``RunInstances`` of one instance until it is ``pending`` (imagekit: the VM recorded, its
  leases and quota taken, and answered; the server's own dispatcher then does the prolog,
  overlay and context ISO, outside the request, and holds it: nothing boots).

``bench/sched.py`` runs the RunInstances part too (``describe`` 0: DescribeInstances skipped).

Each client is a thread with its own keep-alive connection (urllib3, the transport botocore
itself sends with), signing every request with botocore's SigV4 signer; latency is from sending
to the whole body read. Every client makes one untimed call first (its connection; imagekit's
first RunInstances also waits for the KVM probe). Prints one JSON line per server and call:
p50/p99 in ms, requests/s over the wall time, errors.

    .venv/bin/python bench/ec2.py [--clients 32] [--describe 10] [--run 2] [--no-moto]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

# Run as a script, bench/ comes first on sys.path and bench/context.py would shadow the
# context package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import boto3  # noqa: E402
import urllib3  # noqa: E402
from botocore.auth import SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402

from cloud.cores import CoreKind  # noqa: E402
from cloud.store import VmStore  # noqa: E402
from cloud.users import UserStore  # noqa: E402
from context.leases import NetworkStore  # noqa: E402
from context.network import network_from_template  # noqa: E402
from context.template import parse_template  # noqa: E402
from imagekit.run import run  # noqa: E402
from imagekit.state import State  # noqa: E402

INSTANCES = 200
IMAGEKIT = Path(sys.executable).parent / "imagekit"
PUBLIC_NET = 'NAME = "Public EC2"\nTYPE = "RANGED"\nNETWORK_ADDRESS = "10.20.0.0"\nNETWORK_SIZE = "B"\n'
FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _server(argv: list[str], port: int, log: Path) -> Iterator[str]:
    with open(log, "wb") as out, subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT) as proc:
        try:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{argv[0]} did not start: {log.read_text()[-1500:]}")
                time.sleep(0.1)
            yield f"http://127.0.0.1:{port}/"
        finally:
            proc.terminate()


def _measure(
    url: str, credentials: Credentials, clients: int, per_client: int, params: Callable[[], dict[str, str]]
) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    ready = threading.Barrier(clients + 1)
    parsed = urllib3.util.parse_url(url)
    host, port = parsed.host, parsed.port
    if host is None:
        raise SystemExit(f"{url}: no host")

    def call(http: urllib3.HTTPConnectionPool) -> tuple[float, int, bytes]:
        req = AWSRequest(method="POST", url=url, data=urlencode(params()), headers=dict(FORM))
        SigV4Auth(credentials, "ec2", "us-east-1").add_auth(req)
        prepared = req.prepare()
        start = time.perf_counter()
        response = http.urlopen("POST", "/", body=prepared.body, headers=dict(prepared.headers.items()))
        return time.perf_counter() - start, response.status, response.data

    def client() -> None:
        with urllib3.HTTPConnectionPool(host, port, maxsize=1, timeout=120) as http:
            call(http)  # untimed: the connection, and any first-call work
            ready.wait()
            for _ in range(per_client):
                elapsed, status, body = call(http)
                with lock:
                    latencies.append(elapsed)
                    if status != 200:
                        errors.append(body[:200].decode(errors="replace"))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    ready.wait()
    wall = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - wall
    latencies.sort()
    return {
        "clients": clients,
        "requests": len(latencies),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 1),
        "rps": round(len(latencies) / wall, 1),
        "errors": len(errors),
        **({"first_error": errors[0]} if errors else {}),
    }


def _describe(version: str) -> Callable[[], dict[str, str]]:
    return lambda: {"Action": "DescribeInstances", "Version": version}


def _run_one(image: str, version: str) -> Callable[[], dict[str, str]]:
    return lambda: {
        "Action": "RunInstances",
        "Version": version,
        "ImageId": image,
        "InstanceType": "m1.small",
        "MinCount": "1",
        "MaxCount": "1",
    }


def bench_imagekit(work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    state = State.open(work / "state")
    user = UserStore(state).create("bench", "pw", admin=True)  # RegisterImage of a site image
    store = VmStore(state)
    # Recorded directly, with ids far above the ones `vm create` allocates (from 0) for RunInstances.
    for vmid in range(100_000, 100_000 + INSTANCES):
        store.insert(
            vmid, name=f"vm{vmid}", owner="bench", core=CoreKind.EMBEDDED, template="-", directory=work
        )
    NetworkStore(state).create(network_from_template(parse_template(PUBLIC_NET, "public.net")))
    base = work / "base.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", base, "16M"])
    credentials = Credentials(user.user.access_key, user.secret_key)
    port = _port()
    argv = [
        str(IMAGEKIT),
        "--state",
        str(state.root),
        "cloud",
        "serve",
        "ec2",
        "--port",
        str(port),
        "--hold",
        "--site-images",
        str(work),
        *getattr(args, "serve_options", ()),  # bench/sched.py: --prolog-in-request, for comparison
    ]
    out = []
    with _server(argv, port, work / "imagekit.log") as url:
        ec2 = _client(url, credentials)
        image = ec2.register_image(Name="base", ImageLocation=str(base))["ImageId"]
        if args.describe:
            describe = _measure(url, credentials, args.clients, args.describe, _describe("2016-11-15"))
            out.append({"call": "DescribeInstances", "instances": INSTANCES, **describe})
        ran = _measure(url, credentials, args.clients, args.run, _run_one(image, "2016-11-15"))
        out.append({"call": "RunInstances->pending", **ran})
    server = " ".join(("imagekit", *getattr(args, "serve_options", ())))
    return [{"bench": "ec2", "server": server, **line} for line in out]


def _client(url: str, credentials: Credentials) -> Any:
    return boto3.client(
        "ec2",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=credentials.access_key,
        aws_secret_access_key=credentials.secret_key,
    )


def bench_moto(work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    moto_server = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if moto_server is None:
        return [
            {
                "bench": "ec2",
                "server": "moto",
                "skipped": "moto_server not installed (pip install moto[server])",
            }
        ]
    credentials = Credentials("testing", "testing")
    port = _port()
    out = []
    with _server([moto_server, "-p", str(port)], port, work / "moto.log") as url:
        ec2 = _client(url, credentials)
        image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        if args.describe:
            ec2.run_instances(ImageId=image, MinCount=INSTANCES, MaxCount=INSTANCES)
            describe = _measure(url, credentials, args.clients, args.describe, _describe("2016-11-15"))
            out.append({"call": "DescribeInstances", "instances": INSTANCES, **describe})
        ran = _measure(url, credentials, args.clients, args.run, _run_one(image, "2016-11-15"))
        out.append({"call": "RunInstances->pending", **ran})
    return [{"bench": "ec2", "server": "moto", **line} for line in out]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--describe", type=int, default=10, help="DescribeInstances calls per client (≥ 1)")
    parser.add_argument("--run", type=int, default=2, help="RunInstances calls per client (≥ 1)")
    parser.add_argument("--no-moto", action="store_true", help="measure imagekit only")
    args = parser.parse_args()
    if min(args.clients, args.describe, args.run) < 1:
        parser.error("--clients, --describe and --run must be at least 1")
    with tempfile.TemporaryDirectory(prefix="bench-ec2-") as tmp:
        for bench in (bench_imagekit,) if args.no_moto else (bench_imagekit, bench_moto):
            work = Path(tmp) / bench.__name__
            work.mkdir()
            for line in bench(work, args):
                print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
