"""EC2 request authentication against requests signed by botocore's own signers.

Behaviour follows OpenNebula/one's EC2 auth: 1.4 ``src/cloud/ec2/lib/EC2QueryServer.rb``
(``authenticate?``: SigV2 over every parameter but ``Signature``, host without port) and 5.x
``src/cloud/common/CloudAuth/EC2CloudAuth.rb`` (SigV2 with HmacSHA1/HmacSHA256 tried with
``host:port`` then ``host``; SigV4 from the ``Authorization`` header, any region).
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import botocore.auth
import pytest
from botocore.auth import SigV2Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from cloud.ec2.auth import QueryRequest, verify
from cloud.ec2.errors import Ec2Error

ACCESS, SECRET = "AKIKALICE", "alice-secret"
FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}


def lookup(access_key: str) -> tuple[str, str] | None:
    return ("alice", SECRET) if access_key == ACCESS else None


def as_received(req: AWSRequest, host: str | None = None) -> QueryRequest:
    """What the server sees of ``req``: the Host header urllib3 sends, the body, the params."""
    prepared = req.prepare()
    split = urlsplit(prepared.url)
    body = prepared.body or b""
    body = body.encode() if isinstance(body, str) else body

    headers = [(k.lower(), v) for k, v in prepared.headers.items()]
    headers.append(("host", host or split.netloc))
    params = parse_qsl(split.query, keep_blank_values=True) + parse_qsl(
        body.decode(), keep_blank_values=True
    )
    return QueryRequest(prepared.method, split.path or "/", split.query, tuple(headers), body, tuple(params))


def v4(
    params: dict[str, str], *, secret: str = SECRET, region: str = "us-east-1", method: str = "POST"
) -> Any:
    url = "http://127.0.0.1:4567/"
    if method == "GET":
        req = AWSRequest(method="GET", url=url + "?" + urlencode(params, quote_via=quote))
    else:
        req = AWSRequest(method="POST", url=url, data=urlencode(params), headers=dict(FORM))
    SigV4Auth(Credentials(ACCESS, secret), "ec2", region).add_auth(req)
    return req


def v2(params: dict[str, str], *, url: str = "http://127.0.0.1:4567/", secret: str = SECRET) -> Any:
    req = AWSRequest(method="POST", url=url, data=dict(params), headers=dict(FORM))
    SigV2Auth(Credentials(ACCESS, secret)).add_auth(req)
    return req


class SigV2HmacSha1(SigV2Auth):  # type: ignore[misc]
    """botocore's SigV2 string-to-sign, keyed HMAC-SHA1 as the 1.4-era tools signed."""

    def add_auth(self, request: AWSRequest) -> AWSRequest:
        params = request.data
        params.update(AWSAccessKeyId=ACCESS, SignatureVersion="2", SignatureMethod="HmacSHA1")
        params["Timestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        _, params["Signature"] = self.calc_signature(request, params)
        return request


DESCRIBE = {"Action": "DescribeRegions", "Version": "2016-11-15"}


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1"])
def test_sigv4_as_boto3_signs_it(region: str) -> None:
    assert verify(as_received(v4(DESCRIBE, region=region)), lookup, now=datetime.now(UTC)) == "alice"


def test_sigv4_get_with_the_parameters_in_the_query() -> None:
    params = {**DESCRIBE, "RegionName.1": "a b/c~", "Filter.1.Name": "é"}
    assert verify(as_received(v4(params, method="GET")), lookup, now=datetime.now(UTC)) == "alice"


def _refused(request: QueryRequest, code: str = "AuthFailure", *, now: datetime | None = None) -> Ec2Error:
    with pytest.raises(Ec2Error) as info:
        verify(request, lookup, now=now or datetime.now(UTC))
    assert info.value.code == code
    assert info.value.status == (401 if code == "AuthFailure" else 400)
    return info.value


def test_sigv4_refusals() -> None:
    _refused(as_received(v4(DESCRIBE, secret="wrong")))
    good = as_received(v4(DESCRIBE))
    tampered = QueryRequest(
        good.method, good.path, good.query, good.headers, good.body + b"&DryRun=true", good.params
    )
    _refused(tampered)
    other_host = QueryRequest(
        good.method,
        good.path,
        good.query,
        (*good.headers[:-1], ("host", "evil:4567")),
        good.body,
        good.params,
    )
    _refused(other_host)
    unknown = v4(DESCRIBE)
    unknown.headers.replace_header(
        "Authorization", unknown.headers["Authorization"].replace(ACCESS, "AKIKBOB")
    )
    _refused(as_received(unknown))
    # botocore signs at the real time: every check counts from the clock at that moment, never
    # from a time taken at import (a long session before these tests made requests look stale).
    later = datetime.now(UTC)
    assert "RequestExpired" == _refused(good, "RequestExpired", now=later + timedelta(minutes=16)).code
    assert verify(good, lookup, now=later + timedelta(minutes=14)) == "alice"


def test_sigv2_hmac_sha256_with_the_port() -> None:
    assert verify(as_received(v2(DESCRIBE)), lookup, now=datetime.now(UTC)) == "alice"


def test_sigv2_signed_with_the_bare_host_as_the_1_4_tools_did() -> None:
    # Signed for "127.0.0.1", received with "Host: 127.0.0.1:4567".
    req = v2(DESCRIBE, url="http://127.0.0.1/")
    assert verify(as_received(req, host="127.0.0.1:4567"), lookup, now=datetime.now(UTC)) == "alice"


def test_sigv2_hmac_sha1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(botocore.auth, "sha256", hashlib.sha1)
    req = AWSRequest(method="POST", url="http://127.0.0.1:4567/", data=dict(DESCRIBE), headers=dict(FORM))
    SigV2HmacSha1(Credentials(ACCESS, SECRET)).add_auth(req)
    received = as_received(req)
    assert received.param("SignatureMethod") == "HmacSHA1"
    assert verify(received, lookup, now=datetime.now(UTC)) == "alice"


def test_sigv2_refusals() -> None:
    _refused(as_received(v2(DESCRIBE, secret="wrong")))
    replayed = as_received(v2(DESCRIBE))
    _refused(replayed, "RequestExpired", now=datetime.now(UTC) + timedelta(minutes=16))
    version_1 = tuple((k, "1" if k == "SignatureVersion" else v) for k, v in replayed.params)
    _refused(QueryRequest("POST", "/", "", replayed.headers, replayed.body, version_1))
    unsigned = QueryRequest("POST", "/", "", (("host", "h"),), b"", tuple(DESCRIBE.items()))
    _refused(unsigned)


def test_signatures_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    constant_time = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return constant_time(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    verify(as_received(v4(DESCRIBE)), lookup, now=datetime.now(UTC))
    verify(as_received(v2(DESCRIBE)), lookup, now=datetime.now(UTC))
    assert len(compared) == 2
