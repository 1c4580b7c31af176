"""StratusLab image metadata: the :class:`Metadata` model and its RDF/XML form.

One entry describes one image (by its 27-character identifier, derived from the SHA-1) as
vouched for by one endorser at one time; ``(identifier, email, created)`` is the entry's key
(:attr:`Metadata.key`). The XML is parsed once, here, into frozen dataclasses: nothing
downstream reads raw XML. Parsing does **not** check a signature: use
:func:`marketplace.verify.verify_entry` for anything that came from someone else.

>>> m = parse_metadata(Path("entry.xml").read_bytes(), source="entry.xml")
>>> m.identifier, m.endorsement.endorser.email, m.is_expired(datetime.now(UTC))
>>> metadata_to_rdfxml(m)             # unsigned, fixed element order, xml:base set

Terms (research §1.3): ``dcterms:identifier`` (1), ``slreq:bytes`` (1, field :attr:`size`),
``slreq:checksum`` (+, exactly one SHA-1 equal to the identifier), ``slreq:endorsement`` (1,
empty in an unsigned template → ``None``), ``dcterms:type`` (1), then optional terms; elements
this model does not know are kept verbatim (exclusive C14N) in :attr:`extensions`.
Errors: :class:`~imagekit.errors.DataError` ``SOURCE:LINE: element: expected X, got Y``.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from lxml import etree

from imagekit.errors import DataError
from marketplace import xmlsafe
from marketplace.identifier import identifier_to_sha1, is_identifier, sha1_to_identifier
from marketplace.rdfcheck import check_property

log = logging.getLogger(__name__)

RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
DCTERMS = "http://purl.org/dc/terms/"
SLREQ = "http://mp.stratuslab.eu/slreq#"
SLTERMS = "http://mp.stratuslab.eu/slterms#"
DSIG = "http://www.w3.org/2000/09/xmldsig#"
XML_NS = "http://www.w3.org/XML/1998/namespace"
XML_BASE = "http://mp.stratuslab.eu/"
NSMAP = {"rdf": RDF, "dcterms": DCTERMS, "slreq": SLREQ, "slterms": SLTERMS}
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'

_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+")
_HEX = re.compile(r"[A-Fa-f0-9]+")
_URI = re.compile(r"[^\s<>\"{}|\\^`]+")


def q(namespace: str, name: str) -> str:
    """Clark notation ``{namespace}name`` as lxml uses it."""
    return f"{{{namespace}}}{name}"


class ChecksumAlgorithm(enum.StrEnum):
    """Checksum names exactly as StratusLab writes them in ``slreq:algorithm``."""

    MD5 = "MD5"
    SHA1 = "SHA-1"
    SHA224 = "SHA-224"
    SHA256 = "SHA-256"
    SHA384 = "SHA-384"
    SHA512 = "SHA-512"

    @property
    def hashlib_name(self) -> str:
        return self.value.replace("-", "").lower()

    @property
    def hex_digits(self) -> int:
        return hashlib.new(self.hashlib_name).digest_size * 2


class Status(enum.StrEnum):
    """An entry's status as the registry lists it (``?status=``)."""

    VALID = "valid"
    EXPIRED = "expired"
    DEPRECATED = "deprecated"


def format_time(moment: datetime) -> str:
    """``yyyy-MM-ddTHH:mm:ssZ`` in UTC (StratusLab's only date format; compares as a string)."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: metadata times are UTC")
    t = moment.astimezone(UTC)  # not strftime: a quarter of its cost, and %Y does not pad year 999
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}Z"


def parse_time(text: str) -> datetime:
    """Inverse of :func:`format_time`; raises ``ValueError`` for any other shape."""
    match = _TIME.fullmatch(text)
    if match is None:
        raise ValueError(f"expected yyyy-MM-ddTHH:mm:ssZ, got {text!r}")
    year, month, day, hour, minute, second = map(int, match.groups())
    try:  # the shape is checked, so are the digits: a tenth of strptime's cost
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        pass  # out of range: strptime's message says which field
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)


@dataclass(frozen=True)
class Endorser:
    """``slreq:endorser``: who vouches. ``issuers[0]`` must equal the certificate's issuer."""

    email: str
    subject: str
    issuers: tuple[str, ...]

    @property
    def issuer(self) -> str:
        return self.issuers[0]


@dataclass(frozen=True)
class Endorsement:
    """``slreq:endorsement``: when (``dcterms:created``, UTC, whole seconds) and by whom."""

    created: datetime
    endorser: Endorser


class _Kind(enum.Enum):
    TEXT = "text"
    COUNT = "a non-negative integer"
    PORT = "a port number 0-65535"
    ICMP = "an ICMP type 0-255"
    TIME = "a time yyyy-MM-ddTHH:mm:ssZ"
    URI = "a URI"


@dataclass(frozen=True)
class _Term:
    field: str
    element: str
    kind: _Kind = _Kind.TEXT
    many: bool = False


# The optional terms, in the order they are written (after the endorsement).
_TERMS = (
    _Term("type", q(DCTERMS, "type")),
    _Term("kind", q(SLTERMS, "kind")),
    _Term("valid", q(DCTERMS, "valid"), _Kind.TIME),
    _Term("created", q(DCTERMS, "created"), _Kind.TIME),
    _Term("title", q(DCTERMS, "title")),
    _Term("tag", q(DCTERMS, "alternative")),
    _Term("description", q(DCTERMS, "description")),
    _Term("creator", q(DCTERMS, "creator")),
    _Term("publisher", q(DCTERMS, "publisher")),
    _Term("format", q(DCTERMS, "format")),
    _Term("compression", q(DCTERMS, "compression")),
    _Term("replaces", q(DCTERMS, "replaces")),
    _Term("is_replaced_by", q(DCTERMS, "isReplacedBy")),
    _Term("is_version_of", q(DCTERMS, "isVersionOf")),
    _Term("locations", q(SLTERMS, "location"), _Kind.URI, many=True),
    _Term("related", q(DCTERMS, "relation"), _Kind.URI, many=True),
    _Term("serial_number", q(SLTERMS, "serial-number"), _Kind.COUNT),
    _Term("version", q(SLTERMS, "version")),
    _Term("hypervisor", q(SLTERMS, "hypervisor")),
    _Term("disks_bus", q(SLTERMS, "disks-bus"), many=True),
    _Term("inbound_ports", q(SLTERMS, "inbound-port"), _Kind.PORT, many=True),
    _Term("outbound_ports", q(SLTERMS, "outbound-port"), _Kind.PORT, many=True),
    _Term("icmp", q(SLTERMS, "icmp"), _Kind.ICMP, many=True),
    _Term("os", q(SLTERMS, "os")),
    _Term("os_version", q(SLTERMS, "os-version")),
    _Term("os_arch", q(SLTERMS, "os-arch")),
    _Term("deprecated", q(SLTERMS, "deprecated")),
)
_BY_ELEMENT = {t.element: t for t in _TERMS}
# The required terms' tags, compared with every element of every entry read.
_IDENTIFIER, _BYTES, _CHECKSUM = q(DCTERMS, "identifier"), q(SLREQ, "bytes"), q(SLREQ, "checksum")
_ENDORSEMENT, _RDF_TYPE, _PARSE_TYPE = q(SLREQ, "endorsement"), q(RDF, "type"), q(RDF, "parseType")


@dataclass(frozen=True)
class Metadata:
    """One metadata entry. Optional text terms are ``None`` when absent (``""`` when empty)."""

    identifier: str
    size: int  # slreq:bytes: size of the *uncompressed* image
    checksums: Mapping[ChecksumAlgorithm, str]  # algorithm → lower-case hex; always has SHA-1
    endorsement: Endorsement | None  # None in an unsigned template (empty element)
    type: str = "machine"  # dcterms:type; StratusLab's client writes base/grid here
    kind: str | None = None  # slterms:kind: machine | disk
    valid: datetime | None = None  # dcterms:valid: the endorsement expires then
    created: datetime | None = None  # dcterms:created at top level: image creation time
    title: str | None = None
    tag: str | None = None  # dcterms:alternative: the endorser's stable name for "latest"
    description: str | None = None
    creator: str | None = None
    publisher: str | None = None
    format: str | None = None  # raw, qcow2, …
    compression: str | None = None  # "", gz, bz2, xz: of the file at the locations
    replaces: str | None = None
    is_replaced_by: str | None = None
    is_version_of: str | None = None
    locations: tuple[str, ...] = ()  # download URLs, tried in order
    related: tuple[str, ...] = ()  # dcterms:relation: related documents, e.g. the image's SBOM
    serial_number: int | None = None
    version: str | None = None
    hypervisor: str | None = None
    disks_bus: tuple[str, ...] = ()
    inbound_ports: tuple[int, ...] = ()
    outbound_ports: tuple[int, ...] = ()
    icmp: tuple[int, ...] = ()
    os: str | None = None
    os_version: str | None = None
    os_arch: str | None = None
    deprecated: str | None = None  # the reason; presence means deprecated
    rdf_type: str | None = None  # rdf:type resource, rarely used
    extensions: tuple[str, ...] = field(default=())  # unknown elements, exclusive C14N

    def __post_init__(self) -> None:
        # Constructed entries obey the same rules as parsed ones.
        _check_identity(self.identifier, self.checksums, "<Metadata>", 0)

    @property
    def sha1(self) -> str:
        return self.checksums[ChecksumAlgorithm.SHA1]

    @property
    def is_deprecated(self) -> bool:
        return self.deprecated is not None

    @property
    def email(self) -> str | None:
        return self.endorsement.endorser.email if self.endorsement else None

    @property
    def key(self) -> tuple[str, str, str]:
        """``(identifier, email, created)``: the registry's key and its URL path parts."""
        if self.endorsement is None:
            raise DataError(f"{self.identifier}: unsigned entry has no endorsement")
        e = self.endorsement
        return (self.identifier, e.endorser.email, format_time(e.created))

    def is_expired(self, at: datetime) -> bool:
        """True once ``dcterms:valid`` has passed; an entry without it never expires."""
        return self.valid is not None and self.valid <= at

    def status(self, at: datetime) -> Status:
        if self.is_deprecated:
            return Status.DEPRECATED
        return Status.EXPIRED if self.is_expired(at) else Status.VALID

    def with_endorsement(self, endorsement: Endorsement | None) -> Metadata:
        return dataclasses.replace(self, endorsement=endorsement)


def _check_identity(
    identifier: str, checksums: Mapping[ChecksumAlgorithm, str], src: str, line: int
) -> None:
    if not is_identifier(identifier):
        raise DataError(
            f"{src}:{line}: dcterms:identifier: expected 27 characters of [A-Za-z0-9_-], got {identifier!r}"
        )
    sha1 = checksums.get(ChecksumAlgorithm.SHA1)
    if sha1 is None:
        raise DataError(f"{src}:{line}: slreq:checksum: expected exactly one SHA-1 checksum, got none")
    if len(sha1) != ChecksumAlgorithm.SHA1.hex_digits:
        raise DataError(f"{src}:{line}: slreq:checksum: expected a 160-bit SHA-1, got {sha1!r}")
    if identifier_to_sha1(identifier) != sha1.lower():
        raise DataError(
            f"{src}:{line}: dcterms:identifier: expected {sha1_to_identifier(sha1)} (from the SHA-1), "
            f"got {identifier}"
        )


# --- parsing -----------------------------------------------------------------------------


def _name(el: etree._Element) -> str:
    qn = etree.QName(el)
    for prefix, ns in (*NSMAP.items(), ("ds", DSIG)):
        if qn.namespace == ns:
            return f"{prefix}:{qn.localname}"
    return str(el.tag)


def _line(el: etree._Element) -> int:
    line = el.sourceline
    return line if isinstance(line, int) else 0


def _children(el: etree._Element, src: str) -> Iterator[etree._Element]:
    """Element children; text between them must be blank (no mixed content)."""
    if el.text and el.text.strip():
        raise DataError(
            f"{src}:{el.sourceline}: {_name(el)}: expected elements, got text {el.text.strip()!r}"
        )
    for child in el:
        if child.tail and child.tail.strip():
            raise DataError(f"{src}:{child.sourceline}: {_name(el)}: unexpected text {child.tail.strip()!r}")
        if isinstance(child.tag, str):
            yield child


def _where(el: etree._Element, src: str) -> str:
    """``SOURCE:LINE: prefix:name``, the start of an error message (only built for one)."""
    return f"{src}:{el.sourceline}: {_name(el)}"


def _text(el: etree._Element, src: str) -> str:
    if not len(el):  # no child node at all (the common case): its text is all there is
        return (el.text or "").strip()
    if any(isinstance(c.tag, str) for c in el):
        raise DataError(f"{src}:{el.sourceline}: {_name(el)}: expected text, got child elements")
    # itertext() joins the pieces around comments and PIs without their content.
    return "".join(str(t) for t in el.itertext()).strip()


def _value(term: _Term, el: etree._Element, src: str) -> object:
    text = _text(el, src)
    if term.kind is _Kind.TEXT:
        return text
    if term.kind is _Kind.TIME:
        try:
            return parse_time(text)
        except ValueError:
            raise DataError(f"{_where(el, src)}: expected {term.kind.value}, got {text!r}") from None
    if term.kind is _Kind.URI:
        if text and _URI.fullmatch(text) is None:
            raise DataError(f"{_where(el, src)}: expected {term.kind.value}, got {text!r}")
        return text
    limit = {_Kind.COUNT: None, _Kind.PORT: 65535, _Kind.ICMP: 255}[term.kind]
    if not text.isascii() or not text.isdigit() or (limit is not None and int(text) > limit):
        raise DataError(f"{_where(el, src)}: expected {term.kind.value}, got {text!r}")
    return int(text)


def _resource(el: etree._Element, src: str) -> list[etree._Element]:
    if el.get(_PARSE_TYPE) != "Resource":
        raise DataError(f'{src}:{el.sourceline}: {_name(el)}: expected rdf:parseType="Resource"')
    return list(_children(el, src))


def _one(
    found: dict[str, list[etree._Element]], name: str, parent: etree._Element, src: str
) -> etree._Element:
    els = found.get(name, [])
    if len(els) != 1:
        label = name.split("}")[1]
        raise DataError(
            f"{src}:{parent.sourceline}: {_name(parent)}: expected exactly one {label}, got {len(els)}"
        )
    return els[0]


def _group(children: list[etree._Element]) -> dict[str, list[etree._Element]]:
    found: dict[str, list[etree._Element]] = {}
    for c in children:
        found.setdefault(str(c.tag), []).append(c)
    return found


def _canonical(el: etree._Element, where: str) -> str:
    try:
        return etree.tostring(el, method="c14n", exclusive=True, with_comments=False).decode()
    except etree.C14NError:
        # libxml2 refuses relative namespace URIs, which RDF cannot use anyway.
        raise DataError(f"{where}: cannot canonicalise (is a namespace URI relative?)") from None


def _checksum(el: etree._Element, src: str) -> tuple[ChecksumAlgorithm, str]:
    found = _group(_resource(el, src))
    if set(found) - {q(SLREQ, "algorithm"), q(SLREQ, "value")}:
        raise DataError(
            f"{src}:{el.sourceline}: slreq:checksum: expected slreq:algorithm and slreq:value only"
        )
    alg_el = _one(found, q(SLREQ, "algorithm"), el, src)
    val_el = _one(found, q(SLREQ, "value"), el, src)
    alg, value = _text(alg_el, src), _text(val_el, src)
    try:
        algorithm = ChecksumAlgorithm(alg)
    except ValueError:
        names = ", ".join(a.value for a in ChecksumAlgorithm)
        raise DataError(
            f"{src}:{alg_el.sourceline}: slreq:algorithm: expected one of {names}, got {alg!r}"
        ) from None
    if _HEX.fullmatch(value) is None:
        raise DataError(
            f"{src}:{val_el.sourceline}: slreq:value: expected hexadecimal digits, got {value!r}"
        )
    digits = algorithm.hex_digits
    if len(value) != digits and int(value, 16) < 16**digits:
        # StratusLab compares checksums as numbers (BigInteger): a value with a leading zero
        # too many (its own test data) or Java's toString(16) without the leading zeros.
        value = f"{int(value, 16):0{digits}x}"
    return algorithm, value.lower()


def _endorsement(el: etree._Element, src: str) -> Endorsement | None:
    children = _resource(el, src)
    if not children:
        return None
    found = _group(children)
    if set(found) - {q(DCTERMS, "created"), q(SLREQ, "endorser")}:
        raise DataError(
            f"{src}:{el.sourceline}: slreq:endorsement: expected dcterms:created and slreq:endorser only"
        )
    created_el = _one(found, q(DCTERMS, "created"), el, src)
    try:
        created = parse_time(_text(created_el, src))
    except ValueError as exc:
        raise DataError(f"{src}:{created_el.sourceline}: dcterms:created: {exc}") from None
    endorser_el = _one(found, q(SLREQ, "endorser"), el, src)
    who = _group(_resource(endorser_el, src))
    if set(who) - {q(SLREQ, "email"), q(SLREQ, "subject"), q(SLREQ, "issuer")}:
        raise DataError(
            f"{src}:{endorser_el.sourceline}: slreq:endorser: expected email, subject, issuer only"
        )
    email_el = _one(who, q(SLREQ, "email"), endorser_el, src)
    email = _text(email_el, src)
    if _EMAIL.fullmatch(email) is None:
        raise DataError(
            f"{src}:{email_el.sourceline}: slreq:email: expected an e-mail address, got {email!r}"
        )
    subject = _text(_one(who, q(SLREQ, "subject"), endorser_el, src), src)
    issuers = tuple(_text(i, src) for i in who.get(q(SLREQ, "issuer"), []))
    if not issuers:
        raise DataError(
            f"{src}:{endorser_el.sourceline}: slreq:endorser: expected at least one slreq:issuer, got 0"
        )
    return Endorsement(created, Endorser(email, subject, issuers))


def metadata_from_element(root: etree._Element, *, source: str = "<bytes>") -> Metadata:
    """Interpret an ``rdf:RDF`` element already parsed by :mod:`marketplace.xmlsafe`.

    A ``ds:Signature`` child of ``rdf:RDF`` is skipped (not checked); any other sibling of
    the single ``rdf:Description`` is an error.
    """
    src = source
    if root.tag != q(RDF, "RDF"):
        raise DataError(f"{src}:{root.sourceline}: expected an rdf:RDF root element, got {_name(root)}")
    base = root.get(q(XML_NS, "base"))
    if base != XML_BASE:
        raise DataError(f"{src}:{root.sourceline}: rdf:RDF: expected xml:base={XML_BASE!r}, got {base!r}")
    descriptions = []
    for child in _children(root, src):
        if child.tag == q(RDF, "Description"):
            descriptions.append(child)
        elif child.tag != q(DSIG, "Signature"):
            raise DataError(
                f"{src}:{child.sourceline}: rdf:RDF: expected rdf:Description, got {_name(child)}"
            )
    if len(descriptions) != 1:
        raise DataError(
            f"{src}:{root.sourceline}: rdf:RDF: expected one rdf:Description, got {len(descriptions)}"
        )
    return _description(descriptions[0], src)


def _description(desc: etree._Element, src: str) -> Metadata:
    extra = set(desc.attrib) - {q(RDF, "about")}
    if extra:
        raise DataError(
            f"{src}:{desc.sourceline}: rdf:Description: unexpected attribute {sorted(map(str, extra))[0]}"
        )
    values: dict[str, object] = {}
    checksums: dict[ChecksumAlgorithm, str] = {}
    endorsements: list[Endorsement | None] = []
    extensions: list[str] = []
    identifier_el: etree._Element | None = None
    size_el: etree._Element | None = None
    children: list[etree._Element] = []  # walked (and their text between checked) once
    for el in _children(desc, src):
        children.append(el)
        tag = str(el.tag)
        if tag == _IDENTIFIER:
            if identifier_el is not None:
                raise DataError(f"{_where(el, src)}: expected exactly one, got a second")
            identifier_el = el
        elif tag == _BYTES:
            if size_el is not None:
                raise DataError(f"{_where(el, src)}: expected exactly one, got a second")
            size_el = el
        elif tag == _CHECKSUM:
            algorithm, value = _checksum(el, src)
            if algorithm in checksums:
                raise DataError(f"{_where(el, src)}: expected one {algorithm} checksum, got a second")
            checksums[algorithm] = value
        elif tag == _ENDORSEMENT:
            endorsements.append(_endorsement(el, src))
        elif tag == _RDF_TYPE:
            rdf_type = el.get(q(RDF, "resource"))
            if rdf_type is None or len(el) or "rdf_type" in values:
                raise DataError(f"{_where(el, src)}: expected one empty element with rdf:resource")
            values["rdf_type"] = rdf_type
        elif tag in _BY_ELEMENT:
            term = _BY_ELEMENT[tag]
            item = _value(term, el, src)
            if term.many:
                if item != "":  # xs:anyURI may be empty: an empty location is no download hint
                    values.setdefault(term.field, []).append(item)  # type: ignore[attr-defined]
            elif term.field in values and term.field in ("title", "description"):
                log.warning("%s: a second %s is ignored (the first one counts)", _where(el, src), _name(el))
            elif term.field in values:
                raise DataError(f"{_where(el, src)}: expected at most one, got a second")
            else:
                values[term.field] = item
        else:
            extensions.append(_canonical(el, _where(el, src)))
    if identifier_el is None:
        raise DataError(f"{src}:{desc.sourceline}: rdf:Description: expected dcterms:identifier, got none")
    if size_el is None:
        raise DataError(f"{src}:{desc.sourceline}: rdf:Description: expected slreq:bytes, got none")
    if len(endorsements) != 1:
        raise DataError(
            f"{src}:{desc.sourceline}: rdf:Description: expected one slreq:endorsement, "
            f"got {len(endorsements)}"
        )
    if "type" not in values:
        raise DataError(f"{src}:{desc.sourceline}: rdf:Description: expected one dcterms:type, got none")
    identifier = _text(identifier_el, src)
    _check_identity(identifier, checksums, src, _line(identifier_el))
    about = desc.get(q(RDF, "about"))
    if about != "#" + identifier:
        raise DataError(f"{src}:{desc.sourceline}: rdf:about: expected '#{identifier}', got {about!r}")
    size = _value(_Term("size", q(SLREQ, "bytes"), _Kind.COUNT), size_el, src)
    for el in children:  # after the terms' own checks, whose messages say more
        check_property(el, src)
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return Metadata(
        identifier=identifier,
        size=size,  # type: ignore[arg-type]
        checksums=checksums,
        endorsement=endorsements[0],
        extensions=tuple(extensions),
        **fields,  # type: ignore[arg-type]
    )


def parse_metadata(
    data: bytes, *, source: str = "<bytes>", max_bytes: int = xmlsafe.DEFAULT_MAX_BYTES
) -> Metadata:
    """Safely parse one entry (signed or not; the signature is *not* checked)."""
    return metadata_from_element(xmlsafe.parse(data, source=source, max_bytes=max_bytes), source=source)


def split_metadata_list(
    data: bytes, *, source: str = "<bytes>", max_bytes: int = 64 * xmlsafe.DEFAULT_MAX_BYTES
) -> tuple[bytes, ...]:
    """The entries of a ``<metadata>`` list answer (``GET /metadata`` as XML), each as a
    standalone document that still verifies if it was signed; a bare ``rdf:RDF`` is a list of one."""
    root = xmlsafe.parse(data, source=source, max_bytes=max_bytes)
    if root.tag == q(RDF, "RDF"):
        return (data,)
    if root.tag != "metadata":
        raise DataError(f"{source}:{root.sourceline}: expected <metadata> or rdf:RDF, got {_name(root)}")
    entries = []
    for child in _children(root, source):
        if child.tag != q(RDF, "RDF"):
            raise DataError(f"{source}:{child.sourceline}: metadata: expected rdf:RDF, got {_name(child)}")
        child.tail = None
        entries.append(etree.tostring(child, xml_declaration=True, encoding="UTF-8"))
    return tuple(entries)


def parse_metadata_list(data: bytes, *, source: str = "<bytes>") -> tuple[Metadata, ...]:
    """Every entry of a ``<metadata>`` list (or a single ``rdf:RDF``), unverified."""
    return tuple(
        parse_metadata(entry, source=f"{source}[{i}]")
        for i, entry in enumerate(split_metadata_list(data, source=source))
    )


# --- writing ----------------------------------------------------------------------------

_INDENT = "  "


def _append(parent: etree._Element, el: etree._Element, depth: int) -> etree._Element:
    if len(parent):
        parent[-1].tail = "\n" + _INDENT * depth
    else:
        parent.text = "\n" + _INDENT * depth
    parent.append(el)
    el.tail = "\n" + _INDENT * (depth - 1)
    return el


def _add(parent: etree._Element, tag: str, text: str | None = None, depth: int = 2) -> etree._Element:
    el = etree.Element(tag)
    el.text = text
    return _append(parent, el, depth)


def _text_of(term: _Term, value: object) -> str:
    if isinstance(value, datetime):
        return format_time(value)
    return str(value)


def metadata_to_element(m: Metadata) -> etree._Element:
    """The unsigned ``rdf:RDF`` tree in the fixed element order (XSD sequence, then the terms)."""
    root = etree.Element(q(RDF, "RDF"), nsmap=NSMAP)
    root.set(q(XML_NS, "base"), XML_BASE)
    desc = _add(root, q(RDF, "Description"), depth=1)
    root.text, desc.tail = "\n" + _INDENT, "\n"
    desc.set(q(RDF, "about"), "#" + m.identifier)
    if m.rdf_type is not None:
        _add(desc, q(RDF, "type")).set(q(RDF, "resource"), m.rdf_type)
    _add(desc, q(DCTERMS, "identifier"), m.identifier)
    _add(desc, q(SLREQ, "bytes"), str(m.size))
    for algorithm in ChecksumAlgorithm:
        if algorithm in m.checksums:
            el = _add(desc, q(SLREQ, "checksum"))
            el.set(q(RDF, "parseType"), "Resource")
            _add(el, q(SLREQ, "algorithm"), algorithm.value, 3)
            _add(el, q(SLREQ, "value"), m.checksums[algorithm].lower(), 3)
    endorsement = _add(desc, q(SLREQ, "endorsement"))
    endorsement.set(q(RDF, "parseType"), "Resource")
    if m.endorsement is not None:
        _add(endorsement, q(DCTERMS, "created"), format_time(m.endorsement.created), 3)
        endorser = _add(endorsement, q(SLREQ, "endorser"), depth=3)
        endorser.set(q(RDF, "parseType"), "Resource")
        who = m.endorsement.endorser
        _add(endorser, q(SLREQ, "email"), who.email, 4)
        _add(endorser, q(SLREQ, "subject"), who.subject, 4)
        for issuer in who.issuers:
            _add(endorser, q(SLREQ, "issuer"), issuer, 4)
    for term in _TERMS:
        value = getattr(m, term.field)
        for item in value if term.many else () if value is None else (value,):
            _add(desc, term.element, _text_of(term, item))
    for ext in m.extensions:
        _append(desc, xmlsafe.parse(ext.encode(), source="extension"), 2)
    return root


def metadata_to_rdfxml(m: Metadata) -> bytes:
    """Unsigned RDF/XML with ``xml:base``; stable bytes for equal entries."""
    return XML_DECLARATION + etree.tostring(metadata_to_element(m), encoding="UTF-8") + b"\n"
