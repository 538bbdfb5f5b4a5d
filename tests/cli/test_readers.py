"""`newsletter subscribers ...` and `suppressions lift` as an operator uses them: paged
search, one reader in full, edits, suppression shown and lifted, confirmations."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from sqlalchemy import select

from newsletter.db import session_scope
from subscribers.models import Subscriber, SubscriberStatus
from tests.cli_runner import count, run
from tests.conftest import ScriptedHandler

pytestmark = pytest.mark.usefixtures("app_env")


def _readers(*emails: str, tags: str = "politics", cadence: str = "immediate") -> None:
    for address in emails:
        code, _, err = run("subscribers", "add", address, "--tags", tags, "--cadence", cadence)
        assert code == 0, err


@pytest.fixture(autouse=True)
def tags(app_env: str) -> None:
    assert run("tags", "add", "Politics, Health")[0] == 0


def test_empty_list_says_so() -> None:
    code, out, _ = run("subscribers", "list")
    assert code == 0 and out.strip() == "no subscribers yet"
    code, out, _ = run("subscribers", "list", "--search", "zz")
    assert code == 0 and out.strip() == "no subscribers match"


def test_list_pages_by_address_and_filters() -> None:
    _readers("ana@example.org", "bea@example.org", "cid@example.org", "dan@example.org")
    _readers("eva@example.org", tags="health", cadence="daily")
    code, out, err = run("subscribers", "list", "--limit", "2")
    assert code == 0, err
    assert "ana@example.org" in out and "bea@example.org" in out and "cid@" not in out
    assert "--after bea@example.org" in err
    code, out, err = run("subscribers", "list", "--limit", "2", "--after", "bea@example.org")
    assert "cid@example.org" in out and "dan@example.org" in out and "ana@" not in out
    code, out, err = run("subscribers", "list", "--limit", "2", "--after", "dan@example.org")
    assert "eva@example.org" in out and "next page" not in err
    code, out, _ = run("subscribers", "list", "--search", "CI")
    assert "cid@example.org" in out and "ana@" not in out
    code, out, _ = run("subscribers", "list", "--tag", "health")
    assert "eva@example.org" in out and "ana@" not in out
    code, out, _ = run("subscribers", "list", "--cadence", "daily")
    assert "eva@example.org" in out and "ana@" not in out
    code, _, err = run("subscribers", "list", "--status", "asleep")
    assert code == 2 and "active" in err and "paused" in err


def test_suppression_shows_in_list_and_export() -> None:
    _readers("ana@example.org", "bob@example.org")
    assert run("suppressions", "add", "bob@example.org", "--reason", "complaint")[0] == 0
    out = run("subscribers", "list")[1]
    [bob] = [line for line in out.splitlines() if "bob@example.org" in line]
    assert "suppressed" in bob and "complaint" in bob
    out = run("subscribers", "export")[1]
    rows = {row["email"]: row for row in csv.DictReader(io.StringIO(out))}
    assert rows["bob@example.org"]["suppressed"] == "complaint"
    assert rows["ana@example.org"]["suppressed"] == ""


def test_show_prints_reader_tags_suppression_and_smtp_replies(smtp: ScriptedHandler) -> None:
    _readers("gone@example.org", tags="politics, health")
    smtp.replies["gone@example.org"] = ["550 5.1.1 no such user"]
    code, _, err = run(
        "posts", "add", "--title", "Budget", "--url", "https://x.example/1", "--tags", "politics"
    )
    assert code == 0, err
    code, out, err = run("subscribers", "show", "gone@example.org")
    assert code == 0, err
    assert "Politics (since" in out and "Health (since" in out
    assert "failed" in out and "550" in out and "no such user" in out and "Budget" in out
    code, _, err = run("subscribers", "show", "nobody@example.org")
    assert code == 2 and "no subscriber" in err


def test_edit_changes_each_field_and_refuses_bad_values() -> None:
    _readers("ana@example.org")
    code, out, err = run(
        "subscribers", "edit", "ana@example.org", "--tags", "health", "--cadence", "weekly",
        "--timezone", "Europe/Lisbon", "--send-hour", "7", "--send-weekday", "friday",
    )  # fmt: skip
    assert code == 0, err
    assert "cadence immediate -> weekly" in out and "tags politics -> health" in out
    code, out, _ = run("subscribers", "show", "ana@example.org")
    assert "weekly on Fridays at 07:00 (Europe/Lisbon)" in out
    code, _, err = run("subscribers", "edit", "ana@example.org", "--timezone", "Mars/Olympus")
    assert code == 2 and "unknown time zone" in err
    code, _, err = run("subscribers", "edit", "ana@example.org", "--cadence", "hourly")
    assert code == 2 and "immediate" in err and "weekly" in err
    code, _, err = run("subscribers", "edit", "ana@example.org")
    assert code == 2 and "nothing to change" in err


def test_unsubscribed_reader_comes_back_only_once_the_suppression_is_lifted() -> None:
    _readers("ana@example.org")
    code, out, err = run("subscribers", "edit", "ana@example.org", "--status", "unsubscribed")
    assert code == 0, err
    code, _, err = run("subscribers", "edit", "ana@example.org", "--status", "active")
    assert code == 2 and "lift the suppression first" in err
    code, out, err = run("suppressions", "lift", "ana@example.org")
    assert code == 0, err
    assert "was unsubscribed" in out and "stays unsubscribed" in out and "--status active" in out
    code, out, err = run("subscribers", "edit", "ana@example.org", "--status", "active")
    assert code == 0 and "status unsubscribed -> active" in out
    code, out, _ = run("subscribers", "list", "--status", "active")
    assert "ana@example.org" in out


def test_lift_says_an_active_reader_gets_mail_again() -> None:
    _readers("ana@example.org")
    run("suppressions", "add", "ana@example.org", "--reason", "hard_bounce")
    code, out, _ = run("subscribers", "edit", "ana@example.org", "--status", "active")
    assert code == 0 and "suppressed (hard_bounce)" in out and "suppressions lift" in out
    code, out, _ = run("suppressions", "lift", "ana@example.org")
    assert "is active: mail to them starts again" in out
    code, _, err = run("suppressions", "lift", "ana@example.org")
    assert code == 2 and "not on the suppression list" in err


def test_add_takes_cadence_and_the_old_frequency_name() -> None:
    assert (
        run("subscribers", "add", "a@example.org", "--tags", "politics", "--cadence", "daily")[0]
        == 0
    )
    code, _, err = run(
        "subscribers", "add", "b@example.org", "--tags", "politics", "--frequency", "weekly"
    )
    assert code == 0, err
    code, out, _ = run("subscribers", "list")
    assert "daily" in out and "weekly" in out
    code, _, err = run(
        "subscribers", "add", "c@example.org", "--tags", "politics", "--cadence", "x"
    )
    assert code == 2 and "immediate" in err and "daily" in err and "weekly" in err
    assert count(Subscriber) == 2


def test_pending_import_sends_each_new_reader_a_confirmation(
    smtp: ScriptedHandler, tmp_path: Path
) -> None:
    _readers("old@example.org")
    path = tmp_path / "list.csv"
    path.write_text(
        "email,name,tags,cadence,timezone\n"
        "new@example.org,New,politics,daily,UTC\n"
        "old@example.org,Old,politics,daily,UTC\n"
        "bad@,Bad,politics,daily,UTC\n"
    )
    rejects = tmp_path / "rejects.csv"
    code, out, _ = run("subscribers", "import", str(path), "--pending", "--rejects", str(rejects))
    assert code == 1 and "confirmation emails: 1 sent" in out
    assert [m.recipients for m in smtp.messages] == [["new@example.org"]]

    with session_scope() as session:
        status = dict(session.execute(select(Subscriber.email, Subscriber.status)).all())
    assert status["new@example.org"] is SubscriberStatus.PENDING
    assert status["old@example.org"] is SubscriberStatus.ACTIVE
    [row] = list(csv.DictReader(rejects.open(encoding="utf-8")))
    assert row["email"] == "bad@" and row["line"] == "4" and "invalid email" in row["reason"]


def test_a_rejects_file_that_cannot_be_written_stops_the_import_first(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("email,name,tags,cadence,timezone\nnew@example.org,New,politics,daily,UTC\n")
    nowhere = tmp_path / "missing" / "rejects.csv"
    code, _, err = run("subscribers", "import", str(path), "--rejects", str(nowhere))
    assert code == 2 and "cannot write" in err
    assert count(Subscriber) == 0
