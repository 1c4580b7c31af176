"""One streaming HTTP GET for image downloads, read with ``readinto`` into the caller's buffer.

httpx (the registry client) hands a body out in 64 KiB ``bytes`` after copying it through h11's
buffers; for a multi-GiB image on a 2-core machine those copies and the per-piece Python cost
as much CPU as one of the hashes. :mod:`http.client` reads the body straight into the buffer
given (one copy, from the kernel; TLS decrypts into it), many MiB per call.

Proxies come from the environment as with httpx's ``trust_env`` (``http_proxy``,
``https_proxy``, ``all_proxy``, ``no_proxy``; an ``http://`` proxy, tunnelling with CONNECT to
https targets). TLS is always verified with the context given. Failures worth retrying raise
:class:`TransferFailed` with the reason a person reads.

    with open_get(url, {"Range": "bytes=100-"}, context=ctx, timeout=60.0) as answer:
        n = answer.readinto(buffer)
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import ssl
import urllib.request
from collections.abc import Iterator
from urllib.parse import SplitResult, unquote, urljoin, urlsplit

from imagekit.errors import VerificationError

REDIRECTS = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "imagekit-site"


class TransferFailed(Exception):
    """The network failed (connect, timeout, dropped connection): worth retrying."""


class Answer:
    """The status and headers of a response whose body is still to be read."""

    def __init__(self, url: str, response: http.client.HTTPResponse) -> None:
        self.url = url
        self.status = response.status
        self.reason = response.reason
        self._response = response

    def header(self, name: str) -> str | None:
        return self._response.getheader(name)

    @property
    def redirect_target(self) -> str | None:
        """The absolute URL a redirect points to (None when this is not a redirect)."""
        location = self.header("location")
        return urljoin(self.url, location) if self.status in REDIRECTS and location else None

    def readinto(self, buffer: memoryview) -> int:
        """Fill ``buffer`` from the body (fewer bytes only at its end); 0 once it is all read."""
        try:
            count = self._response.readinto(buffer)
        except TimeoutError:
            raise TransferFailed("timed out") from None
        except (OSError, http.client.HTTPException) as exc:
            raise TransferFailed(f"connection dropped: {exc or type(exc).__name__}") from None
        missing = self._response.length
        if count == 0 and buffer and missing:  # http.client reports an early close as the end
            raise TransferFailed(
                f"connection dropped: the server closed it {missing} bytes before the Content-Length"
            )
        return count


@contextlib.contextmanager
def open_get(
    url: str, headers: dict[str, str], *, context: ssl.SSLContext, timeout: float
) -> Iterator[Answer]:
    """GET ``url`` (no redirect followed); the connection closes when the block ends."""
    try:
        split = urlsplit(url)
        port = split.port
    except ValueError:
        raise VerificationError(f"{url}: not a valid URL", rule="download") from None
    connection, target, proxy_headers = _connection(split, port, context, timeout)
    try:
        try:
            connection.connect()
        except TimeoutError:
            raise TransferFailed("timed out") from None
        except OSError as exc:
            raise TransferFailed(f"cannot connect: {exc}") from None
        try:
            sent = {"User-Agent": USER_AGENT, **proxy_headers, **headers}
            connection.request("GET", target, headers=sent)
            response = connection.getresponse()
        except TimeoutError:
            raise TransferFailed("timed out") from None
        except http.client.InvalidURL:
            raise VerificationError(f"{url}: not a valid URL", rule="download") from None
        except (OSError, http.client.HTTPException) as exc:
            raise TransferFailed(f"connection dropped: {exc or type(exc).__name__}") from None
        with contextlib.closing(response):
            yield Answer(url, response)
    finally:
        connection.close()


def _connection(
    split: SplitResult, port: int | None, context: ssl.SSLContext, timeout: float
) -> tuple[http.client.HTTPConnection, str, dict[str, str]]:
    """The connection to open (to the origin, or to the proxy), the request target, and the
    headers the proxy needs on the request."""
    https = split.scheme.lower() == "https"
    host = split.hostname or ""
    port = port or (443 if https else 80)
    target = (split.path or "/") + (f"?{split.query}" if split.query else "")
    proxy = _proxy_for(split.scheme.lower(), host)
    if proxy is None:
        if https:
            return http.client.HTTPSConnection(host, port, context=context, timeout=timeout), target, {}
        return http.client.HTTPConnection(host, port, timeout=timeout), target, {}
    proxy_host, proxy_port = proxy.hostname or "", proxy.port or 80
    credentials = _proxy_credentials(proxy)
    if https:
        tunnelled = http.client.HTTPSConnection(proxy_host, proxy_port, context=context, timeout=timeout)
        tunnelled.set_tunnel(host, port, headers=credentials)
        return tunnelled, target, {}
    # Through an HTTP proxy the request line carries the whole URL (RFC 9112 §3.2.2).
    absolute = f"http://{split.netloc.rpartition('@')[2]}{target}"
    return http.client.HTTPConnection(proxy_host, proxy_port, timeout=timeout), absolute, credentials


def _proxy_for(scheme: str, host: str) -> SplitResult | None:
    proxies = urllib.request.getproxies_environment()
    if urllib.request.proxy_bypass(host):  # no_proxy (on Linux, from the environment only)
        return None
    url = proxies.get(scheme) or proxies.get("all")
    if not url:
        return None
    proxy = urlsplit(url if "://" in url else f"http://{url}")
    if proxy.scheme.lower() != "http":
        raise VerificationError(
            f"proxy {proxy.scheme}:// is not supported (an http:// proxy is)", rule="download"
        )
    return proxy


def _proxy_credentials(proxy: SplitResult) -> dict[str, str]:
    if proxy.username is None:
        return {}
    pair = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}".encode()
    return {"Proxy-Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
