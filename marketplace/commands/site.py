"""``imagekit market policy check | download | cache``: the site side of the marketplace.

imagekit market policy check ID|TAG|URL|imagelist:ID [--policy FILE] [--json]    # exit 1: refused
imagekit market download ID|TAG|URL|imagelist:ID [-o FILE] [--policy FILE] [--json]
imagekit market cache list | verify | gc [--older-than 30d] [--max-size 50G] [--json]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from imagekit import locations
from imagekit.errors import InputError
from imagekit.log import live_detail, step
from imagekit.log import progress as progress_log
from imagekit.output import print_json
from imagekit.sizes import parse_size
from imagekit.state import State
from marketplace.imagecache import collect_garbage, list_images, verify_cache
from marketplace.policy import Candidate, SitePolicy, load_policy, parse_duration
from marketplace.site import (
    LISTED_PREFIX,
    CachedImage,
    PolicyReport,
    check_policy,
    export_image,
    obtain_image,
    refusal,
)


def register_site(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    policy = sub.add_parser("policy", help="the site image policy")
    policy_sub = policy.add_subparsers(dest="policy_command", metavar="ACTION")
    check = policy_sub.add_parser("check", help="judge every endorsement of an image on this machine")
    _reference_options(check)
    check.set_defaults(func=_policy_check)

    download = sub.add_parser("download", help="policy check, then a verified download into the cache")
    _reference_options(download)
    download.add_argument("-o", "--output", type=Path, metavar="FILE", help="also copy the image here")
    download.set_defaults(func=_download)

    cache = sub.add_parser("cache", help="the verified image cache (STATE/images)")
    cache_sub = cache.add_subparsers(dest="cache_command", metavar="ACTION")
    for name, help_text, func in (
        ("list", "list cached images", _cache_list),
        ("verify", "re-hash every cached image; remove those that no longer match", _cache_verify),
        ("gc", "remove unused images (never one a VM holds)", _cache_gc),
    ):
        cmd = cache_sub.add_parser(name, help=help_text)
        cmd.set_defaults(func=func)
        if name == "gc":
            cmd.add_argument(
                "--older-than", default="30d", metavar="AGE", help="unused for AGE (default 30d)"
            )
            cmd.add_argument(
                "--max-size", metavar="BYTES", help="then shrink to BYTES (e.g. 50G), LRU first"
            )


def _reference_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "reference", metavar="ID|TAG|URL", help="identifier, tag, entry URL, or imagelist:ID"
    )
    parser.add_argument("--policy", type=Path, metavar="FILE", help="policy file (default etc/policy.cfg)")
    parser.add_argument("--endpoint", metavar="URL", help="registry URL (default $IMAGEKIT_MARKET or local)")


def _state(args: argparse.Namespace) -> State:
    return State.open(locations.state_dir(args.state))


def _candidate_json(c: Candidate) -> dict[str, Any]:
    m = c.metadata
    return {
        "entry": c.label,
        "accepted": c.accepted,
        "signed": c.signed,
        "trusted_endorser": c.trusted_endorser,
        "reasons": list(c.reasons),
        "valid": m.valid if m else None,
        "deprecated": m.deprecated if m else None,
    }


def report_json(report: PolicyReport) -> dict[str, Any]:
    chosen = report.chosen
    return {
        "reference": report.reference,
        "endpoint": report.endpoint,
        "source": report.source,
        "from_cache": report.from_cache,
        "allowed": chosen is not None,
        "chosen": chosen.label if chosen else None,
        "why": report.evaluation.why,
        "entries": [_candidate_json(c) for c in report.evaluation.candidates],
    }


def _policy_check(args: argparse.Namespace) -> int:
    policy = load_policy(args.policy)
    if args.reference.strip().startswith(LISTED_PREFIX):
        return _listed_check(args, policy)
    report = check_policy(args.reference, policy=policy, endpoint_url=args.endpoint, state=_state(args))
    if args.json:
        print_json(report_json(report))
    elif report.chosen is not None:
        if report.from_cache:
            print(f"note: {report.source}", file=sys.stderr)
        print(f"allowed: {report.endpoint}/metadata/{report.chosen.label}")
        print(f"why: {report.evaluation.why}")
    if report.chosen is None:
        if not args.json:
            for c in report.evaluation.candidates:
                print(f"rejected: {c.label}")
                for reason in c.reasons:
                    print(f"  - {reason}")
        raise refusal(report)
    return 0


def _listed_check(args: argparse.Namespace, policy: SitePolicy) -> int:
    """``imagelist:ID``: judged among the subscribed lists' images (PolicyRefused: every reason)."""
    from marketplace.imagelist_images import choose
    from marketplace.imagelist_policy import judge_subscribed

    verdict = choose(args.reference, judge_subscribed(_state(args), policy, now=datetime.now(UTC)))
    if args.json:
        print_json({"reference": args.reference, "allowed": True, "list": verdict.url, "uri": verdict.uri,
                    "endorser": verdict.endorser, "sha512": verdict.sha512})  # fmt: skip
    else:
        print(f"allowed: {verdict.uri} (image list {verdict.url}, signed by {verdict.endorser})")
    return 0


class _ProgressLine:
    """Bytes, rate and ETA: a bar on the running step's live line on a terminal
    (:func:`imagekit.log.live_detail`), else a plain progress line per 10 %."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.start = time.monotonic()
        self.shown = -1

    def __call__(self, done: int, total: int | None) -> None:
        rate = done / max(time.monotonic() - self.start, 1e-6)
        eta = f", ETA {(total - done) / rate:.0f} s" if total and rate else ""
        size = f"{done / 2**20:.0f}/{total / 2**20:.0f} MiB" if total else f"{done / 2**20:.0f} MiB"
        text = f"{size} at {rate / 2**20:.0f} MiB/s{eta}"
        bar = f"[{'#' * (20 * done // total):20}] " if total else ""
        if live_detail(bar + text):
            return
        tenth = done * 10 // total if total else done >> 30
        if tenth != self.shown:
            self.shown = tenth
            progress_log.info("%s: %s", self.label, text)


def _image_json(image: CachedImage) -> dict[str, Any]:
    fetched = image.fetched
    return {
        "identifier": image.identifier,
        "path": image.path,
        "format": image.format,
        "endorser": image.endorser,
        "entry": image.report.chosen.label if image.report and image.report.chosen else None,
        "cached": fetched is None,
        "url": fetched.url if fetched else None,
        "compression": fetched.compression if fetched else None,
        "bytes": image.metadata.size,
        "checksums": {
            str(a): v for a, v in (fetched.digests if fetched else image.metadata.checksums).items()
        },
        "resumed_at": list(fetched.resumed_at) if fetched else [],
        "policy_source": image.report.source if image.report else None,
    }


def _download(args: argparse.Namespace) -> int:
    policy = load_policy(args.policy)
    line = _ProgressLine(args.reference)
    with step(f"download {args.reference}"):
        image = obtain_image(
            args.reference, policy=policy, endpoint=args.endpoint, state=_state(args), progress=line
        )
        if args.output is not None:
            export_image(image, args.output)
    if args.json:
        print_json({**_image_json(image), "output": args.output})
        return 0
    if image.report is not None and image.report.from_cache:
        print(f"note: {image.report.source}", file=sys.stderr)
    how = (
        "already cached, policy re-checked"
        if image.fetched is None
        else f"verified from {image.fetched.url}"
    )
    print(f"{image.identifier}: {how}")
    print(f"endorser: {image.endorser}; format {image.format}; {image.metadata.size} bytes")
    print(f"image: {args.output or image.path}")
    return 0


def _cache_list(args: argparse.Namespace) -> int:
    records = list_images(_state(args))
    if args.json:
        print_json(records)
        return 0
    for r in records:
        held = f"  held by {', '.join(r.holders)}" if r.holders else ""
        used = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r.used_at))
        print(f"{r.identifier}  {r.format:6} {r.size:>14}  {r.endorser:24}  used {used}{held}")
    print(f"{len(records)} images, {sum(r.size for r in records)} bytes", file=sys.stderr)
    return 0


def _cache_verify(args: argparse.Namespace) -> int:
    results = verify_cache(_state(args))
    bad = [r for r in results if r.problem is not None]
    if args.json:
        print_json(results)
    else:
        for r in results:
            print(f"{r.identifier}  {'ok' if r.problem is None else 'REMOVED: ' + r.problem}")
    if bad:
        print(
            f"error: {len(bad)} cached images no longer matched their entries and were removed",
            file=sys.stderr,
        )
    return 1 if bad else 0


def _parse_size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise InputError(f"--max-size: {exc}") from None


def _parse_age(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise InputError(f"--older-than: {exc}") from None


def _cache_gc(args: argparse.Namespace) -> int:
    removed = collect_garbage(
        _state(args),
        older_than=_parse_age(args.older_than),
        max_bytes=_parse_size(args.max_size) if args.max_size else None,
        now=time.time(),
    )
    if args.json:
        print_json({"removed": removed})
    else:
        for identifier in removed:
            print(f"removed {identifier}")
        print(f"{len(removed)} images removed", file=sys.stderr)
    return 0
