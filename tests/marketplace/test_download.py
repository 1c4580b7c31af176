"""Verified download and the image cache, against a loopback server the tests make misbehave.

Each fault test checks the three promises of issue 9: one error naming the cause, nothing at a
cache path, and a ``.part`` file only where resuming makes sense.
"""

from __future__ import annotations

import bz2
import concurrent.futures
import dataclasses
import gzip
import ipaddress
import lzma
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from imagekit.state import State
from marketplace.fetch import DownloadFailed, fetch_image
from marketplace.imagecache import collect_garbage, images_dir, list_images, partial_dir, verify_cache
from marketplace.metadata import ChecksumAlgorithm, Metadata
from marketplace.policy import Compression, Scheme, SitePolicy
from marketplace.site import (
    CachedImage,
    PolicyRefused,
    check_policy,
    hold_image,
    obtain_image,
    release_image,
)

from .entries import ago, make_ca, make_endorser
from .images import describe, endorse, image_bytes, listing
from .loopback import Behaviour, Loopback, loopback

CA = make_ca("download CA")
ALICE = make_endorser(CA, "alice@example.org", "Alice")
SIZE = 1536 * 1024 + 123
POLICY = SitePolicy(schemes=frozenset({Scheme.HTTP, Scheme.HTTPS}), retries=2, timeout=5.0)


@dataclass
class Site:
    server: Loopback
    state: State
    policy: SitePolicy

    def publish(
        self, content: bytes, served: bytes | None = None, *, name: str = "img", **terms: Any
    ) -> Metadata:
        """Serve ``served`` (default ``content``) at /NAME and a signed entry for ``content``."""
        path = f"/{name}"
        self.server.files[path] = content if served is None else served
        m = describe(content, locations=(f"{self.server.url}{path}",), **terms)
        self.server.files[f"/metadata/{m.identifier}"] = listing(endorse(m, ALICE, created=ago(days=1)))
        return m

    def obtain(self, reference: str) -> CachedImage:
        return obtain_image(reference, policy=self.policy, endpoint=self.server.url, state=self.state)

    def nothing_cached(self) -> bool:
        return not list_images(self.state) and not list(images_dir(self.state).glob("*.img"))

    def leftovers(self) -> list[Path]:
        """Files of unfinished downloads (the per-image lock files stay, empty)."""
        return [p for p in partial_dir(self.state).iterdir() if p.suffix != ".lock"]

    def parts(self) -> list[Path]:
        return sorted(partial_dir(self.state).glob("*.part")) if partial_dir(self.state).is_dir() else []


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    # Backoff waits are the library's own; the tests skip them (they assert no timing).
    monkeypatch.setattr("marketplace.fetch.time.sleep", lambda seconds: None)
    with loopback() as server:
        yield Site(server, State.open(tmp_path / "state"), POLICY)


def test_download_verifies_and_caches_then_reuse_is_instant(site: Site) -> None:
    content = image_bytes(SIZE)
    m = site.publish(content)
    image = obtain_image(m.identifier, policy=site.policy, endpoint=site.server.url, state=site.state)
    assert image.path == images_dir(site.state) / f"{m.identifier}.img"
    assert image.path.read_bytes() == content
    assert (image.format, image.endorser) == ("qcow2", "alice@example.org")
    assert (
        image.fetched is not None
        and image.fetched.digests[ChecksumAlgorithm.SHA512] == m.checksums[ChecksumAlgorithm.SHA512]
    )
    assert site.parts() == []
    again = obtain_image(
        f"marketplace:{m.identifier}", policy=site.policy, endpoint=site.server.url, state=site.state
    )
    assert again.fetched is None and again.path == image.path
    assert len(site.server.requests("/img")) == 1  # the second use fetched only the metadata
    assert len(site.server.requests(f"/metadata/{m.identifier}")) == 2  # policy re-checked


@pytest.mark.parametrize(
    ("compression", "pack"),
    [
        (Compression.GZIP, gzip.compress),
        (Compression.BZIP2, bz2.compress),
        (Compression.XZ, lzma.compress),
        (Compression.ZSTD, lambda b: zstandard.ZstdCompressor().compress(b)),
    ],
)
def test_compressed_images_are_inflated_and_hashed_uncompressed(
    site: Site, compression: Compression, pack: object
) -> None:
    content = image_bytes(200_000) + b"\0" * 500_000
    m = site.publish(content, pack(content))  # type: ignore[operator]
    image = obtain_image(m.identifier, policy=site.policy, endpoint=site.server.url, state=site.state)
    assert image.fetched is not None and image.fetched.compression is compression
    assert image.path.read_bytes() == content
    assert site.parts() == [] and site.leftovers() == []


def test_only_the_listed_checksums_are_computed_and_cached(site: Site) -> None:
    """Issue 20: an entry listing SHA-512 (and the SHA-1 every entry has: the identifier) costs
    those two hashes, not four; the cache records what was verified."""
    content = image_bytes(SIZE)
    m = site.publish(content, algorithms=(ChecksumAlgorithm.SHA1, ChecksumAlgorithm.SHA512))
    image = site.obtain(m.identifier)
    assert image.fetched is not None and image.fetched.digests == dict(m.checksums)
    assert list_images(site.state)[0].checksums == dict(m.checksums)
    assert [c.problem for c in verify_cache(site.state)] == [None]


def test_recycled_buffers_are_refilled_only_after_every_hash_read_them(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With buffers of 64 KiB and a ring of two, a 1.5 MiB image (and its resumed tail, replayed
    from ``.part``) goes round the ring a dozen times: a buffer refilled while a hash thread was
    still reading it would change that hash."""
    monkeypatch.setattr("marketplace.inflate.CHUNK", 64 << 10)
    monkeypatch.setattr("marketplace.inflate.RING", 2)
    content = image_bytes(SIZE)
    m = site.publish(content)
    site.server.behaviour["/img"] = Behaviour(drop_after=700_000)
    image = site.obtain(m.identifier)
    assert image.fetched is not None and image.fetched.resumed_at == (700_000,)
    assert image.fetched.digests == dict(m.checksums) and image.path.read_bytes() == content


def small_pipeline(monkeypatch: pytest.MonkeyPatch, chunk: int = 64 << 10) -> int:
    """Ring buffers of ``chunk`` bytes (two of them) and decompressor pieces of 4 KiB, so a test
    image of a few hundred KiB crosses every boundary the 8 MiB / 1 MiB defaults have."""
    for name in ("marketplace.inflate.CHUNK", "marketplace.fetch.CHUNK"):
        monkeypatch.setattr(name, chunk)
    monkeypatch.setattr("marketplace.inflate.RING", 2)
    monkeypatch.setattr("marketplace.inflate.PIECE", 4 << 10)
    return chunk


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("past_boundary", [-1, 0, 1])
def test_images_on_buffer_boundaries_resume_at_a_boundary_and_verify(
    site: Site, monkeypatch: pytest.MonkeyPatch, past_boundary: int, packed: bool
) -> None:
    """Issue 20: an image of exactly 8 buffers, one byte fewer or one more, dropped after exactly
    3 buffers of served bytes and resumed (the ``.part`` replayed through the ring, then the
    rest read into it): plain, each buffer goes by reference to the hash threads; gzip, the
    inflated 4 KiB pieces are batched a buffer's worth at a time."""
    chunk = small_pipeline(monkeypatch)
    half = (8 * chunk + past_boundary) // 2
    content = image_bytes(half) + b"\0" * (8 * chunk + past_boundary - half)
    served = gzip.compress(content, compresslevel=1) if packed else content
    assert len(served) > 3 * chunk
    m = site.publish(content, served)
    site.server.behaviour["/img"] = Behaviour(drop_after=3 * chunk)
    image = site.obtain(m.identifier)
    assert image.fetched is not None and image.fetched.resumed_at == (3 * chunk,)
    assert image.fetched.compression is (Compression.GZIP if packed else Compression.NONE)
    assert image.fetched.digests == dict(m.checksums) and image.path.read_bytes() == content
    assert site.parts() == [] and site.leftovers() == []


@pytest.mark.parametrize("flipped", [3 * (64 << 10) - 1, 3 * (64 << 10)])
def test_one_wrong_byte_at_a_buffer_boundary_fails_every_listed_checksum(
    site: Site, monkeypatch: pytest.MonkeyPatch, flipped: int
) -> None:
    """The first and last byte of a recycled buffer are hashed like any other: one bit changed
    there fails each listed hash, and nothing is cached."""
    chunk = small_pipeline(monkeypatch)
    content = image_bytes(8 * chunk)
    wrong = bytearray(content)
    wrong[flipped] ^= 0x80
    m = site.publish(content, bytes(wrong), algorithms=(ChecksumAlgorithm.SHA1, ChecksumAlgorithm.SHA512))
    with pytest.raises(DownloadFailed, match=r"checksum: SHA-1, SHA-512 of the image do not match"):
        site.obtain(m.identifier)
    assert site.nothing_cached() and site.parts() == []


def test_the_proxy_from_the_environment_is_used(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As with httpx's ``trust_env``: ``http_proxy`` gets the request in absolute form."""
    content = image_bytes(20_000)
    m = describe(content, locations=("http://images.example.invalid/img",))
    site.server.files["http://images.example.invalid/img"] = content  # the proxy's view
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", site.server.url)
    fetched = fetch_image(m, tmp_path / "out.img", work_dir=tmp_path / "partial", policy=site.policy)
    assert (tmp_path / "out.img").read_bytes() == content and fetched.url == m.locations[0]
    assert [r.path for r in site.server.log] == ["http://images.example.invalid/img"]


def test_an_interrupt_stops_the_hash_threads_and_keeps_the_part(site: Site, tmp_path: Path) -> None:
    """Ctrl-C mid-download: no hash thread is left waiting (it would keep the process alive)."""
    m = site.publish(image_bytes(SIZE))

    def interrupt(done: int, total: int | None) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fetch_image(
            m, tmp_path / "out.img", work_dir=tmp_path / "partial", policy=site.policy, progress=interrupt
        )
    assert not [t for t in threading.enumerate() if t.name.startswith("hash-")]
    assert (tmp_path / "partial" / f"{m.identifier}.part").stat().st_size == SIZE
    assert not (tmp_path / "out.img").exists()


def test_dropped_connection_resumes_from_the_offset(site: Site) -> None:
    """Range + If-Range (RFC 9110 §14.2, §13.1.5): the second request asks for the rest only."""
    content = image_bytes(SIZE)
    m = site.publish(content)
    site.server.behaviour["/img"] = Behaviour(drop_after=700_000)
    image = obtain_image(m.identifier, policy=site.policy, endpoint=site.server.url, state=site.state)
    first, second = site.server.requests("/img")
    assert (first.status, first.sent, first.range) == (200, 700_000, None)
    assert (second.status, second.range) == (206, "bytes=700000-")
    assert second.if_range is not None and second.if_range.startswith('"')
    assert first.sent + second.sent == SIZE  # continued, not restarted
    assert image.fetched is not None and image.fetched.resumed_at == (700_000,)
    assert image.path.read_bytes() == content


def test_server_without_range_support_restarts_cleanly(site: Site) -> None:
    content = image_bytes(SIZE)
    m = site.publish(content)
    site.server.behaviour["/img"] = Behaviour(drop_after=700_000, no_range=True)
    image = obtain_image(m.identifier, policy=site.policy, endpoint=site.server.url, state=site.state)
    first, second = site.server.requests("/img")
    assert second.range == "bytes=700000-" and (second.status, second.sent) == (200, SIZE)
    assert image.fetched is not None and image.fetched.resumed_at == ()
    assert image.path.read_bytes() == content


def test_part_file_is_kept_when_retries_run_out_and_the_next_run_resumes(site: Site) -> None:
    content = image_bytes(SIZE)
    m = site.publish(content)
    site.server.behaviour["/img"] = Behaviour(drop_after=500_000, drops=1)
    one_try = dataclasses.replace(site.policy, retries=0)
    with pytest.raises(
        DownloadFailed, match=r"connection dropped.*partial download kept for resuming"
    ) as caught:
        obtain_image(m.identifier, policy=one_try, endpoint=site.server.url, state=site.state)
    assert caught.value.kept_part and [p.name for p in site.parts()] == [f"{m.identifier}.part"]
    assert site.parts()[0].stat().st_size == 500_000 and site.nothing_cached()
    image = obtain_image(m.identifier, policy=one_try, endpoint=site.server.url, state=site.state)
    assert site.server.requests("/img")[-1].range == "bytes=500000-"
    assert image.path.read_bytes() == content and site.parts() == []


def test_wrong_bytes_fail_the_checksum(site: Site) -> None:
    content = image_bytes(SIZE)
    wrong = bytearray(content)
    wrong[SIZE // 2] ^= 1
    m = site.publish(content, bytes(wrong))
    with pytest.raises(
        DownloadFailed, match=r"checksum: MD5, SHA-1, SHA-256, SHA-512 of the image do not match"
    ):
        site.obtain(m.identifier)
    assert site.nothing_cached() and site.parts() == []


def test_truncated_file_fails_the_size(site: Site) -> None:
    content = image_bytes(SIZE)
    m = site.publish(content, content[:-10])
    with pytest.raises(DownloadFailed, match=rf"size: got {SIZE - 10} bytes, slreq:bytes says {SIZE}"):
        site.obtain(m.identifier)
    assert site.nothing_cached() and site.parts() == []


def test_gzip_bomb_is_stopped(site: Site) -> None:
    content = image_bytes(10_000)
    m = site.publish(content, gzip.compress(content + b"\0" * (16 << 20)))
    with pytest.raises(DownloadFailed, match=r"size: the image is larger than slreq:bytes \(10000\)"):
        site.obtain(m.identifier)
    assert site.nothing_cached() and site.parts() == [] and site.leftovers() == []


def test_disallowed_compression_is_refused_by_magic_bytes(site: Site) -> None:
    content = image_bytes(10_000)
    m = site.publish(content, bz2.compress(content))  # dcterms:compression says nothing
    site.policy = dataclasses.replace(
        site.policy, compressions=frozenset({Compression.NONE, Compression.GZIP})
    )
    with pytest.raises(DownloadFailed, match="compression: bzip2 compression is not allowed here"):
        site.obtain(m.identifier)
    assert site.nothing_cached() and site.parts() == []


def test_redirect_to_a_disallowed_scheme_is_refused(site: Site) -> None:
    content = image_bytes(10_000)
    m = site.publish(content)
    site.server.behaviour["/img"] = Behaviour(redirect="file:///etc/passwd")
    with pytest.raises(
        DownloadFailed, match=r"img: redirect to file:/+etc/passwd refused: scheme file: is not allowed"
    ):
        site.obtain(m.identifier)
    assert site.nothing_cached() and site.parts() == []


def test_redirect_within_allowed_schemes_is_followed(site: Site) -> None:
    content = image_bytes(10_000)
    m = site.publish(content)
    site.server.files["/moved"] = content
    site.server.behaviour["/img"] = Behaviour(redirect=f"{site.server.url}/moved")
    assert site.obtain(m.identifier).path.read_bytes() == content


def test_https_only_policy_refuses_an_http_location(site: Site) -> None:
    m = site.publish(image_bytes(1000))
    site.policy = dataclasses.replace(site.policy, schemes=frozenset({Scheme.HTTPS}))
    with pytest.raises(DownloadFailed, match=r"scheme http: is not allowed \(download.schemes\)"):
        site.obtain(m.identifier)
    assert site.server.requests("/img") == []


def test_plain_http_needs_a_strong_checksum(site: Site) -> None:
    content = image_bytes(1000)
    m = site.publish(content, algorithms=(ChecksumAlgorithm.SHA1, ChecksumAlgorithm.MD5))
    with pytest.raises(DownloadFailed, match="plain http needs a SHA-256 or SHA-512 checksum"):
        site.obtain(m.identifier)


def test_slow_server_times_out(site: Site) -> None:
    m = site.publish(image_bytes(10_000))
    site.server.behaviour["/img"] = Behaviour(stall=True)
    site.policy = dataclasses.replace(site.policy, timeout=1.0, retries=0)
    with pytest.raises(DownloadFailed, match=r"/img: timed out"):
        site.obtain(m.identifier)
    assert len(site.server.requests("/img")) == 1
    assert site.nothing_cached() and site.parts() == []  # nothing arrived: nothing to resume


def test_server_error_then_mirror(site: Site) -> None:
    content = image_bytes(10_000)
    m = site.publish(content)
    site.server.behaviour["/img"] = Behaviour(status=404)
    site.server.files["/mirror/img"] = content
    site.policy = dataclasses.replace(site.policy, mirrors=(f"{site.server.url}/mirror",))
    image = site.obtain(m.identifier)
    assert image.fetched is not None and image.fetched.url == f"{site.server.url}/mirror/img"


def test_registry_down_uses_the_kept_answer_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = State.open(tmp_path / "state")
    content = image_bytes(10_000)
    with loopback() as server:
        site = Site(server, state, POLICY)
        m = site.publish(content)
        site.obtain(m.identifier)
        url = server.url
    report = check_policy(m.identifier, policy=POLICY, endpoint_url=url, state=state)
    assert report.from_cache and report.chosen is not None
    assert report.source.startswith(f"registry unreachable (cannot reach the registry at {url}")
    image = obtain_image(m.identifier, policy=POLICY, endpoint=url, state=state)
    assert image.fetched is None and image.report is not None and image.report.from_cache


def test_registry_down_without_a_kept_answer(tmp_path: Path) -> None:
    with loopback() as server:
        url = server.url
    with pytest.raises(PolicyRefused, match="cannot reach the registry.*no earlier answer is kept"):
        obtain_image("A" * 27, policy=POLICY, endpoint=url, state=State.open(tmp_path / "s"))


def test_image_deprecated_after_caching_is_refused_with_the_reason(site: Site) -> None:
    m = site.publish(image_bytes(10_000))
    site.obtain(m.identifier)
    deprecated = endorse(dataclasses.replace(m, deprecated="CVE-2026-1"), ALICE)
    site.server.files[f"/metadata/{m.identifier}"] = listing(deprecated)
    with pytest.raises(PolicyRefused, match="policy: .*deprecated by its endorser: CVE-2026-1") as caught:
        site.obtain(m.identifier)
    assert any("CVE-2026-1" in r for r in caught.value.reasons)


def test_tag_and_entry_url_references(site: Site) -> None:
    m = site.publish(image_bytes(10_000), tag="debian-12")
    site.server.files["/metadata"] = site.server.files[f"/metadata/{m.identifier}"]
    assert site.obtain("marketplace:debian-12").identifier == m.identifier
    label = check_policy(
        m.identifier, policy=site.policy, endpoint_url=site.server.url, state=site.state
    ).chosen
    assert label is not None
    report = check_policy(f"{site.server.url}/metadata/{label.label}", policy=site.policy, state=site.state)
    assert report.chosen is not None and report.chosen.label == label.label


def test_holds_keep_images_from_gc(site: Site) -> None:
    a = site.publish(image_bytes(1000), name="a")
    b = site.publish(image_bytes(1000), name="b")
    site.obtain(a.identifier)
    site.obtain(b.identifier)
    hold_image(site.state, a.identifier, "vm-1")
    removed = collect_garbage(site.state, older_than=None, max_bytes=0, now=0)
    assert removed == [b.identifier]
    assert [r.identifier for r in list_images(site.state)] == [a.identifier]
    assert list_images(site.state)[0].holders == ("vm-1",)
    release_image(site.state, a.identifier, "vm-1")
    assert collect_garbage(site.state, older_than=None, max_bytes=0, now=0) == [a.identifier]
    assert site.nothing_cached()


def test_cache_verify_removes_a_corrupted_image(site: Site) -> None:
    m = site.publish(image_bytes(1000))
    image = site.obtain(m.identifier)
    assert [c.problem for c in verify_cache(site.state)] == [None]
    path = image.path
    content = bytearray(path.read_bytes())
    content[0] ^= 0xFF  # the image is random: a fixed byte would leave it unchanged once in 256 runs
    path.write_bytes(content)
    checked = verify_cache(site.state)
    assert checked[0].problem is not None and "SHA-1" in checked[0].problem
    assert site.nothing_cached()


def _tls_server_context(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """A site CA and a server certificate for 127.0.0.1 it issued; returns (server ctx, CA file)."""
    from .pki import issue, name

    ca = issue(name("Site TLS CA"), None, ca=True)
    server = issue(name("127.0.0.1"), ca)
    # issue() makes no IP SAN; TLS host checks need one, so re-sign with it.
    cert = (
        x509.CertificateBuilder()
        .subject_name(server.cert.subject)
        .issuer_name(ca.cert.subject)
        .public_key(server.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(server.cert.not_valid_before_utc)
        .not_valid_after(server.cert.not_valid_after_utc)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(ca.key, hashes.SHA256())
    )
    cert_file, key_file, ca_file = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(server.key_pem())
    ca_file.write_bytes(ca.pem())
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context, ca_file


def test_tls_is_verified_and_a_ca_bundle_adds_trust(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("marketplace.fetch.time.sleep", lambda seconds: None)
    context, ca_file = _tls_server_context(tmp_path)
    content = image_bytes(20_000)
    state = State.open(tmp_path / "state")
    with loopback() as registry, loopback(context) as images:
        m = describe(content, locations=(f"{images.url}/img",))
        images.files["/img"] = content
        registry.files[f"/metadata/{m.identifier}"] = listing(endorse(m, ALICE, created=ago(days=1)))
        https_only = SitePolicy(retries=0)
        with pytest.raises(DownloadFailed, match="CERTIFICATE_VERIFY_FAILED"):
            obtain_image(m.identifier, policy=https_only, endpoint=registry.url, state=state)
        assert images.requests("/img") == []  # the handshake failed: nothing was asked
        trusted = dataclasses.replace(https_only, ca_bundle=ca_file)
        image = obtain_image(m.identifier, policy=trusted, endpoint=registry.url, state=state)
    assert image.path.read_bytes() == content


def test_file_scheme_only_when_allowed(site: Site, tmp_path: Path) -> None:
    content = image_bytes(20_000)
    local = tmp_path / "mirror.img"
    local.write_bytes(content)
    m = describe(content, locations=(local.as_uri(),))
    site.server.files[f"/metadata/{m.identifier}"] = listing(endorse(m, ALICE, created=ago(days=1)))
    with pytest.raises(DownloadFailed, match=r"scheme file: is not allowed"):
        site.obtain(m.identifier)
    site.policy = dataclasses.replace(site.policy, schemes=frozenset({Scheme.FILE}))
    assert site.obtain(m.identifier).path.read_bytes() == content


def test_concurrent_requests_for_one_image_download_it_once(site: Site) -> None:
    """The cloud core may start two VMs of one image at once; one waits for the other's download."""
    content = image_bytes(SIZE)
    m = site.publish(content)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        images = list(pool.map(site.obtain, [m.identifier, m.identifier]))
    assert [i.path for i in images] == [images[0].path] * 2 and images[0].path.read_bytes() == content
    assert sorted(i.fetched is None for i in images) == [False, True]
    assert len(site.server.requests("/img")) == 1
