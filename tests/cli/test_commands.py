"""What commands say: posts reached, runs in plain words, empty lists, quiet logs, and
questions before anything is deleted."""

from __future__ import annotations

import datetime as dt

import pytest
from typer.testing import CliRunner

from newsletter.cli import app, common
from newsletter.models import ApiToken, Post, Tag
from subscribers.models import Subscriber
from tests.cli_runner import count, run
from tests.conftest import ScriptedHandler

pytestmark = pytest.mark.usefixtures("app_env")

POST = [
    "posts",
    "add",
    "--title",
    "Budget day",
    "--url",
    "https://x.example/1",
    "--tags",
    "politics",
]


def _readers(*emails: str, cadence: str = "immediate") -> None:
    for address in emails:
        code, _, err = run(
            "subscribers", "add", address, "--tags", "politics", "--cadence", cadence
        )
        assert code == 0, err


def test_posts_add_says_how_many_were_reached_and_how_it_went(smtp: ScriptedHandler) -> None:
    run("tags", "add", "politics")
    _readers("ok@example.org", "busy@example.org", "gone@example.org")
    _readers("later@example.org", cadence="daily")
    smtp.replies["busy@example.org"] = ["451 4.3.0 try later"]
    smtp.replies["gone@example.org"] = ["550 5.1.1 no such user"]
    code, out, err = run(*POST)
    assert code == 0, err
    assert "reached 3 readers at once: 1 sent, 1 deferred (retried later), 1 failed" in out
    assert "it goes to 1 reader in their next daily or weekly digest" in out


def test_posts_add_dry_run_lists_who_would_get_it_and_writes_nothing(
    smtp: ScriptedHandler,
) -> None:
    run("tags", "add", "politics")
    _readers("ana@example.org", "bob@example.org")
    _readers("dee@example.org", cadence="weekly")
    run("suppressions", "add", "bob@example.org")
    code, out, err = run(*POST, "--dry-run")
    assert code == 0, err
    assert "dry run, nothing written" in out and "1 reader at once" in out
    assert "ana@example.org" in out and "bob@" not in out and "dee@" not in out
    assert "1 reader in their next daily or weekly digest" in out
    assert count(Post) == 0 and smtp.messages == []
    code, out, err = run("posts", "add", "--title", "T", "--url", "https://x.example/2",
                         "--tags", "brand new", "--dry-run")  # fmt: skip
    assert code == 0 and "0 readers at once" in out and count(Tag) == 1


def test_digests_run_speaks_plainly(smtp: ScriptedHandler) -> None:
    run("tags", "add", "politics")
    _readers("d@example.org", "e@example.org", cadence="daily")
    run(*POST)
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).isoformat()
    code, out, err = run("digests", "run", "--now", later)
    assert code == 0, err
    assert "subscribers due" in out and "readers skipped: nothing new for them" not in out
    for jargon in ("reused", "picked up again", "nothing_new", "swept"):
        assert jargon not in out


def test_skip_reasons_read_as_words() -> None:
    from newsletter.delivery.pipeline import RunSummary

    summary = RunSummary()
    summary.plan.skipped.update(nothing_new=2, suppressed=1)
    summary.send.skipped.update(subscriber_paused=1, not_claimable=4)
    labels = dict(summary.rows())
    assert labels["readers skipped: nothing new for them"] == 2
    assert labels["readers skipped: their address is suppressed"] == 1
    assert labels["not sent: the reader paused"] == 1
    assert not any("_" in label for label in labels)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["subscribers", "list"], "no subscribers yet"),
        (["tags", "list"], "no tags yet"),
        (["posts", "list"], "no posts yet"),
        (["tokens", "list"], "no API tokens yet"),
        (["suppressions", "list"], "no suppressed addresses"),
        (["feeds", "list"], "no feeds yet"),
        (["users", "list"], "no staff accounts yet"),
    ],
)
def test_empty_lists_say_so(args: list[str], message: str) -> None:
    code, out, _ = run(*args)
    assert code == 0 and message in out


def test_log_lines_only_with_verbose_and_only_on_stderr() -> None:
    run("tags", "add", "politics")
    _readers("ana@example.org")
    # Lifting a suppression logs a warning.
    run("suppressions", "add", "ana@example.org")
    code, out, err = run("suppressions", "lift", "ana@example.org")
    assert code == 0 and "lifted by" not in out + err
    run("suppressions", "add", "ana@example.org")
    code, out, err = run("--verbose", "suppressions", "lift", "ana@example.org")
    assert code == 0 and "lifted by" in err and "lifted by" not in out


# Each destructive command, and the table whose count shows it (a token is revoked, kept).
DESTRUCTIVE = [
    (["subscribers", "remove", "ana@example.org"], Subscriber),
    (["tags", "remove", "health"], Tag),
    (["tokens", "revoke", "1"], None),
]


def _things_to_destroy() -> None:
    run("tags", "add", "politics, health")
    _readers("ana@example.org")
    assert run("tokens", "create", "bot")[0] == 0


@pytest.mark.parametrize(("args", "model"), DESTRUCTIVE, ids=["subscriber", "tag", "token"])
def test_destructive_commands_ask_unless_yes(
    args: list[str], model: type | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _things_to_destroy()
    before = count(model or ApiToken)
    # No terminal and no --yes: refused, nothing changed.
    code, _, err = run(*args)
    assert code == 2 and "--yes" in err
    # At a terminal, "no" keeps it.
    monkeypatch.setattr(common, "interactive", lambda: True)
    result = CliRunner().invoke(app, args, input="n\n")
    assert result.exit_code == 1 and "nothing changed" in result.stderr
    assert count(model or ApiToken) == before and (model or not _token_revoked())
    result = CliRunner().invoke(app, args, input="y\n")
    assert result.exit_code == 0, result.stderr
    if model:
        assert count(model) == before - 1
    else:
        assert _token_revoked()


def test_yes_answers_for_scripts() -> None:
    _things_to_destroy()
    assert run("subscribers", "remove", "ana@example.org", "--yes")[0] == 0
    assert run("tags", "remove", "Health", "-y")[0] == 0
    code, out, _ = run("tokens", "revoke", "1", "--yes")
    assert code == 0 and "revoked" in out and _token_revoked()
    assert count(Subscriber) == 0 and count(Tag) == 1
    code, _, err = run("tags", "remove", "nope", "--yes")
    assert code == 2 and "no tag" in err


def _token_revoked() -> bool:
    from sqlalchemy import select

    from newsletter.db import session_scope

    with session_scope() as session:
        return session.scalar(select(ApiToken.revoked_at)) is not None
