"""The EC2 Query service on loopback, driven by boto3 (SigV4 and ``signature_version='v2'``).

Response and error shapes are EC2's as boto3's ec2 service model parses them; econe's
behaviour from OpenNebula/one ``src/cloud/ec2/lib/EC2QueryServer.rb`` (3.8+: key pairs,
regions and zones; ``econe-server.rb``: Sinatra on port 4567).
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit
from xml.etree import ElementTree as ET

import botocore.auth
import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, SSLError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from cloud.users import CreatedUser, UserStore
from imagekit.run import run
from imagekit.state import State
from tests.cloud.serving import ec2_client, ec2_server, make_tls

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ec2") / "state"


@pytest.fixture(scope="module")
def accounts(state: Path) -> dict[str, CreatedUser]:
    users = UserStore(State.open(state))
    return {name: users.create(name, f"{name}-pw") for name in ("alice", "bob")}


@pytest.fixture(scope="module")
def url(state: Path, accounts: dict[str, CreatedUser]) -> Iterator[str]:
    with ec2_server(state) as running:
        yield running


def client(url: str, account: CreatedUser, *, v2: bool = False, secret: str | None = None, **kw: Any) -> Any:
    return ec2_client(url, account, secret=secret, **({"signature_version": "v2"} if v2 else {}), **kw)


def _code(err: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    return err.value.response["Error"]["Code"], err.value.response["ResponseMetadata"]["HTTPStatusCode"]


@pytest.mark.parametrize("v2", [False, True], ids=["sigv4", "sigv2"])
def test_regions_and_zones(url: str, accounts: dict[str, CreatedUser], v2: bool) -> None:
    ec2 = client(url, accounts["alice"], v2=v2)
    regions = ec2.describe_regions()
    assert [(r["RegionName"], r["Endpoint"]) for r in regions["Regions"]] == [("default", url)]
    assert re.fullmatch(r"[0-9a-f-]{36}", regions["ResponseMetadata"]["RequestId"])
    zones = ec2.describe_availability_zones()["AvailabilityZones"]
    assert [(z["ZoneName"], z["State"], z["RegionName"]) for z in zones] == [
        ("default", "available", "default")
    ]
    with pytest.raises(ClientError) as err:
        ec2.describe_availability_zones(ZoneNames=["us-east-1a"])
    assert _code(err) == ("InvalidParameterValue", 400)
    with pytest.raises(ClientError) as err:
        ec2.describe_regions(RegionNames=["mars-1"])
    assert _code(err) == ("InvalidParameterValue", 400)


def _ssh_public(kind: str) -> bytes:
    key = (
        ed25519.Ed25519PrivateKey.generate() if kind == "ed25519" else rsa.generate_private_key(65537, 2048)
    )
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def test_key_pairs_are_per_user(url: str, accounts: dict[str, CreatedUser], tmp_path: Path) -> None:
    alice, bob = client(url, accounts["alice"]), client(url, accounts["bob"], v2=True)
    rsa_key, ed_key = _ssh_public("rsa"), _ssh_public("ed25519")
    imported = alice.import_key_pair(KeyName="laptop", PublicKeyMaterial=rsa_key)
    # ssh-keygen is the oracle for EC2's imported-RSA fingerprint (MD5 of the key blob).
    (tmp_path / "k.pub").write_bytes(rsa_key)
    listed = run(["ssh-keygen", "-l", "-E", "md5", "-f", tmp_path / "k.pub"]).stdout.decode()
    assert f"MD5:{imported['KeyFingerprint']} " in listed
    assert imported["KeyPairId"].startswith("key-")
    ed = alice.import_key_pair(KeyName="ed", PublicKeyMaterial=ed_key)
    blob = base64.b64decode(ed_key.split()[1])
    assert ed["KeyFingerprint"] == base64.b64encode(hashlib.sha256(blob).digest()).decode()

    with pytest.raises(ClientError) as err:
        alice.import_key_pair(KeyName="laptop", PublicKeyMaterial=ed_key)
    assert _code(err) == ("InvalidKeyPair.Duplicate", 400)
    with pytest.raises(ClientError) as err:
        alice.import_key_pair(KeyName="junk", PublicKeyMaterial=b"ssh-rsa bm90IGEga2V5 x")
    assert _code(err) == ("InvalidParameterValue", 400)

    pairs = alice.describe_key_pairs()["KeyPairs"]
    assert [(k["KeyName"], k["KeyType"]) for k in pairs] == [("ed", "ed25519"), ("laptop", "rsa")]
    assert bob.describe_key_pairs()["KeyPairs"] == []
    with pytest.raises(ClientError) as err:
        bob.describe_key_pairs(KeyNames=["laptop"])
    assert _code(err) == ("InvalidKeyPair.NotFound", 400)
    bob.delete_key_pair(KeyName="laptop")  # someone else's: nothing happens to it
    assert len(alice.describe_key_pairs(KeyNames=["laptop"])["KeyPairs"]) == 1
    alice.delete_key_pair(KeyName="laptop")
    assert [k["KeyName"] for k in alice.describe_key_pairs()["KeyPairs"]] == ["ed"]


@pytest.mark.parametrize("v2", [False, True], ids=["sigv4", "sigv2"])
def test_a_wrong_secret_is_an_auth_failure_and_the_service_stays_up(
    url: str, accounts: dict[str, CreatedUser], v2: bool
) -> None:
    with pytest.raises(ClientError) as err:
        client(url, accounts["alice"], v2=v2, secret="not-the-secret").describe_regions()
    assert _code(err) == ("AuthFailure", 401)
    assert client(url, accounts["alice"], v2=v2).describe_regions()["Regions"]


def test_a_replayed_sigv2_request_is_refused(
    url: str, accounts: dict[str, CreatedUser], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_gmtime, twenty_minutes_ago = time.gmtime, time.time() - 20 * 60

    def signing_clock(seconds: float | None = None) -> time.struct_time:
        # botocore's SigV2 stamps Timestamp with time.gmtime(); everything else keeps the real one.
        return real_gmtime(twenty_minutes_ago if seconds is None else seconds)

    monkeypatch.setattr(botocore.auth.time, "gmtime", signing_clock)
    with pytest.raises(ClientError) as err:
        client(url, accounts["alice"], v2=True).describe_regions()
    assert _code(err) == ("RequestExpired", 400)


def _signed(url: str, account: CreatedUser, params: dict[str, str]) -> httpx.Response:
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    req = AWSRequest(method="POST", url=url, data=urlencode(params), headers=headers)
    SigV4Auth(Credentials(account.user.access_key, account.secret_key), "ec2", "default").add_auth(req)
    prepared = req.prepare()
    return httpx.post(url, content=prepared.body, headers=dict(prepared.headers.items()))


def _error(response: httpx.Response) -> tuple[int, str, str]:
    root = ET.fromstring(response.content)
    assert root.tag == "Response" and response.headers["content-type"].startswith("text/xml")
    return response.status_code, root.findtext("Errors/Error/Code") or "", root.findtext("RequestID") or ""


def test_unknown_and_unavailable_actions(url: str, accounts: dict[str, CreatedUser]) -> None:
    status, code, request_id = _error(
        _signed(url, accounts["alice"], {"Action": "Frobnicate", "Version": "x"})
    )
    assert (status, code) == (400, "InvalidAction") and request_id
    assert _error(_signed(url, accounts["alice"], {"Version": "2016-11-15"}))[:2] == (400, "MissingAction")
    # UploadImage is econe's multipart action: a plain form gets an EC2 error naming the form.
    status, code, _ = _error(_signed(url, accounts["alice"], {"Action": "UploadImage", "Version": "x"}))
    assert (status, code) == (400, "InvalidParameterValue")


def test_the_response_namespace_echoes_the_version(url: str, accounts: dict[str, CreatedUser]) -> None:
    response = _signed(url, accounts["alice"], {"Action": "DescribeRegions", "Version": "2014-10-01"})
    root = ET.fromstring(response.content)
    assert root.tag == "{http://ec2.amazonaws.com/doc/2014-10-01/}DescribeRegionsResponse"
    assert root.findtext("{http://ec2.amazonaws.com/doc/2014-10-01/}requestId")


def test_bad_requests_get_the_error_envelope(url: str, accounts: dict[str, CreatedUser]) -> None:
    assert _error(httpx.get(url + "?Action=DescribeRegions"))[:2] == (401, "AuthFailure")
    big = httpx.post(url, content=b"A=" + b"x" * (1 << 20), headers={"Content-Type": "text/plain"})
    assert _error(big)[:2] == (400, "EntityTooLarge")
    garbage = httpx.post(
        url, content=b"\xff\xfe=\x00", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert _error(garbage)[:2] == (400, "InvalidParameterValue")
    assert _error(httpx.put(url, content=b"x"))[:2] == (405, "UnsupportedOperation")
    assert _error(httpx.get(url + "admin"))[:2] == (404, "InvalidAction")
    assert client(url, accounts["bob"]).describe_regions()["Regions"]


def test_https_with_certfile_and_keyfile(
    tmp_path: Path, state: Path, accounts: dict[str, CreatedUser]
) -> None:
    tls = make_tls(tmp_path)
    with ec2_server(state, tls) as https_url:
        assert urlsplit(https_url).scheme == "https"
        regions = client(https_url, accounts["alice"], verify=str(tls.ca)).describe_regions()["Regions"]
        assert regions[0]["Endpoint"] == https_url
        with pytest.raises(SSLError):
            client(https_url, accounts["alice"]).describe_regions()  # the system CAs do not know it
