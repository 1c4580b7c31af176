"""Two cloud users (and an administrator) at both front doors, in process: the EC2 Query app and
the OCCI app over one state, driven by Starlette's test client (issue 17's tenancy tests)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode
from xml.etree import ElementTree as ET

import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from starlette.testclient import TestClient

from cloud.ec2.client import Endpoint, upload_request
from cloud.ec2.core import CoreBackend
from cloud.ec2.server import create_app as ec2_app
from cloud.ec2.service import Region
from cloud.image_sources import SiteSources
from cloud.occi.server import create_app as occi_app
from cloud.upload import DEFAULT_MAX_UPLOAD
from cloud.users import CreatedUser, UserStore
from context.leases import NetworkStore
from context.network import network_from_template
from context.template import parse_template
from imagekit.state import State

URL = "http://testserver/"
REGISTRY = "http://127.0.0.1:9/registry"  # nothing listens: RegisterImage never connects
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "root": "root-pw"}
PUBLIC = 'NAME = "Public EC2"\nTYPE = "RANGED"\nNETWORK_ADDRESS = "10.8.0.0"\nNETWORK_SIZE = "C"\n'


@dataclass
class Doors:
    state: State
    accounts: dict[str, CreatedUser]
    ec2: TestClient
    occi: TestClient
    site_dir: Path  # --site-images
    tmp: Path

    def ec2_call(self, name: str, action: str, **params: str) -> httpx.Response:
        """A SigV4-signed EC2 Query request of ``name``."""
        account = self.accounts[name]
        headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
        body = urlencode({"Action": action, "Version": "2016-11-15", **params})
        request = AWSRequest(method="POST", url=URL, data=body, headers=headers)
        credentials = Credentials(account.user.access_key, account.secret_key)
        SigV4Auth(credentials, "ec2", "default").add_auth(request)
        prepared = request.prepare()
        response: httpx.Response = self.ec2.post(
            "/", content=prepared.body, headers=dict(prepared.headers.items())
        )
        return response

    def ec2_upload(self, name: str, image: Path) -> httpx.Response:
        account = self.accounts[name]
        endpoint = Endpoint(URL, account.user.access_key, account.secret_key)
        with open(image, "rb") as data:
            response: httpx.Response = self.ec2.send(upload_request(endpoint, image, data))
        return response

    def occi_upload(self, name: str, image: Path) -> httpx.Response:
        with open(image, "rb") as data:
            response: httpx.Response = self.occi.post(
                "/storage",
                data={"occixml": "<DISK><NAME>upload</NAME></DISK>"},
                files={"file": (image.name, data)},
                auth=(name, PASSWORDS[name]),
            )
        return response

    def upload(self, door: str, name: str, image: Path) -> httpx.Response:
        return self.ec2_upload(name, image) if door == "ec2" else self.occi_upload(name, image)

    def images(self, door: str, name: str) -> list[str]:
        """The image ids ``name`` sees at ``door``."""
        if door == "ec2":
            root = ET.fromstring(self.ec2_call(name, "DescribeImages").content)
            return [e.text or "" for e in root.iter() if e.tag.endswith("imageId")]
        pool = self.occi.get("/storage", auth=(name, PASSWORDS[name]))
        return [d.get("href", "") for d in ET.fromstring(pool.content)]

    def kept_files(self) -> list[Path]:
        """Every file the doors keep for images (uploads, STORAGE, their spools)."""
        roots = [self.state.root / "ec2" / "uploads", self.state.root / "occi"]
        return sorted(p for r in roots if r.exists() for p in r.rglob("*") if p.is_file())


def error_text(response: httpx.Response) -> str:
    """The refusal's message: EC2's ``Errors/Error/Message``, OCCI's text body."""
    if response.headers.get("content-type", "").startswith("text/xml"):
        return ET.fromstring(response.content).findtext("Errors/Error/Message") or ""
    return response.text


def error_code(response: httpx.Response) -> str:
    return ET.fromstring(response.content).findtext("Errors/Error/Code") or ""


def names_no_server_path(text: str, *paths: Path) -> bool:
    """Whether a refusal sent to the network names none of ``paths`` (nor /etc)."""
    return "/etc" not in text and all(str(p) not in text for p in paths)


@contextlib.contextmanager
def open_doors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, max_upload: int = DEFAULT_MAX_UPLOAD
) -> Iterator[Doors]:
    """alice, bob and the administrator root; a "Public EC2" network; both apps, held VMs;
    ``max_upload``: both servers' ``--max-upload``."""
    monkeypatch.setenv("IMAGEKIT_ACCEL", "tcg")
    state = State.open(tmp_path / "state")
    users = UserStore(state)
    accounts = {n: users.create(n, p, admin=n == "root") for n, p in PASSWORDS.items()}
    NetworkStore(state).create(network_from_template(parse_template(PUBLIC, "public.net")))
    site_dir = tmp_path / "site-images"
    site_dir.mkdir()
    sources = SiteSources(registries=(REGISTRY,), image_dirs=(site_dir,))
    region = Region("default", URL)
    ec2 = ec2_app(
        state, region, compute=CoreBackend(state, hold=True), sources=sources, max_upload=max_upload
    )
    occi = occi_app(state, hold=True, max_upload=max_upload)
    with TestClient(ec2, base_url=URL) as ec2_client, TestClient(occi) as occi_client:
        yield Doors(state, accounts, ec2_client, occi_client, site_dir, tmp_path)
