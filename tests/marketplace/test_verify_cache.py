"""What verification keeps from one entry to the next (a registry sees the same few endorsers
over and over), and the faster paths of the metadata reader: the same answers as before."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from cryptography import x509

from imagekit.errors import VerificationError
from marketplace import verify
from marketplace.metadata import TIME_FORMAT, Endorsement, Endorser, parse_metadata, parse_time
from marketplace.signing import sign_metadata

from .pki import NOW, Pki

BOB = Endorser("bob@example.org", "CN=Bob,O=imagekit PKI,C=EU", ("CN=Test Root CA,O=imagekit PKI,C=EU",))


def _signed(pki: Pki, unsigned: bytes, endorser: Endorser = BOB) -> bytes:
    m = parse_metadata(unsigned)
    return sign_metadata(m, cert=pki.ec.cert, key=pki.ec.key, endorsement=Endorsement(NOW, endorser))


def test_a_certificate_is_decoded_once_per_text(
    pki: Pki, unsigned: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[bytes] = []
    real = x509.load_der_x509_certificate

    def counting(der: bytes) -> x509.Certificate:
        decoded.append(der)
        return real(der)

    monkeypatch.setattr(x509, "load_der_x509_certificate", counting)
    verify._known_certificate.cache_clear()
    for _ in range(3):
        verify.verify_entry(_signed(pki, unsigned))
    assert len(decoded) == 1


def test_the_endorser_answer_is_kept_per_certificate_and_fields(pki: Pki, unsigned: bytes) -> None:
    verify._known_endorser_failure.cache_clear()
    good = _signed(pki, unsigned)
    assert verify.verify_entry(good).subject == BOB.subject
    assert verify.verify_entry(good).subject == BOB.subject
    assert verify._known_endorser_failure.cache_info().hits == 1
    # The same certificate with other fields is another question, answered (and refused) anew.
    alice = dataclasses.replace(BOB, subject="CN=Alice,O=imagekit PKI,C=EU")
    with pytest.raises(VerificationError) as info:
        verify.verify_entry(_signed(pki, unsigned, alice))
    assert info.value.rule == "endorser-subject"
    with pytest.raises(VerificationError) as again:
        verify.verify_entry(_signed(pki, unsigned, alice))
    assert again.value.rule == "endorser-subject" and str(again.value) == str(info.value)


def test_long_endorser_fields_are_checked_but_not_kept(pki: Pki, unsigned: bytes) -> None:
    """Anyone can sign with a certificate of their own: a hostile uploader must not fill the
    process's memory with megabyte-long subjects kept for later."""
    verify._known_endorser_failure.cache_clear()
    subject = "CN=" + "x" * (verify._CACHED_CHARS + 1) + ",O=imagekit PKI,C=EU"
    long = dataclasses.replace(BOB, subject=subject)
    with pytest.raises(VerificationError) as info:
        verify.verify_entry(_signed(pki, unsigned, long))
    assert info.value.rule == "endorser-subject"
    assert verify._known_endorser_failure.cache_info().currsize == 0


@pytest.mark.parametrize(
    "text",
    ["2024-02-29T12:34:56Z", "2023-02-29T00:00:00Z", "2024-13-01T00:00:00Z", "2024-01-01T24:00:00Z",
     "2024-01-01T00:60:00Z", "2024-01-01T00:00:60Z", "0000-01-01T00:00:00Z", "2024-04-31T00:00:00Z"],
)  # fmt: skip
def test_times_read_as_strptime_reads_them(text: str) -> None:
    """parse_time builds the datetime from the checked digits itself; out of range, it says
    what strptime says."""
    try:
        expected = datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError as err:
        with pytest.raises(ValueError) as info:
            parse_time(text)
        assert str(info.value) == str(err)
    else:
        assert parse_time(text) == expected


def test_verifying_never_loads_rdflib() -> None:
    """A replica's verifying workers import the gate for arriving entries and nothing of the
    RDF exports (rdflib is a tenth of a second of CPU in every process that loads it)."""
    probe = "import sys, marketplace.admission, marketplace.registry; print('rdflib' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
