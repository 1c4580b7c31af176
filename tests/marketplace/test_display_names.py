"""Certificate names as people read them (``emailAddress=jane@…``), never Java's stored hex form
(``1.2.840.113549.1.9.1=#16…``), in what people read: ``market metadata show``, ``market
endorsers``, ``market pending list``, the site policy's verdict and the web UI. The stored form
stays in the signed files and in ``--json``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.testclient import TestClient

from imagekit.cli import main
from marketplace.client import MarketClient
from marketplace.commands import market
from marketplace.config import MarketConfig, PendingPolicy
from marketplace.dn import display_dn, java_rfc2253
from marketplace.server import create_app

from .entries import NOW, Identity, ago, image_metadata, make_ca, signed

CA = make_ca()
HEX_EMAIL = "1.2.840.113549.1.9.1=#"
JANE_READ = "O=Grid,CN=Jane Doe,emailAddress=jane@example.org"


def _grid_endorser() -> Identity:
    """A grid-style certificate: the e-mail in the subject, as StratusLab's endorsers had it."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.EMAIL_ADDRESS, "jane@example.org"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Jane Doe"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Grid"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(CA.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=30))
        .not_valid_after(NOW + timedelta(days=30))
        .sign(CA.key, hashes.SHA256())
    )
    return Identity(cert, key, "jane@example.org")


JANE = _grid_endorser()
STORED = java_rfc2253(JANE.cert.subject)


def test_the_stored_form_is_javas_hex() -> None:
    assert STORED.startswith("O=Grid,CN=Jane Doe,1.2.840.113549.1.9.1=#16")


@pytest.mark.parametrize(
    "stored",
    [
        STORED,  # Java's X500Principal.getName()
        JANE.cert.subject.rfc4514_string(),  # cryptography: 1.2.840.113549.1.9.1=jane@…
        "O=Grid, CN=Jane Doe, emailAddress=jane@example.org",  # OpenSSL, spaces after commas
    ],
)
def test_every_rendering_displays_the_same(stored: str) -> None:
    assert display_dn(stored) == JANE_READ


def test_display_keeps_escapes_order_and_multi_valued_rdns() -> None:
    assert display_dn("CN=Doe\\, Jane+UID=jd,O=Grid") == "CN=Doe\\, Jane+UID=jd,O=Grid"
    assert display_dn("2.5.4.5=#130431323334,C=EU") == "serialNumber=1234,C=EU"


@pytest.mark.parametrize("text", ["not a name", "", "1.2.3.4=#0403010203"])
def test_what_cannot_be_decoded_is_shown_as_stored(text: str) -> None:
    assert display_dn(text) == text


def test_metadata_show_decodes_and_json_keeps_the_stored_form(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = tmp_path / "signed.xml"
    entry.write_bytes(signed(image_metadata("show"), JANE))
    assert HEX_EMAIL.encode() in entry.read_bytes()  # the signed file keeps Java's form
    assert main(["market", "metadata", "show", str(entry)]) == 0
    text = capsys.readouterr().out
    assert f"subject           {JANE_READ}\n" in text and HEX_EMAIL not in text
    assert main(["market", "metadata", "show", str(entry), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["endorsement"]["endorser"]["subject"] == STORED


class _InProcess(MarketClient):
    """The CLI's client over Starlette's TestClient: the registry in this process, no socket."""

    def __init__(self, client: TestClient) -> None:
        super().__init__("http://market.test")
        super().close()
        self._http = client

    def close(self) -> None:
        pass  # the fixture closes the TestClient


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    config = MarketConfig(data_dir=tmp_path / "data", pending=PendingPolicy.ACCEPT)
    with TestClient(create_app(config), base_url="http://market.test") as client:
        posted = client.post(
            "/metadata",
            content=signed(image_metadata("names"), JANE, created=ago(hours=1)),
            headers={"Content-Type": "application/rdf+xml"},
        )
        assert posted.status_code == 201, posted.text
        monkeypatch.setattr(market, "_client", lambda args: _InProcess(client))
        yield client


def test_market_endorsers_decodes(registry: TestClient, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["market", "endorsers"]) == 0
    text = capsys.readouterr().out
    assert "jane@example.org" in text and text.rstrip().endswith(JANE_READ) and HEX_EMAIL not in text
    assert main(["market", "endorsers", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["endorsers"][0]["subject"] == STORED


def test_web_pages_decode(registry: TestClient) -> None:
    listed = registry.get("/endorsers?media=json").json()["endorsers"]
    assert listed[0]["subject"] == STORED  # JSON answers keep the stored form
    entry_url = registry.get("/metadata?media=json").json()["entries"][0]["url"]
    pages = ("/endorsers?media=html", "/endorsers/jane@example.org?media=html", entry_url + "?media=html")
    for page in pages:
        html = registry.get(page)
        assert html.status_code == 200, page
        assert "Jane Doe,emailAddress=jane@example.org" in html.text and HEX_EMAIL not in html.text, page


def test_pending_list_decodes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = MarketConfig(data_dir=tmp_path / "data", pending=PendingPolicy.QUEUE)
    with TestClient(create_app(config), base_url="http://market.test") as client:
        posted = client.post(
            "/metadata",
            content=signed(image_metadata("pending"), JANE, created=ago(hours=1)),
            headers={"Content-Type": "application/rdf+xml"},
        )
        assert posted.status_code == 202, posted.text
    conf = tmp_path / "marketplace.conf"
    conf.write_text("[uploads]\npending = queue\n")
    assert main(["market", "pending", "list", "--data", str(tmp_path / "data"), "--config", str(conf)]) == 0
    text = capsys.readouterr().out
    assert JANE_READ in text and HEX_EMAIL not in text


def test_policy_verdict_names_the_endorser_readably() -> None:
    from marketplace.policy import SitePolicy, evaluate

    from .images import describe, endorse

    result = evaluate([endorse(describe(b"verdict"), JANE, created=ago(days=1))], SitePolicy(), now=NOW)
    assert result.chosen is not None
    assert f"endorser jane@example.org ({JANE_READ})" in result.why and HEX_EMAIL not in result.why


def test_policy_reasons_name_subjects_readably() -> None:
    from marketplace.policy import EndorserRule, SitePolicy, evaluate

    from .images import describe, endorse

    entries = [endorse(describe(b"reasons"), JANE, created=ago(days=1))]
    other = SitePolicy(whitelist_subjects=(EndorserRule("CN=Someone Else"),))
    [refused] = evaluate(entries, other, now=NOW).candidates
    assert f"subject {JANE_READ!r}" in refused.reasons[0] and HEX_EMAIL not in refused.reasons[0]
    # A rule written in the display form matches the stored form: names are compared parsed.
    blocking = SitePolicy(blacklist_subjects=(EndorserRule(JANE_READ),))
    [blocked] = evaluate(entries, blocking, now=NOW).candidates
    assert blocked.reasons == (f"subject {JANE_READ!r} is blacklisted (blacklistsubjects)",)
