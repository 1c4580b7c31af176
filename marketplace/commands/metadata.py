"""``imagekit market metadata create|sign|verify|show``: entries on the command line.

The ``market`` group (:mod:`marketplace.commands.market`) calls :func:`register_metadata`
to add this sub-group::

    imagekit market metadata create disk.qcow2 --location https://example.org/disk.qcow2 -o entry.xml
    imagekit market metadata sign entry.xml --cert me.crt --key me.key -o signed.xml
    imagekit market metadata verify signed.xml --trust ca.pem
    imagekit market metadata show signed.xml --format turtle
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

from imagekit.atomic import write_atomically
from imagekit.errors import DataError, InputError
from imagekit.output import print_json
from marketplace import appmarket, describe
from marketplace.binding import Claim, check_mapped
from marketplace.certs import LEGACY_SHA1_BEFORE, TrustStore
from marketplace.config import load_config
from marketplace.dn import display_dn
from marketplace.metadata import (
    ChecksumAlgorithm,
    Metadata,
    format_time,
    metadata_to_rdfxml,
    parse_metadata,
)
from marketplace.provenance_link import link_element, read_link
from marketplace.rdfexport import metadata_to_jsonld, metadata_to_turtle
from marketplace.signing import Profile, SignatureAlgorithm, load_p12, load_signer, sign_entry
from marketplace.verify import verify_entry

log = logging.getLogger(__name__)


def register_metadata(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``metadata`` with its four commands to the ``market`` sub-parsers."""
    group = sub.add_parser("metadata", help="create, sign, verify and show metadata entries")
    commands = group.add_subparsers(dest="metadata_command", metavar="COMMAND")

    create = commands.add_parser("create", help="an unsigned entry from an image or a build manifest")
    source = create.add_mutually_exclusive_group(required=True)
    source.add_argument("image", nargs="?", type=Path, help="disk image (raw, qcow2; .gz/.bz2/.xz inflated)")
    source.add_argument("--manifest", type=Path, metavar="FILE", help="manifest written by imagekit build")
    create.add_argument(
        "--output-format", metavar="FMT", help="which output of the manifest (qcow2, raw, …)"
    )
    create.add_argument(
        "--location", action="append", default=[], metavar="URL", help="download URL (repeatable)"
    )
    create.add_argument(
        "--sbom-location",
        metavar="URL",
        help="with --manifest: where the build's SBOM (NAME.spdx.json) is published; "
        "added as a related location (dcterms:relation), which `market verify-build` reads",
    )
    create.add_argument(
        "--opennebula-template",
        type=Path,
        metavar="FILE",
        help="the build's NAME.one, carried in the signed entry: the registry's OpenNebula "
        "marketplace API offers it as the appliance's VM template",
    )
    create.add_argument(
        "--provenance",
        type=Path,
        metavar="FILE",
        help="the build service's provenance of the image (provenance.intoto.jsonl): its SHA-256"
        " and location are carried in the signed entry (ik:provenance)",
    )
    create.add_argument(
        "--provenance-location",
        metavar="URL",
        help="with --provenance: where it is published (default: its file name, beside the image)",
    )
    create.add_argument("--valid", type=int, default=describe.DEFAULT_VALID_DAYS, metavar="DAYS",
                        help="endorsement validity in days (default %(default)s)")  # fmt: skip
    create.add_argument("--tag", help="stable name (dcterms:alternative) that resolves to your latest entry")
    create.add_argument("--title", help="dcterms:title of the entry")
    create.add_argument("--description", help="dcterms:description of the entry")
    create.add_argument(
        "--kind",
        choices=("machine", "disk"),
        default="machine",
        help="a bootable machine image or a data disk (default machine)",
    )
    create.add_argument("--hypervisor", help="e.g. kvm")
    create.add_argument("--compression", choices=("", "gz", "bz2", "xz"),
                        help="compression of the published file (default: as detected)")  # fmt: skip
    create.add_argument("--os", help="OS name (with --os-version and --os-arch: skips inspection)")
    create.add_argument("--os-version", help="the OS version (default: from inspection)")
    create.add_argument("--os-arch", help="the OS architecture (default: from inspection)")
    create.add_argument(
        "-o", "--output", type=Path, required=True, metavar="FILE", help="write the entry here"
    )
    create.set_defaults(func=_create)

    sign = commands.add_parser("sign", help="endorse and sign an entry (XML-DSig)")
    sign.add_argument("file", type=Path, help="the unsigned entry (RDF/XML)")
    sign.add_argument("--cert", type=Path, metavar="PEM", help="certificate (then intermediates)")
    sign.add_argument("--key", type=Path, metavar="PEM", help="private key (RSA or EC)")
    sign.add_argument("--p12", type=Path, metavar="FILE", help="PKCS#12 bundle instead of --cert/--key")
    sign.add_argument("--password-file", type=Path, metavar="F", help="password of --p12 or the key")
    sign.add_argument("--email", metavar="ADDR", help="endorser e-mail (default: the certificate's)")
    sign.add_argument("--algorithm", choices=[a.name for a in SignatureAlgorithm if not a.is_legacy],
                      help="default: RSA_SHA256 or ECDSA_SHA256 by key type")  # fmt: skip
    sign.add_argument("--profile", choices=[p.value for p in Profile], default=Profile.IMAGEKIT.value,
                      help="stratuslab-legacy: RSA-SHA1 and the signer certificate only, for sites "
                           "still verifying with StratusLab's tools (weak: SHA-1)")  # fmt: skip
    sign.add_argument(
        "-o", "--output", type=Path, required=True, metavar="FILE", help="write the signed entry here"
    )
    sign.set_defaults(func=_sign)

    verify = commands.add_parser("verify", help="check signature, endorser, certificate time and chain")
    verify.add_argument("file", type=Path, help="a signed entry")
    verify.add_argument("--trust", type=Path, action="append", default=[], metavar="PEM",
                        help="trusted CA certificates (file or directory, repeatable)")  # fmt: skip
    verify.add_argument(
        "--at", metavar="ISO-TIME", help="check the certificate at this time, not at the endorsement"
    )
    verify.add_argument("--no-sha1", action="store_true", help="refuse legacy RSA-SHA1 signatures")
    verify.add_argument("--legacy-before", metavar="ISO-TIME",
                        help="SHA-1 certificates chain only for entries endorsed before this "
                             "(default 2016-01-01)")  # fmt: skip
    verify.add_argument("--config", type=Path, metavar="FILE",
                        help="marketplace.conf with [uploads] email_bindings for --trust")  # fmt: skip
    verify.set_defaults(func=_verify)

    show = commands.add_parser("show", help="print an entry (unverified)")
    show.add_argument("file", type=Path, help="an entry, signed or not (not verified)")
    show.add_argument(
        "--format",
        choices=("text", "turtle", "jsonld", "rdfxml"),
        default="text",
        help="how to print it (default text)",
    )
    show.set_defaults(func=_show)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", where=str(path)) from None


def _create(args: argparse.Namespace) -> int:
    os_flags = (args.os, args.os_version, args.os_arch)
    if any(os_flags) and not all(os_flags):
        raise InputError("--os, --os-version and --os-arch go together")
    if args.provenance_location and not args.provenance:
        raise InputError("--provenance-location goes with --provenance")
    if args.sbom_location and not args.manifest:
        raise InputError("--sbom-location goes with --manifest (the SBOM of that build)")
    if args.manifest:
        facts = describe.facts_from_manifest(args.manifest, output_format=args.output_format)
    else:
        facts = describe.facts_from_image(args.image, os_fields=os_flags if all(os_flags) else None)
    if all(os_flags):
        facts = dataclasses.replace(facts, os=args.os, os_version=args.os_version, os_arch=args.os_arch)
    if args.compression is not None:
        facts = dataclasses.replace(facts, compression=args.compression)
    m = describe.new_metadata(
        facts,
        locations=args.location,
        related=[args.sbom_location] if args.sbom_location else [],
        valid_days=args.valid,
        tag=args.tag,
        description=args.description,
        title=args.title,
        kind=args.kind,
        hypervisor=args.hypervisor,
    )
    if args.opennebula_template is not None:
        m = dataclasses.replace(m, extensions=(*m.extensions, _one_template(args.opennebula_template)))
    if args.provenance is not None:
        m = dataclasses.replace(m, extensions=(*m.extensions, _provenance(args, m)))
    write_atomically(args.output, metadata_to_rdfxml(m))
    print(f"{args.output}: {m.identifier} (unsigned; sign it with `imagekit market metadata sign`)")
    return 0


def _one_template(path: Path) -> str:
    text = _read(path).decode("utf-8", "replace")
    try:
        appmarket.template_object(text)
    except DataError as err:
        raise InputError(f"not an OpenNebula template the marketplace driver can carry: {err}") from None
    return appmarket.extension(appmarket.TEMPLATE_TAG, text)


def _provenance(args: argparse.Namespace, m: Metadata) -> str:
    """The link to the provenance: it must name the image (its content's SHA-256, or the file's
    as given, which differs when the file is compressed)."""
    digests = {m.checksums[ChecksumAlgorithm.SHA256]} if ChecksumAlgorithm.SHA256 in m.checksums else set()
    if args.image is not None and m.compression:
        with args.image.open("rb") as image:
            digests.add(hashlib.file_digest(image, "sha256").hexdigest())
    link = read_link(args.provenance, image_sha256s=digests, location=args.provenance_location)
    return link_element(link)


def _password(args: argparse.Namespace) -> bytes | None:
    if args.password_file is None:
        return None
    return _read(args.password_file).rstrip(b"\r\n")


def _sign(args: argparse.Namespace) -> int:
    if args.p12:
        if args.cert or args.key:
            raise InputError("use either --p12 or --cert and --key")
        signer = load_p12(args.p12, _password(args))
    elif args.cert and args.key:
        signer = load_signer(args.cert, args.key, _password(args))
    else:
        raise InputError("sign needs --cert and --key, or --p12")
    profile = Profile(args.profile)
    if profile is Profile.STRATUSLAB_LEGACY:
        log.warning(
            "signing with RSA-SHA1 for StratusLab's verifier: SHA-1 is broken for collisions and "
            "imagekit accepts it only as legacy; intermediates are left out of KeyInfo%s",
            f" ({len(signer.chain)} dropped)" if signer.chain else "",
        )
    signed = sign_entry(
        _read(args.file),
        cert=signer.certificate,
        key=signer.key,
        algorithm=SignatureAlgorithm[args.algorithm] if args.algorithm else None,
        email=args.email,
        chain=signer.chain,
        source=str(args.file),
        profile=profile,
    )
    write_atomically(args.output, signed)
    m = parse_metadata(signed, source=str(args.output))
    identifier, email, created = m.key
    print(f"{args.output}: {identifier} endorsed by {email} at {created}")
    return 0


def _parse_at(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"--at: expected an ISO 8601 time, got {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _verify(args: argparse.Namespace) -> int:
    trust = TrustStore.from_paths(args.trust) if args.trust else None
    entry = verify_entry(
        _read(args.file),
        trust=trust,
        at=_parse_at(args.at) if args.at else None,
        allow_sha1=not args.no_sha1,
        legacy_before=_parse_at(args.legacy_before) if args.legacy_before else LEGACY_SHA1_BEFORE,
        source=str(args.file),
    )
    if trust is not None:
        check_mapped(Claim.of(entry), mapped=load_config(args.config).email_bindings)
    m = entry.metadata
    status = m.status(datetime.now(UTC))
    if args.json:
        print_json(
            {
                "identifier": m.identifier,
                "email": entry.endorser_email,
                "subject": entry.subject,
                "issuer": entry.issuer,
                "created": format_time(entry.created),
                "algorithm": entry.algorithm.name,
                "chain": [c.subject.rfc4514_string() for c in entry.chain],
                "legacy": list(entry.legacy),
                "status": status,
            }
        )
    else:
        chained = f", chain to {entry.chain[-1].subject.rfc4514_string()}" if entry.chain else ""
        legacy = f"; legacy algorithm accepted: {', '.join(entry.legacy)}" if entry.legacy else ""
        print(f"{args.file}: OK: {m.identifier} endorsed by {entry.endorser_email} at "
              f"{format_time(entry.created)} ({entry.algorithm.name}{chained}); entry {status}"
              f"{legacy}")  # fmt: skip
    return 0


def _show(args: argparse.Namespace) -> int:
    m = parse_metadata(_read(args.file), source=str(args.file))
    if args.json:
        print_json(m)
    elif args.format == "turtle":
        sys.stdout.write(metadata_to_turtle(m))
    elif args.format == "jsonld":
        sys.stdout.write(metadata_to_jsonld(m) + "\n")
    elif args.format == "rdfxml":
        sys.stdout.buffer.write(metadata_to_rdfxml(m))
    else:
        _print_text(m)
    return 0


def _print_text(m: Metadata) -> None:
    rows: list[tuple[str, object]] = [("identifier", m.identifier), ("bytes", m.size)]
    rows += [(f"checksum {a}", v) for a, v in m.checksums.items()]
    if m.endorsement:
        e = m.endorsement
        rows += [("endorsed", format_time(e.created)), ("email", e.endorser.email)]
        # Names as people read them; the signed file and --json keep Java's form.
        rows += [("subject", display_dn(e.endorser.subject)), ("issuer", display_dn(e.endorser.issuer))]
    else:
        rows.append(("endorsed", "no (unsigned)"))
    for f in dataclasses.fields(m):
        if f.name in {"identifier", "size", "checksums", "endorsement"}:
            continue
        value = getattr(m, f.name)
        if value in (None, ()):
            continue
        if isinstance(value, datetime):
            value = format_time(value)
        elif isinstance(value, tuple):
            value = ", ".join(map(str, value))
        rows.append((f.name.replace("_", "-"), value))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
