"""A small HTTP client for the registry, used by ``imagekit market upload|list|get|…``.

The endpoint comes from ``--endpoint``, else ``$IMAGEKIT_MARKET``, else the local server
(``http://127.0.0.1:8081``). Every failure becomes one line: an unreachable server, or the
registry's own reason for refusing (``400: invalid metadata: signature: …``).

    client = MarketClient(endpoint())
    reply = client.upload(Path("entry.xml").read_bytes())
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from imagekit import environment
from imagekit.errors import ImagekitError, NetworkError

ENDPOINT_ENV = "IMAGEKIT_MARKET"
DEFAULT_ENDPOINT = "http://127.0.0.1:8081"


class RegistryError(ImagekitError):
    """The registry could not be reached or refused the request."""

    def __init__(self, message: str, *, status: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class RegistryUnreachable(RegistryError, NetworkError):
    """No answer from the registry: the connection was refused, timed out or broke off."""


def endpoint(explicit: str | None = None) -> str:
    return (explicit or environment.current().market or DEFAULT_ENDPOINT).rstrip("/")


@dataclass(frozen=True)
class UploadReply:
    status: int
    outcome: str
    key: str
    message: str
    location: str | None
    pending: str | None


def path_of(*segments: str) -> str:
    return "/".join(quote(s, safe="@:") for s in segments)


class MarketClient:
    def __init__(self, base: str, *, timeout: float = 30.0) -> None:
        self.base = base.rstrip("/")
        self._http = httpx.Client(base_url=self.base, timeout=timeout, follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> MarketClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, *, accept: str, **kwargs: Any) -> httpx.Response:
        headers = {"Accept": accept, **kwargs.pop("headers", {})}
        try:
            response = self._http.request(method, path, headers=headers, **kwargs)
        except httpx.ConnectError as exc:
            reason = "connection refused" if "refused" in str(exc).lower() else str(exc) or "cannot connect"
            raise RegistryUnreachable(
                f"cannot reach the registry at {self.base}: {reason}",
                hint="start one with `imagekit market serve`, or pass --endpoint / set IMAGEKIT_MARKET",
            ) from None
        except httpx.TimeoutException:
            raise RegistryUnreachable(f"the registry at {self.base} did not answer in time") from None
        except httpx.TransportError as exc:
            raise RegistryUnreachable(f"request to {self.base}{path} failed: {exc}") from None
        except httpx.HTTPError as exc:
            raise RegistryError(f"request to {self.base}{path} failed: {exc}") from None
        if response.status_code >= 400:
            raise RegistryError(f"{response.status_code}: {_reason(response)}", status=response.status_code)
        return response

    def upload(self, data: bytes) -> UploadReply:
        response = self._request(
            "POST",
            "/metadata",
            accept="application/json",
            content=data,
            headers={"Content-Type": "application/rdf+xml"},
        )
        body = response.json()
        return UploadReply(
            status=response.status_code,
            outcome=str(body.get("outcome", "")),
            key=str(body.get("key", "")),
            message=str(body.get("message", "")),
            location=response.headers.get("location"),
            pending=body.get("pending"),
        )

    def json(self, path: str, params: dict[str, str] | None = None) -> Any:
        return self._request("GET", path, accept="application/json", params=params or {}).json()

    def xml(self, path: str, params: dict[str, str] | None = None) -> bytes:
        return self._request("GET", path, accept="application/xml", params=params or {}).content


def _reason(response: httpx.Response) -> str:
    if response.headers.get("content-type", "").startswith("application/json"):
        try:
            return str(response.json().get("error", response.reason_phrase))
        except ValueError:
            pass
    text = response.text.strip()
    if text.startswith("<error>") or text.startswith("<?xml"):
        found = re.search(r"<error>(.*)</error>", text, re.S)
        if found:
            return found.group(1).strip()
    return text.splitlines()[0] if text else response.reason_phrase
