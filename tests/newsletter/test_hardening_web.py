"""The web app against hostile input: forged client addresses, huge and odd numbers,
non-RFC JSON, odd webhook headers, leaked tokens and secrets, and framing.

Served by `newsletter serve` in a real process where the server's own behaviour is
the point (proxy headers, access log, start-up checks); otherwise by the app in-process.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import func, select

from newsletter.apitokens import create_token
from newsletter.config import ProxyTrust, Settings, parse_trusted_proxies
from newsletter.db import session_scope
from newsletter.delivery.smtp import SmtpConfig
from newsletter.errors import InvalidInput
from newsletter.models import Post
from newsletter.outbox import free_port
from newsletter.tags import get_or_create_tags, parse_tag_names
from newsletter.web.app import create_app
from newsletter.web.deps import resolve_client
from newsletter.webhooks import SIGNATURE_HEADER, sign
from subscribers.cadence import parse_hour, parse_weekday
from tests.browser import launch_chromium
from tests.conftest import BASE_ENV, apply_env

ROOT = Path(__file__).resolve().parents[2]
BIG = 2**63
WEBHOOK_SECRET = "whsec-test-0123456789abcdef"


def post_count() -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(Post)) or 0)


# -- who the client is --------------------------------------------------------------


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    assert resolve_client("127.0.0.1", ["6.6.6.6"], ProxyTrust()) == "127.0.0.1"


@pytest.mark.parametrize(
    ("hops", "forwarded", "client"),
    [
        (1, ["6.6.6.6", "203.0.113.9"], "203.0.113.9"),  # the left one is the client's say
        (2, ["6.6.6.6", "203.0.113.9", "10.0.0.2"], "203.0.113.9"),
        (2, ["203.0.113.9"], "10.0.0.1"),  # fewer hops than proxies: not through them
        (1, ["not-an-address"], "10.0.0.1"),
        (1, ["[2001:db8::5]:443"], "2001:db8::5"),
        (1, ["203.0.113.9:5555"], "203.0.113.9"),
    ],
)
def test_a_count_of_hops_takes_that_many_from_the_right(
    hops: int, forwarded: list[str], client: str
) -> None:
    assert resolve_client("10.0.0.1", forwarded, ProxyTrust(hops=hops)) == client


def test_networks_skip_only_trusted_proxies_from_the_right() -> None:
    trust = parse_trusted_proxies("10.0.0.0/8, fd00::/8")
    chain = ["6.6.6.6", "203.0.113.9", "10.0.0.5"]
    assert resolve_client("10.0.0.1", chain, trust) == "203.0.113.9"
    # A peer outside the networks is the client, whatever it forwards.
    assert resolve_client("198.51.100.7", chain, trust) == "198.51.100.7"
    # Only trusted proxies in the chain: the leftmost one they vouch for.
    assert resolve_client("10.0.0.1", ["10.1.1.1"], trust) == "10.1.1.1"
    assert resolve_client("::ffff:10.0.0.1", ["203.0.113.9"], trust) == "203.0.113.9"
    assert resolve_client("fd00::1", ["garbage", "203.0.113.9"], trust) == "203.0.113.9"


def test_trusted_proxies_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("NEWSLETTER_TRUSTED_PROXIES", "NEWSLETTER_TRUST_PROXY"):
        monkeypatch.delenv(key, raising=False)
    assert Settings().proxy_trust == ProxyTrust()
    monkeypatch.setenv("NEWSLETTER_TRUST_PROXY", "true")  # the deprecated switch
    assert Settings().proxy_trust == ProxyTrust(hops=1)
    monkeypatch.setenv("NEWSLETTER_TRUSTED_PROXIES", "2")
    assert Settings().proxy_trust == ProxyTrust(hops=2)
    monkeypatch.setenv("NEWSLETTER_TRUSTED_PROXIES", "10.0.0.0/8,192.168.1.7")
    assert len(Settings().proxy_trust.networks) == 2
    monkeypatch.setenv("NEWSLETTER_TRUSTED_PROXIES", "10.0.0.0/8, nonsense")
    with pytest.raises(ValidationError, match="neither a count"):
        Settings()


def _sign_up(client: TestClient, n: int, forwarded: str) -> int:
    response = client.post(
        "/subscribe",
        data={"email": f"reader{n}@example.org", "tags": ["politics"], "cadence": "weekly"},
        headers={"X-Forwarded-For": forwarded},
    )
    return int(response.status_code)


@pytest.mark.usefixtures("app_env")
@pytest.mark.parametrize(
    "trust",
    [
        {},
        {"NEWSLETTER_TRUSTED_PROXIES": "1"},
        {"NEWSLETTER_TRUSTED_PROXIES": "127.0.0.0/8"},
        {"NEWSLETTER_TRUST_PROXY": "true"},  # deprecated: one hop
    ],
    ids=["none", "one-hop", "network", "legacy-switch"],
)
def test_a_forged_forwarded_for_does_not_escape_the_rate_limit(
    monkeypatch: pytest.MonkeyPatch, trust: dict[str, str]
) -> None:
    apply_env(monkeypatch, NEWSLETTER_SIGNUP_PER_IP_PER_HOUR="2", **trust)
    with session_scope() as session:
        get_or_create_tags(session, parse_tag_names("Politics"))
    client = TestClient(create_app(), client=("127.0.0.1", 40000))
    # A new made-up address on the left every time; the proxy's own entry stays.
    codes = [_sign_up(client, n, f"198.51.100.{n}, 203.0.113.9") for n in range(3)]
    assert codes == [200, 200, 429]


# -- numbers and JSON the database or Python cannot take ------------------------------


@pytest.mark.parametrize("value", ["²", "٣", "9" * 5000, "+8", "-1", "8.0", " ", "24"])
def test_send_hour_is_ascii_digits_0_to_23(value: str) -> None:
    with pytest.raises(InvalidInput, match="send hour") as caught:
        parse_hour(value)
    assert len(str(caught.value)) < 100


@pytest.mark.parametrize("value", ["²", "9" * 5000, "7", "-0", "someday"])
def test_send_weekday_refuses_odd_numbers(value: str) -> None:
    with pytest.raises(InvalidInput, match="weekday"):
        parse_weekday(value)


def test_plain_hours_and_weekdays_still_parse() -> None:
    assert (parse_hour("08"), parse_hour(23), parse_weekday("6"), parse_weekday("Tue")) == (
        8,
        23,
        6,
        1,
    )


@pytest.mark.usefixtures("app_env")
@pytest.mark.parametrize("field", ["send_hour", "send_weekday"])
@pytest.mark.parametrize("value", ["²", "9" * 5000])
def test_sign_up_form_with_odd_numbers_is_a_400(field: str, value: str) -> None:
    with session_scope() as session:
        get_or_create_tags(session, parse_tag_names("Politics"))
    client = TestClient(create_app())
    response = client.post(
        "/subscribe",
        data={"email": "ana@example.org", "tags": ["politics"], "cadence": "weekly", field: value},
    )
    assert response.status_code == 400
    assert "send hour" in response.text or "weekday" in response.text


@pytest.fixture
def api(app_env: str) -> Iterator[TestClient]:
    with session_scope() as session:
        token, _ = create_token(session, "tests")
    with TestClient(create_app(), headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


@pytest.mark.parametrize(
    "path",
    [
        f"/api/posts?offset={BIG}",
        f"/api/posts?offset={2**31}",
        f"/api/tags?offset={BIG}",
        f"/api/posts/{BIG}",
        f"/api/posts/{2**31}",
        "/api/posts/0",
    ],
)
def test_ids_and_offsets_beyond_the_database_are_a_422(api: TestClient, path: str) -> None:
    response = api.get(path)
    assert response.status_code == 422
    assert "less than or equal" in response.text or "greater than" in response.text


def test_huge_ids_in_patch_and_delete_are_a_422(api: TestClient) -> None:
    assert api.patch(f"/api/posts/{BIG}", json={"title": "x"}).status_code == 422
    assert api.delete(f"/api/posts/{BIG}").status_code == 422


def _post_body(title: str = "Budget day") -> dict[str, Any]:
    return {"title": title, "url": "https://blog.example.org/budget/", "tags": ["Politics"]}


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ('{"title": NaN, "url": "https://blog.example.org/x/"}', "NaN"),
        ('{"title": "x", "url": "https://blog.example.org/x/", "tags": [Infinity]}', "Infinity"),
        ('{"title": "\\ud800", "url": "https://blog.example.org/x/"}', "surrogate"),
        ('{"title": "x\\udfff", "url": "https://blog.example.org/x/"}', "surrogate"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"title": "x", "url": "https://blog.example.org/x/", "n": ' + "1" * 5000 + "}", "digits"),
    ],
)
def test_json_that_rfc_8259_forbids_is_a_422(api: TestClient, raw: str, why: str) -> None:
    response = api.post(
        "/api/posts", content=raw.encode(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert why in json.dumps(response.json())
    assert post_count() == 0


def test_a_surrogate_pair_is_still_fine(api: TestClient) -> None:
    raw = json.dumps(_post_body("Budget \U0001f600 day"), ensure_ascii=True)
    response = api.post("/api/posts", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 201 and response.json()["title"] == "Budget \U0001f600 day"


# -- the webhook ----------------------------------------------------------------------


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch, app_env: str) -> TestClient:
    apply_env(monkeypatch, NEWSLETTER_WEBHOOK_SECRET=WEBHOOK_SECRET)
    return TestClient(create_app())


def _push(client: TestClient, body: bytes, signature: str | bytes | None = None) -> httpx.Response:
    header = signature if signature is not None else sign(WEBHOOK_SECRET, body)
    response: httpx.Response = client.post(
        "/hooks/posts",
        content=body,
        headers={"Content-Type": "application/json", SIGNATURE_HEADER: header},
    )
    return response


@pytest.mark.parametrize(
    "timestamp", ["²".encode("latin-1"), "\uff11\uff12\uff13".encode(), b"\xb9\xb2\xb3"]
)
def test_a_non_ascii_webhook_timestamp_is_a_401(hook: TestClient, timestamp: bytes) -> None:
    response = _push(hook, b"{}", b"t=" + timestamp + b",v1=abcdef")
    assert response.status_code == 401
    assert response.json()["error"] == "malformed_signature"


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
        (b'{"title": NaN}', "NaN"),
        (b'{"title": "\\ud800"}', "surrogate"),
        (b'{"n": ' + b"1" * 5000 + b"}", "digits"),
    ],
)
def test_hostile_webhook_json_is_a_400(hook: TestClient, body: bytes, why: str) -> None:
    response = _push(hook, body)
    assert response.status_code == 400
    assert response.json()["error"] == "malformed_json" and why in response.json()["detail"]
    assert post_count() == 0


# -- secrets at start-up, and out of logs ----------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        " " * 32,
        "development-only-secret-change-me ",
        " development-only-secret-change-me",
        "please-change-me-0123456789",
        "short",
        "a" * 40,
    ],
)
def test_production_refuses_a_weak_secret_key(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    monkeypatch.setenv("NEWSLETTER_ENV", "production")
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", key)
    with pytest.raises(ValidationError, match="NEWSLETTER_SECRET_KEY"):
        Settings()


def test_production_accepts_a_random_secret_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_ENV", "production")
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "kQ3v9xZr2LmT8pWq-7fHs")
    assert Settings().env == "production"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    return {**env, **BASE_ENV, "NEWSLETTER_BROKER_URL": "", **extra}


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-c", "from newsletter.cli import main; main()", "serve", "--port", "1"],
        [sys.executable, "-c", "import worker.celery_app"],
        [sys.executable, "-c", "from newsletter.web.app import create_app; create_app()"],
    ],
    ids=["serve", "worker", "asgi-factory"],
)
def test_server_and_worker_refuse_to_start_with_a_bad_secret(
    command: list[str], tmp_path: Path
) -> None:
    secret = "development-only-secret-change-me "
    env = _env(
        NEWSLETTER_ENV="production",
        NEWSLETTER_SECRET_KEY=secret,
        NEWSLETTER_SMTP_URL="smtp://user:hunter2-password@mail.example.org:25",
    )
    result = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "configuration error" in result.stderr and "NEWSLETTER_SECRET_KEY" in result.stderr
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def _wait_for_port(port: int, process: subprocess.Popen[str]) -> None:
    for _ in range(200):
        if process.poll() is not None:
            raise AssertionError(f"the server exited: {process.communicate()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the server did not start")


def test_serve_ignores_forwarded_for_and_redacts_tokens_in_its_access_log(
    sqlite_url: str, tmp_path: Path
) -> None:
    port = free_port()
    command = [sys.executable, "-c", "from newsletter.cli import main; main()"]
    process = subprocess.Popen(
        [*command, "serve", "--port", str(port)],
        env=_env(NEWSLETTER_DATABASE_URL=sqlite_url),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for_port(port, process)
        token = "eyJ1IjoiYWJjIn0.ZzZzZz.SECRETSIGNATUREabcdef"
        for path in (f"/unsubscribe/{token}", f"/preferences/{token}?x=1", f"/confirm/{token}"):
            httpx.get(f"http://127.0.0.1:{port}{path}", headers={"X-Forwarded-For": "203.0.113.9"})
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert "/unsubscribe/[redacted]" in output and "/confirm/[redacted]" in output
    assert "SECRETSIGNATURE" not in output
    # uvicorn's default would have logged (and used) the forged address.
    assert "203.0.113.9" not in output and "127.0.0.1" in output


def test_enqueue_failure_log_hides_the_confirm_link(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, settings_env: dict[str, str]
) -> None:
    from newsletter.dispatch import send_task
    from worker import app as celery_app

    def broker_down(*args: object, **kwargs: object) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setitem(celery_app.conf, "task_always_eager", False)
    monkeypatch.setattr(celery_app, "send_task", broker_down)
    url = "https://news.example.org/confirm/eyJ1IjoiYWJjIn0.ZzZzZz.SECRETSIGNATURE"
    with caplog.at_level(logging.WARNING):
        send_task("send_transactional", "confirm", 7, {"confirm_url": url})
    assert "could not enqueue send_transactional" in caplog.text
    assert "SECRETSIGNATURE" not in caplog.text and "/confirm/[redacted]" in caplog.text


@pytest.mark.parametrize(
    "url", ["smtp://user:hunter2@mail.example.org:notaport", "smtq://user:hunter2@host"]
)
def test_a_bad_smtp_url_error_hides_the_password(url: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        SmtpConfig.from_url(url)
    assert "hunter2" not in str(caught.value) and "user:[redacted]@" in str(caught.value)


# -- headers that stop framing, sniffing and referrer leaks ----------------------------


@pytest.mark.usefixtures("app_env")
@pytest.mark.parametrize("path", ["/subscribe", "/unsubscribe/bad-token", "/api/posts", "/healthz"])
def test_every_response_carries_the_security_headers(path: str) -> None:
    response = TestClient(create_app()).get(path)
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "base-uri 'none'" in csp and "form-action 'self'" in csp
    assert "unsafe-inline" not in csp
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"


@pytest.mark.usefixtures("settings_env")
def test_docs_get_a_csp_their_viewer_can_run_under() -> None:
    response = TestClient(create_app()).get("/docs")
    assert response.status_code == 200
    csp = response.headers["content-security-policy"]
    # The viewer is served by the app (web/docs.py): its inline start-up script is
    # allowed, nothing from another origin is.
    assert "script-src 'self' 'unsafe-inline'" in csp and "https:" not in csp
    assert "/docs/assets/swagger-ui-bundle.js" in response.text
    assert response.headers["x-frame-options"] == "DENY"


@pytest.mark.usefixtures("settings_env")
def test_page_assets_are_served_by_the_app() -> None:
    client = TestClient(create_app())
    css = client.get("/static/site.css")
    script = client.get("/static/subscribe.js")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert script.status_code == 200 and "Intl.DateTimeFormat" in script.text


@pytest.fixture
def live_server(
    sqlite_url: str, settings_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    apply_env(monkeypatch, NEWSLETTER_DATABASE_URL=sqlite_url)
    port = free_port()
    config = uvicorn.Config(
        create_app(), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_subscribe_page_works_in_a_browser_under_its_csp(live_server: str) -> None:
    with launch_chromium() as browser:
        context = browser.new_context(timezone_id="Europe/Lisbon")
        page = context.new_page()
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        page.goto(f"{live_server}/subscribe")
        page.wait_for_load_state("load")
        assert page.locator("#timezone").input_value() == "Europe/Lisbon"  # the script ran
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(243, 244, 246)"  # the stylesheet applied
        context.close()
    assert not [m for m in console if "Content Security Policy" in m], console
