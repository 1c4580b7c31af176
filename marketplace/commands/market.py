"""``imagekit market``: metadata entries, the registry server, and its clients.

    imagekit market serve --port 8081 --data /srv/market          # the registry (uvicorn)
    imagekit market upload signed.xml                              # → 201, or pending
    imagekit market list --os debian --arch x86_64 [--json]
    imagekit market get MMZu9WvwKIro-rtBQfDk4PsKO7_ [--json|--xml]
    imagekit market deprecate ID --reason "CVE-…" --cert me.pem --key me.key
    imagekit market endorsers
    imagekit market reindex | audit | pending list|accept ID|reject ID   (on the data dir)
    imagekit market import-appmarket https://marketplace.example.org/ [--app ID]   (unsigned, for review)
    imagekit market replicate --from http://peer:8081 [--since SEQ] [--pending] [--follow]
    imagekit market imagelist export --cert me.pem --key me.key --base-url URL   (HEPiX, signed)
    imagekit market policy check | download | cache …   (the site side: marketplace/commands/site.py)

Client commands talk HTTP to ``--endpoint`` (else ``$IMAGEKIT_MARKET``, else the local
server). Administrative commands (reindex, audit, pending) act on the data directory
directly, with the same ``--data``/``--config`` as ``serve``: whoever may write there is the
administrator, so no admin credentials exist to steal over HTTP.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from imagekit.asgi import add_listener_options, listener_from_args
from imagekit.errors import InputError
from imagekit.output import print_json
from marketplace.certs import certificate_emails
from marketplace.client import MarketClient, RegistryError, endpoint, path_of
from marketplace.commands import appmarket, imagelist, metadata, replicate, site, verify_build
from marketplace.config import load_config
from marketplace.dn import display_dn
from marketplace.metadata import format_time, parse_metadata, parse_time
from marketplace.registry import Registry
from marketplace.signing import load_p12, load_signer, sign_metadata


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="market_command", metavar="COMMAND")
    metadata.register_metadata(sub)
    site.register_site(sub)
    verify_build.register(sub)
    appmarket.register(sub)
    imagelist.register(sub)
    replicate.register(sub)

    serve = sub.add_parser("serve", help="run the registry server (uvicorn)")
    _local_options(serve)
    add_listener_options(serve, port=8081, workers="worker processes (use PostgreSQL for many hosts)")
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.set_defaults(func=_serve)

    upload = sub.add_parser("upload", help="upload signed entries to the registry")
    upload.add_argument("files", nargs="+", type=Path, metavar="FILE", help="signed entries")
    _endpoint_option(upload)
    upload.set_defaults(func=_upload)

    listing = sub.add_parser("list", help="list current entries (filters as in GET /metadata)")
    _endpoint_option(listing)
    listing.add_argument(
        "--status", choices=("valid", "expired", "deprecated", "all"), default="valid", help="default valid"
    )
    listing.add_argument(
        "--location",
        choices=("all", "web", "pdisk"),
        default="all",
        help="entries with this kind of location",
    )
    listing.add_argument("--os", help="only this OS")
    listing.add_argument("--os-version", help="only this OS version")
    listing.add_argument("--arch", "--os-arch", dest="os_arch", help="only this architecture")
    listing.add_argument("--endorser", metavar="EMAIL", help="only this endorser's entries")
    listing.add_argument("--tag", help="only entries with this tag")
    listing.add_argument("--search", metavar="TEXT", help="words that must all appear")
    listing.add_argument(
        "--sort",
        choices=("created", "identifier", "email", "os", "os_version", "os_arch", "title", "valid"),
        help="sort key (default created)",
    )
    listing.add_argument("--asc", action="store_true", help="ascending order (default: descending)")
    listing.add_argument("--limit", type=int, default=50, help="at most this many entries (default 50)")
    listing.add_argument("--offset", type=int, default=0, help="skip this many first (default 0)")
    listing.set_defaults(func=_list)

    get = sub.add_parser("get", help="show an image's current entries, or one entry")
    get.add_argument("id", metavar="ID", help="identifier, or ID/EMAIL/CREATED for one entry")
    get.add_argument("--endorser", metavar="EMAIL", help="only this endorser's entry")
    get.add_argument("--created", metavar="TIME", help="with --endorser: the entry endorsed at TIME")
    get.add_argument("--status", choices=("valid", "expired", "deprecated", "all"),
                     help="only this status (default: every current entry, with its status)")  # fmt: skip
    _endpoint_option(get)
    form = get.add_mutually_exclusive_group()
    form.add_argument("--xml", action="store_true", help="the signed XML (a <metadata> list for several)")
    get.set_defaults(func=_get)

    deprecate = sub.add_parser("deprecate", help="sign and upload a newer entry marking an image deprecated")
    deprecate.add_argument("id", metavar="ID", help="the image identifier")
    deprecate.add_argument("--reason", required=True, help="why (slterms:deprecated)")
    deprecate.add_argument("--cert", type=Path, metavar="PEM", help="the endorser's certificate")
    deprecate.add_argument("--key", type=Path, metavar="PEM", help="its private key")
    deprecate.add_argument("--p12", type=Path, metavar="FILE", help="PKCS#12 bundle instead of --cert/--key")
    deprecate.add_argument("--password-file", type=Path, metavar="F", help="the key's or bundle's password")
    deprecate.add_argument("--email", metavar="ADDR", help="endorser e-mail (default: the certificate's)")
    _endpoint_option(deprecate)
    deprecate.set_defaults(func=_deprecate)

    endorsers = sub.add_parser("endorsers", help="list the registry's endorsers")
    _endpoint_option(endorsers)
    endorsers.set_defaults(func=_endorsers)

    reindex = sub.add_parser("reindex", help="rebuild the index from the stored files")
    _local_options(reindex)
    reindex.set_defaults(func=_reindex)

    audit = sub.add_parser("audit", help="check the audit log against the stored files")
    _local_options(audit)
    audit.set_defaults(func=_audit)

    pending = sub.add_parser("pending", help="uploads waiting for an administrator")
    pending_sub = pending.add_subparsers(dest="pending_command", metavar="ACTION")
    plist = pending_sub.add_parser("list", help="show waiting uploads")
    _local_options(plist)
    plist.set_defaults(func=_pending_list)
    for action, help_text in (
        ("accept", "verify again and publish"),
        ("reject", "refuse (kept in rejected/)"),
    ):
        cmd = pending_sub.add_parser(action, help=help_text)
        cmd.add_argument(
            "pending_ids", nargs="+", metavar="ID", help="id or unique prefix from `pending list`"
        )
        _local_options(cmd)
        cmd.set_defaults(func=_pending_accept if action == "accept" else _pending_reject)


def _endpoint_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", metavar="URL", help="registry URL (default $IMAGEKIT_MARKET or local)")


def _local_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, metavar="DIR", help="data directory (overrides the config)")
    parser.add_argument("--config", type=Path, metavar="FILE", help="marketplace.conf (default etc/)")


def _registry(args: argparse.Namespace) -> Registry:
    return Registry.open(load_config(args.config, data_dir=args.data, state=args.state))


def _client(args: argparse.Namespace) -> MarketClient:
    return MarketClient(endpoint(args.endpoint))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", where=str(path)) from None


# Server and administration (local).


def _serve(args: argparse.Namespace) -> int:
    from marketplace.server import serve

    config = load_config(args.config, data_dir=args.data, state=args.state)
    listener = listener_from_args(args, log_level="info", access_log=args.access_log)
    print(
        f"registry on {listener.url} (data {config.data_dir}, index {config.index_backend})", file=sys.stderr
    )
    serve(config, listener)
    return 0


def _reindex(args: argparse.Namespace) -> int:
    registry = _registry(args)
    try:
        count = registry.reindex()
    finally:
        registry.close()
    print(f"indexed {count} entries from {registry.store.metadata_dir}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    registry = _registry(args)
    try:
        report = registry.audit()
    finally:
        registry.close()
    if args.json:
        print_json({"ok": report.ok, "entries": report.entries, "problems": report.problems})
    else:
        for problem in report.problems:
            print(problem)
        print(f"audit: {report.entries} logged entries, {len(report.problems)} problems", file=sys.stderr)
    if not report.ok:
        print(f"error: audit failed: {report.problems[0]}", file=sys.stderr)
    return 0 if report.ok else 1


def _pending_list(args: argparse.Namespace) -> int:
    registry = _registry(args)
    try:
        waiting = registry.pending()
    finally:
        registry.close()
    if args.json:
        print_json([{**dataclasses.asdict(p), "key": p.key.relpath} for p in waiting])
        return 0
    for p in waiting:
        flag = f"  deprecates: {p.deprecated}" if p.deprecated is not None else ""
        print(f"{p.pending_id[:12]}  {p.key.relpath}  {display_dn(p.subject)}{flag}")
    return 0


def _pending_accept(args: argparse.Namespace) -> int:
    registry = _registry(args)
    try:
        for pending_id in args.pending_ids:
            result = registry.accept_pending(pending_id)
            print(f"{result.outcome.value}: {result.key.relpath}")
    finally:
        registry.close()
    return 0


def _pending_reject(args: argparse.Namespace) -> int:
    registry = _registry(args)
    try:
        for pending_id in args.pending_ids:
            print(f"rejected: {registry.reject_pending(pending_id)[:12]}")
    finally:
        registry.close()
    return 0


# Clients (HTTP).


def _upload(args: argparse.Namespace) -> int:
    replies = []
    with _client(args) as client:
        for path in args.files:
            reply = client.upload(_read(path))
            replies.append({"file": str(path), **dataclasses.asdict(reply)})
            if not args.json:
                if reply.pending is None:
                    print(f"{path}: {reply.outcome}: {reply.location}")
                else:
                    short = reply.pending[:12]
                    print(f"{path}: pending {short}: waits for `imagekit market pending accept {short}`")
    if args.json:
        print_json(replies)
    return 0


_COLUMNS = (
    ("identifier", 27),
    ("email", 24),
    ("created", 20),
    ("status", 10),
    ("os", 10),
    ("os_version", 8),
)


def _print_rows(entries: list[dict[str, Any]]) -> None:
    """A header and one line per entry; an empty cell is ``-``, the last one included, so a
    row never ends in blanks that run into what follows."""
    header = [name.upper().ljust(width) for name, width in _COLUMNS]
    print("  ".join([*header, "OS_ARCH".ljust(7), "TITLE"]))
    for e in entries:
        cells = [str(e.get(name) or "-").ljust(width) for name, width in _COLUMNS]
        print("  ".join([*cells, str(e.get("os_arch") or "-").ljust(7), str(e.get("title") or "-")]))
    # The summary goes to stderr: flush the rows first, or a pipe shows it before them.
    sys.stdout.flush()


def _list(args: argparse.Namespace) -> int:
    params = {
        "status": args.status,
        "location": args.location,
        "os": args.os,
        "os-version": args.os_version,
        "os-arch": args.os_arch,
        "endorser": args.endorser,
        "tag": args.tag,
        "q": args.search,
        "sort": args.sort,
        "order": "asc" if args.asc else None,
        "limit": str(args.limit),
        "offset": str(args.offset),
    }
    with _client(args) as client:
        body = client.json("/metadata", {k: v for k, v in params.items() if v})
    if args.json:
        print_json(body)
        return 0
    _print_rows(body["entries"])
    shown = len(body["entries"])
    print(f"{shown} of {body['total']} entries", file=sys.stderr)
    return 0


def _get(args: argparse.Namespace) -> int:
    parts = args.id.strip("/").split("/")
    if len(parts) == 3:
        identifier, email, created = parts
    elif len(parts) == 1:
        identifier, email, created = parts[0], args.endorser, args.created
    else:
        raise InputError(f"expected ID or ID/EMAIL/CREATED, got {args.id!r}")
    path = "/metadata/" + path_of(*[p for p in (identifier, email, created) if p])
    # By default every current entry, whatever its status: an image whose latest entry is
    # deprecated or expired is shown as such, not answered with 404.
    params = {"status": args.status or "all"}
    try:
        with _client(args) as client:
            if args.xml:
                sys.stdout.buffer.write(client.xml(path, params))
                sys.stdout.flush()
                return 0
            body = client.json(path, params)
    except RegistryError as err:
        if err.status == 404 and args.status not in (None, "all"):
            raise RegistryError(
                f"{args.id}: no {args.status} entry", status=404, hint="--status all shows every entry"
            ) from None
        raise
    if args.json:
        print_json(body)
    elif "entries" in body:
        _print_rows(body["entries"])
    else:
        for name in (
            "identifier",
            "email",
            "created",
            "status",
            "title",
            "os",
            "os_version",
            "os_arch",
            "valid",
        ):
            print(f"{name:11} {body.get(name) or '-'}")
        if body.get("deprecated") is not None:
            print(f"deprecated  {body['deprecated']}")
        print(f"url         {body['url']}")
    return 0


def _deprecate(args: argparse.Namespace) -> int:
    password = _read(args.password_file).rstrip(b"\r\n") if args.password_file else None
    if args.p12 is not None:
        signer = load_p12(args.p12, password)
    elif args.cert is not None and args.key is not None:
        signer = load_signer(args.cert, args.key, password)
    else:
        raise InputError("deprecate: give --cert and --key, or --p12")
    email = args.email or next(iter(certificate_emails(signer.certificate)), None)
    if email is None:
        raise InputError("the certificate names no e-mail address: pass --email")
    with _client(args) as client:
        try:
            current = client.json("/metadata/" + path_of(args.id, email), {"status": "all"})
        except RegistryError as err:
            if err.status == 404:
                raise RegistryError(f"{email} has no entry for {args.id} to deprecate") from None
            raise
        latest = max(current["entries"], key=lambda e: e["created"])
        signed = client.xml("/metadata/" + path_of(args.id, email, latest["created"]))
        previous = parse_metadata(signed, source=f"{args.id}/{email}/{latest['created']}")
        # The newer entry must sort after the latest one even when both fall in one second.
        created = max(datetime.now(UTC), parse_time(latest["created"]) + timedelta(seconds=1))
        entry = sign_metadata(
            dataclasses.replace(previous, deprecated=args.reason),
            cert=signer.certificate,
            key=signer.key,
            email=email,
            created=created,
            chain=signer.chain,
        )
        reply = client.upload(entry)
    where = reply.location if reply.pending is None else f"pending {reply.pending[:12]}"
    print(f"deprecated {args.id} as {email} at {format_time(created)}: {reply.outcome}: {where}")
    return 0


def _endorsers(args: argparse.Namespace) -> int:
    with _client(args) as client:
        body = client.json("/endorsers")
    if args.json:
        print_json(body)
        return 0
    for e in body["endorsers"]:
        print(f"{e['email']:30} {e['entries']:>6}  {e['last_created']}  {display_dn(e['subject'])}")
    return 0
