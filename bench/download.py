"""Verified download benchmark: download + decompression + the listed hashes, against their floor.

    .venv/bin/python bench/download.py [--size-mib 2048] [--rounds 3] [--dir /var/tmp]

A 2 GiB image (64 MiB blocks, half random and half zeros, like a disk image) and its gzip
(level 1) are served on loopback by a ``http.server`` subprocess that sends with ``sendfile(2)``
(the plain one copies every byte through Python, which on 2 cores takes CPU from the client
being measured). In the same run,
interleaved (A B C … A B C …, medians reported), it measures:

* ``download-plain`` / ``download-gzip``: :func:`marketplace.fetch.fetch_image` (HTTP,
  ``.part`` file, decompression, the entry's MD5+SHA-1+SHA-256+SHA-512 verified, rename);
* ``download-sha512``: the same plain download of an image listing one checksum, SHA-512 (a
  HEPiX image list's image, :class:`~marketplace.imagelist_images.ListedDownload`, whose cache
  key comes from that SHA-512: nothing else is computed);
* ``download-sha1-sha512``: a marketplace entry listing SHA-512 and the SHA-1 every entry
  carries (it is the identifier, so it is listed and checked);
* ``transport``: the same HTTP stream read into one 8 MiB buffer and written to a file as a
  download writes its ``.part`` (``O_DIRECT``), nothing verified: what every download pays
  beside its hashes, so ``floor + transport`` is the CPU a download cannot go below;
* ``hash-floor``: the four hashes the entry lists, one thread each, over the file already in
  memory in 16 MiB slices: the work no verified download can avoid (the floor);
* ``sha512sum``: coreutils on the same file;
* ``four-hashes-serial``: one thread updating the four hashes one after the other, 1 MiB
  reads (what StratusLab's storage service did, with 16 KiB reads there);
* ``gunzip-alone``: zlib inflating the .gz file into nothing (the decompressor's own speed).

Where a plain download's CPU goes (``perf record`` of 256 MiB downloads, 2 cores, December 2026):
73 % the hashes (libcrypto), 24 % the kernel (the socket's copy into the buffer, the ``.part``
file's page cache), 3 % Python; ``plain_cpu_vs_floor_plus_transport_cpu`` came out at 1.03. Reading
the socket with ``splice(2)`` into the ``.part`` and hashing it through ``mmap`` cost more CPU than
``recv_into`` + ``write`` (0.73 against 0.61 CPU-second for 512 MiB with SHA-1), so the transport
line is what a download costs beyond its hashes. Measured again (512 MiB, December 2026): the
socket's copy alone 0.10-0.14 CPU-second, writing 512 MiB into /dev/shm alone 0.20-0.22 (a page
allocated and charged per 4 KiB: the machine's tmpfs has no huge pages), ``recv_into`` straight
into an ``mmap`` of the preallocated ``.part`` 0.39-0.52 (131072 page faults, each page zeroed
before the copy; ``MAP_POPULATE`` the same) against 0.26-0.34 for ``recv_into`` + ``write``.

Since December 2026 the ``.part`` (and a compressed image's inflated file) is written with
``O_DIRECT`` (:mod:`marketplace.partfile`), and the work directory is on disk by default, where
a site's image cache is (``--dir``): filling the page cache with the image had cost 0.2
CPU-second per 512 MiB on tmpfs and 0.6 on this machine's ext4, direct writes 0.03.

The file server's CPU is reported beside each line (``median_server_cpu_s``): on loopback it
also does the TCP work of delivering to the client's socket, on the same cores as the hashes. So
with a floor that keeps both cores busy, a plain download cannot take less than ``(floor +
transport + its server) / floor`` times the floor (``plain_time_vs_floor_least``).

gzip: zlib's gzip mode computed a CRC-32 of the output that cost more than inflating a level-1
image (mostly stored blocks); members are now inflated raw, the listed checksums checking the
bytes (512 MiB, 2 cores: the gzip download's median CPU went from 2.66-2.74 to 2.46-2.60
seconds). Tried and dropped: copying the inflated pieces into a second ring of 8 MiB buffers
(+0.3 CPU-second: 150000 page faults instead of 25000-40000) and smaller decompressor pieces
(256 or 128 KiB: no change).

Every result is one JSON line on stdout, with the load average when it was printed; the last
one holds the ratios against the targets (issue 20: plain <= 1.15x the floor, gzip <= 1.1x
plain, SHA-512 only <= 1.3x sha512sum) and the CPU ratios, the steadier ones on a shared machine.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import mmap
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path

from imagekit.run import run
from marketplace.fetch import Wanted, fetch_image, tls_context
from marketplace.httpstream import open_get
from marketplace.identifier import sha1_to_identifier
from marketplace.imagelist_images import ListedDownload, cache_key
from marketplace.metadata import ChecksumAlgorithm, Metadata
from marketplace.partfile import PartFile
from marketplace.policy import Scheme, SitePolicy

BLOCK = 64 << 20
READ = 1 << 20
FLOOR_SLICE = 16 << 20
FOUR = (ChecksumAlgorithm.MD5, ChecksumAlgorithm.SHA1, ChecksumAlgorithm.SHA256, ChecksumAlgorithm.SHA512)


def emit(**fields: object) -> None:
    load = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps({"bench": "download", **fields, "load_avg_1_5_15m": load}), flush=True)


def make_image(path: Path, size: int) -> None:
    half = BLOCK // 2
    with open(path, "wb") as out:
        written = 0
        while written < size:
            length = min(BLOCK, size - written)
            block = os.urandom(min(half, length)) + bytes(max(0, length - half))
            out.write(block)
            written += len(block)


def four_hashes_serial(path: Path) -> dict[ChecksumAlgorithm, str]:
    hashes = {a: hashlib.new(a.hashlib_name) for a in FOUR}
    with open(path, "rb") as image:
        while data := image.read(READ):
            for h in hashes.values():
                h.update(data)
    return {a: h.hexdigest() for a, h in hashes.items()}


def hash_floor(image: bytes, algorithms: tuple[ChecksumAlgorithm, ...]) -> None:
    """Each hash in its own thread over the bytes already in memory: hashlib releases the GIL
    for the whole 16 MiB slice, so this is as parallel as the machine's cores allow."""
    view = memoryview(image)

    def one(algorithm: ChecksumAlgorithm) -> None:
        digest = hashlib.new(algorithm.hashlib_name)
        for start in range(0, len(view), FLOOR_SLICE):
            digest.update(view[start : start + FLOOR_SLICE])

    threads = [threading.Thread(target=one, args=(a,)) for a in algorithms]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def transport(url: str, out: Path) -> None:
    """The bytes of ``url`` through the downloader's HTTP stream into ``out`` as it writes a
    ``.part`` (:class:`~marketplace.partfile.PartFile`), unverified."""
    buffer = memoryview(mmap.mmap(-1, READ * 8))
    with (
        open_get(url, {}, context=tls_context(None), timeout=60.0) as answer,
        PartFile(out, append=False) as part,
    ):
        while count := answer.readinto(buffer):
            part.write(buffer[:count])


def gunzip_alone(path: Path) -> None:
    inflater = zlib.decompressobj(wbits=31)
    with open(path, "rb") as packed:
        while data := packed.read(READ):
            while data:
                inflater.decompress(data, READ)
                data = inflater.unconsumed_tail


_FILE_SERVER = """
import functools, http.server, sys
class Handler(http.server.SimpleHTTPRequestHandler):
    def copyfile(self, source, outputfile):
        outputfile.flush()
        self.connection.sendfile(source)
    def log_message(self, *args):
        pass
handler = functools.partial(Handler, directory=sys.argv[1])
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), handler).serve_forever()
"""


def serve(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [sys.executable, "-c", _FILE_SERVER, str(directory), str(port)]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url + "/", timeout=1):
                return server, url
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                raise RuntimeError("the file server did not start") from None
            time.sleep(0.1)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (sha512sum; not the file server)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def process_cpu_seconds(pid: int) -> float:
    """CPU time of a running process, all its threads (the file server: on loopback it also
    does the TCP work of delivering to the client's socket, on the same 2 cores)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU) seconds. On a shared machine the CPU time is the steadier figure: the wall
    time also counts the time the scheduler gave to other processes."""
    start, cpu = time.perf_counter(), cpu_seconds()
    fn()
    return time.perf_counter() - start, cpu_seconds() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    # Where a site's image cache is: on disk (STATE/images), not in RAM.
    default_dir = "/var/tmp" if Path("/var/tmp").is_dir() else tempfile.gettempdir()
    parser.add_argument("--dir", type=Path, default=Path(default_dir))
    args = parser.parse_args()
    size = args.size_mib << 20
    work = Path(tempfile.mkdtemp(prefix="imagekit-bench-download-", dir=args.dir))
    try:
        image, packed = work / "image.raw", work / "image.raw.gz"
        make_image(image, size)
        with open(image, "rb") as source, gzip.open(packed, "wb", compresslevel=1) as out:
            shutil.copyfileobj(source, out, READ)
        digests = four_hashes_serial(image)
        server, url = serve(work)
        try:
            measure(work, image, packed, url, digests, size, args.rounds, server.pid)
        finally:
            server.terminate()
            server.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def measure(
    work: Path,
    image: Path,
    packed: Path,
    url: str,
    digests: dict[ChecksumAlgorithm, str],
    size: int,
    rounds: int,
    server_pid: int,
) -> None:
    policy = SitePolicy(schemes=frozenset({Scheme.HTTP}), retries=0, timeout=60.0)

    def download(name: str, listed: tuple[ChecksumAlgorithm, ...] = FOUR) -> Callable[[], object]:
        checksums = {a: digests[a] for a in listed}
        metadata: Wanted
        if ChecksumAlgorithm.SHA1 in listed:
            metadata = Metadata(
                identifier=sha1_to_identifier(digests[ChecksumAlgorithm.SHA1]),
                size=size,
                checksums=checksums,
                endorsement=None,
                locations=(f"{url}/{name}",),
            )
        else:  # an image list's image: the cache key is from its SHA-512
            sha512 = digests[ChecksumAlgorithm.SHA512]
            metadata = ListedDownload(cache_key(sha512), size, checksums, (f"{url}/{name}",))

        def go() -> None:
            fetch_image(metadata, work / "downloaded.img", work_dir=work / "partial", policy=policy)

        return go

    in_memory = image.read_bytes()
    kinds: dict[str, Callable[[], object]] = {
        "hash-floor": lambda: hash_floor(in_memory, FOUR),
        "download-plain": download(image.name),
        "sha512sum": lambda: run(["sha512sum", image]),
        "download-sha512": download(image.name, (ChecksumAlgorithm.SHA512,)),
        "download-sha1-sha512": download(image.name, (ChecksumAlgorithm.SHA1, ChecksumAlgorithm.SHA512)),
        "transport": lambda: transport(f"{url}/{image.name}", work / "downloaded.img"),
        "four-hashes-serial": lambda: four_hashes_serial(image),
        "download-gzip": download(packed.name),
        "gunzip-alone": lambda: gunzip_alone(packed),
    }
    times: dict[str, list[float]] = {k: [] for k in kinds}
    cpu: dict[str, list[float]] = {k: [] for k in kinds}
    served_cpu: dict[str, list[float]] = {k: [] for k in kinds}  # the file server's
    loads: dict[str, list[float]] = {k: [] for k in kinds}  # 1-minute load average before each run
    for _ in range(rounds):
        for kind, fn in kinds.items():
            loads[kind].append(round(os.getloadavg()[0], 2))
            serving = process_cpu_seconds(server_pid)
            wall, used = timed(fn)
            served_cpu[kind].append(process_cpu_seconds(server_pid) - serving)
            (work / "downloaded.img").unlink(missing_ok=True)  # freeing its pages is no part of a download
            times[kind].append(wall)
            cpu[kind].append(used)
    median = {k: statistics.median(v) for k, v in times.items()}
    median_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    median_served = {k: statistics.median(v) for k, v in served_cpu.items()}
    for kind, seconds in median.items():
        source = packed if kind.endswith("gzip") or kind.startswith("gunzip") else image
        emit(
            kind=kind,
            median_s=round(seconds, 3),
            runs_s=[round(t, 3) for t in times[kind]],
            median_cpu_s=round(median_cpu[kind], 3),
            median_server_cpu_s=round(median_served[kind], 3),
            image_mib_per_s=round(size / seconds / 2**20, 1),
            input_mib=round(source.stat().st_size / 2**20, 1),
            load_avg_1m_runs=loads[kind],
        )
    emit(
        kind="summary",
        size_mib=size >> 20,
        cpus=os.cpu_count(),
        plain_time_vs_floor=round(median["download-plain"] / median["hash-floor"], 2),
        gzip_time_vs_plain=round(median["download-gzip"] / median["download-plain"], 2),
        sha512_only_time_vs_sha512sum=round(median["download-sha512"] / median["sha512sum"], 2),
        plain_speedup_vs_serial_hashes=round(median["four-hashes-serial"] / median["download-plain"], 2),
        gzip_time_vs_gunzip_alone=round(median["download-gzip"] / median["gunzip-alone"], 2),
        # On a shared machine the wall ratios follow the scheduler (a process with more threads
        # gets more of the CPU); the CPU ratios are the steadier ones, on 2 busy cores the same.
        plain_cpu_vs_floor_cpu=round(median_cpu["download-plain"] / median_cpu["hash-floor"], 2),
        # What the download adds to its unavoidable work (hashes + the kernel's copies), in CPU.
        plain_cpu_vs_floor_plus_transport_cpu=round(
            median_cpu["download-plain"] / (median_cpu["hash-floor"] + median_cpu["transport"]), 2
        ),
        transport_cpu_vs_floor_cpu=round(median_cpu["transport"] / median_cpu["hash-floor"], 2),
        # The least plain_time_vs_floor can be when the floor keeps every core busy: the hashes,
        # the client's copies and the file server's sending, all on the same cores.
        plain_time_vs_floor_least=round(
            (median_cpu["hash-floor"] + median_cpu["transport"] + median_served["transport"])
            / median_cpu["hash-floor"],
            2,
        ),
        gzip_cpu_vs_plain_cpu=round(median_cpu["download-gzip"] / median_cpu["download-plain"], 2),
        sha512_only_cpu_vs_sha512sum_cpu=round(median_cpu["download-sha512"] / median_cpu["sha512sum"], 2),
        targets={
            "plain_time_vs_floor": "<= 1.15",
            "gzip_time_vs_plain": "<= 1.1",
            "sha512_only_time_vs_sha512sum": "<= 1.3",
        },
    )


if __name__ == "__main__":
    sys.exit(main())
