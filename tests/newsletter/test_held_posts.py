"""Held posts, on SQLite and PostgreSQL with a real SMTP server: a held post goes to
nobody (immediate, daily, weekly, the sweeper, the preview), and once released it goes
to exactly the readers it would have gone to, each once."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from newsletter import dispatch
from newsletter.db import session_scope
from newsletter.delivery import planning
from newsletter.delivery.pipeline import run_due
from newsletter.models import DeliveryPost, Post
from newsletter.posts import PostInput, add_post, hold_post, release_post
from newsletter.preview import build_preview
from tests.conftest import ScriptedHandler
from tests.factories import make_post, make_subscriber
from tests.newsletter.test_pipeline import titles_by_recipient

pytestmark = pytest.mark.usefixtures("app_env")

HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
HELD = "Post number 1 (held)"
OTHER = "Post number 2"


def add_held_post(title: str, now: dt.datetime) -> int:
    """A post held in the transaction that adds it, so its own task finds it held."""
    with session_scope() as session:
        post = add_post(
            session,
            PostInput(title=title, url="https://blog.example.org/held/", tags="politics"),
            now=now,
        )
        assert hold_post(post, "grace@example.org", now)
        return post.id


def release(post_id: int) -> None:
    with session_scope() as session:
        post = session.get(Post, post_id)
        assert post is not None and release_post(session, post)


def promised_to(post_id: int) -> list[int]:
    with session_scope() as session:
        rows = session.scalars(
            select(DeliveryPost.subscriber_id).where(DeliveryPost.post_id == post_id)
        )
        return sorted(rows)


def preview_titles(email: str, now: dt.datetime) -> list[str]:
    """What the editor's preview says the reader would get if the planner ran now."""
    with session_scope() as session:
        preview = build_preview(session, None, None, email, now)
        titles = [p.title for p in preview.posts] if preview.pending else []
        session.rollback()
        return titles


@pytest.fixture
def readers(t0: dt.datetime) -> dict[str, int]:
    """One reader of each cadence, all following politics since t0 (Monday 10:00 UTC):
    the daily one is due every day at 08:00 UTC, the weekly one on Wednesdays."""
    return {
        "imm@example.org": make_subscriber("imm@example.org", "politics", now=t0),
        "day@example.org": make_subscriber("day@example.org", "politics", "daily", t0),
        "week@example.org": make_subscriber(
            "week@example.org", "politics", "weekly", t0, send_weekday="wednesday"
        ),
    }


def test_held_post_goes_to_nobody_and_after_release_to_each_reader_once(
    smtp: ScriptedHandler, t0: dt.datetime, readers: dict[str, int]
) -> None:
    held = add_held_post(HELD, t0 + HOUR)
    make_post("politics", now=t0 + HOUR, title=OTHER)
    # Immediate readers are planned when the post arrives: they get the other post only.
    assert titles_by_recipient(smtp) == {"imm@example.org": [OTHER]}

    tuesday, wednesday = t0 + DAY - 2 * HOUR, t0 + 2 * DAY - 2 * HOUR  # 08:00 UTC
    assert preview_titles("day@example.org", tuesday) == [OTHER]
    run_due(tuesday + 0.5 * HOUR)
    assert preview_titles("week@example.org", wednesday) == [OTHER]
    run_due(wednesday + 0.5 * HOUR)
    got = titles_by_recipient(smtp)
    assert got == {
        "imm@example.org": [OTHER],
        "day@example.org": [OTHER],
        "week@example.org": [OTHER],
    }
    assert promised_to(held) == []

    # Released: the immediate reader is planned at once, the others at their next slot.
    release(held)
    assert titles_by_recipient(smtp)["imm@example.org"] == [OTHER, HELD]
    assert preview_titles("day@example.org", wednesday + DAY) == [HELD]
    run_due(wednesday + DAY + 0.5 * HOUR)  # Thursday 08:30: the daily reader's slot
    assert titles_by_recipient(smtp)["day@example.org"] == [OTHER, HELD]
    assert "week@example.org" not in {m.recipients[0] for m in smtp.messages[4:]}
    run_due(wednesday + 7 * DAY + 0.5 * HOUR)  # the next Wednesday
    assert titles_by_recipient(smtp)["week@example.org"] == [OTHER, HELD]

    # Once: a re-run, a re-plan of the post and a second release add nothing.
    sent = len(smtp.messages)
    run_due(wednesday + 8 * DAY + 0.5 * HOUR)
    planning.plan_for_post(held)
    with session_scope() as session:
        post = session.get(Post, held)
        assert post is not None and not release_post(session, post)
    assert len(smtp.messages) == sent
    assert promised_to(held) == sorted(readers.values())


def test_holding_a_post_already_sent_to_some_keeps_it_from_the_rest(
    smtp: ScriptedHandler, t0: dt.datetime, readers: dict[str, int]
) -> None:
    post_id = make_post("politics", now=t0 + HOUR, title=HELD)
    assert titles_by_recipient(smtp) == {"imm@example.org": [HELD]}
    with session_scope() as session:
        post = session.get(Post, post_id)
        assert post is not None and hold_post(post, "grace@example.org")
        assert not hold_post(post, "grace@example.org")  # held already
    run_due(t0 + DAY)
    assert titles_by_recipient(smtp) == {"imm@example.org": [HELD]}

    release(post_id)
    run_due(t0 + 2 * DAY)
    assert titles_by_recipient(smtp) == {
        "imm@example.org": [HELD],
        "day@example.org": [HELD],
        "week@example.org": [HELD],
    }


@pytest.fixture
def lost_tasks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, tuple[object, ...]]]]:
    """The broker is down: every task sent after a commit is lost."""
    lost: list[tuple[str, tuple[object, ...]]] = []
    monkeypatch.setattr(dispatch, "send_task", lambda task, *args: lost.append((task, args)))
    yield lost


def test_sweeper_leaves_a_held_post_alone_and_plans_it_once_released(
    smtp: ScriptedHandler,
    t0: dt.datetime,
    readers: dict[str, int],
    lost_tasks: list[tuple[str, tuple[object, ...]]],
) -> None:
    held = add_held_post(HELD, t0 + HOUR)
    assert lost_tasks == [("post_published", (held,))]
    later = t0 + 3 * HOUR
    assert planning.unplanned_posts(later) == []
    run_due(later)
    assert smtp.messages == [] and promised_to(held) == []
    with session_scope() as session:
        post = session.get(Post, held)
        assert post is not None and post.planned_at is None

    # Released while the broker is still down: the sweeper finds it and plans it.
    release(held)
    assert lost_tasks[-1] == ("post_published", (held,))
    assert planning.unplanned_posts(later) == [held]
    run_due(later)
    assert titles_by_recipient(smtp) == {"imm@example.org": [HELD]}
    assert planning.unplanned_posts(later) == []


def test_an_editor_token_holds_and_releases_through_the_api(
    smtp: ScriptedHandler, t0: dt.datetime
) -> None:
    """The REST API reaches hold and release with an editor's token, audited, and a
    held post goes to its immediate reader only once released."""
    from fastapi.testclient import TestClient

    from newsletter.apitokens import create_token
    from newsletter.console.models import AuditEntry
    from newsletter.web.app import create_app

    reader = make_subscriber("imm@example.org", "politics", now=t0)
    with session_scope() as session:
        plain, _ = create_token(session, "newsroom", role="editor")
        post = add_post(
            session,
            PostInput(title=HELD, url="https://blog.example.org/held/", tags="politics"),
            now=t0 + HOUR,
        )
        assert hold_post(post, "grace@example.org", t0 + HOUR)
        post_id = post.id
    api = TestClient(create_app(), headers={"Authorization": f"Bearer {plain}"})

    held = api.post(f"/api/posts/{post_id}/hold")
    assert held.status_code == 200 and held.json()["held_by"] == "grace@example.org"
    assert promised_to(post_id) == [] and smtp.messages == []

    released = api.post(f"/api/posts/{post_id}/release")
    assert released.status_code == 200 and released.json()["held_at"] is None
    assert promised_to(post_id) == [reader]
    assert api.post(f"/api/posts/{post_id}/release").status_code == 200  # no-op
    assert promised_to(post_id) == [reader] and len(smtp.messages) == 1
    assert api.post("/api/posts/999999/hold").status_code == 404
    with session_scope() as session:
        logged = session.scalars(select(AuditEntry.action).order_by(AuditEntry.id)).all()
    assert logged == ["post_released"]
