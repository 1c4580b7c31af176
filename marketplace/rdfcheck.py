"""The RDF/XML grammar rules an entry's property elements must follow.

StratusLab's ``ValidateRDFModel`` step parses every entry with Jena's RDF/XML parser and
refuses what it refuses; its test data has two such entries: a property element with a
property attribute *and* text (``<ex:dummy ex:badrdf="BAD">dummy value</ex:dummy>``) and one
holding two node elements (``<ex:dummy><ex:a>…</ex:a><ex:b>…</ex:b></ex:dummy>``).
:func:`check_property` applies the RDF/XML syntax rules (W3C RDF 1.1 XML Syntax §7.2.14–21)
to one property element and what it holds, naming the offending element's line.

>>> for child in description: check_property(child, "entry.xml")   # DataError on misuse
"""

from __future__ import annotations

from lxml import etree

from imagekit.errors import DataError

RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
XML_NS = "http://www.w3.org/XML/1998/namespace"

# Names that may be neither a property element nor a property attribute (§6.2.5, §7.2.5).
_SYNTAX_TERMS = {
    "RDF", "ID", "about", "parseType", "resource", "nodeID", "datatype", "Description",
    "aboutEach", "aboutEachPrefix", "bagID", "li",
}  # fmt: skip
_NODE_ONLY = {"about", "Description"}
_NOT_PROPERTIES = _SYNTAX_TERMS - {"li"}
_NOT_ON_PROPERTIES = _NODE_ONLY | {"aboutEach", "aboutEachPrefix", "bagID", "li", "RDF"}
_RDF_PREFIX = f"{{{RDF}}}"
_XML_PREFIX = f"{{{XML_NS}}}"


def _rdf(name: str) -> str:
    return f"{{{RDF}}}{name}"


def _label(el: etree._Element) -> str:
    qname = etree.QName(el)
    prefix = el.prefix or ""
    return f"{prefix}:{qname.localname}" if prefix else qname.localname


def _fail(el: etree._Element, src: str, message: str) -> DataError:
    return DataError(f"{src}:{el.sourceline}: {_label(el)}: {message} (RDF/XML grammar)")


def _property_attributes(el: etree._Element, src: str) -> list[str]:
    """Attributes that state properties; syntax-term and unqualified attributes are errors."""
    props = []
    for name in map(str, el.keys()):  # Clark names, read as strings: an entry has dozens
        if not name.startswith("{"):
            raise _fail(el, src, f"expected namespace-qualified attributes, got {name!r}")
        if name.startswith(_XML_PREFIX):
            continue
        if name.startswith(_RDF_PREFIX) and name[len(_RDF_PREFIX) :] in _SYNTAX_TERMS:
            continue
        props.append(name)
    return props


def _syntax_attributes(el: etree._Element) -> set[str]:
    return {
        name[len(_RDF_PREFIX) :]
        for name in map(str, el.keys())
        if name.startswith(_RDF_PREFIX) and name[len(_RDF_PREFIX) :] in _SYNTAX_TERMS
    }


def check_property(el: etree._Element, src: str) -> None:
    """``el`` is a well-formed RDF/XML property element, recursively; DataError otherwise."""
    tag = str(el.tag)
    if tag.startswith(_RDF_PREFIX) and tag[len(_RDF_PREFIX) :] in _NOT_PROPERTIES:
        raise _fail(el, src, "expected a property, got an RDF syntax name")
    if not el.attrib and not len(el):  # most properties: text only (a comment is a child)
        return
    syntax = _syntax_attributes(el)
    props = _property_attributes(el, src)
    misplaced = syntax & _NOT_ON_PROPERTIES
    if misplaced:
        raise _fail(el, src, f"rdf:{sorted(misplaced)[0]} is not allowed on a property element")
    children = [c for c in el if isinstance(c.tag, str)]
    text = (el.text or "").strip() or any((c.tail or "").strip() for c in el)
    parse_type = el.get(_rdf("parseType"))
    if parse_type is not None:
        if props or syntax - {"ID", "parseType"}:
            raise _fail(el, src, "rdf:parseType allows no property attributes, rdf:resource or datatype")
        if parse_type == "Resource":
            if text:
                raise _fail(el, src, 'rdf:parseType="Resource" holds property elements, not text')
            for child in children:
                check_property(child, src)
        return
    if children:
        if props or syntax - {"ID"} or text:
            raise _fail(el, src, "a property holding a node element takes no other attribute or text")
        if len(children) != 1:
            raise _fail(el, src, f"expected one node element inside a property, got {len(children)}")
        _check_node(children[0], src)
    elif text:
        if props or syntax - {"ID", "datatype"}:
            raise _fail(el, src, "property attributes and rdf:resource need an empty property element")
    elif {"resource", "nodeID"} <= syntax:
        raise _fail(el, src, "expected rdf:resource or rdf:nodeID, got both")


def _check_node(el: etree._Element, src: str) -> None:
    qname = etree.QName(el)
    if qname.namespace == RDF and qname.localname in _SYNTAX_TERMS - {"Description"}:
        raise _fail(el, src, "expected a node element, got an RDF syntax name")
    syntax = _syntax_attributes(el)
    _property_attributes(el, src)
    if len(syntax & {"about", "ID", "nodeID"}) > 1 or syntax - {"about", "ID", "nodeID"}:
        raise _fail(el, src, "a node element takes one of rdf:about, rdf:ID, rdf:nodeID only")
    if (el.text or "").strip() or any((c.tail or "").strip() for c in el):
        raise _fail(el, src, "a node element holds property elements, not text")
    for child in el:
        if isinstance(child.tag, str):
            check_property(child, src)
