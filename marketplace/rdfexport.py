"""An entry as RDF (rdflib): its triples, Turtle and JSON-LD, read from the RDF/XML that
:func:`~marketplace.metadata.metadata_to_rdfxml` writes. Apart from the model, so that what
only reads and verifies entries (the registry, a replica's verifying workers) never loads rdflib.

>>> metadata_to_turtle(m); metadata_to_jsonld(m)
"""

from __future__ import annotations

import rdflib

from imagekit.errors import DataError
from marketplace.metadata import NSMAP, XML_BASE, Metadata, metadata_to_rdfxml


def metadata_to_graph(m: Metadata) -> rdflib.Graph:
    """The entry as RDF triples; the subject is ``http://mp.stratuslab.eu/#<identifier>``."""
    graph = rdflib.Graph()
    for prefix, ns in NSMAP.items():
        graph.bind(prefix, ns)
    try:
        graph.parse(data=metadata_to_rdfxml(m), format="xml", publicID=XML_BASE)
    except Exception as exc:  # rdflib raises many kinds; parsed entries never get here
        raise DataError(f"<{m.identifier}>:0: cannot be read as RDF: {exc}") from None
    return graph


def metadata_to_turtle(m: Metadata) -> str:
    return metadata_to_graph(m).serialize(format="turtle")


def metadata_to_jsonld(m: Metadata) -> str:
    return metadata_to_graph(m).serialize(format="json-ld", context=dict(NSMAP), indent=2)
