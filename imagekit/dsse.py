"""DSSE, the Dead Simple Signing Envelope (github.com/secure-systems-lab/dsse, protocol v1).

    envelope = sign_envelope(PAYLOAD_TYPE_INTOTO, statement_bytes, key)
    line = envelope.to_json_line()                      # one line of a ``.intoto.jsonl`` file
    envelope = parse_envelope(line, source="provenance.intoto.jsonl")     # DataError if malformed
    payload = verify_envelope(envelope, public_key, payload_type=PAYLOAD_TYPE_INTOTO)

A signature covers ``PAE(UTF8(payloadType), payload)``, never the payload alone, so the type
cannot be swapped under a valid signature. Keys are Ed25519 (what the build service makes) or
ECDSA P-256 with SHA-256 (signatures in DER, or the raw ``r || s`` of the spec's own example);
the ``keyid`` is a hint only (the spec: it must not decide anything), here the SHA-256 of the
public key's SubjectPublicKeyInfo. Payload and signature may be in standard or URL-safe base64.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from imagekit.errors import DataError, InputError, VerificationError

PAYLOAD_TYPE_INTOTO = "application/vnd.in-toto+json"
MAX_ENVELOPE = 16 << 20

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


def pae(payload_type: str, body: bytes) -> bytes:
    """The Pre-Authentication Encoding: ``DSSEv1 LEN(type) type LEN(body) body`` (byte lengths)."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(body), body)


@dataclass(frozen=True)
class Signature:
    sig: bytes
    keyid: str = ""


@dataclass(frozen=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "payloadType": self.payload_type,
            "payload": base64.b64encode(self.payload).decode(),
            "signatures": [
                {"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode()} if s.keyid else
                {"sig": base64.b64encode(s.sig).decode()}
                for s in self.signatures
            ],
        }  # fmt: skip

    def to_json_line(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode() + b"\n"


def _b64(text: object, what: str, source: str) -> bytes:
    if not isinstance(text, str):
        raise DataError(f"{source}: {what}: expected a base64 string")
    standard = text.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise DataError(f"{source}: {what}: not base64") from None


def parse_envelope(data: bytes, *, source: str) -> Envelope:
    """One JSON envelope (a ``.jsonl`` file's one line); DataError naming what is wrong."""
    if len(data) > MAX_ENVELOPE:
        raise DataError(f"{source}: more than {MAX_ENVELOPE >> 20} MiB: not a provenance envelope")
    lines = [line for line in data.splitlines() if line.strip()]
    if len(lines) != 1:
        raise DataError(f"{source}: expected one DSSE envelope (one JSON line), got {len(lines)}")
    try:
        doc = json.loads(lines[0])
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{source}: not JSON: {err}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("payloadType"), str):
        raise DataError(f"{source}: not a DSSE envelope: expected payloadType, payload, signatures")
    raw_signatures = doc.get("signatures")
    if not isinstance(raw_signatures, list) or not raw_signatures:
        raise DataError(f"{source}: signatures: expected a non-empty list")
    signatures = []
    for number, item in enumerate(raw_signatures, 1):
        if not isinstance(item, dict) or not isinstance(item.get("keyid", ""), str):
            raise DataError(f"{source}: signature {number}: expected an object with sig and keyid")
        signatures.append(
            Signature(_b64(item.get("sig"), f"signature {number}", source), item.get("keyid", ""))
        )
    return Envelope(doc["payloadType"], _b64(doc.get("payload"), "payload", source), tuple(signatures))


def key_id(key: PublicKey) -> str:
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def public_pem(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(pem: bytes, *, source: str) -> PublicKey:
    """A PEM public key (or the public half of a PEM private key: never a password-protected one)."""
    try:
        if b"PRIVATE KEY" in pem:
            private = serialization.load_pem_private_key(pem, password=None)
            key: object = private.public_key()
        else:
            key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as err:
        raise InputError(f"not a PEM public key: {err}", where=source) from None
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise InputError(f"expected an Ed25519 or ECDSA P-256 key, got {type(key).__name__}", where=source)


def sign_envelope(payload_type: str, payload: bytes, key: PrivateKey) -> Envelope:
    message = pae(payload_type, payload)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        sig = key.sign(message)
    else:
        sig = key.sign(message, ec.ECDSA(hashes.SHA256()))
    return Envelope(payload_type, payload, (Signature(sig, key_id(key.public_key())),))


def _valid(sig: bytes, message: bytes, key: PublicKey) -> bool:
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(sig, message)
        else:
            if len(sig) == 64:  # raw r || s (the spec's example); DER otherwise
                sig = encode_dss_signature(int.from_bytes(sig[:32]), int.from_bytes(sig[32:]))
            key.verify(sig, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def verify_envelope(envelope: Envelope, key: PublicKey, *, payload_type: str) -> bytes:
    """The payload, once one signature verifies with ``key`` over its PAE and the envelope's
    type is ``payload_type``; VerificationError otherwise."""
    message = pae(envelope.payload_type, envelope.payload)
    if not any(_valid(s.sig, message, key) for s in envelope.signatures):
        raise VerificationError(
            f"no signature verifies with the key {key_id(key)[:16]}… over the payload",
            rule="DSSE signature",
        )
    if envelope.payload_type != payload_type:
        raise VerificationError(
            f"payloadType is {envelope.payload_type!r}, expected {payload_type!r}", rule="DSSE payload type"
        )
    return envelope.payload
