"""The signature over ``SignedInfo`` checked without xmlsec, for the shape entries are signed in.

:func:`~marketplace.verify.verify_entry` computes the document's digest itself (it must know
what the digest covers), so of xmlsec's work only two steps are left: ``SignedInfo``'s canonical
form and the public-key check. xmlsec also digests the whole document a second time, through a
node set, which made it two thirds of a replica's work per entry. Here:

- the canonical form (inclusive C14N 1.0, with or without comments) is libxml2's C14N of a
  standalone copy of ``SignedInfo`` that carries what C14N 1.0 makes a subtree's apex inherit:
  every in-scope namespace and the nearest ancestor's ``xml:*`` attributes. A whole document and
  the node set of the subtree have the same canonical form once those are on the apex;
- ``cryptography`` checks the signature over it with the certificate's key.

The answer is "verified" or "not confirmed", never "refused": exclusive C14N, an ``Object``, a
processing instruction, a key that does not fit the algorithm, a value of the wrong length, or a
check that fails, all go to xmlsec, which stays the reference (and names the rule). So nothing
xmlsec accepts is refused, and nothing is accepted unless the signer's key signed the canonical
bytes of this very ``SignedInfo``, whose values are the ones :mod:`marketplace.verify` reads.

    if not signed_info_verified(signature, signed_info, cert, algorithm):
        ...  # ask xmlsec
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from lxml import etree

from marketplace.metadata import DSIG, XML_NS, q
from marketplace.signing import C14N, C14N_WITH_COMMENTS, SignatureAlgorithm

_HASHES: dict[SignatureAlgorithm, type[hashes.HashAlgorithm]] = {
    SignatureAlgorithm.RSA_SHA1: hashes.SHA1,
    SignatureAlgorithm.RSA_SHA256: hashes.SHA256,
    SignatureAlgorithm.RSA_SHA512: hashes.SHA512,
    SignatureAlgorithm.ECDSA_SHA256: hashes.SHA256,
    SignatureAlgorithm.ECDSA_SHA384: hashes.SHA384,
}
_WITH_COMMENTS = {C14N: False, C14N_WITH_COMMENTS: True}
_XML_PREFIX = f"{{{XML_NS}}}"
_SIGNATURE_CHILDREN = ([q(DSIG, "SignedInfo"), q(DSIG, "SignatureValue")],
                       [q(DSIG, "SignedInfo"), q(DSIG, "SignatureValue"), q(DSIG, "KeyInfo")])  # fmt: skip


def signed_info_verified(
    signature: etree._Element,
    signed_info: etree._Element,
    cert: x509.Certificate,
    algorithm: SignatureAlgorithm,
) -> bool:
    """True when ``cert``'s key signed ``signed_info``'s canonical form with ``algorithm``;
    False when that is not confirmed here (not a verdict: ask xmlsec)."""
    children = [c for c in signature if isinstance(c.tag, str)]
    if [c.tag for c in children] not in _SIGNATURE_CHILDREN or children[0] is not signed_info:
        return False
    method = signed_info.find(q(DSIG, "CanonicalizationMethod"))
    with_comments = _WITH_COMMENTS.get((method.get("Algorithm") if method is not None else None) or "")
    if with_comments is None or any(isinstance(n, etree._ProcessingInstruction) for n in signed_info.iter()):
        return False
    try:
        value = base64.b64decode("".join((children[1].text or "").split()), validate=True)
    except (binascii.Error, ValueError):
        return False
    return _key_signed(_public_key(cert), value, canonical_form(signed_info, with_comments), algorithm)


def canonical_form(element: etree._Element, with_comments: bool) -> bytes:
    """Inclusive C14N 1.0 of the subtree at ``element`` inside its document."""
    # Every in-scope namespace (the stubs do not allow the default namespace's None key).
    apex = etree.Element(element.tag, nsmap=element.nsmap)  # type: ignore[arg-type]
    for ancestor in element.iterancestors():
        for name, value in ancestor.attrib.items():
            key = str(name)
            if key.startswith(_XML_PREFIX) and key not in apex.attrib and key not in element.attrib:
                apex.set(key, value)  # the nearest ancestor's xml:lang, xml:space, xml:base
    for name, value in element.attrib.items():
        apex.set(name, value)
    apex.text = element.text
    for child in element:  # comments too; each copy brings its tail
        apex.append(copy.deepcopy(child))
    return etree.tostring(apex, method="c14n", exclusive=False, with_comments=with_comments)


@functools.lru_cache(maxsize=256)
def _public_key(cert: x509.Certificate) -> object:
    """Loaded once per certificate: a registry sees a few endorsers' certificates over and over."""
    return cert.public_key()


def _key_signed(key: object, value: bytes, signed: bytes, algorithm: SignatureAlgorithm) -> bool:
    hash_algorithm = _HASHES[algorithm]()
    try:
        if algorithm.is_ecdsa and isinstance(key, ec.EllipticCurvePublicKey):
            size = (key.curve.key_size + 7) // 8
            if len(value) != 2 * size:  # XML-DSig's ECDSA value is r || s, each of the field's size
                return False
            r, s = int.from_bytes(value[:size], "big"), int.from_bytes(value[size:], "big")
            key.verify(encode_dss_signature(r, s), signed, ec.ECDSA(hash_algorithm))
        elif not algorithm.is_ecdsa and isinstance(key, rsa.RSAPublicKey):
            key.verify(value, signed, padding.PKCS1v15(), hash_algorithm)
        else:
            return False
    except InvalidSignature:
        return False
    return True
