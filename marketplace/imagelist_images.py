"""Images of subscribed HEPiX image lists made usable: ``imagelist:<dc:identifier>`` is a reference
like ``marketplace:ID`` (``imagekit market download``, a DISK's ``SOURCE``, EC2 RegisterImage).

The image must be one the site policy accepts now (:func:`marketplace.imagelist_policy.judge_subscribed`:
the list's signer, the image's SHA-512, OS filters, the list's expiry, not withdrawn); refused,
every reason is given and nothing is fetched. Accepted, it is downloaded from the list's
``hv:uri`` by the one downloader (:func:`marketplace.fetch.fetch_image`) into the verified cache,
checked against ``hv:size`` and ``sl:checksum:sha512``. The cache key is derived from that
SHA-512, so an image the list updates is never served from an older copy.

Where it may be fetched from: the list is signed and the administrator subscribed to it, so its
``hv:uri`` is on the allow-list. When the caller restricts origins (a cloud user's VM:
``SitePolicy.origins`` = the site's registries and mirrors), that URI is added to them and
nothing else: a redirect out of it is refused like one out of a registry.

    image = obtain_listed_image("imagelist:1c5bb6d1-…", policy=load_policy(), state=state)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from imagekit.state import State
from marketplace.fetch import Progress
from marketplace.imagecache import image_path
from marketplace.imagelist_policy import ListedVerdict, judge_subscribed
from marketplace.metadata import ChecksumAlgorithm
from marketplace.policy import SitePolicy
from marketplace.site import LISTED_PREFIX, CachedImage, PolicyRefused, cached_format, fetch_into_cache

MAX_IDENTIFIER = 256


@dataclass(frozen=True)
class ListedDownload:
    """What the download is checked against (:class:`marketplace.fetch.Wanted`)."""

    identifier: str  # the cache key: from the SHA-512
    size: int
    checksums: Mapping[ChecksumAlgorithm, str]
    locations: tuple[str, ...]


def listed_image_id(reference: str) -> str:
    """The ``dc:identifier`` of ``imagelist:ID`` (PolicyRefused when there is none)."""
    body = reference.strip().removeprefix(LISTED_PREFIX)
    if not body or len(body) > MAX_IDENTIFIER or not all(c.isprintable() and not c.isspace() for c in body):
        raise PolicyRefused(
            reference[:300], (f"imagelist:ID takes 1 to {MAX_IDENTIFIER} printable characters",)
        )
    return body


def cache_key(sha512: str) -> str:
    return f"imagelist-{sha512[:40]}"


def choose(reference: str, verdicts: list[ListedVerdict]) -> ListedVerdict:
    """The first accepted image of that identifier over all subscriptions, else every reason."""
    image = listed_image_id(reference)
    found = [v for v in verdicts if v.image == image]
    if not found:
        raise PolicyRefused(reference, (f"no subscribed image list has an image {image!r}",))
    accepted = next((v for v in found if v.accepted), None)
    if accepted is None:
        raise PolicyRefused(reference, tuple(f"{v.url}: {reason}" for v in found for reason in v.reasons))
    return accepted


def _size(state: State, verdict: ListedVerdict) -> int:
    with state.read() as db:
        row = db.execute(
            "SELECT size FROM imagelist_images WHERE url = ? AND image = ?", (verdict.url, verdict.image)
        ).fetchone()
    return int(row[0])


def obtain_listed_image(
    reference: str,
    *,
    policy: SitePolicy,
    state: State,
    progress: Progress | None = None,
    now: datetime | None = None,
) -> CachedImage:
    """A verified local copy of the list image ``imagelist:ID``, accepted by ``policy`` now."""
    verdict = choose(reference, judge_subscribed(state, policy, now=now or datetime.now(UTC)))
    wanted = ListedDownload(
        cache_key(verdict.sha512),
        _size(state, verdict),
        {ChecksumAlgorithm.SHA512: verdict.sha512},
        (verdict.uri,),
    )
    if policy.origins is not None:  # the signed list the administrator subscribed to allows its URI
        policy = dataclasses.replace(policy, origins=(*policy.origins, verdict.uri))
    fetched = fetch_into_cache(
        state, wanted, policy, progress, format=None, endorser=verdict.endorser,
        entry=f"{LISTED_PREFIX}{verdict.image} ({verdict.url})",
    )  # fmt: skip
    path = image_path(state, wanted.identifier)
    return CachedImage(
        identifier=wanted.identifier,
        path=path,
        format=cached_format(path),
        metadata=wanted,
        endorser=verdict.endorser,
        fetched=fetched,
    )
