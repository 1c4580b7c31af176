"""EC2 Query request authentication: Signature Version 4 and 2, verified, never computed for us.

    request = QueryRequest(method, path, query, headers, body, params)
    user = verify(request, users.credentials, now=datetime.now(UTC))

``verify`` recomputes the signature with the secret of the access key the request names and
compares in constant time. SigV4 (boto3's default) comes in the ``Authorization`` header and signs
the body's SHA-256 (``UNSIGNED-PAYLOAD`` is refused: a Query action's parameters are in the body);
any region is accepted (the scope is used as given), the service must be ``ec2``. SigV2
(``SignatureVersion=2`` in the parameters; HmacSHA256 or HmacSHA1) is tried with the ``Host``
header as sent and then without its port: botocore signs ``host:port``, OpenNebula 1.4's tools
signed the bare host, and 5.x's EC2CloudAuth accepted both. A request whose time is more than
``skew`` away from ``now`` (or whose SigV2 ``Expires`` has passed) is refused, so a captured
request cannot be replayed later. Pure: no I/O beyond the ``lookup`` callable.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar
from urllib.parse import quote, unquote_plus

from cloud.ec2.errors import Ec2Error, auth_failure

U = TypeVar("U")

DEFAULT_SKEW = timedelta(minutes=15)
_V4_ALGORITHM = "AWS4-HMAC-SHA256"
_V4_FIELDS = re.compile(r"\s*(Credential|SignedHeaders|Signature)\s*=\s*([^,\s]*)\s*")


@dataclass(frozen=True)
class QueryRequest:
    """An HTTP request as the signer saw it. ``headers``: lower-case names, in order;
    ``params``: the decoded query and form parameters (a multipart upload's file left out)."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    params: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name]
        return ",".join(values) if values else None

    def param(self, name: str) -> str | None:
        for key, value in self.params:
            if key == name:
                return value
        return None


def verify(
    request: QueryRequest,
    lookup: Callable[[str], tuple[U, str] | None],
    *,
    now: datetime,
    skew: timedelta = DEFAULT_SKEW,
) -> U:
    """The user whose secret signed ``request``; else an ``AuthFailure`` (or ``RequestExpired``)."""
    authorization = request.header("authorization")
    if authorization is not None:
        return _verify_v4(request, authorization, lookup, now, skew)
    if request.param("Signature") is not None:
        return _verify_v2(request, lookup, now, skew)
    raise auth_failure("The request is not signed (no Authorization header and no Signature parameter)")


def _aws_quote(text: str) -> str:
    return quote(text.encode(), safe="-_.~")


def _lookup(lookup: Callable[[str], tuple[U, str] | None], access_key: str) -> tuple[U, str]:
    found = lookup(access_key)
    if found is None:
        raise auth_failure("AWS was not able to validate the provided access credentials")
    return found


def _check_time(when: datetime, now: datetime, skew: timedelta) -> None:
    if abs(now - when) > skew:
        raise Ec2Error(
            "RequestExpired",
            f"Request has expired: its time {when:%Y-%m-%dT%H:%M:%SZ} is more than"
            f" {int(skew.total_seconds())} s from the server's {now:%Y-%m-%dT%H:%M:%SZ}",
        )


def _signature_matches(expected: str, got: str) -> bool:
    return hmac.compare_digest(expected.encode(), got.encode())


# --- Signature Version 4 ------------------------------------------------------------------------


def _v4_fields(authorization: str) -> tuple[list[str], list[str], str]:
    algorithm, _, rest = authorization.strip().partition(" ")
    if algorithm != _V4_ALGORITHM:
        raise auth_failure(f"Unsupported authorization algorithm {algorithm!r}")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        m = _V4_FIELDS.fullmatch(part)
        if m is None:
            raise auth_failure("Malformed Authorization header")
        fields[m.group(1)] = m.group(2)
    if len(fields) != 3:
        raise auth_failure("The Authorization header needs Credential, SignedHeaders and Signature")
    scope = fields["Credential"].split("/")
    if len(scope) != 5 or scope[3] != "ec2" or scope[4] != "aws4_request":
        raise auth_failure("Credential must be ACCESS_KEY/DATE/REGION/ec2/aws4_request")
    return scope, fields["SignedHeaders"].split(";"), fields["Signature"]


def _v4_time(request: QueryRequest) -> tuple[str, datetime]:
    amz_date = request.header("x-amz-date")
    try:
        if amz_date is None:
            raise ValueError
        return amz_date, datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise auth_failure("X-Amz-Date is missing or not YYYYMMDDTHHMMSSZ") from None


def _canonical_query(query: str) -> str:
    pairs = [pair.partition("=") for pair in query.split("&") if pair]
    decoded = sorted((_aws_quote(unquote_plus(k)), _aws_quote(unquote_plus(v))) for k, _, v in pairs)
    return "&".join(f"{k}={v}" for k, v in decoded)


def _canonical_uri(path: str) -> str:
    return _aws_quote(path).replace("%2F", "/") or "/"


def _v4_payload_hash(request: QueryRequest) -> str:
    """The body's SHA-256, always: a Query action's parameters may be in the body, so a
    signature that leaves it out (``UNSIGNED-PAYLOAD``, a streaming mode) authorises nothing."""
    actual = hashlib.sha256(request.body).hexdigest()
    declared = request.header("x-amz-content-sha256")
    if declared is not None and declared != actual:
        if not re.fullmatch(r"[0-9a-f]{64}", declared):
            # UNSIGNED-PAYLOAD, STREAMING-…: the parameters in the body would go unsigned.
            raise auth_failure("X-Amz-Content-SHA256 must be the body's SHA-256 (no unsigned payload)")
        raise auth_failure("X-Amz-Content-SHA256 does not match the body")
    return actual


def _canonical_request(request: QueryRequest, signed: Sequence[str]) -> str:
    lines = [request.method, _canonical_uri(request.path), _canonical_query(request.query)]
    for name in signed:
        value = request.header(name)
        if value is None:
            raise auth_failure(f"Signed header {name!r} is not in the request")
        lines.append(f"{name}:{' '.join(value.split())}")
    return "\n".join([*lines, "", ";".join(signed), _v4_payload_hash(request)])


def _v4_key(secret: str, date: str, region: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (date, region, "ec2", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _verify_v4(
    request: QueryRequest,
    authorization: str,
    lookup: Callable[[str], tuple[U, str] | None],
    now: datetime,
    skew: timedelta,
) -> U:
    scope, signed, signature = _v4_fields(authorization)
    access_key, date, region = scope[:3]
    if "host" not in signed or signed != sorted(signed):
        raise auth_failure("SignedHeaders must be sorted and include host")
    amz_date, when = _v4_time(request)
    if not amz_date.startswith(date):
        raise auth_failure("The Credential date is not the date of X-Amz-Date")
    _check_time(when, now, skew)
    user, secret = _lookup(lookup, access_key)
    creq = _canonical_request(request, signed)
    to_sign = "\n".join(
        [_V4_ALGORITHM, amz_date, "/".join(scope[1:]), hashlib.sha256(creq.encode()).hexdigest()]
    )
    expected = hmac.new(_v4_key(secret, date, region), to_sign.encode(), hashlib.sha256).hexdigest()
    if not _signature_matches(expected, signature):
        raise auth_failure("The request signature we calculated does not match the signature you provided")
    return user


# --- Signature Version 2 ------------------------------------------------------------------------

_V2_METHODS = {"HmacSHA256": hashlib.sha256, "HmacSHA1": hashlib.sha1}


def _v2_time(request: QueryRequest, now: datetime, skew: timedelta) -> None:
    timestamp, expires = request.param("Timestamp"), request.param("Expires")
    if (timestamp is None) == (expires is None):
        raise auth_failure("A SigV2 request needs exactly one of Timestamp and Expires")
    text = timestamp or expires or ""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise auth_failure(f"Timestamp/Expires {text!r} is not an ISO 8601 time") from None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    if timestamp is not None:
        _check_time(when, now, skew)
    elif when < now or when - now > skew:
        raise Ec2Error("RequestExpired", f"Request has expired or expires too late: Expires={text}")


def _v2_string_to_sign(request: QueryRequest, host: str) -> str:
    pairs = sorted((k, v) for k, v in request.params if k != "Signature")
    query = "&".join(f"{_aws_quote(k)}={_aws_quote(v)}" for k, v in pairs)
    return f"{request.method}\n{host.lower()}\n{request.path or '/'}\n{query}"


def _verify_v2(
    request: QueryRequest,
    lookup: Callable[[str], tuple[U, str] | None],
    now: datetime,
    skew: timedelta,
) -> U:
    if request.param("SignatureVersion") != "2":
        raise auth_failure("Only SignatureVersion 2 and 4 are supported")
    digest = _V2_METHODS.get(request.param("SignatureMethod") or "")
    if digest is None:
        raise auth_failure("SignatureMethod must be HmacSHA256 or HmacSHA1")
    access_key = request.param("AWSAccessKeyId")
    if access_key is None:
        raise auth_failure("AWSAccessKeyId is missing")
    _v2_time(request, now, skew)
    user, secret = _lookup(lookup, access_key)
    host = request.header("host") or ""
    hosts = [host, host.rpartition(":")[0]] if re.search(r":\d+$", host) else [host]
    signature = request.param("Signature") or ""
    for candidate in hosts:
        mac = hmac.new(secret.encode(), _v2_string_to_sign(request, candidate).encode(), digest)
        if _signature_matches(base64.b64encode(mac.digest()).decode(), signature):
            return user
    raise auth_failure("The request signature we calculated does not match the signature you provided")
