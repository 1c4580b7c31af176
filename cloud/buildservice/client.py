"""The build service's client side, for ``imagekit build submit|status|log|cancel|fetch``.

    client = BuildClient(httpx.Client(base_url=url, auth=httpx.BasicAuth(name, password)))
    build = client.submit(Path("recipes/web.appl"), {"format": "qcow2"})
    for chunk in client.log(build["id"]): ...
    client.fetch(build["id"], Path("out"))    # each artifact checked against the service's SHA-256

``submit`` sends the recipe's directory as a tar (its regular files, dot-files left out), so an
``.appl``'s parents and the files it copies in go along; the recipe is named by its path in it.
What the service answers is data too: an artifact's name must be a plain file name, and a
download is kept only when its SHA-256 is the one the service listed (``.part`` until then).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import ssl
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from imagekit.errors import DataError, InputError, NetworkError, VerificationError
from marketplace.httpstream import Answer, TransferFailed, open_get

MAX_RECIPE_DIRECTORY = 64 << 20
# An artifact is read 1 MiB at a time: the measured best on 2 cores (8 MiB pieces leave the
# CPU's cache before they are hashed and written).
DOWNLOAD_BUFFER = 1 << 20
DEFAULT_TIMEOUT = 60.0
_UNUSED_FOR_PLAIN_HTTP = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # open_get wants one: http:// ignores it
FINISHED = ("succeeded", "failed", "cancelled")


def pack_recipe(recipe: Path) -> bytes:
    """The recipe's directory as a tar: regular files (links followed), no dot-files."""
    root = recipe.parent
    buffer = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for directory, subdirs, names in os.walk(root):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            for name in sorted(n for n in names if not n.startswith(".")):
                path = Path(directory) / name
                if not path.is_file():
                    continue
                total += path.stat().st_size
                if total > MAX_RECIPE_DIRECTORY:
                    raise InputError(
                        f"the recipe's directory holds more than {MAX_RECIPE_DIRECTORY >> 20} MiB",
                        where=str(root),
                        hint="put the recipe, its parents and its files in a directory of their own",
                    )
                archive.add(path, arcname=path.relative_to(root).as_posix(), recursive=False)
    return buffer.getvalue()


def _plain_name(name: str) -> str:
    if not name or "/" in name or "\\" in name or name.startswith(".") or not name.isprintable():
        raise DataError(f"the service named an artifact {name!r}: not a plain file name")
    return name


class BuildClient:
    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self._tls_context: ssl.SSLContext | None = None

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kw)
        except httpx.HTTPError as err:
            raise NetworkError(f"{self.http.base_url}: {err or type(err).__name__}") from None
        if response.status_code >= 400:
            raise InputError(f"{response.status_code}: {_refusal(response)}")
        return response

    def submit(self, recipe: Path, options: dict[str, str]) -> dict[str, Any]:
        if not recipe.is_file():
            raise InputError("no such recipe file", where=str(recipe))
        query = {**options, "recipe": recipe.name}
        response = self._call("POST", "/builds", content=pack_recipe(recipe), params=query)
        answer: dict[str, Any] = response.json()
        return answer

    def status(self, job_id: int) -> dict[str, Any]:
        answer: dict[str, Any] = self._call("GET", f"/builds/{job_id}").json()
        return answer

    def cancel(self, job_id: int) -> dict[str, Any]:
        answer: dict[str, Any] = self._call("DELETE", f"/builds/{job_id}").json()
        return answer

    def log(self, job_id: int, *, follow: bool = True) -> Iterator[bytes]:
        params = {} if follow else {"follow": "0"}
        try:
            with self.http.stream("GET", f"/builds/{job_id}/log", params=params) as response:
                if response.status_code >= 400:
                    response.read()
                    raise InputError(f"{response.status_code}: {_refusal(response)}")
                yield from response.iter_bytes()
        except httpx.HTTPError as err:
            raise NetworkError(f"{self.http.base_url}: {err or type(err).__name__}") from None

    def wait(
        self, job_id: int, *, on_change: Callable[[dict[str, Any]], None], poll: float = 1.0
    ) -> dict[str, Any]:
        """Until the build has finished; ``on_change`` sees each new state."""
        seen = ""
        while True:
            build = self.status(job_id)
            if build["state"] != seen:
                seen = build["state"]
                on_change(build)
            if seen in FINISHED:
                return build
            time.sleep(poll)  # the service has no push: ask again

    def fetch(self, job_id: int, into: Path) -> list[Path]:
        """Download every artifact into ``into``, each checked against the listed SHA-256."""
        listed = self._call("GET", f"/builds/{job_id}/artifacts").json()["artifacts"]
        into.mkdir(parents=True, exist_ok=True)
        return [self._download(job_id, into, item) for item in listed]

    def _download(self, job_id: int, into: Path, item: dict[str, Any]) -> Path:
        name = _plain_name(str(item["name"]))
        target, part = into / name, into / f".{name}.part"
        url, headers = self._plain_get(f"/builds/{job_id}/artifacts/{name}")
        digest = hashlib.sha256()
        buffer = memoryview(bytearray(DOWNLOAD_BUFFER))
        try:
            with open_get(url, headers, context=self._tls(url), timeout=self._timeout()) as answer:
                if answer.status >= 400:
                    raise InputError(f"{answer.status}: {_refusal_of(answer)}")
                with part.open("wb") as out:
                    while count := answer.readinto(buffer):
                        digest.update(buffer[:count])
                        out.write(buffer[:count])
        except (TransferFailed, VerificationError) as err:
            part.unlink(missing_ok=True)
            raise NetworkError(f"{self.http.base_url}: {err}") from None
        if digest.hexdigest() != item["sha256"]:
            part.unlink(missing_ok=True)
            raise VerificationError(
                f"{name}: SHA-256 {digest.hexdigest()} is not the service's {item['sha256']}",
                rule="artifact checksum",
            )
        part.rename(target)
        return target

    def _plain_get(self, path: str) -> tuple[str, dict[str, str]]:
        """The URL and headers (the client's credentials among them) of a GET of ``path``, for
        :func:`~marketplace.httpstream.open_get`: an image is read straight into one buffer,
        not copied through httpx's 64 KiB pieces (``bench/buildservice.py``)."""
        request = self.http.build_request("GET", path)
        if self.http.auth is not None:
            request = next(self.http.auth.sync_auth_flow(request))
        left_to_http_client = ("host", "connection", "accept-encoding", "content-length")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in left_to_http_client}
        return str(request.url), headers

    def _tls(self, url: str) -> ssl.SSLContext:
        """The system's CAs (``SSL_CERT_FILE`` adds a bundle), loaded only for an https
        endpoint: loading them costs more than a small artifact's download."""
        if not url.lower().startswith("https:"):
            return _UNUSED_FOR_PLAIN_HTTP
        if self._tls_context is None:
            self._tls_context = ssl.create_default_context()
        return self._tls_context

    def _timeout(self) -> float:
        return self.http.timeout.read or DEFAULT_TIMEOUT


def fetch_provenance_key(endpoint: str, *, timeout: float = 60.0) -> bytes:
    """The service's provenance key (``GET /provenance-key``): trusted as far as the connection
    to the service is (give ``--key`` to pin it)."""
    try:
        response = httpx.get(f"{endpoint.rstrip('/')}/provenance-key", timeout=timeout)
    except httpx.HTTPError as err:
        raise NetworkError(f"{endpoint}: {err or type(err).__name__}") from None
    if response.status_code != 200:
        raise InputError(f"{response.status_code}: {_refusal(response)}")
    return response.content[:16384]


def provenance_and_files(path: Path) -> tuple[Path, dict[str, str]]:
    """``path`` is a fetched build's directory (its ``provenance.intoto.jsonl``) or the
    provenance file itself; with the artifacts beside it (name → SHA-256, dot-files and other
    ``.intoto.jsonl`` files left out)."""
    from cloud.buildservice.provenance import PROVENANCE_NAME
    from cloud.buildservice.worker import collect_artifacts

    provenance = path / PROVENANCE_NAME if path.is_dir() else path
    if not provenance.is_file():
        raise InputError("no such provenance file", where=str(provenance))
    files = {
        a.name: a.sha256
        for a in collect_artifacts(provenance.parent)
        if a.name != provenance.name and not a.name.endswith(".intoto.jsonl")
    }
    return provenance, files


def _refusal_of(answer: Answer) -> str:
    """The ``error`` of a refusal whose body is still to be read (its first 4 KiB)."""
    buffer = memoryview(bytearray(4096))
    try:
        count = answer.readinto(buffer)
    except TransferFailed:
        count = 0
    try:
        return str(json.loads(bytes(buffer[:count]))["error"])
    except (ValueError, KeyError, TypeError):
        return bytes(buffer[:count]).decode("utf-8", "replace").strip()[:300]


def _refusal(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.text.strip()[:300]
