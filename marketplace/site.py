"""What a site runs before an image becomes a VM: policy check, verified download, cache.

The cloud core calls :func:`obtain_image` and gets a verified local image or ONE
:class:`~imagekit.errors.VerificationError` carrying every reason:

    image = obtain_image("marketplace:debian-12", policy=load_policy())
    hold_image(state, image.identifier, holder="vm-42")     # at VM create
    release_image(state, image.identifier, holder="vm-42")  # when the VM is done

A reference is an identifier, a tag (``dcterms:alternative``), or an entry URL
(``https://market/metadata/ID[/EMAIL/CREATED]``), optionally prefixed ``marketplace:``. Every
use fetches all endorsements of the image from the registry again and judges them here
(:mod:`marketplace.policy`), so an image deprecated or blacklisted after it was cached is
refused; when the registry is unreachable the last answer kept in ``STATE/images/registry/``
is judged instead, and the report says so.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

from imagekit import locations
from imagekit.atomic import write_atomically
from imagekit.errors import InputError, VerificationError
from imagekit.locks import exclusive
from imagekit.state import State
from marketplace.client import MarketClient, RegistryError, path_of
from marketplace.client import endpoint as registry_endpoint
from marketplace.fetch import DownloadFailed, Fetched, Progress, Wanted, fetch_image
from marketplace.identifier import is_identifier
from marketplace.imagecache import (
    add_image,
    hold_image,
    image_path,
    images_dir,
    lookup,
    partial_dir,
    release_image,
    touch,
)
from marketplace.metadata import parse_metadata, split_metadata_list
from marketplace.policy import Candidate, Evaluation, SitePolicy, evaluate, load_policy

__all__ = [
    "CachedImage",
    "DownloadFailed",
    "PolicyRefused",
    "PolicyReport",
    "SitePolicy",
    "check_policy",
    "hold_image",
    "load_policy",
    "obtain_image",
    "release_image",
]

PREFIX = "marketplace:"
LISTED_PREFIX = "imagelist:"  # an image of a subscribed HEPiX image list, by its dc:identifier
LIST_LIMIT = "1000"


@dataclass(frozen=True)
class Reference:
    text: str
    identifier: str | None = None
    tag: str | None = None
    endpoint: str | None = None  # from an entry URL
    pinned: str | None = None  # ID/EMAIL/CREATED from an entry URL


def parse_reference(text: str) -> Reference:
    raw = text.strip()
    body = raw[len(PREFIX) :] if raw.startswith(PREFIX) else raw
    if body.startswith(("http://", "https://")):
        url = urlsplit(body)
        before, marker, rest = url.path.partition("/metadata/")
        parts = [unquote(p) for p in rest.split("/") if p]
        if not marker or len(parts) not in (1, 3) or not is_identifier(parts[0]):
            raise VerificationError(
                f"{raw!r} is not a marketplace entry URL (…/metadata/ID)", rule="reference"
            )
        base = f"{url.scheme}://{url.netloc}{before}"
        return Reference(raw, parts[0], None, base, "/".join(parts) if len(parts) == 3 else None)
    if not body:
        raise VerificationError("empty image reference", rule="reference")
    if is_identifier(body):
        return Reference(raw, identifier=body)
    return Reference(raw, tag=body)


@dataclass(frozen=True)
class PolicyReport:
    reference: str
    endpoint: str
    evaluation: Evaluation
    source: str  # where the endorsements came from
    from_cache: bool  # the registry was unreachable: its last answer was judged

    @property
    def chosen(self) -> Candidate | None:
        return self.evaluation.chosen


class PolicyRefused(VerificationError):
    """No endorsement of the image passes the site policy; ``reasons`` lists them all."""

    def __init__(self, reference: str, reasons: tuple[str, ...], report: PolicyReport | None = None) -> None:
        super().__init__(f"{reference}: " + "; ".join(reasons), rule="policy")
        self.report = report
        self.reasons = reasons


def refusal(report: PolicyReport) -> PolicyRefused:
    reasons = [report.evaluation.why] + [
        f"{c.label}: {', '.join(c.reasons)}" for c in report.evaluation.candidates if c.reasons
    ]
    if report.from_cache:
        reasons.append(report.source)
    return PolicyRefused(report.reference, tuple(reasons), report)


class _Answers:
    """Registry answers, each kept under ``STATE/images/registry/`` for when it is down."""

    def __init__(self, client: MarketClient, state: State) -> None:
        self.client = client
        self.directory = images_dir(state) / "registry"
        self.unreachable: str | None = None
        self.cached_at: list[str] = []

    def get(self, path: str, params: dict[str, str]) -> bytes | None:
        key = hashlib.sha256(f"{self.client.base}{path}?{sorted(params.items())}".encode()).hexdigest()
        kept = self.directory / f"{key[:32]}.xml"
        try:
            answer = self.client.xml(path, params)
        except RegistryError as err:
            if err.status == 404:
                return None
            if err.status is not None or not kept.is_file():
                raise
            self.unreachable = str(err)
            self.cached_at.append(
                datetime.fromtimestamp(kept.stat().st_mtime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            )
            return kept.read_bytes()
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomically(kept, answer)
        return answer


def _entries(reference: Reference, answers: _Answers) -> tuple[frozenset[str], list[bytes]]:
    """The identifiers the reference names and every current endorsement of them."""
    if reference.identifier is not None:
        identifiers = frozenset({reference.identifier})
    else:
        assert reference.tag is not None
        tagged = answers.get("/metadata", {"tag": reference.tag, "status": "all", "limit": LIST_LIMIT})
        entries = split_metadata_list(tagged, source=f"tag {reference.tag}") if tagged else ()
        identifiers = frozenset(parse_metadata(e, source=f"tag {reference.tag}").identifier for e in entries)
    found: list[bytes] = []
    for identifier in sorted(identifiers):
        answer = answers.get("/metadata/" + path_of(identifier), {"status": "all", "limit": LIST_LIMIT})
        if answer is not None:
            found += split_metadata_list(answer, source=identifier)
    return identifiers, found


def check_policy(
    reference: str,
    *,
    policy: SitePolicy,
    endpoint_url: str | None = None,
    state: State | None = None,
    now: datetime | None = None,
) -> PolicyReport:
    """Judge every endorsement of ``reference`` on this machine. Never raises for a refusal:
    look at ``report.chosen`` (or use :func:`refusal`)."""
    ref = parse_reference(reference)
    base = ref.endpoint or registry_endpoint(endpoint_url)
    state = state or State.open(locations.state_dir())
    with MarketClient(base, timeout=policy.timeout) as client:
        answers = _Answers(client, state)
        try:
            identifiers, entries = _entries(ref, answers)
        except RegistryError as err:
            raise PolicyRefused(reference, (f"{err}", "and no earlier answer is kept")) from None
    when = now or datetime.now(UTC)
    evaluation = evaluate(entries, policy, now=when, identifiers=identifiers or None, pinned=ref.pinned)
    if not identifiers or not entries:
        evaluation = Evaluation((), None, f"the registry at {base} has no entry for {reference}")
    source = f"registry {base}"
    if answers.unreachable is not None:
        source = (
            f"registry unreachable ({answers.unreachable}): judged its answer kept from "
            f"{min(answers.cached_at)}"
        )
    return PolicyReport(reference, base, evaluation, source, answers.unreachable is not None)


@dataclass(frozen=True)
class CachedImage:
    identifier: str
    path: Path  # the uncompressed, verified image in STATE/images/
    format: str  # dcterms:format of the chosen entry: qcow2, raw, …
    metadata: Wanted  # the chosen entry (or the subscribed list's image)
    endorser: str
    fetched: Fetched | None = None  # None when the cache already held it
    report: PolicyReport | None = None


def obtain_image(
    reference: str,
    *,
    policy: SitePolicy,
    endpoint: str | None = None,
    state: State | None = None,
    progress: Progress | None = None,
) -> CachedImage:
    """A verified local copy of the image ``reference`` names, allowed by ``policy`` now (the
    site's, parsed where the command or server started; ``imagelist:ID``: an image of a
    subscribed HEPiX list, :mod:`marketplace.imagelist_images`)."""
    state = state or State.open(locations.state_dir())
    if reference.strip().startswith(LISTED_PREFIX):
        from marketplace.imagelist_images import obtain_listed_image

        return obtain_listed_image(reference, policy=policy, state=state, progress=progress)
    report = check_policy(reference, policy=policy, endpoint_url=endpoint, state=state)
    chosen = report.chosen
    if chosen is None:
        raise refusal(report)
    metadata = chosen.metadata
    assert metadata is not None and metadata.email is not None
    fetched = fetch_into_cache(
        state, metadata, policy, progress, format=metadata.format or "raw", endorser=metadata.email,
        entry=chosen.label,
    )  # fmt: skip
    return CachedImage(
        identifier=metadata.identifier,
        path=image_path(state, metadata.identifier),
        format=metadata.format or "raw",
        metadata=metadata,
        endorser=metadata.email,
        fetched=fetched,
        report=report,
    )


def fetch_into_cache(
    state: State,
    wanted: Wanted,
    policy: SitePolicy,
    progress: Progress | None,
    *,
    format: str | None,
    endorser: str,
    entry: str,
) -> Fetched | None:
    """Download ``wanted`` verified into the cache unless it is there already (None then);
    ``format`` None: from the image's bytes (qcow2's magic number, else raw)."""
    with exclusive(partial_dir(state) / f"{wanted.identifier}.lock"):
        # Two VMs of one image may ask at once: the second waits here, then finds it cached.
        if lookup(state, wanted.identifier) is not None:
            touch(state, wanted.identifier)
            return None
        dest = image_path(state, wanted.identifier)
        fetched = fetch_image(wanted, dest, work_dir=partial_dir(state), policy=policy, progress=progress)
        add_image(
            state,
            wanted.identifier,
            size=fetched.size,
            format=format or cached_format(dest),
            endorser=endorser,
            entry=entry,
            checksums={a: wanted.checksums.get(a, d) for a, d in fetched.digests.items()},
        )
        return fetched


def cached_format(path: Path) -> str:
    with open(path, "rb") as image:
        return "qcow2" if image.read(4) == b"QFI\xfb" else "raw"


def export_image(image: CachedImage, output: Path) -> None:
    """Copy a cached image to ``output`` atomically (a copy: writing to it must not touch the cache)."""
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        shutil.copyfile(image.path, tmp)
        os.replace(tmp, output)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write: {exc.strerror}", where=str(output)) from None
