"""Replicating from a StratusLab marketplace, which serves no change feed (``GET /changes`` is 404).

StratusLab's own API is read instead (research §2.1, §2.2):

- ``GET /metadata?status=all`` lists the latest entry of every timeline, valid, expired or
  deprecated (``status``: any value but valid/expired/deprecated means no status filter);
- ``GET /endorsers`` names every endorser, and ``GET /endorsers/EMAIL?range=DAYS&status=all``
  lists that endorser's entries, older entries of a timeline included (StratusLab answers both
  as SPARQL result sets, ``EndorsersResource.java``, ``EndorserResource.java`` with
  ``SparqlUtils.ENDORSER_HISTORY_QUERY_TEMPLATE``: identifier, created, email; imagekit as a
  ``<metadata>`` list);
- ``GET /metadata/ID/EMAIL/CREATED`` serves one stored signed file as it was uploaded.

A listing only says which entries exist (StratusLab strips the XML declarations of the files it
wraps); every entry not here yet is then fetched by its own URL, so it is copied byte for byte,
and handed to :meth:`Registry.replicate` in the order of its endorsement time (as StratusLab's
``marketplace-rebuild-db`` re-uploads), which verifies every signature again. An entry already
stored here is not fetched: a second run copies nothing. Listings are asked for by ``limit`` and
``page`` (imagekit pages; StratusLab answers everything at once): reading stops at the first
page that names nothing new.

    report = replicate_stratuslab(registry, "http://stratuslab.example.org:8081")
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Iterator

from lxml import etree

from imagekit.errors import DataError, InputError
from marketplace import xmlsafe
from marketplace.client import MarketClient, RegistryError, RegistryUnreachable, path_of
from marketplace.metadata import parse_metadata, split_metadata_list
from marketplace.registry import Registry, Replicated
from marketplace.replicate import PAGE, RETRIES, Cursor, ReplicationReport, _tally, _with_retries
from marketplace.store import EntryKey

log = logging.getLogger(__name__)

LIST_LIMIT = 1000  # entries per listing page (imagekit's max_page_size)
ALL_DAYS = 100 * 366  # ``range`` for "every entry an endorser ever made"
MAX_PAGES = 10_000


def lacks_change_feed(client: MarketClient, retries: int = RETRIES) -> bool:
    """True when the source answers 404 at ``/changes``: no imagekit feed, a StratusLab registry."""
    try:
        _with_retries("change feed", lambda: client.json("/changes", {"after": "0", "limit": "1"}), retries)
    except RegistryError as err:
        if err.status == 404:
            return True
        raise
    return False


SPARQL_RESULTS = "{http://www.w3.org/2005/sparql-results#}"


def _bindings(root: etree._Element) -> Iterator[dict[str, str]]:
    """Each ``<result>`` of a SPARQL results document as ``{variable: value}``."""
    for result in root.iter(f"{SPARQL_RESULTS}result"):
        found = {}
        for binding in result.iter(f"{SPARQL_RESULTS}binding"):
            found[str(binding.get("name"))] = "".join(str(t) for t in binding.itertext()).strip()
        yield found


def _keys_in(body: bytes, source: str) -> list[EntryKey]:
    """The entries a listing names: imagekit answers a ``<metadata>`` list of the signed files,
    StratusLab's ``/endorsers/EMAIL`` a SPARQL result set (identifier, created, email, …)."""
    root = xmlsafe.parse(body, source=source, max_bytes=64 * xmlsafe.DEFAULT_MAX_BYTES)
    try:
        if root.tag == f"{SPARQL_RESULTS}sparql":
            return [EntryKey(b["identifier"], b["email"], b["created"]) for b in _bindings(root)]
        return [
            EntryKey(*parse_metadata(entry, source=f"{source}[{n}]").key)
            for n, entry in enumerate(split_metadata_list(body, source=source))
        ]
    except (KeyError, InputError) as err:
        raise DataError(f"{source}: a listed entry has no usable key ({err})") from None


def _listing_keys(
    client: MarketClient, path: str, params: dict[str, str], retries: int
) -> Iterator[EntryKey]:
    """The keys of every entry a (paged) listing names."""
    seen: set[EntryKey] = set()
    for page in range(1, MAX_PAGES):
        query = {**params, "limit": str(LIST_LIMIT), "page": str(page)}
        try:
            body = _with_retries(f"listing {path}", functools.partial(client.xml, path, query), retries)
        except RegistryError as err:
            if err.status == 404:  # "no metadata matching query found": past the last page
                return
            raise
        new = [k for k in _keys_in(body, f"{client.base}{path}") if k not in seen]
        seen.update(new)
        yield from new
        if not new:
            return


def _endorsers(client: MarketClient, retries: int) -> list[str]:
    """The e-mails ``GET /endorsers`` names: imagekit's ``<endorser><email>``, or StratusLab's
    SPARQL result set with an ``email`` binding (``EndorsersResource.java``)."""
    source = f"{client.base}/endorsers"
    root = xmlsafe.parse(
        _with_retries("endorsers", lambda: client.xml("/endorsers"), retries), source=source
    )
    emails = {(e.text or "").strip() for e in root.iter("email")}
    emails.update(b.get("email", "") for b in _bindings(root))
    return sorted(e for e in emails if e)


def listed_entries(client: MarketClient, retries: int = RETRIES) -> list[EntryKey]:
    """Every entry the source lists, oldest endorsement first."""
    keys = set(_listing_keys(client, "/metadata", {"status": "all"}, retries))
    for email in _endorsers(client, retries):
        history = {"range": str(ALL_DAYS), "status": "all"}
        keys.update(_listing_keys(client, "/endorsers/" + path_of(email), history, retries))
    return sorted(keys, key=lambda k: (k.created, k.identifier, k.email))


def _fetch(client: MarketClient, key: EntryKey, retries: int) -> bytes:
    """The stored signed file, as served; it must be the entry asked for."""
    path = "/metadata/" + path_of(key.identifier, key.email, key.created)
    data: bytes = _with_retries(key.relpath, lambda: client.xml(path), retries)
    if EntryKey(*parse_metadata(data, source=key.relpath).key) != key:
        raise DataError(f"{key.relpath}: the source served another entry at this path")
    return data


def _named(results: list[Replicated], batch: list[tuple[EntryKey, bytes]]) -> list[Replicated]:
    """A refused file names no key of its own: name it by the URL it was fetched at. The
    refused come first, in the order given (:meth:`Registry.replicate`)."""
    named = {r.key for r in results if r.key is not None}
    unnamed = iter([key for key, _ in batch if key not in named])
    return [r if r.key is not None else dataclasses.replace(r, key=next(unnamed)) for r in results]


def replicate_stratuslab(
    registry: Registry, source: str, *, pending: bool = False, retries: int = RETRIES, page: int = PAGE
) -> ReplicationReport:
    """Copy every entry ``source`` lists that is not here yet, verified again on arrival,
    committed ``page`` entries at a time."""
    report = ReplicationReport(source, Cursor(0, ""))
    if pending:
        log.warning("%s: a StratusLab registry shares no pending queue: --pending ignored", source)
    with MarketClient(source) as client:
        keys = listed_entries(client, retries)
        missing = [k for k in keys if registry.get(k) is None]
        report.existing = len(keys) - len(missing)
        for start in range(0, len(missing), page):
            batch: list[tuple[EntryKey, bytes]] = []
            for key in missing[start : start + page]:
                try:
                    batch.append((key, _fetch(client, key, retries)))
                except RegistryUnreachable:
                    raise  # after every retry: stop; what is committed stays, the next run goes on
                except (DataError, RegistryError) as err:
                    report.refused.append(f"{key.relpath}: {err}")
            _tally(report, _named(registry.replicate([data for _, data in batch]), batch))
    return report
