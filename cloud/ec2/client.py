"""The client side of the EC2 Query API, as econe's tools used it: boto3, plus econe's UploadImage.

    endpoint = Endpoint.resolve(access_key=None, secret_key=None, url=None, environ=env.named())
    image = upload_image(endpoint, Path("disk.qcow2"))     # "ami-00000001"
    ec2 = ec2_client(endpoint)                             # boto3: register_image, run_instances…

Credentials and URL come from the options, else ``EC2_ACCESS_KEY``, ``EC2_SECRET_KEY`` and
``EC2_URL`` (econe's ``EC2QueryClient``; the URL defaults to ``http://localhost:4567``).
Requests are signed by botocore (SigV4 through boto3; ``UploadImage``, which no AWS SDK knows,
with botocore's SigV2 signer over the form's fields, the file left out and sent after them, as
econe signed and sent it) and
every refusal becomes one ``InputError`` naming the server's code and message.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from xml.etree import ElementTree as ET

import httpx

from cloud.ec2.responses import API_VERSION
from imagekit.errors import InputError, NetworkError

DEFAULT_URL = "http://localhost:4567"
UPLOAD_TIMEOUT = httpx.Timeout(30.0, write=None, read=600.0)


@dataclass(frozen=True)
class Endpoint:
    url: str
    access_key: str
    secret_key: str

    @classmethod
    def resolve(
        cls, *, access_key: str | None, secret_key: str | None, url: str | None, environ: Mapping[str, str]
    ) -> Endpoint:
        access = access_key or environ.get("EC2_ACCESS_KEY")
        secret = secret_key or environ.get("EC2_SECRET_KEY")
        if not access or not secret:
            raise InputError(
                "no EC2 credentials",
                hint="pass -K ACCESS_KEY -S SECRET_KEY or set EC2_ACCESS_KEY/EC2_SECRET_KEY",
            )
        return cls(url or environ.get("EC2_URL") or DEFAULT_URL, access, secret)


def ec2_client(endpoint: Endpoint) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "ec2",
        endpoint_url=endpoint.url,
        region_name="default",
        aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key,
        config=Config(retries={"max_attempts": 1}),
    )


@contextlib.contextmanager
def refusals(endpoint: Endpoint) -> Iterator[None]:
    """botocore's errors for a request to ``endpoint``: the server's refusal or a bad request as
    an ``InputError``, no answer at all as a ``NetworkError``."""
    from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as NoConnection

    try:
        yield
    except ClientError as err:
        error = err.response.get("Error", {})
        raise InputError(
            f"{error.get('Code', 'Error')}: {error.get('Message', '')}", where=endpoint.url
        ) from None
    except (NoConnection, HTTPClientError) as err:
        raise NetworkError(f"{endpoint.url}: {err}") from None
    except BotoCoreError as err:
        raise InputError(str(err), where=endpoint.url) from None


def upload_request(endpoint: Endpoint, image: Path, data: BinaryIO) -> httpx.Request:
    """econe's ``UploadImage`` as a multipart POST: the SigV2-signed fields first, ``Signature``
    among them, then the image (read from ``data`` as it is sent) as the field ``file``, the
    order econe's client used (EC2QueryClient#upload_image). The server can then check the
    signature before it stores a byte of the image. One signed field more than econe's,
    ``ImageSha256`` (the file's SHA-256, read from ``data`` once before), binds the file to
    the signature: a captured request replayed with another file is refused."""
    from botocore.auth import SigV2Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    fields = {"Action": "UploadImage", "Version": API_VERSION, "ImageSha256": _sha256(data)}
    signed = AWSRequest(method="POST", url=endpoint.url, data=fields)
    SigV2Auth(Credentials(endpoint.access_key, endpoint.secret_key)).add_auth(signed)
    # httpx writes every data field before the files.
    files = {"file": (image.name, data, "application/octet-stream")}
    return httpx.Request("POST", endpoint.url, data=dict(signed.data), files=files)


def _sha256(data: BinaryIO) -> str:
    """The SHA-256 of ``data`` from where it stands; left where it stood."""
    start = data.tell()
    digest = hashlib.sha256()
    while chunk := data.read(1 << 20):
        digest.update(chunk)
    data.seek(start)
    return digest.hexdigest()


def upload_image(endpoint: Endpoint, image: Path) -> str:
    """econe's ``UploadImage`` (``upload_request``); the new image's id."""
    try:
        with open(image, "rb") as data, httpx.Client(timeout=UPLOAD_TIMEOUT) as http:
            response = http.send(upload_request(endpoint, image, data))
    except FileNotFoundError:
        raise InputError("no such file", where=str(image)) from None
    except httpx.HTTPError as err:
        raise NetworkError(f"{endpoint.url}: upload failed: {err or type(err).__name__}") from None
    return _image_id(endpoint, response)


def _image_id(endpoint: Endpoint, response: httpx.Response) -> str:
    try:
        root = ET.fromstring(response.content)
    except ET.ParseError:
        raise InputError(f"HTTP {response.status_code}: not an EC2 answer", where=endpoint.url) from None
    if response.status_code != 200:
        code, message = root.findtext("Errors/Error/Code"), root.findtext("Errors/Error/Message")
        raise InputError(f"{code}: {message}", where=endpoint.url)
    found = next((e.text for e in root.iter() if e.tag.rpartition("}")[2] == "imageId"), None)
    if not found:
        raise InputError("the answer to UploadImage has no imageId", where=endpoint.url)
    return found
