"""``sign --profile stratuslab-legacy``: an entry StratusLab's own tools can check (point 17).

StratusLab signed with RSA-SHA1, a SHA-1 digest, inclusive C14N with comments and the signer's
certificate alone in ``X509Data`` (shared/research/marketplace.md:152-160, from
``X509Utils.signDocument``); its verifier reads the endorser from the first certificate
(``StratusLab/metadata`` ``jar/src/main/java/eu/stratuslab/marketplace/metadata/MetadataUtils.java``
``extractX509CertFromKeyInfo``: ``certs.get(0)``) and takes the key from the last one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from imagekit.cli import main
from imagekit.errors import InputError, VerificationError
from marketplace.metadata import DSIG, q
from marketplace.signing import Profile, sign_metadata
from marketplace.verify import verify_entry

from .entries import image_metadata
from .pki import Pki, write

RSA_SHA1 = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
SHA1 = "http://www.w3.org/2000/09/xmldsig#sha1"
C14N_WITH_COMMENTS = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315#WithComments"


def algorithms(signed: bytes) -> tuple[str | None, str | None, str | None, int]:
    root = etree.fromstring(signed)
    info = root.find(f"{q(DSIG, 'Signature')}/{q(DSIG, 'SignedInfo')}")
    assert info is not None
    c14n = info.find(q(DSIG, "CanonicalizationMethod"))
    method = info.find(q(DSIG, "SignatureMethod"))
    digest = info.find(f"{q(DSIG, 'Reference')}/{q(DSIG, 'DigestMethod')}")
    assert c14n is not None and method is not None and digest is not None
    certs = len(list(root.iter(q(DSIG, "X509Certificate"))))
    return c14n.get("Algorithm"), method.get("Algorithm"), digest.get("Algorithm"), certs


def test_legacy_profile_signs_as_stratuslab_did(pki: Pki) -> None:
    signed = sign_metadata(
        image_metadata("legacy-profile"),
        cert=pki.rsa.cert,
        key=pki.rsa.key,
        chain=(pki.intermediate.cert,),
        profile=Profile.STRATUSLAB_LEGACY,
    )
    assert algorithms(signed) == (C14N_WITH_COMMENTS, RSA_SHA1, SHA1, 1)
    entry = verify_entry(signed)
    assert entry.algorithm.is_legacy
    assert entry.legacy == ("signature RSA_SHA1", "digest SHA1")
    with pytest.raises(VerificationError) as caught:
        verify_entry(signed, allow_sha1=False)
    assert caught.value.rule == "algorithm"


def test_default_profile_is_sha256_and_keeps_the_chain(pki: Pki) -> None:
    signed = sign_metadata(
        image_metadata("new"), cert=pki.rsa.cert, key=pki.rsa.key, chain=(pki.intermediate.cert,)
    )
    c14n, method, digest, certs = algorithms(signed)
    assert (method, certs) == ("http://www.w3.org/2001/04/xmldsig-more#rsa-sha256", 2)
    assert digest == "http://www.w3.org/2001/04/xmlenc#sha256"
    assert verify_entry(signed).legacy == ()


def test_legacy_profile_needs_an_rsa_key(pki: Pki) -> None:
    with pytest.raises(InputError, match="needs an RSA key"):
        sign_metadata(
            image_metadata("ec"), cert=pki.ec.cert, key=pki.ec.key, profile=Profile.STRATUSLAB_LEGACY
        )


def test_cli_warns_when_signing_with_the_legacy_profile(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = write(pki.rsa, tmp_path, "alice", chain=(pki.intermediate,))
    unsigned = tmp_path / "entry.xml"
    unsigned.write_bytes(sign_metadata(image_metadata("cli"), cert=pki.rsa.cert, key=pki.rsa.key))
    out = tmp_path / "signed.xml"
    argv = ["market", "metadata", "sign", str(unsigned), "--cert", str(cert), "--key", str(key)]
    assert main([*argv, "--profile", "stratuslab-legacy", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "RSA-SHA1 for StratusLab's verifier" in err and "1 dropped" in err
    assert algorithms(out.read_bytes())[1:] == (RSA_SHA1, SHA1, 1)
    assert main([*argv, "-o", str(out)]) == 0
    assert "RSA-SHA1" not in capsys.readouterr().err
