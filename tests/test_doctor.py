"""`newsletter doctor` against real servers: aiosmtpd with and without TLS, a closed
port, a port that never answers, and a local DNS server holding each test's zone."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from newsletter import doctor
from newsletter.config import DEVELOPMENT_SECRET, get_settings
from newsletter.doctor import Check, Verdict
from newsletter.doctor.records import check_alignment
from newsletter.outbox import OutboxHandler, free_port
from tests.cli_runner import run
from tests.conftest import apply_env
from tests.dnsserver import DnsServer, txt

DOMAIN = "news.example.org"
SELECTOR = "s1"


# --- Keys, certificates and records, made here rather than by the code under test --


def _pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def published(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    """The DKIM record for `key` (RFC 6376 for RSA, RFC 8463 for Ed25519)."""
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(_pem(key))
    return folder / "cert.pem", folder / "key.pem"


@pytest.fixture
def trusted(cert_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The test certificate is the only one the default TLS context trusts."""
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_files[0]))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


def _server_context(cert_files: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert_files)
    return context


# --- Servers ------------------------------------------------------------------------


def _serve(**params: object) -> Iterator[str]:
    port = free_port()
    controller = Controller(OutboxHandler(), hostname="127.0.0.1", port=port, **params)
    controller.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        controller.stop()


@pytest.fixture
def plain_smtp() -> Iterator[str]:
    """`host:port` of an SMTP server that offers no STARTTLS."""
    yield from _serve()


@pytest.fixture
def starttls_smtp(cert_files: tuple[Path, Path]) -> Iterator[str]:
    yield from _serve(tls_context=_server_context(cert_files))


@pytest.fixture
def smtps(cert_files: tuple[Path, Path]) -> Iterator[str]:
    yield from _serve(ssl_context=_server_context(cert_files))


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def good_zone(dkim_record: str) -> dict[str, dict[str, list[str]]]:
    return {
        DOMAIN: {"TXT": [txt("v=spf1 ip4:192.0.2.10 -all"), txt("google-site-verification=x")]},
        f"{SELECTOR}._domainkey.{DOMAIN}": {"TXT": [txt(dkim_record)]},
        f"_dmarc.{DOMAIN}": {"TXT": [txt("v=DMARC1; p=reject; rua=mailto:dmarc@example.org")]},
    }


@pytest.fixture
def configured(
    settings_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    rsa_key: rsa.RSAPrivateKey,
    trusted: None,
    starttls_smtp: str,
) -> Iterator[DnsServer]:
    """Settings a careful sender has, every record published and a STARTTLS relay:
    the test changes one thing and expects that one line to say so."""
    key_file = tmp_path / "dkim.pem"
    key_file.write_bytes(_pem(rsa_key))
    with DnsServer(good_zone(published(rsa_key))) as server:
        apply_env(
            monkeypatch,
            NEWSLETTER_SMTP_URL=f"smtp://{starttls_smtp}?starttls=1",
            NEWSLETTER_BOUNCE_ADDRESS=f"bounces@{DOMAIN}",
            NEWSLETTER_DKIM_DOMAIN=DOMAIN,
            NEWSLETTER_DKIM_SELECTOR=SELECTOR,
            NEWSLETTER_DKIM_KEY_FILE=str(key_file),
            NEWSLETTER_DOCTOR_NAMESERVER=server.nameserver,
        )
        yield server


def checks(server: DnsServer, timeout: float = 5.0) -> dict[str, Check]:
    found = doctor.run_checks(get_settings(), doctor.resolver_at(server.nameserver), timeout)
    return {check.name: check for check in found}


def verdicts(server: DnsServer) -> dict[str, Verdict]:
    return {name: check.verdict for name, check in checks(server).items()}


def rows(stdout: str) -> dict[str, str]:
    """The doctor table's rows as check name -> verdict."""
    table: dict[str, str] = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) == 5 and cells[2] in {"ok", "warning", "problem"}:
            table[cells[1]] = cells[2]
    return table


# --- Everything in order --------------------------------------------------------------


def test_everything_in_order_is_ok_and_exits_0(configured: DnsServer) -> None:
    code, stdout, _ = run("doctor")
    assert code == 0, stdout
    relay = get_settings().smtp_url.split("//")[1].split("?")[0]  # type: ignore[union-attr]
    assert rows(stdout) == {
        "From address": "ok",
        "secret key": "ok",
        "base URL": "ok",
        "bounce address": "ok",
        f"SMTP {relay}": "ok",
        f"SPF {DOMAIN}": "ok",
        f"DKIM {SELECTOR}._domainkey.{DOMAIN}": "ok",
        f"DMARC {DOMAIN}": "ok",
        "DMARC alignment": "ok",
    }
    assert "0 problem(s), 0 warning(s), 9 ok" in stdout
    # Only the configured domain's records were asked for, nothing else.
    assert {name for name, _ in configured.queries} == {
        DOMAIN,
        f"{SELECTOR}._domainkey.{DOMAIN}",
        f"_dmarc.{DOMAIN}",
    }


def test_help_documents_the_exit_status() -> None:
    code, stdout, _ = run("doctor", "--help")
    assert code == 0
    assert "0 when nothing is a problem" in stdout
    assert "1 when something" in stdout


# --- DNS --------------------------------------------------------------------------------


def test_missing_spf_and_dmarc_are_problems(configured: DnsServer) -> None:
    del configured.zone[f"_dmarc.{DOMAIN}"]
    configured.zone[DOMAIN] = {"TXT": [txt("google-site-verification=x")]}
    code, stdout, _ = run("doctor")
    assert code == 1
    table = rows(stdout)
    assert table[f"SPF {DOMAIN}"] == "problem"
    assert table[f"DMARC {DOMAIN}"] == "problem"
    assert 'publish TXT "v=spf1' in stdout
    assert "_dmarc.news.example.org" in stdout
    assert "2 problem(s)" in stdout


@pytest.mark.parametrize(
    ("records", "verdict", "words"),
    [
        (["v=spf1 include:_spf.example.net ~all"], Verdict.OK, "~all"),
        (["v=spf1 redirect=_spf.example.net"], Verdict.OK, "redirect"),
        (["v=spf1 +all"], Verdict.PROBLEM, "anyone may send"),
        (["v=spf1 a mx"], Verdict.WARNING, "no -all or ~all"),
        (["v=spf1 ?all"], Verdict.WARNING, "?all"),
        (["v=spf1 a -all", "v=spf1 mx -all"], Verdict.PROBLEM, "2 SPF records"),
        (["v=spf10 -all"], Verdict.PROBLEM, "no SPF record"),
    ],
)
def test_spf_verdicts(
    configured: DnsServer, records: list[str], verdict: Verdict, words: str
) -> None:
    configured.zone[DOMAIN] = {"TXT": [txt(r) for r in records]}
    check = checks(configured)[f"SPF {DOMAIN}"]
    assert check.verdict is verdict
    assert words in check.detail


def test_spf_of_a_bounce_domain_of_its_own_is_checked_too(
    configured: DnsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply_env(monkeypatch, NEWSLETTER_BOUNCE_ADDRESS="bounces@bounce.example.net")
    found = checks(configured)
    assert found[f"SPF {DOMAIN}"].verdict is Verdict.OK
    assert found["SPF bounce.example.net"].verdict is Verdict.PROBLEM


@pytest.mark.parametrize(
    ("zone", "verdict", "words"),
    [
        ({f"_dmarc.{DOMAIN}": ["v=DMARC1; p=none"]}, Verdict.WARNING, "p=none"),
        ({f"_dmarc.{DOMAIN}": ["v=DMARC1; p=quarantine"]}, Verdict.OK, "p=quarantine"),
        (
            {f"_dmarc.{DOMAIN}": ["v=DMARC1; rua=mailto:x@example.org"]},
            Verdict.PROBLEM,
            "no valid p=",
        ),
        (
            {f"_dmarc.{DOMAIN}": ["v=DMARC1; p=reject", "v=DMARC1; p=none"]},
            Verdict.PROBLEM,
            "ignore them all",
        ),
        # Inherited from the organisational domain; its sp= covers subdomains.
        ({"_dmarc.example.org": ["v=DMARC1; p=reject"]}, Verdict.OK, "from _dmarc.example.org"),
        ({"_dmarc.example.org": ["v=DMARC1; p=reject; sp=none"]}, Verdict.WARNING, "p=none"),
        ({"_dmarc.example.org": ["not dmarc"]}, Verdict.PROBLEM, "no DMARC record"),
    ],
)
def test_dmarc_verdicts(
    configured: DnsServer, zone: dict[str, list[str]], verdict: Verdict, words: str
) -> None:
    del configured.zone[f"_dmarc.{DOMAIN}"]
    for name, records in zone.items():
        configured.zone[name] = {"TXT": [txt(r) for r in records]}
    check = checks(configured)[f"DMARC {DOMAIN}"]
    assert check.verdict is verdict
    assert words in check.detail


def test_a_dkim_record_for_another_key_is_a_problem(configured: DnsServer) -> None:
    other = ed25519.Ed25519PrivateKey.generate()
    configured.zone[f"{SELECTOR}._domainkey.{DOMAIN}"] = {"TXT": [txt(published(other))]}
    code, stdout, _ = run("doctor")
    assert code == 1
    assert rows(stdout)[f"DKIM {SELECTOR}._domainkey.{DOMAIN}"] == "problem"
    assert "does not match the key file" in stdout


def test_a_missing_dkim_record_is_a_problem_that_shows_the_record(
    configured: DnsServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    del configured.zone[f"{SELECTOR}._domainkey.{DOMAIN}"]
    check = checks(configured)[f"DKIM {SELECTOR}._domainkey.{DOMAIN}"]
    assert check.verdict is Verdict.PROBLEM
    assert published(rsa_key) in check.detail


def test_an_ed25519_key_and_a_second_selector_are_checked(
    configured: DnsServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "ed.pem").write_bytes(_pem(key))
    configured.zone[f"s2._domainkey.{DOMAIN}"] = {"TXT": [txt(published(key))]}
    apply_env(
        monkeypatch,
        NEWSLETTER_DKIM_SELECTOR_2="s2",
        NEWSLETTER_DKIM_KEY_FILE_2=str(tmp_path / "ed.pem"),
    )
    found = verdicts(configured)
    assert found[f"DKIM {SELECTOR}._domainkey.{DOMAIN}"] is Verdict.OK
    assert found[f"DKIM s2._domainkey.{DOMAIN}"] is Verdict.OK


def test_a_revoked_or_unreadable_key_is_a_problem(
    configured: DnsServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    configured.zone[f"{SELECTOR}._domainkey.{DOMAIN}"] = {"TXT": [txt("v=DKIM1; k=rsa; p=")]}
    assert "revoked" in checks(configured)[f"DKIM {SELECTOR}._domainkey.{DOMAIN}"].detail
    (tmp_path / "junk.pem").write_text("not a key")
    apply_env(monkeypatch, NEWSLETTER_DKIM_KEY_FILE=str(tmp_path / "junk.pem"))
    check = checks(configured)[f"DKIM {SELECTOR}._domainkey.{DOMAIN}"]
    assert check.verdict is Verdict.PROBLEM
    assert "does not hold a PEM private key" in check.detail


def test_dkim_off_is_a_warning_and_half_set_up_a_problem(
    configured: DnsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DOMAIN", "SELECTOR", "KEY_FILE"):
        monkeypatch.setenv(f"NEWSLETTER_DKIM_{name}", "")
    apply_env(monkeypatch)
    found = checks(configured)
    assert found["DKIM"].verdict is Verdict.WARNING
    assert "not signing" in found["DKIM"].detail
    assert "DMARC alignment" not in found  # nothing signed, nothing to align
    apply_env(monkeypatch, NEWSLETTER_DKIM_DOMAIN=DOMAIN)
    found = checks(configured)
    assert found["DKIM"].verdict is Verdict.PROBLEM
    assert "NEWSLETTER_DKIM_SELECTOR, NEWSLETTER_DKIM_KEY_FILE" in found["DKIM"].detail


@pytest.mark.parametrize(
    ("signer", "verdict"),
    [
        (DOMAIN, Verdict.OK),
        ("example.org", Verdict.OK),  # relaxed: the organisational domain
        ("mail.example.org", Verdict.OK),  # relaxed: both under the DMARC record's domain
        ("example.net", Verdict.WARNING),
    ],
)
def test_alignment_of_the_dkim_domain_with_the_from_domain(signer: str, verdict: Verdict) -> None:
    assert check_alignment(DOMAIN, signer, "example.org").verdict is verdict


def test_strict_alignment_asked_by_dmarc_is_checked(
    configured: DnsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    configured.zone[f"_dmarc.{DOMAIN}"] = {"TXT": [txt("v=DMARC1; p=reject; adkim=s")]}
    assert verdicts(configured)["DMARC alignment"] is Verdict.OK  # signs as the From domain
    configured.zone["s1._domainkey.example.org"] = configured.zone[
        f"{SELECTOR}._domainkey.{DOMAIN}"
    ]
    apply_env(monkeypatch, NEWSLETTER_DKIM_DOMAIN="example.org")
    found = checks(configured)
    assert found[f"DKIM {SELECTOR}._domainkey.example.org"].verdict is Verdict.OK
    assert found["DMARC alignment"].verdict is Verdict.WARNING
    assert "adkim=s" in found["DMARC alignment"].detail


def test_the_records_these_tests_publish_verify_real_signatures(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    """The record a test publishes as "matching" is one a verifier (dkimpy) accepts
    for a signature by the key, so "ok" here means signatures will pass."""
    message = (
        b"From: digest@news.example.org\r\nTo: reader@example.com\r\nSubject: Hi\r\n\r\nHello\r\n"
    )
    pkcs1 = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    signature = dkim.sign(message, SELECTOR.encode(), DOMAIN.encode(), pkcs1)
    record = published(rsa_key).encode()
    assert dkim.verify(signature + message, dnsfunc=lambda name, timeout=5: record)
    other = published(rsa.generate_private_key(public_exponent=65537, key_size=1024)).encode()
    assert not dkim.verify(signature + message, dnsfunc=lambda name, timeout=5: other)


def test_a_dns_server_that_does_not_answer_is_a_problem_not_a_hang(
    configured: DnsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as mute:
        mute.bind(("127.0.0.1", 0))  # bound, never read: queries go unanswered
        nameserver = f"127.0.0.1:{mute.getsockname()[1]}"
        found = doctor.run_checks(get_settings(), doctor.resolver_at(nameserver, 0.3), 0.3)
    dns_lines = [c for c in found if c.name.startswith(("SPF ", "DKIM ", "DMARC news"))]
    assert len(dns_lines) == 3
    assert all(c.verdict is Verdict.PROBLEM for c in dns_lines)
    assert all("no DNS answer" in c.detail for c in dns_lines)


def test_a_bad_nameserver_option_exits_2(configured: DnsServer) -> None:
    code, _, stderr = run("doctor", "--nameserver", "not-an-address")
    assert code == 2
    assert "name server must look like" in stderr


# --- Settings ------------------------------------------------------------------------


def test_placeholder_secret_and_http_base_url_are_problems(
    configured: DnsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply_env(
        monkeypatch,
        NEWSLETTER_SECRET_KEY=DEVELOPMENT_SECRET,
        NEWSLETTER_BASE_URL=f"http://{DOMAIN}",
    )
    code, stdout, _ = run("doctor")
    assert code == 1
    table = rows(stdout)
    assert table["secret key"] == "problem"
    assert table["base URL"] == "problem"
    assert "placeholder" in stdout
    assert "not https" in stdout
    assert "2 problem(s)" in stdout


@pytest.mark.parametrize(
    ("env", "name", "verdict"),
    [
        ({"NEWSLETTER_BASE_URL": "https://localhost:8000"}, "base URL", Verdict.PROBLEM),
        ({"NEWSLETTER_SECRET_KEY": "short"}, "secret key", Verdict.PROBLEM),
        ({"NEWSLETTER_BOUNCE_ADDRESS": ""}, "bounce address", Verdict.WARNING),
        ({"NEWSLETTER_FROM": "newsletter@localhost"}, "From address", Verdict.PROBLEM),
        ({"NEWSLETTER_SMTP_URL": ""}, "SMTP", Verdict.PROBLEM),
    ],
)
def test_settings_verdicts(
    configured: DnsServer,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    name: str,
    verdict: Verdict,
) -> None:
    apply_env(monkeypatch, **env)
    assert verdicts(configured)[name] is verdict


def test_settings_that_do_not_load_are_one_problem(
    configured: DnsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_ENV", "production")
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", DEVELOPMENT_SECRET)
    get_settings.cache_clear()
    code, stdout, _ = run("doctor")
    assert code == 1
    assert rows(stdout) == {"settings": "problem"}
    assert DEVELOPMENT_SECRET not in stdout


# --- SMTP ------------------------------------------------------------------------------


def _smtp_line(stdout: str) -> tuple[str, str]:
    [(name, verdict)] = [(n, v) for n, v in rows(stdout).items() if n.startswith("SMTP")]
    return name, verdict


def test_a_closed_port_is_a_problem(configured: DnsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    apply_env(monkeypatch, NEWSLETTER_SMTP_URL=f"smtp://user:hunter2@127.0.0.1:{free_port()}")
    code, stdout, _ = run("doctor")
    assert code == 1
    assert _smtp_line(stdout)[1] == "problem"
    assert "Connection refused" in stdout
    assert "hunter2" not in stdout


def test_a_server_that_never_answers_is_a_problem_not_a_hang(
    configured: DnsServer, monkeypatch: pytest.MonkeyPatch, silent_port: int
) -> None:
    apply_env(monkeypatch, NEWSLETTER_SMTP_URL=f"smtp://127.0.0.1:{silent_port}")
    check = checks(configured, timeout=0.3)[f"SMTP 127.0.0.1:{silent_port}"]
    assert check.verdict is Verdict.PROBLEM
    assert "no answer within 0.3 s" in check.detail


def test_no_starttls_is_a_warning_and_exits_0(
    configured: DnsServer, monkeypatch: pytest.MonkeyPatch, plain_smtp: str
) -> None:
    apply_env(monkeypatch, NEWSLETTER_SMTP_URL=f"smtp://{plain_smtp}")
    code, stdout, _ = run("doctor")
    assert code == 0, stdout
    assert _smtp_line(stdout) == (f"SMTP {plain_smtp}", "warning")
    assert "offers no STARTTLS" in stdout
    assert "0 problem(s), 1 warning(s)" in stdout


@pytest.mark.parametrize(
    ("server", "url", "verdict", "words"),
    [
        ("starttls_smtp", "smtp://{}?starttls=1", Verdict.OK, "STARTTLS with a trusted"),
        ("smtps", "smtps://{}", Verdict.OK, "implicit TLS (smtps) with a trusted"),
        ("starttls_smtp", "smtp://{}", Verdict.WARNING, "add ?starttls=1"),
        ("plain_smtp", "smtp://{}?starttls=1", Verdict.PROBLEM, "does not offer it"),
    ],
)
def test_tls_verdicts(
    configured: DnsServer,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    server: str,
    url: str,
    verdict: Verdict,
    words: str,
) -> None:
    address = request.getfixturevalue(server)
    apply_env(monkeypatch, NEWSLETTER_SMTP_URL=url.format(address))
    check = checks(configured)[f"SMTP {address}"]
    assert check.verdict is verdict
    assert words in check.detail


def test_a_certificate_a_send_would_refuse_is_a_problem(
    configured: DnsServer, monkeypatch: pytest.MonkeyPatch, starttls_smtp: str, tmp_path: Path
) -> None:
    (tmp_path / "empty.pem").write_text("")
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "empty.pem"))  # trusts nobody
    check = checks(configured)[f"SMTP {starttls_smtp}"]
    assert check.verdict is Verdict.PROBLEM
    assert "TLS failed" in check.detail
    assert "CERTIFICATE_VERIFY_FAILED" in check.detail


def test_every_relay_is_checked_and_a_refused_login_is_a_problem(
    configured: DnsServer,
    monkeypatch: pytest.MonkeyPatch,
    starttls_smtp: str,
    cert_files: tuple[Path, Path],
) -> None:
    def authenticator(*args: object) -> AuthResult:
        return AuthResult(success=False, handled=False)

    closed = free_port()
    for guarded in _serve(tls_context=_server_context(cert_files), authenticator=authenticator):
        apply_env(
            monkeypatch,
            NEWSLETTER_SMTP_URL=(
                f"smtp://{starttls_smtp}?starttls=1,"
                f"smtp://user:hunter2@{guarded}?starttls=1,smtp://127.0.0.1:{closed}"
            ),
        )
        found = checks(configured)
        assert found[f"SMTP {starttls_smtp}"].verdict is Verdict.OK
        assert found[f"SMTP user@{guarded}"].verdict is Verdict.PROBLEM
        assert "login refused: 535" in found[f"SMTP user@{guarded}"].detail
        assert found[f"SMTP 127.0.0.1:{closed}"].verdict is Verdict.PROBLEM
