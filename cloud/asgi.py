"""Run a front door's ASGI app under uvicorn, the one way every cloud service is served.

    run_app(create_app(state), host="127.0.0.1", port=4568, certfile=None, keyfile=None)

HTTPS directly when a certificate is given (1.4 needed a lighttpd SSL proxy); no ``Server``
header, and no proxy headers trusted: the peer is the client.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette


def run_app(app: Starlette, *, host: str, port: int, certfile: Path | None, keyfile: Path | None) -> None:
    import uvicorn

    uvicorn.run(
        app,
        host=host,
        port=port,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        log_level="warning",
        server_header=False,
        proxy_headers=False,
    )
