"""The `newsletter` command as a user types it: good input works, bad input changes nothing."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from pathlib import Path

import pytest

from newsletter.models import Delivery, Post, Tag
from subscribers.models import Subscriber
from tests.cli_runner import count, run
from tests.conftest import ScriptedHandler


@pytest.mark.usefixtures("app_env")
class TestWithDatabase:
    def test_add_subscriber_and_post_sends_immediately(self, smtp: ScriptedHandler) -> None:
        assert run("tags", "add", "Politics, Public Services")[0] == 0
        code, out, _ = run(
            "subscribers", "add", "Ana@Example.org", "--tags", "politics", "--name", "Ana"
        )
        assert code == 0 and "ana@example.org" in out
        code, out, err = run(
            "posts", "add", "--title", "Budget day", "--url", "https://blog.example.org/budget/",
            "--tags", "Politics", "--summary", "What changes.", "--published-at", "2026-03-01T09:00:00+01:00",
        )  # fmt: skip
        assert code == 0, err
        assert [m.recipients for m in smtp.messages] == [["ana@example.org"]]
        code, out, _ = run("posts", "list")
        assert "Budget day" in out
        code, out, _ = run("subscribers", "list")
        assert "ana@example.org" in out and "Politics" in out

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--cadence", "hourly"], "'immediate', 'daily', 'weekly'"),
            (["--frequency", "hourly"], "'immediate', 'daily', 'weekly'"),
            (["--timezone", "Mars/Olympus"], "unknown time zone"),
            (["--tags", "nonexistent"], "unknown tag"),
            (["--send-hour", "25"], "0-23"),
        ],
    )
    def test_bad_subscriber_exits_2_and_writes_nothing(self, args: list[str], message: str) -> None:
        run("tags", "add", "politics")
        base = ["subscribers", "add", "ana@example.org", "--tags", "politics"]
        code, _, err = run(*base, *args)
        assert code == 2 and message in err
        assert count(Subscriber) == 0

    @pytest.mark.parametrize(
        "address", ["not-an-address", "ana@", "a b@example.org", "ana@example.org\r\nBcc: x@y.z"]
    )
    def test_invalid_email(self, address: str) -> None:
        run("tags", "add", "politics")
        code, _, err = run("subscribers", "add", address, "--tags", "politics")
        assert code == 2 and "invalid email address" in err
        assert count(Subscriber) == 0

    def test_duplicate_subscriber(self) -> None:
        run("tags", "add", "politics")
        assert run("subscribers", "add", "ana@example.org", "--tags", "politics")[0] == 0
        code, _, err = run("subscribers", "add", "ANA@example.org", "--tags", "politics")
        assert code == 2 and "already subscribed" in err
        assert count(Subscriber) == 1

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--title", "   ", "--url", "https://x.example/1", "--tags", "a"], "needs a title"),
            (["--title", "T", "--url", "ftp://x.example/1", "--tags", "a"], "http(s) URL"),
            (["--title", "T", "--url", "/relative", "--tags", "a"], "http(s) URL"),
            (["--title", "T", "--url", "https://x.example/1", "--tags", "a", "--published-at", "yesterday"], "cannot read date"),
            (["--title", "T", "--url", "https://x.example/1", "--tags", "a", "--body-file", "/nonexistent/body.html"], "cannot read body file"),
        ],
    )  # fmt: skip
    def test_bad_post_exits_2_and_writes_nothing(self, args: list[str], message: str) -> None:
        code, _, err = run("posts", "add", *args)
        assert code == 2 and message in err, err
        assert count(Post) == 0 and count(Tag) == 0

    def test_missing_option_is_a_usage_error(self) -> None:
        code, _, _ = run("posts", "add", "--title", "T")
        assert code == 2
        assert count(Post) == 0

    def test_duplicate_post_guid(self, smtp: ScriptedHandler) -> None:
        args = ["posts", "add", "--title", "T", "--url", "https://x.example/1", "--tags", "a"]
        assert run(*args)[0] == 0
        code, _, err = run(*args)
        assert code == 2 and "already exists" in err
        assert count(Post) == 1

    def test_title_line_breaks_never_reach_headers(self, smtp: ScriptedHandler) -> None:
        run("tags", "add", "politics")
        run(
            "subscribers",
            "add",
            "ana@example.org",
            "--tags",
            "politics",
            "--name",
            "Ana\r\nBcc: x@evil.example",
        )
        code, _, err = run(
            "posts", "add", "--title", "Hello\r\nBcc: victim@evil.example", "--url",
            "https://x.example/1", "--tags", "politics",
        )  # fmt: skip
        assert code == 0, err
        [message] = smtp.messages
        parsed = email.message_from_bytes(message.data, policy=email.policy.default)
        assert parsed["Bcc"] is None
        assert parsed["Subject"] == "Hello Bcc: victim@evil.example"
        assert message.recipients == ["ana@example.org"]

    def test_digests_run_prints_summary(self, smtp: ScriptedHandler) -> None:
        run("tags", "add", "politics")
        run("subscribers", "add", "d@example.org", "--tags", "politics", "--frequency", "daily")
        run("posts", "add", "--title", "T", "--url", "https://x.example/1", "--tags", "politics")
        later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).isoformat()
        code, out, err = run("digests", "run", "--now", later)
        assert code == 0, err
        assert "deliveries planned" in out and len(smtp.messages) == 1
        code, out, _ = run("digests", "run", "--now", later)
        assert code == 0 and len(smtp.messages) == 1
        assert count(Delivery) == 1

    def test_digests_run_without_smtp_changes_nothing(self) -> None:
        run("tags", "add", "politics")
        run("subscribers", "add", "d@example.org", "--tags", "politics", "--frequency", "daily")
        later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).isoformat()
        code, _, err = run("digests", "run", "--now", later)
        assert code == 2 and "NEWSLETTER_SMTP_URL" in err
        assert count(Delivery) == 0

    def test_bad_now(self) -> None:
        code, _, err = run("digests", "run", "--now", "tomorrow-ish")
        assert code == 2 and "cannot read date" in err

    def test_preview_for_tags_and_subscriber(self, smtp: ScriptedHandler, tmp_path: Path) -> None:
        run("tags", "add", "politics, health")
        run(
            "subscribers",
            "add",
            "w@example.org",
            "--tags",
            "health",
            "--frequency",
            "weekly",
            "--name",
            "Wen",
        )
        run(
            "posts",
            "add",
            "--title",
            "On health",
            "--url",
            "https://x.example/h",
            "--tags",
            "health",
        )
        run(
            "posts",
            "add",
            "--title",
            "On politics",
            "--url",
            "https://x.example/p",
            "--tags",
            "politics",
        )
        out = tmp_path / "tags.html"
        code, stdout, err = run("preview", "--tags", "politics", "--out", str(out))
        assert code == 0, err
        html = out.read_text()
        assert "On politics" in html and "On health" not in html and "@@NL_" not in html
        assert "recent posts" in stdout
        out2 = tmp_path / "reader.html"
        code, stdout, err = run("preview", "--subscriber", "w@example.org", "--out", str(out2))
        assert code == 0, err
        assert "pending digest" in stdout
        html = out2.read_text()
        assert "On health" in html and "Hi Wen," in html and "weekly" in html.lower()
        # Previewing sends and records nothing.
        assert smtp.messages == [] and count(Delivery) == 0

    def test_preview_unknown_tag(self, tmp_path: Path) -> None:
        code, _, err = run("preview", "--tags", "nope", "--out", str(tmp_path / "x.html"))
        assert code == 2 and "unknown tag" in err

    def test_remove_subscriber(self) -> None:
        run("tags", "add", "politics")
        run("subscribers", "add", "ana@example.org", "--tags", "politics")
        assert run("subscribers", "remove", "ana@example.org", "--yes")[0] == 0
        assert count(Subscriber) == 0
        code, _, err = run("subscribers", "remove", "ana@example.org", "--yes")
        assert code == 2 and "no subscriber" in err


def test_every_subcommand_has_help() -> None:
    for args in [
        [],
        ["db"],
        ["posts"],
        ["tags"],
        ["subscribers"],
        ["digests"],
        ["preview"],
        ["demo"],
        ["serve"],
    ]:
        code, out, _ = run(*args, "--help")
        assert code == 0 and "Usage" in out


def test_demo_runs_on_sqlite_with_its_own_smtp_server(
    tmp_path: Path, settings_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # The demo points the process at its own database and SMTP server; restore after.
    for key in ("DATABASE_URL", "SMTP_URL", "BROKER_URL", "SECRET_KEY", "ENV"):
        monkeypatch.setenv(f"NEWSLETTER_{key}", settings_env.get(f"NEWSLETTER_{key}", ""))
    code, out, err = run("demo")
    assert code == 0, err
    assert "Who got what" in out and "run again: 0 more" in out
    emls = sorted((tmp_path / "outbox").glob("*.eml"))
    htmls = sorted((tmp_path / "outbox").glob("*.html"))
    assert len(emls) == len(htmls) > 5
    assert (tmp_path / "newsletter-demo.db").exists()
    # Every message is a proper two-part digest.
    for path in emls:
        parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert parsed.get_body(("plain",)) is not None and parsed.get_body(("html",)) is not None
    # Running it again starts afresh.
    code, _, err = run("demo")
    assert code == 0, err
    assert len(sorted((tmp_path / "outbox").glob("*.eml"))) == len(emls)


@pytest.mark.usefixtures("app_env")
def test_tokens_carry_a_role_and_a_bad_role_writes_nothing() -> None:
    from newsletter.models import ApiToken

    code, out, err = run("tokens", "create", "newsroom bot", "--role", "editor")
    assert code == 0, err
    assert out.strip().startswith("nl_") and "editor token #1" in err
    code, out, _ = run("tokens", "list")
    assert code == 0 and "editor" in out and "nl_" in out
    code, out, err = run("tokens", "create", "root", "--role", "owner")
    assert code != 0 and "admin" in err and "editor" in err
    assert count(ApiToken) == 1


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_database_without_the_schema_gets_a_clear_message(
    backend: str,
    settings_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Before `db upgrade`, a command says what to do instead of printing a traceback."""
    from tests.conftest import PG_ADMIN_DSN, apply_env

    url = f"sqlite:///{tmp_path}/new.db" if backend == "sqlite" else PG_ADMIN_DSN
    apply_env(monkeypatch, NEWSLETTER_DATABASE_URL=url)
    for args in (("users", "list"), ("subscribers", "list"), ("tokens", "list")):
        code, _, err = run(*args)
        assert code == 2, (args, err)
        assert "newsletter db upgrade" in err and "Traceback" not in err
