"""One HTTP refusal type for both servers (issue 22, point 6): the registry's refusals and
OCCI's are :class:`imagekit.httperror.HttpError`, each answered in its server's representation."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from cloud.occi.xml import parse_compute
from imagekit.httperror import HttpError, bad_request
from marketplace.server import negotiate


def _request(query: str) -> Request:
    scope = {"type": "http", "method": "GET", "path": "/", "query_string": query.encode(), "headers": []}
    return Request(scope)


def test_the_registry_and_occi_refuse_with_the_same_type() -> None:
    with pytest.raises(HttpError) as registry:
        negotiate(_request("media=yaml"))
    refused = (registry.value.status, registry.value.message)
    assert refused == (400, "media: expected xml, json or html, got 'yaml'")
    with pytest.raises(HttpError) as occi:
        parse_compute(b"<STORAGE/>")
    assert (occi.value.status, occi.value.message) == (400, "expected a <COMPUTE> document, got <STORAGE>")
    assert type(registry.value) is type(occi.value) is type(bad_request("x"))


def test_no_other_module_defines_an_http_error_of_its_own() -> None:
    """Both servers used to carry a copy (``marketplace.server.HttpError``, ``OcciError``)."""
    import cloud.occi.server
    import cloud.occi.xml
    import marketplace.server

    assert vars(marketplace.server)["HttpError"] is HttpError
    assert not hasattr(cloud.occi.xml, "OcciError") and not hasattr(cloud.occi.server, "OcciError")
