"""Registry benchmark: signed uploads per second, then read latency under 32 concurrent clients.

    .venv/bin/python bench/market.py [--entries 100000] [--clients 32] [--workers 2]

1. Generate N signed entries with test keys (ECDSA P-256; a CA and 20 whitelisted endorsers),
   in parallel, cached under /tmp so reruns skip it (not a measured figure).
2. Start a fresh ``imagekit market serve`` (uvicorn, SQLite index) and upload them all over
   HTTP on loopback (verification, whitelist chain check, fsync, audit log, index included).
3. With ``--clients`` concurrent keep-alive clients: p50/p99 of pairs measured side by side,
   ``--repeat`` rounds each (floor first), then the ratio of their median p99s: an id lookup
   (``GET /metadata/{id}``) against a static response (the floor; target <= 2x), and a page of
   ``GET /appliance`` (OpenNebula's marketplace API) against a page of the registry's own
   ``GET /metadata`` listing. Then once each: the whole ``GET /appliance`` (what OpenNebula's
   driver reads), endorser listings (``/endorsers`` and one endorser's entries), and a
   filtered search page (HTML). Peak RSS of the server's process tree.

To iterate on read latency without re-uploading: ``--data DIR`` keeps the server's directory
(data, config, log) in DIR, and a later ``--data DIR --skip-upload`` serves it again and
measures only the reads (``--kinds`` picks which).

Every result is one JSON line on stdout. The HTTP client is a minimal asyncio one, so that the
load generator (sharing the machine's cores with the server) costs as little as possible.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import pickle
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CACHE = Path(tempfile.gettempdir()) / "imagekit-bench-market"
FORMAT = 2  # bump when the generated entries change
ENDORSERS = 20
OSES = [
    ("debian", "12"), ("debian", "11"), ("ubuntu", "24.04"), ("ubuntu", "22.04"), ("fedora", "40"),
    ("alpine", "3.20"), ("rocky", "9"), ("centos", "7"), ("opensuse", "15.6"), ("arch", "2024"),
]  # fmt: skip
ARCHES = ["x86_64", "aarch64", "i686"]
IMAGEKIT = Path(sys.executable).parent / "imagekit"


def emit(**fields: object) -> None:
    print(json.dumps({"bench": "market", **fields}), flush=True)


# --- generation (cached) ---------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bench"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _pki(directory: Path) -> None:
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(_name("bench CA")).issuer_name(_name("bench CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=800)).not_valid_after(now + timedelta(days=800))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for i in range(ENDORSERS):
        key = ec.generate_private_key(ec.SECP256R1())
        email = f"endorser{i:02d}@bench.example.org"
        cert = (
            x509.CertificateBuilder().subject_name(_name(f"Endorser {i:02d}")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=700)).not_valid_after(now + timedelta(days=700))
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )  # fmt: skip
        (directory / f"e{i:02d}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (directory / f"e{i:02d}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )


def _generate_chunk(job: tuple[Path, int, int, str]) -> list[tuple[str, bytes]]:
    import hashlib

    from marketplace.identifier import sha1_to_identifier
    from marketplace.metadata import ChecksumAlgorithm, Metadata
    from marketplace.signing import load_signer, sign_metadata

    pki, start, stop, now_text = job
    now = datetime.fromisoformat(now_text)
    signers = [load_signer(pki / f"e{i:02d}.pem", pki / f"e{i:02d}.key") for i in range(ENDORSERS)]
    out = []
    for n in range(start, stop):
        rnd = random.Random(n)
        content = f"bench image {n}".encode()
        sha1 = hashlib.sha1(content).hexdigest()
        os_name, version = OSES[n % len(OSES)]
        endorser = n % ENDORSERS
        created = now - timedelta(days=300) + timedelta(seconds=n * 250)
        m = Metadata(
            identifier=sha1_to_identifier(sha1),
            size=1_000_000 + n,
            checksums={
                ChecksumAlgorithm.SHA1: sha1,
                ChecksumAlgorithm.SHA256: hashlib.sha256(content).hexdigest(),
            },
            endorsement=None,
            title=f"{os_name} {version} image {n}",
            description=f"benchmark image number {n}",
            tag=f"{os_name}-{version}" if n % 7 == 0 else None,
            os=os_name,
            os_version=version,
            os_arch=ARCHES[rnd.randrange(len(ARCHES))],
            valid=created + timedelta(days=rnd.choice((30, 400, 400, 400))),
            deprecated="superseded" if n % 50 == 0 else None,
            locations=(f"https://images.bench.example.org/{n}.qcow2",),
            format="qcow2",
        )
        signer = signers[endorser]
        out.append(
            (
                f"endorser{endorser:02d}@bench.example.org",
                sign_metadata(m, cert=signer.certificate, key=signer.key, created=created),
            )
        )
    return out


def generate(count: int) -> tuple[Path, list[tuple[str, bytes]], float, bool]:
    pki = CACHE / "pki"
    cached = CACHE / f"entries-v{FORMAT}-{count}.pickle"
    larger = sorted(
        (p for p in CACHE.glob(f"entries-v{FORMAT}-*.pickle") if int(p.stem.rsplit("-", 1)[1]) >= count),
        key=lambda p: int(p.stem.rsplit("-", 1)[1]),
    )
    if larger and (pki / "ca.pem").exists():
        with open(larger[0], "rb") as handle:
            entries: list[tuple[str, bytes]] = pickle.load(handle)
        return pki, entries[:count], 0.0, True
    start = time.monotonic()
    if not (pki / "ca.pem").exists():
        _pki(pki)
    now = (datetime.now(UTC) - timedelta(days=1)).replace(microsecond=0).isoformat()
    step = 500
    jobs = [(pki, i, min(i + step, count), now) for i in range(0, count, step)]
    with multiprocessing.Pool(os.cpu_count() or 2) as pool:
        entries = [e for chunk in pool.imap(_generate_chunk, jobs) for e in chunk]
    tmp = cached.with_suffix(".part")
    with open(tmp, "wb") as handle:
        pickle.dump(entries, handle, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.rename(cached)
    return pki, entries, time.monotonic() - start, False


# --- a minimal keep-alive HTTP/1.1 client ----------------------------------------------


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, body: bytes = b"", content_type: str = ""
    ) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
        if body:
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        header = await self.reader.readuntil(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            if line.lower().startswith("content-length:"):
                length = int(line.split(":", 1)[1])
        data = await self.reader.readexactly(length)
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    peak_rss: int = 0
    stop: bool = False

    def tree_rss(self) -> int:
        pids = [self.proc.pid]
        total = 0
        while pids:
            pid = pids.pop()
            try:
                with open(f"/proc/{pid}/status") as status:
                    for line in status:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1]) * 1024
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children") as children:
                        pids.extend(int(c) for c in children.read().split())
            except (FileNotFoundError, ProcessLookupError):
                continue
        return total

    def tree_cpu(self) -> float:
        """CPU seconds (user + system) used so far by the server's processes: unlike latency,
        this does not depend on what else the machine is doing."""
        pids = [self.proc.pid]
        ticks = 0
        while pids:
            pid = pids.pop()
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children") as children:
                        pids.extend(int(c) for c in children.read().split())
            except (FileNotFoundError, ProcessLookupError):
                continue
        return ticks / os.sysconf("SC_CLK_TCK")

    def sample(self) -> None:
        while not self.stop:
            self.peak_rss = max(self.peak_rss, self.tree_rss())
            time.sleep(0.2)


def start_server(data: Path, config: Path, workers: int) -> Server:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    argv = [str(IMAGEKIT), "-q", "market", "serve", "--port", str(port), "--data", str(data),
            "--config", str(config), "--workers", str(workers)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(data.parent / "server.log", "wb"))
    server = Server(proc, port)
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = Connection("127.0.0.1", port)
            status, _ = asyncio.run(conn.request("GET", "/healthz"))
            if status == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"server did not start: {(data.parent / 'server.log').read_text()[-2000:]}")
        time.sleep(0.2)
    if workers > 1:
        time.sleep(3)  # /healthz answered from the first worker up: let the others listen too
    threading.Thread(target=server.sample, daemon=True).start()
    return server


async def upload_all(port: int, entries: list[tuple[str, bytes]], concurrency: int) -> list[int]:
    queue = iter(range(len(entries)))
    failures: list[int] = []

    async def worker() -> None:
        conn = Connection("127.0.0.1", port)
        for i in queue:
            status, body = await conn.request("POST", "/metadata", entries[i][1], "application/rdf+xml")
            if status != 201:
                failures.append(status)
                if len(failures) < 3:
                    print(f"upload {i}: {status} {body[:200]!r}", file=sys.stderr)
        conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failures


async def latency(port: int, paths: list[str], clients: int, total: int) -> tuple[list[float], int, float]:
    timings: list[float] = []
    began = time.perf_counter()
    errors = 0
    counter = iter(range(total))

    async def client(seed: int) -> None:
        nonlocal errors
        rnd = random.Random(seed)
        conn = Connection("127.0.0.1", port)
        for _ in counter:
            path = paths[rnd.randrange(len(paths))]
            start = time.perf_counter()
            status, _ = await conn.request("GET", path)
            timings.append(time.perf_counter() - start)
            if status != 200:
                errors += 1
        conn.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    return timings, errors, time.perf_counter() - began


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# (paths, target p99 in ms or None, requests: None = --requests)
Kind = tuple[list[str], float | None, int | None]
# Each pair is measured side by side, --repeat times, floor first: the figures that are
# compared come from the same minutes of the same machine.
PAIRS = (("static", "id_lookup", 2.0), ("metadata_page", "appliance_page", None))


def _kinds(entries: list[tuple[str, bytes]], clients: int) -> dict[str, Kind]:
    from marketplace.metadata import parse_metadata

    # Lookups of images that are current (the common case: a site checking an image
    # before it boots it); expired and deprecated ones would answer 404.
    at = datetime.now(UTC)
    sample = random.Random(1).sample(range(len(entries)), min(2000, len(entries)))
    parsed = [parse_metadata(entries[i][1]) for i in sample]
    ids = [m.identifier for m in parsed if m.status(at).value == "valid"][:500]
    emails = sorted({email for email, _ in entries})
    pages = range(1, max(2, len(entries) * 3 // 4 // 50))  # about the current entries, 50 a page
    return {
        "static": (["/healthz"], None, None),
        "id_lookup": ([f"/metadata/{i}" for i in ids], 20, None),
        "metadata_page": ([f"/metadata?media=json&page={p}&limit=50" for p in pages], None, None),
        "appliance_page": ([f"/appliance?page={p}&per_page=50" for p in pages], None, None),
        # What OpenNebula's driver asks: every appliance in one response (megabytes).
        "appliance_full": (["/appliance"], None, 2 * clients),
        "endorsers": (["/endorsers?media=json"], None, None),
        "endorser_entries": ([f"/endorsers/{e}?media=json&limit=50" for e in emails], None, None),
        "search_page": (
            [f"/metadata?media=html&status=valid&os={o}&os-version={v}&os-arch={a}&sort=created"
             for o, v in OSES for a in ARCHES],
            100, None,
        ),
    }  # fmt: skip


def _run_kind(
    server: Server, kind: str, spec: Kind, entries: int, args: argparse.Namespace, **extra: object
) -> float:
    paths, target, count = spec
    requests = count or args.requests
    asyncio.run(latency(server.port, paths, args.clients, min(200, requests)))  # warm up
    cpu = server.tree_cpu()
    timings, errors, wall = asyncio.run(latency(server.port, paths, args.clients, requests))
    cpu = server.tree_cpu() - cpu
    p99 = percentile(timings, 0.99) * 1000
    emit(
        metric="latency", kind=kind, entries=entries, clients=args.clients,
        requests=len(timings), errors=errors,
        p50_ms=round(statistics.median(timings) * 1000, 2), p99_ms=round(p99, 2),
        rps=round(len(timings) / wall, 1),
        server_cpu_ms=round(cpu * 1000 / len(timings), 2),
        target_p99_ms=target, **extra,
    )  # fmt: skip
    return p99


def _measure(server: Server, kinds: dict[str, Kind], wanted: set[str], args: argparse.Namespace) -> None:
    entries = args.entries
    paired: set[str] = set()
    for floor, kind, target in PAIRS:
        paired.update((floor, kind))
        if not {floor, kind} <= wanted:
            continue
        p99s: dict[str, list[float]] = {floor: [], kind: []}
        for round_ in range(1, args.repeat + 1):
            for name in (floor, kind):
                p99s[name].append(_run_kind(server, name, kinds[name], entries, args, round=round_))
        ratio = statistics.median(p99s[kind]) / statistics.median(p99s[floor])
        emit(
            metric="ratio", kind=kind, floor=floor, entries=entries, clients=args.clients,
            repeat=args.repeat, p99_median_ms=round(statistics.median(p99s[kind]), 2),
            floor_p99_median_ms=round(statistics.median(p99s[floor]), 2),
            ratio=round(ratio, 2), target_ratio=target, loadavg=os.getloadavg()[0],
        )  # fmt: skip
    for kind, spec in kinds.items():
        if kind in wanted and kind not in paired:
            _run_kind(server, kind, spec, entries, args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=4000, help="requests per measured kind")
    parser.add_argument("--upload-concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="server worker processes (default: 2 cores)")
    parser.add_argument("--data", type=Path, help="keep the server's directory here (default: a temp dir)")
    parser.add_argument("--skip-upload", action="store_true", help="reuse the entries already in --data")
    parser.add_argument("--kinds", help="comma-separated latency kinds to measure (default: all)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds of each (floor, kind) pair")
    args = parser.parse_args()
    if args.skip_upload and args.data is None:
        parser.error("--skip-upload needs --data DIR from an earlier run")

    pki, entries, seconds, cached = generate(args.entries)
    emit(metric="generate", entries=len(entries), seconds=round(seconds, 1), cached=cached)

    with contextlib.ExitStack() as stack:
        if args.data is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="imagekit-bench-market-")))
        else:
            root = args.data.resolve()
            if not args.skip_upload and (root / "data").exists():
                raise SystemExit(f"{root / 'data'} exists: remove it, or pass --skip-upload to reuse it")
            root.mkdir(parents=True, exist_ok=True)
        subjects = "\n".join(f"    CN=Endorser {i:02d},O=bench" for i in range(ENDORSERS))
        config = root / "marketplace.conf"
        config.write_text(f"[uploads]\npending = queue\nwhitelist =\n{subjects}\ntrust = {pki / 'ca.pem'}\n")
        server = start_server(root / "data", config, args.workers)
        try:
            if not args.skip_upload:
                start = time.monotonic()
                failures = asyncio.run(upload_all(server.port, entries, args.upload_concurrency))
                elapsed = time.monotonic() - start
                emit(
                    metric="upload", entries=len(entries), failed=len(failures), seconds=round(elapsed, 1),
                    uploads_per_s=round(len(entries) / elapsed, 1), concurrency=args.upload_concurrency,
                    workers=args.workers, target_per_s=200,
                )  # fmt: skip
            kinds = _kinds(entries, args.clients)
            wanted = set(args.kinds.split(",")) if args.kinds else set(kinds)
            _measure(server, kinds, wanted, args)
            emit(metric="server_peak_rss", mib=round(server.peak_rss / 2**20, 1), workers=args.workers)
        finally:
            server.stop = True
            server.proc.terminate()
            try:
                server.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
