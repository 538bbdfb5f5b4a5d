"""Bulk actions, CSV import and export on the console's subscriber list, over real HTTP
against real databases: each action changes exactly the filtered selection, a bad
reader is reported while the rest go on, an import shows its row report, an export
streams the filtered readers escaped; editors and forged requests change nothing."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import delete, select, update

from newsletter.console.models import AuditEntry, ConsoleJob
from newsletter.db import session_scope, utcnow
from newsletter.errors import InvalidInput
from newsletter.models import Tag
from newsletter.tags import get_or_create_tags, parse_tag_names
from subscribers import bulk, suppression
from subscribers.lists import export_csv, import_csv
from subscribers.models import (
    Subscriber,
    SubscriberStatus,
    SuppressionEvent,
    SuppressionReason,
    subscriber_tags,
)
from subscribers.services import SubscriberInput, add_subscriber
from tests.browser import artefact, launch_chromium
from tests.cli_runner import count
from tests.console.conftest import (
    ADMIN,
    EDITOR,
    actions,
    browser_sign_in,
    script_problem,
    signed_in,
)
from tests.console.test_subscribers import set_status, token_of
from tests.factories import make_tags

pytestmark = pytest.mark.usefixtures("staff")

HEADER = "email,name,tags,cadence,timezone\n"
COUNT = re.compile(r'id="bulk-count"><strong>([\d,]+)</strong>')


@pytest.fixture(autouse=True)
def forget_jobs(staff: None) -> Iterator[None]:
    """Jobs and suppression history are not in the shared truncate list (yet)."""
    yield
    with session_scope() as session:
        session.execute(delete(ConsoleJob))
        session.execute(delete(SuppressionEvent))


def add_readers(
    readers: list[tuple[str, str, str]], now: dt.datetime | None = None
) -> dict[str, int]:
    """(email, tags, cadence) rows; their ids by address."""
    with session_scope() as session:
        get_or_create_tags(session, parse_tag_names(",".join(r[1] for r in readers)))
        return {
            email: add_subscriber(session, SubscriberInput(email, tags, cadence), now=now).id
            for email, tags, cadence in readers
        }


def follows(email: str) -> dict[str, dt.datetime]:
    """The tags `email` follows, with the date each was followed."""
    with session_scope() as session:
        rows = session.execute(
            select(Tag.slug, subscriber_tags.c.created_at)
            .join(subscriber_tags, subscriber_tags.c.tag_id == Tag.id)
            .join(Subscriber, Subscriber.id == subscriber_tags.c.subscriber_id)
            .where(Subscriber.email == email)
        )
        return {slug: at for slug, at in rows}


def statuses() -> dict[str, SubscriberStatus]:
    with session_scope() as session:
        rows = session.execute(select(Subscriber.email, Subscriber.status))
        return {email: status for email, status in rows}


def confirm(c: TestClient, query: str) -> Response:
    return c.get("/admin/subscribers/bulk?" + query)


def hidden_fields(html: str) -> dict[str, str]:
    form = html[html.index('action="/admin/subscribers/bulk"') :].split("</form>")[0]
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form))


def run_bulk(c: TestClient, query: str) -> Response:
    """Ask for an action, confirm it as the page offers, land on the job page."""
    page = confirm(c, query)
    assert page.status_code == 200, page.text
    response = c.post(
        "/admin/subscribers/bulk", data=hidden_fields(page.text), follow_redirects=False
    )
    assert response.status_code == 303, response.text
    assert re.fullmatch(r"/admin/jobs/\d+", response.headers["location"])
    job_page = c.get(response.headers["location"])
    assert job_page.status_code == 200
    return job_page


def only_job() -> ConsoleJob:
    with session_scope() as session:
        return session.scalars(select(ConsoleJob)).one()


def audit_entries(action: str) -> list[AuditEntry]:
    with session_scope() as session:
        return list(session.scalars(select(AuditEntry).where(AuditEntry.action == action)))


MIXED = [
    ("ana@example.org", "news", "daily"),
    ("ben@example.org", "news, extra", "daily"),
    ("cid@example.org", "news", "weekly"),
    ("dee@example.org", "sport", "daily"),
]
SELECTED = {"ana@example.org", "ben@example.org"}  # tag=news&cadence=daily


# --- confirm ----------------------------------------------------------------------


def test_the_confirm_page_counts_the_selection_and_changes_nothing() -> None:
    add_readers(MIXED)
    c = signed_in(ADMIN)
    page = confirm(c, "tag=news&cadence=daily&action=pause")
    assert page.status_code == 200
    assert COUNT.findall(page.text) == ["2"]
    assert ">Pause 2 readers</button>" in page.text
    fields = hidden_fields(page.text)
    assert fields["tag"] == "news" and fields["cadence"] == "daily" and "q" not in fields
    assert confirm(c, "action=unsubscribe").status_code == 200
    assert COUNT.findall(confirm(c, "action=unsubscribe").text) == ["4"]
    nobody = confirm(c, "q=zed&action=delete")
    assert COUNT.findall(nobody.text) == ["0"] and "nothing to do" in nobody.text
    assert 'action="/admin/subscribers/bulk"' not in nobody.text.split("</header>")[1]
    # Bad requests are refused with a page, and change nothing either.
    assert confirm(c, "action=explode").status_code == 400
    assert "choose the tag" in confirm(c, "action=tag_add").text
    assert confirm(c, "action=tag_add&bulk_tag=nope").status_code == 400
    assert confirm(c, "status=asleep&action=pause").status_code == 400
    assert set(statuses().values()) == {SubscriberStatus.ACTIVE}
    assert count(ConsoleJob) == 0
    assert [a for a, _ in actions()] == ["login"]


def test_the_list_offers_the_bulk_form_export_and_import_with_its_filters() -> None:
    add_readers(MIXED)
    html = signed_in(ADMIN).get("/admin/subscribers?tag=news&cadence=daily").text
    bulk_form = html[html.index('id="bulk"') :]
    assert 'action="/admin/subscribers/bulk"' in bulk_form
    assert '<input type="hidden" name="tag" value="news">' in bulk_form
    assert '<input type="hidden" name="cadence" value="daily">' in bulk_form
    assert 'href="/admin/subscribers/export?tag=news&amp;cadence=daily"' in bulk_form
    assert 'href="/admin/subscribers/import"' in bulk_form


# --- each action ------------------------------------------------------------------


def test_add_a_tag_to_the_selection_keeps_existing_follows_dates() -> None:
    long_ago = utcnow() - dt.timedelta(days=30)
    add_readers(MIXED, now=long_ago)
    before = utcnow()
    c = signed_in(ADMIN)
    page = run_bulk(c, "tag=news&cadence=daily&action=tag_add&bulk_tag=extra")
    assert 'data-status="done"' in page.text
    for email, *_ in MIXED:
        followed = follows(email)
        if email in SELECTED:
            assert "extra" in followed
        else:
            assert "extra" not in followed
    # A new follow starts now; one that existed keeps its date.
    assert follows("ana@example.org")["extra"] >= before
    assert follows("ben@example.org")["extra"] == long_ago
    assert follows("ana@example.org")["news"] == long_ago
    job = only_job()
    assert (job.kind, job.status, job.total, job.done, job.failed) == (
        "bulk_tag_add",
        "done",
        2,
        2,
        0,
    )
    (entry,) = audit_entries("bulk_tag_add")
    assert entry.actor_email == ADMIN and entry.target == "2 readers"
    assert entry.detail == {
        "filters": {"tag": "news", "cadence": "daily"},
        "count": 2,
        "job": job.id,
        "tag": "extra",
    }


def test_remove_a_tag_reports_readers_for_whom_it_is_the_only_one() -> None:
    ids = add_readers(MIXED)
    c = signed_in(ADMIN)
    page = run_bulk(c, "cadence=daily&action=tag_remove&bulk_tag=news")
    assert set(follows("ben@example.org")) == {"extra"}
    assert set(follows("ana@example.org")) == {"news"}  # the only tag: left as it was
    assert set(follows("cid@example.org")) == {"news"}  # weekly: not selected
    assert set(follows("dee@example.org")) == {"sport"}  # does not follow it: nothing to do
    job = only_job()
    assert (job.total, job.done, job.failed) == (3, 2, 1)
    assert job.report["failures"] == [
        {"id": ids["ana@example.org"], "reason": "news is the only tag they follow, "
         "and a reader follows at least one"}
    ]  # fmt: skip
    table = page.text[page.text.index('id="failures"') :]
    assert f'/admin/subscribers/{ids["ana@example.org"]}"' in table
    assert "the only tag they follow" in table


def test_pause_changes_the_selection_and_reports_who_cannot_be_paused() -> None:
    ids = add_readers(
        [*MIXED, ("eve@example.org", "news", "daily"), ("fay@example.org", "news", "daily")]
    )
    set_status("eve@example.org", SubscriberStatus.PENDING)
    set_status("fay@example.org", SubscriberStatus.UNSUBSCRIBED)
    c = signed_in(ADMIN)
    run_bulk(c, "tag=news&cadence=daily&action=pause")
    assert statuses() == {
        "ana@example.org": SubscriberStatus.PAUSED,
        "ben@example.org": SubscriberStatus.PAUSED,
        "cid@example.org": SubscriberStatus.ACTIVE,
        "dee@example.org": SubscriberStatus.ACTIVE,
        "eve@example.org": SubscriberStatus.PENDING,
        "fay@example.org": SubscriberStatus.UNSUBSCRIBED,
    }
    job = only_job()
    assert (job.total, job.done, job.failed) == (4, 2, 2)
    assert {f["id"] for f in job.report["failures"]} == {
        ids["eve@example.org"],
        ids["fay@example.org"],
    }


def test_unsubscribe_uses_the_unsubscribe_service_and_suppresses_the_selection() -> None:
    add_readers(MIXED)
    c = signed_in(ADMIN)
    run_bulk(c, "tag=news&cadence=daily&action=unsubscribe")
    now = statuses()
    for email, *_ in MIXED:
        with session_scope() as session:
            row = suppression.find(session, email)
        if email in SELECTED:
            assert now[email] is SubscriberStatus.UNSUBSCRIBED
            assert row is not None and row.reason is SuppressionReason.UNSUBSCRIBED
        else:
            assert now[email] is SubscriberStatus.ACTIVE and row is None
    with session_scope() as session:
        actors = set(session.scalars(select(SuppressionEvent.actor)))
    assert actors == {f"{ADMIN} (bulk action)"}


def test_delete_forgets_exactly_the_selection_and_the_audit_keeps_no_address() -> None:
    add_readers(MIXED)
    c = signed_in(ADMIN)
    page = run_bulk(c, "q=ana@example.org&action=delete")
    assert "ana@example.org" not in statuses()
    assert set(statuses()) == {e for e, *_ in MIXED} - {"ana@example.org"}
    (entry,) = audit_entries("bulk_delete")
    assert entry.target == "1 readers"
    assert "ana@" not in str(entry.detail) and entry.detail["filters"] == {"q": "(not kept)"}
    # The finished job keeps no search either.
    assert "ana@" not in page.text and only_job().params["filters"] == {"q": "(not kept)"}


def test_readers_who_join_after_the_confirmation_are_not_touched() -> None:
    add_readers(MIXED)
    c = signed_in(ADMIN)
    page = confirm(c, "tag=news&action=pause")
    assert COUNT.findall(page.text) == ["3"]
    add_readers([("zoe@example.org", "news", "daily")])
    c.post("/admin/subscribers/bulk", data=hidden_fields(page.text))
    assert statuses()["zoe@example.org"] is SubscriberStatus.ACTIVE
    assert only_job().done == 3


# --- the job runner ---------------------------------------------------------------


def make_job(action: bulk.BulkAction, tag: str = "", **filters: str) -> int:
    with session_scope() as session:
        selection = bulk.Selection.from_filters(filters, bulk.highest_id(session))
        return bulk.create_bulk_job(session, action, selection, tag, ADMIN).id


def test_a_bad_reader_is_reported_and_every_other_one_is_done_chunk_by_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emails = [f"r{n}@example.org" for n in range(7)]
    ids = add_readers([(e, "news", "daily") for e in emails])
    broken = ids["r3@example.org"]
    pause = bulk.ROW_ACTIONS[bulk.BulkAction.PAUSE]

    def flaky(session: Any, reader: Subscriber, *args: Any) -> None:
        pause(session, reader, *args)  # the change is made, then undone by the savepoint
        if reader.id == broken:
            raise RuntimeError("disk on fire")

    monkeypatch.setitem(bulk.ROW_ACTIONS, bulk.BulkAction.PAUSE, flaky)
    commits: list[int] = []
    real_chunk = bulk._run_chunk

    def counted(job_id: int, size: int) -> bool:
        commits.append(size)
        return real_chunk(job_id, size)

    monkeypatch.setattr(bulk, "_run_chunk", counted)
    job_id = make_job(bulk.BulkAction.PAUSE)
    assert bulk.run_job(job_id, chunk=3) == "done"
    assert len(commits) == 3  # 3 + 3 + 1 readers, each chunk its own transaction
    paused = {e for e, s in statuses().items() if s is SubscriberStatus.PAUSED}
    assert paused == set(emails) - {"r3@example.org"}
    with session_scope() as session:
        job = session.get(ConsoleJob, job_id)
        assert job is not None
        assert (job.status, job.total, job.done, job.failed) == ("done", 7, 6, 1)
        (failure,) = job.report["failures"]
        assert failure["id"] == broken and "RuntimeError" in failure["reason"]
        assert job.report["after"] == max(ids.values())
        assert job.started_at is not None and job.finished_at is not None
    # Done is done: a second task for the same job changes nothing.
    set_status("r0@example.org", SubscriberStatus.ACTIVE)
    assert bulk.run_job(job_id) == "done"
    assert statuses()["r0@example.org"] is SubscriberStatus.ACTIVE


def test_a_job_cut_short_resumes_after_its_last_committed_chunk() -> None:
    ids = add_readers([(f"r{n}@example.org", "news", "daily") for n in range(5)])
    make_tags("extra")
    job_id = make_job(bulk.BulkAction.TAG_ADD, "extra")
    ordered = sorted(ids.values())
    # As a worker killed after its second chunk leaves it: running, cursor on reader 2.
    with session_scope() as session:
        session.execute(
            update(ConsoleJob)
            .where(ConsoleJob.id == job_id)
            .values(status="running", done=2, report={"after": ordered[1], "failures": []})
        )
    assert bulk.run_job(job_id, chunk=2) == "done"
    tagged = {e for e in ids if "extra" in follows(e)}
    assert tagged == {"r2@example.org", "r3@example.org", "r4@example.org"}
    assert only_job().done == 5


def test_a_tag_deleted_while_its_job_waits_fails_the_job_clearly() -> None:
    add_readers([("ana@example.org", "news, extra", "daily")])
    job_id = make_job(bulk.BulkAction.TAG_REMOVE, "extra")
    with session_scope() as session:
        session.execute(delete(Tag).where(Tag.slug == "extra"))
    assert bulk.run_job(job_id) == "failed"
    assert "was deleted meanwhile" in (only_job().error or "")
    html = signed_in(ADMIN).get(f"/admin/jobs/{job_id}").text
    assert 'data-status="failed"' in html and "was deleted meanwhile" in html
    assert "http-equiv" not in html  # a finished job's page stops reloading


def test_a_running_job_page_reloads_itself_and_shows_progress() -> None:
    add_readers([(f"r{n}@example.org", "news", "daily") for n in range(4)])
    job_id = make_job(bulk.BulkAction.PAUSE)
    with session_scope() as session:
        session.execute(
            update(ConsoleJob).where(ConsoleJob.id == job_id).values(status="running", done=1)
        )
    c = signed_in(ADMIN)
    html = c.get(f"/admin/jobs/{job_id}").text
    assert '<meta http-equiv="refresh" content="2">' in html
    assert 'max="4" value="1"' in html and "Running" in html
    assert c.get("/admin/jobs/999999").status_code == 404


# --- import -----------------------------------------------------------------------


def upload(
    c: TestClient, content: bytes, name: str = "list.csv", token: str | None = None, **flags: str
) -> Response:
    data = {"csrf_token": token if token is not None else token_of(c), **flags}
    return c.post(
        "/admin/subscribers/import",
        data=data,
        files={"file": (name, content, "text/csv")},
        follow_redirects=False,
    )


GOOD_AND_BAD = (
    HEADER
    + "ana@example.org,Ana,news,daily,UTC\n"
    + "not-an-address,Bob,news,daily,UTC\n"
    + "cid@example.org,Cid,news,hourly,UTC\n"
    + "ben@example.org,Ben Updated,news,weekly,UTC\n"
    + "dee@example.org,Dee,nosuchtag,daily,UTC\n"
    + "ana@example.org,Ana again,news,daily,UTC\n"
).encode()


def test_an_import_with_bad_rows_shows_the_row_report() -> None:
    add_readers([("ben@example.org", "news", "daily")])
    c = signed_in(ADMIN)
    form = c.get("/admin/subscribers/import")
    assert form.status_code == 200 and 'enctype="multipart/form-data"' in form.text
    response = upload(c, GOOD_AND_BAD)
    assert response.status_code == 303
    html = c.get(response.headers["location"]).text
    assert 'data-status="done"' in html
    facts = dict(re.findall(r'<dd id="job-(\w+)">(\d+)</dd>', html))
    assert facts == {"rows": "6", "created": "1", "updated": "1", "unchanged": "0", "rejected": "4"}
    rejected = html[html.index('id="rejected"') :]
    lines = re.findall(r"<tr><td>(\d+)</td><td>([^<]*)</td><td>([^<]*)</td></tr>", rejected)
    assert [(int(n), email) for n, email, _ in lines] == [
        (3, "not-an-address"),
        (4, "cid@example.org"),
        (6, "dee@example.org"),
        (7, "ana@example.org"),
    ]
    reasons = [reason for *_, reason in lines]
    assert "invalid email address" in reasons[0] and "hourly" in reasons[1]
    assert "nosuchtag" in reasons[2] and "duplicate of line 2" in reasons[3]
    assert statuses().keys() == {"ana@example.org", "ben@example.org"}
    (entry,) = audit_entries("subscribers_imported")
    assert entry.target == "6 rows" and entry.detail["file"] == "list.csv"


def test_a_check_only_import_reports_and_writes_nothing() -> None:
    c = signed_in(ADMIN)
    add_readers([("ben@example.org", "news", "daily")])
    response = upload(c, GOOD_AND_BAD, dry_run="on")
    html = c.get(response.headers["location"]).text
    assert "(check only)" in html and "Would be imported" in html
    assert statuses().keys() == {"ben@example.org"}


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (b"ana@example.org,Ana,news,daily,UTC\n", "list.csv", "missing column(s)"),
        (b"mail;nom\nana@example.org;Ana\n", "list.csv", "missing column(s) email, name"),
        (
            HEADER.encode() + "zoë@example.org,Zoë,news,daily,UTC\n".encode("latin-1"),
            "l.csv",
            "not UTF-8",
        ),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "photo.png", "not UTF-8"),
        (b'{"email": "ana@example.org"}', "list.json", "missing column(s)"),
        (
            HEADER.encode() + b'ana@example.org,"' + b"A" * 140_000 + b'"\n',
            "huge.csv",
            "longer than",
        ),
        (b"", "empty.csv", "the file is empty"),
    ],
)
def test_a_bad_file_is_refused_clearly_and_nothing_is_imported(
    content: bytes, name: str, message: str
) -> None:
    c = signed_in(ADMIN)
    response = upload(c, content, name)
    assert response.status_code == 400
    error = re.findall(r'<p class="error" role="alert">([^<]*)</p>', response.text)
    assert (
        len(error) == 1
        and message.lower() in error[0].lower()
        and "nothing was imported" in error[0]
    )
    assert 'enctype="multipart/form-data"' in response.text  # the form, to try again
    assert count(Subscriber) == 0 and count(ConsoleJob) == 0
    assert [a for a, _ in actions()] == ["login"]


def test_an_upload_over_the_limit_is_refused_before_it_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from newsletter.console import bulk as console_bulk

    monkeypatch.setattr(console_bulk, "MAX_UPLOAD_BYTES", 1024)
    c = signed_in(ADMIN)
    big = HEADER + "".join(f"r{n}@example.org,R,news,daily,UTC\n" for n in range(100))
    response = upload(c, big.encode())
    assert response.status_code == 413 and "larger than" in response.text
    assert count(Subscriber) == 0 and count(ConsoleJob) == 0
    # No file chosen at all.
    response = c.post("/admin/subscribers/import", data={"csrf_token": token_of(c)}, files={})
    assert response.status_code == 400


def test_a_large_import_is_stored_for_a_worker_and_dropped_when_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bulk, "runs_in_request", lambda size, limit: False)
    queued: list[tuple[str, tuple[Any, ...]]] = []
    monkeypatch.setattr(
        bulk, "enqueue_after_commit", lambda session, task, *args: queued.append((task, args))
    )
    c = signed_in(ADMIN)
    make_readers = HEADER + "ana@example.org,Ana,news,daily,UTC\n"
    response = upload(c, make_readers.encode(), create_tags="on")
    job = only_job()
    assert queued == [("run_console_job", (job.id,))]
    assert job.status == "queued" and job.params["csv"] == make_readers
    assert 'data-status="queued"' in c.get(response.headers["location"]).text
    assert count(Subscriber) == 0
    # What the worker's task does:
    assert bulk.run_job(job.id) == "done"
    job = only_job()
    assert "csv" not in job.params and job.done == 1
    assert statuses() == {"ana@example.org": SubscriberStatus.ACTIVE}


# --- export -----------------------------------------------------------------------


def test_the_export_streams_the_filtered_readers_with_formulas_escaped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bulk, "EXPORT_CHUNK", 2)
    with session_scope() as session:
        get_or_create_tags(session, parse_tag_names("news, =HYPERLINK(1), sport"))
        for email, name, tags, cadence in [
            ("ana@example.org", "=cmd|' /C calc'!A0", "news, =HYPERLINK(1)", "daily"),
            ("ben@example.org", "+Ben", "news", "daily"),
            ("cid@example.org", "@Cid", "news", "daily"),
            ("dee@example.org", "-Dee", "news", "daily"),
            ("eve@example.org", "Eve", "news", "weekly"),
            ("fay@example.org", "Fay", "sport", "daily"),
        ]:
            add_subscriber(session, SubscriberInput(email, tags, cadence, name))
    c = signed_in(ADMIN)
    response = c.get("/admin/subscribers/export?tag=news&cadence=daily")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    today = utcnow().strftime("%Y-%m-%d")
    assert response.headers["content-disposition"] == (
        f'attachment; filename="subscribers-{today}.csv"'
    )
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == [
        "email",
        "name",
        "tags",
        "cadence",
        "timezone",
        "status",
        "send_hour",
        "send_weekday",
        "suppressed",
    ]
    assert [r[0] for r in rows[1:]] == [
        "ana@example.org",
        "ben@example.org",
        "cid@example.org",
        "dee@example.org",
    ]
    assert [r[1] for r in rows[1:]] == ["'=cmd|' /C calc'!A0", "'+Ben", "'@Cid", "'-Dee"]
    assert rows[1][2] == "'=HYPERLINK(1), news"
    # The same lines the CLI's whole-list export writes for these readers.
    whole = io.StringIO()
    with session_scope() as session:
        export_csv(session, whole)
    wanted = [
        line
        for line in whole.getvalue().splitlines()
        if line.split(",")[0] in {r[0] for r in rows[1:]}
    ]
    assert response.text.splitlines()[1:] == wanted
    # Re-importing the file changes nothing.
    with session_scope() as session:
        report = import_csv(session, response.text)
    assert (report.created, report.updated, len(report.rejected)) == (0, 0, 0)
    (entry,) = audit_entries("subscribers_exported")
    assert entry.target == "4 readers"
    assert entry.detail == {"filters": {"tag": "news", "cadence": "daily"}, "count": 4}


def test_the_export_is_produced_in_chunks_and_refuses_a_bad_filter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    add_readers([(f"r{n}@example.org", "news", "daily") for n in range(5)])
    pieces = list(bulk.export_chunks(bulk.Selection(tag="news"), chunk=2))
    assert len(pieces) == 4  # the header, then 2 + 2 + 1 readers
    assert pieces[0].startswith("email,") and pieces[3].startswith("r4@example.org,")
    c = signed_in(ADMIN)
    assert c.get("/admin/subscribers/export?status=asleep").status_code == 400
    empty = c.get("/admin/subscribers/export?q=nobody")
    assert empty.status_code == 200 and empty.text.count("\n") == 1
    with pytest.raises(InvalidInput):
        list(bulk.export_chunks(bulk.Selection(cadence="hourly")))


# --- who may, and forged requests -------------------------------------------------


def test_an_editor_is_refused_every_bulk_import_export_and_job_route() -> None:
    add_readers(MIXED)
    job_id = make_job(bulk.BulkAction.PAUSE)
    c = signed_in(EDITOR)
    token = token_of(c)
    for url in (
        "/admin/subscribers/bulk?action=pause",
        "/admin/subscribers/import",
        "/admin/subscribers/export",
        f"/admin/jobs/{job_id}",
    ):
        assert c.get(url).status_code == 403, url
    post = c.post(
        "/admin/subscribers/bulk",
        data={"csrf_token": token, "action": "pause", "upto": "999999"},
    )
    assert post.status_code == 403
    assert upload(c, GOOD_AND_BAD, token=token).status_code == 403
    assert set(statuses().values()) == {SubscriberStatus.ACTIVE}
    assert count(ConsoleJob) == 1 and only_job().status == "queued"
    assert [a for a, _ in actions()] == ["login"]


def test_without_the_csrf_token_nothing_changes() -> None:
    add_readers(MIXED)
    c = signed_in(ADMIN)
    fields = hidden_fields(confirm(c, "action=delete").text)
    for token in (None, "not-the-token"):
        data = {k: v for k, v in fields.items() if k != "csrf_token"}
        if token is not None:
            data["csrf_token"] = token
        assert c.post("/admin/subscribers/bulk", data=data).status_code == 403
        assert upload(c, GOOD_AND_BAD, token=token or "").status_code == 403
    assert count(Subscriber) == len(MIXED) and count(ConsoleJob) == 0
    assert [a for a, _ in actions()] == ["login"]


# --- in the browser ---------------------------------------------------------------


def test_admin_tags_a_filtered_selection_and_imports_a_file_with_a_bad_row(
    console_server: str, tmp_path: Path
) -> None:
    base = console_server
    add_readers(MIXED)
    csv_file = tmp_path / "readers.csv"
    csv_file.write_text(
        HEADER + "gus@example.org,Gus,news,daily,UTC\nbroken-address,Hal,news,daily,UTC\n"
    )
    problems: list[str] = []
    with launch_chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", script_problem(problems))
        browser_sign_in(page, base, ADMIN)

        page.goto(f"{base}/admin/subscribers")
        page.select_option("select[name=tag]", "news")
        page.select_option("select[name=cadence]", "daily")
        page.click("button:has-text('Search')")
        page.wait_for_url("**/admin/subscribers?*tag=news*")
        assert page.locator("#subscribers tbody tr").count() == 2
        page.screenshot(path=str(artefact("bulk-list.png")), full_page=True)
        page.select_option("#bulk select[name=action]", "tag_add")
        page.select_option("#bulk select[name=bulk_tag]", "extra")
        page.click("#bulk button:has-text('Continue')")
        page.wait_for_url("**/admin/subscribers/bulk?*")
        assert page.locator("#bulk-count").inner_text() == "2"
        page.screenshot(path=str(artefact("bulk-confirm.png")), full_page=True)
        page.click("button:has-text('Add extra to 2 readers')")
        page.wait_for_url("**/admin/jobs/*")
        page.wait_for_selector("#job[data-status=done]")
        assert page.locator("#job-done").inner_text() == "2"
        page.screenshot(path=str(artefact("bulk-job.png")), full_page=True)

        page.goto(f"{base}/admin/subscribers?tag=news&cadence=daily")
        with page.expect_download() as download_info:
            page.click("text=Export these readers as CSV")
        download = download_info.value
        assert re.fullmatch(r"subscribers-\d{4}-\d{2}-\d{2}\.csv", download.suggested_filename)
        exported = Path(download.path()).read_text().splitlines()
        assert exported[0].startswith("email,") and len(exported) == 1 + len(SELECTED)
        assert {line.split(",")[0] for line in exported[1:]} == SELECTED

        page.goto(f"{base}/admin/subscribers")
        page.click("text=Import a CSV file")
        page.wait_for_url(f"{base}/admin/subscribers/import")
        page.set_input_files("input[name=file]", str(csv_file))
        page.click("button:has-text('Import')")
        page.wait_for_url("**/admin/jobs/*")
        page.wait_for_selector("#job[data-status=done]")
        assert page.locator("#job-created").inner_text() == "1"
        rejected = page.locator("#rejected tbody tr")
        assert rejected.count() == 1
        assert "broken-address" in rejected.inner_text() and "3" in rejected.inner_text()
        page.screenshot(path=str(artefact("import-report.png")), full_page=True)
    for shot in ("bulk-list.png", "bulk-confirm.png", "bulk-job.png", "import-report.png"):
        assert artefact(shot).stat().st_size > 0
    assert problems == []
    assert {e for e in SELECTED if "extra" in follows(e)} == SELECTED
    assert "extra" not in follows("cid@example.org")
    assert "gus@example.org" in statuses()
