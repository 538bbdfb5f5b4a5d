"""DKIM: every kind of mail, sent over real SMTP, verifies with dkimpy against the public
key in a stubbed DNS; a changed header breaks it; keygen's record verifies its key."""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from newsletter.config import get_settings
from newsletter.console.preview import Choice, send_tests
from newsletter.delivery.dkim import (
    DkimKeyError,
    Signer,
    SigningKey,
    dns_record,
    load_private_key,
    private_pem,
    signer_for,
)
from newsletter.delivery.mime import OutgoingMessage, build_message, new_message_id
from newsletter.delivery.sending import smtp_transport_factory
from newsletter.errors import InvalidInput
from newsletter.models import Delivery
from newsletter.outbox import Received
from newsletter.transactional import send_transactional
from tests.cli_runner import count, run
from tests.conftest import ScriptedHandler, apply_env
from tests.factories import make_post, make_subscriber

DOMAIN = "news.example.org"
Dns = Callable[..., bytes | None]


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One RSA-2048 and one Ed25519 key, as PEM files (made once: RSA takes a while)."""
    folder = tmp_path_factory.mktemp("dkim")
    keys = {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ed": ed25519.Ed25519PrivateKey.generate(),
    }
    files = {}
    for selector, key in keys.items():
        files[selector] = folder / f"{selector}.pem"
        files[selector].write_bytes(private_pem(key))
    return files


def dns_for(records: dict[str, str]) -> Dns:
    """dkimpy's DNS lookup, answered from `records` (name -> TXT value) alone."""

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        value = records.get(name.decode().rstrip("."))
        return value.encode() if value is not None else None

    return lookup


def published(key_files: dict[str, Path]) -> Dns:
    return dns_for(
        {
            f"{selector}._domainkey.{DOMAIN}": dns_record(load_private_key(path))
            for selector, path in key_files.items()
        }
    )


def signatures(data: bytes) -> list[str]:
    """The a= of each DKIM-Signature, top first."""
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    return re.findall(r"^DKIM-Signature:.*?\ba=([\w-]+);", head, re.M | re.S)


def verifies(data: bytes, dns: Dns) -> list[bool]:
    """Whether each signature on `data` verifies, top first."""
    checker = dkim.DKIM(data)
    results = []
    for index in range(len(signatures(data))):
        try:
            results.append(bool(checker.verify(idx=index, dnsfunc=dns)))
        except dkim.DKIMException:  # a body hash mismatch is raised, not returned
            results.append(False)
    return results


SETUPS = {
    "rsa": (("rsa",), ["rsa-sha256"]),
    "ed25519": (("ed",), ["ed25519-sha256"]),
    "dual": (("rsa", "ed"), ["rsa-sha256", "ed25519-sha256"]),
}


@pytest.mark.usefixtures("app_env")
@pytest.mark.parametrize("setup", SETUPS)
def test_every_kind_of_mail_is_signed_and_verifies(
    monkeypatch: pytest.MonkeyPatch,
    smtp: ScriptedHandler,
    key_files: dict[str, Path],
    t0: dt.datetime,
    setup: str,
) -> None:
    """A digest copy, a confirmation, a welcome and a console test copy, each sent
    over SMTP."""
    selectors, algorithms = SETUPS[setup]
    env = {
        "NEWSLETTER_DKIM_DOMAIN": DOMAIN,
        "NEWSLETTER_DKIM_SELECTOR": selectors[0],
        "NEWSLETTER_DKIM_KEY_FILE": str(key_files[selectors[0]]),
    }
    if len(selectors) == 2:
        env["NEWSLETTER_DKIM_SELECTOR_2"] = selectors[1]
        env["NEWSLETTER_DKIM_KEY_FILE_2"] = str(key_files[selectors[1]])
    apply_env(monkeypatch, **env)
    reader = make_subscriber("ana@example.org", "politics", now=t0, name="Zoë Ångström")
    make_post("politics", now=t0 + dt.timedelta(hours=1))
    payload = {"u": "x" * 22, "t": ["politics"], "c": "daily", "z": "UTC", "h": 7, "w": 0}
    assert send_transactional("confirm", reader, {"preferences": payload}) == "sent"
    assert send_transactional("welcome", reader) == "sent"
    assert send_tests(Choice(tags="politics").build(True), ["editor@example.org"]) == {}

    digest, confirmation, welcome, test_copy = smtp.messages
    assert "List-Unsubscribe-Post" in digest.parsed()
    dns = published(key_files)
    for received in (digest, confirmation, welcome, test_copy):
        assert signatures(received.data) == algorithms
        assert verifies(received.data, dns) == [True] * len(algorithms)
    # Every header the issue names is covered, once more for those that must stay single.
    head = dkim.DKIM(digest.data)
    head.verify(dnsfunc=dns)
    covered = [name.decode() for name in head.include_headers]
    for name in ("from", "to", "subject", "date", "message-id", "mime-version"):
        assert covered.count(name) == 2
    assert {"content-type", "list-unsubscribe", "list-unsubscribe-post"} <= set(covered)


def one_off() -> OutgoingMessage:
    """A one-off message with the list headers a digest carries."""
    return build_message(
        from_name="The Digest",
        from_address=f"digest@{DOMAIN}",
        to_name="Ana",
        to_address="ana@example.org",
        subject="Your digest",
        text="Hello  Ana,\r\n\r\nOne post today.\r\n",
        html="<p>Hello Ana,</p>",
        message_id=new_message_id(f"digest@{DOMAIN}"),
        headers={
            "List-Unsubscribe": "<https://news.example.org/unsubscribe/t>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    )


def signed(key_files: dict[str, Path], *selectors: str) -> tuple[bytes, Dns]:
    """A one-off message signed by these keys, and the DNS that publishes them."""
    message = one_off()
    signer = Signer(
        DOMAIN, [SigningKey(s.encode(), load_private_key(key_files[s])) for s in selectors]
    )
    return signer.sign(message.data), published(key_files)


@pytest.mark.parametrize("selector", ["rsa", "ed"])
@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(
            lambda d: d.replace(b"Subject: Your digest", b"Subject: Your d1gest"), id="subject"
        ),
        pytest.param(lambda d: d.replace(b"To: Ana <", b"To: Eve <"), id="to"),
        pytest.param(
            lambda d: d.replace(b"/unsubscribe/t>", b"/unsubscribe/u>"), id="list-unsubscribe"
        ),
        pytest.param(
            lambda d: d.replace(b"\r\n\r\n", b"\r\nFrom: ceo@example.org\r\n\r\n", 1),
            id="second-from",
        ),
        pytest.param(lambda d: d.replace(b"One post today", b"Two posts today"), id="body"),
    ],
)
def test_a_changed_message_no_longer_verifies(
    key_files: dict[str, Path], selector: str, tamper: Callable[[bytes], bytes]
) -> None:
    data, dns = signed(key_files, selector)
    assert verifies(data, dns) == [True]
    changed = tamper(data)
    assert changed != data
    assert verifies(changed, dns) == [False]


def test_refolding_the_header_keeps_the_signature(key_files: dict[str, Path]) -> None:
    """Relaxed header canonicalisation: a relay that refolds a header breaks nothing."""
    data, dns = signed(key_files, "rsa")
    refolded = data.replace(b"Subject: Your digest", b"Subject:  Your\r\n\tdigest")
    assert refolded != data
    assert verifies(refolded, dns) == [True]


def test_keygen_prints_the_record_that_verifies_its_key(tmp_path: Path) -> None:
    out = tmp_path / "news2026.pem"
    code, stdout, stderr = run(
        "dkim", "keygen", "--selector", "news2026", "--out", str(out), "--domain", DOMAIN
    )
    assert code == 0, stderr
    assert os.stat(out).st_mode & 0o777 == 0o600
    lines = dict(line.split(": ", 1) for line in stdout.splitlines() if ": " in line)
    assert lines["name"].strip() == f"news2026._domainkey.{DOMAIN}"
    assert lines["value"].startswith("v=DKIM1; k=rsa; p=")
    assert f"NEWSLETTER_DKIM_KEY_FILE={out}" in stdout
    assert f"NEWSLETTER_DKIM_DOMAIN={DOMAIN}" in stdout
    data, _ = signed({"news2026": out}, "news2026")
    assert verifies(data, dns_for({lines["name"].strip(): lines["value"]})) == [True]

    # Never over an existing key without --force; with it, a new key.
    before = out.read_bytes()
    code, _, stderr = run(
        "dkim", "keygen", "--selector", "s", "--out", str(out), "--domain", DOMAIN
    )
    assert code == 2 and "exists" in stderr and out.read_bytes() == before
    code, stdout, stderr = run(
        "dkim", "keygen", "--selector", "e1", "--algorithm", "ed25519", "--out", str(out),
        "--domain", DOMAIN, "--force",
    )  # fmt: skip
    assert code == 0, stderr
    assert "k=ed25519" in stdout and out.read_bytes() != before
    assert isinstance(load_private_key(out), ed25519.Ed25519PrivateKey)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--selector", "my key"], "selector"),
        (["--selector", "s", "--bits", "1000"], "1000 bits"),
        (["--selector", "s", "--algorithm", "ed25519", "--bits", "2048"], "--bits"),
        (["--selector", "s", "--algorithm", "dsa"], "dsa"),
    ],
)
def test_keygen_refuses_bad_input_and_writes_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "key.pem"
    code, _, stderr = run("dkim", "keygen", *args, "--out", str(out), "--domain", DOMAIN)
    assert code == 2 and message in stderr
    assert list(tmp_path.iterdir()) == []


def test_a_key_that_cannot_be_used_is_named_before_anything_is_sent(
    tmp_path: Path, settings_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    not_a_key = tmp_path / "notes.txt"
    not_a_key.write_text("hello")
    unreadable = tmp_path / "folder.pem"
    unreadable.mkdir()
    cases = {
        tmp_path / "missing.pem": "does not exist",
        unreadable: "cannot read",
        encrypted: "encrypted",
        not_a_key: "does not hold a PEM private key",
    }
    for path, reason in cases.items():
        with pytest.raises(DkimKeyError, match=reason):
            load_private_key(path)
    apply_env(
        monkeypatch,
        NEWSLETTER_SMTP_URL="smtp://127.0.0.1:25",
        NEWSLETTER_DKIM_DOMAIN=DOMAIN,
        NEWSLETTER_DKIM_SELECTOR="s1",
        NEWSLETTER_DKIM_KEY_FILE=str(tmp_path / "missing.pem"),
    )
    # An InvalidInput: the CLI's exit status 2 and one line naming the file.
    with pytest.raises(InvalidInput, match=r"missing\.pem does not exist"):
        smtp_transport_factory(get_settings())


@pytest.mark.usefixtures("app_env")
def test_a_send_with_a_missing_key_stops_with_exit_status_2(
    monkeypatch: pytest.MonkeyPatch, smtp: ScriptedHandler, tmp_path: Path, t0: dt.datetime
) -> None:
    make_subscriber("ana@example.org", "politics", cadence="daily", now=t0)
    make_post("politics", now=t0)
    apply_env(
        monkeypatch,
        NEWSLETTER_DKIM_DOMAIN=DOMAIN,
        NEWSLETTER_DKIM_SELECTOR="s1",
        NEWSLETTER_DKIM_KEY_FILE=str(tmp_path / "gone.pem"),
    )
    code, _, stderr = run("digests", "run", "--now", (t0 + dt.timedelta(days=1)).isoformat())
    assert code == 2 and "gone.pem does not exist" in stderr
    assert smtp.messages == [] and count(Delivery) == 0


def test_nothing_is_signed_while_dkim_is_off(
    smtp: ScriptedHandler, key_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A domain and selector without a key file sign nothing (all three are needed).
    apply_env(monkeypatch, NEWSLETTER_DKIM_DOMAIN=DOMAIN, NEWSLETTER_DKIM_SELECTOR="rsa")
    assert signer_for(get_settings()) is None
    message = one_off()
    with smtp_transport_factory(get_settings())() as transport:
        transport.send(message)
    [received] = smtp.messages
    assert received == Received(message.sender, [message.recipient], message.data)
    assert signatures(received.data) == []


def test_a_worker_or_server_with_an_unusable_key_refuses_to_start(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {
        **os.environ,
        "NEWSLETTER_DKIM_DOMAIN": "news.example.org",
        "NEWSLETTER_DKIM_SELECTOR": "s1",
        "NEWSLETTER_DKIM_KEY_FILE": str(tmp_path / "missing.pem"),
    }
    done = subprocess.run(
        [sys.executable, "-c", "import worker.celery_app"],
        env=env,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 2
    assert "configuration error" in done.stderr and "missing.pem" in done.stderr
