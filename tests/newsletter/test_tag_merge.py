"""Renaming and merging tags, on SQLite and PostgreSQL: posts and follows move, each
follower keeps the date they started following, nothing is ever duplicated."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select, update

from newsletter.db import session_scope
from newsletter.delivery.planning import pending_posts
from newsletter.errors import InvalidInput
from newsletter.feeds import services as feeds
from newsletter.models import Feed, Tag, post_tags
from newsletter.tags import find_tag, merge_tags, offered_tags, rename_tag, tag_summaries
from subscribers.models import subscriber_tags
from tests.factories import make_post, make_subscriber, make_tags

pytestmark = pytest.mark.usefixtures("app_env")

DAY = dt.timedelta(days=1)


def follow_since(subscriber_id: int, slug: str, when: dt.datetime) -> None:
    with session_scope() as session:
        tag_id = find_tag(session, slug).id
        session.execute(
            update(subscriber_tags)
            .where(
                subscriber_tags.c.subscriber_id == subscriber_id, subscriber_tags.c.tag_id == tag_id
            )
            .values(created_at=when)
        )


def follows() -> dict[tuple[int, str], dt.datetime]:
    with session_scope() as session:
        rows = session.execute(
            select(subscriber_tags.c.subscriber_id, Tag.slug, subscriber_tags.c.created_at).join(
                Tag, Tag.id == subscriber_tags.c.tag_id
            )
        )
        return {(sid, slug): when for sid, slug, when in rows}


def post_tag_rows() -> list[tuple[int, str]]:
    with session_scope() as session:
        rows = session.execute(
            select(post_tags.c.post_id, Tag.slug)
            .join(Tag, Tag.id == post_tags.c.tag_id)
            .order_by(post_tags.c.post_id, Tag.slug)
        )
        return [(pid, slug) for pid, slug in rows]


def merge(source: str, target: str) -> None:
    with session_scope() as session:
        merge_tags(session, find_tag(session, source), find_tag(session, target))


def test_merge_moves_posts_and_follows_and_keeps_the_earliest_follow_date(
    t0: dt.datetime,
) -> None:
    make_tags("Climate, Environment, Health")
    both_a_first = make_subscriber("ana@example.org", "climate, environment", "weekly", now=t0)
    both_b_first = make_subscriber("bob@example.org", "climate, environment", "weekly", now=t0)
    only_a = make_subscriber("carla@example.org", "climate, health", "weekly", now=t0)
    only_b = make_subscriber("dan@example.org", "environment", "weekly", now=t0)
    follow_since(both_a_first, "climate", t0 + DAY)
    follow_since(both_a_first, "environment", t0 + 5 * DAY)
    follow_since(both_b_first, "climate", t0 + 6 * DAY)
    follow_since(both_b_first, "environment", t0 + 2 * DAY)
    follow_since(only_a, "climate", t0 + 3 * DAY)
    follow_since(only_b, "environment", t0 + 4 * DAY)
    only_a_post = make_post("climate", now=t0)
    both_post = make_post("climate, environment, health", now=t0)
    only_b_post = make_post("environment", now=t0)

    with session_scope() as session:
        report = merge_tags(session, find_tag(session, "climate"), find_tag(session, "environment"))
    assert (report.posts_moved, report.followers_moved, report.followers_both) == (1, 1, 2)

    assert follows() == {
        (both_a_first, "environment"): t0 + DAY,  # the earlier date: the climate one
        (both_b_first, "environment"): t0 + 2 * DAY,  # its own, already the earlier
        (only_a, "environment"): t0 + 3 * DAY,  # moved with its date
        (only_a, "health"): t0,  # untouched
        (only_b, "environment"): t0 + 4 * DAY,
    }
    assert post_tag_rows() == [
        (only_a_post, "environment"),
        (both_post, "environment"),
        (both_post, "health"),
        (only_b_post, "environment"),
    ]
    with session_scope() as session:
        assert session.scalar(select(Tag).where(Tag.slug == "climate")) is None
        counts = {s.tag.slug: (s.posts, s.followers) for s in tag_summaries(session)}
    assert counts == {"environment": (3, 4), "health": (1, 1)}


def test_the_kept_follow_date_decides_which_posts_a_reader_is_due(t0: dt.datetime) -> None:
    """A reader who followed only the merged tag is due the target's posts that arrived
    after they started following, not the ones before."""
    make_tags("Climate, Environment")
    reader = make_subscriber("ana@example.org", "climate", "weekly", now=t0)
    follow_since(reader, "climate", t0 + 2 * DAY)
    before = make_post("environment", now=t0 + DAY)
    after = make_post("environment", now=t0 + 3 * DAY)
    merge("climate", "environment")
    with session_scope() as session:
        due = pending_posts(session, [reader], t0 + 4 * DAY)
    assert due == {reader: [after]} and before not in due[reader]


def test_merging_twice_over_the_same_rows_never_duplicates(t0: dt.datetime) -> None:
    """Three tags on one post and one reader folded into one: one row each."""
    make_tags("A, B, C")
    reader = make_subscriber("ana@example.org", "a, b, c", "weekly", now=t0)
    post = make_post("a, b, c", now=t0)
    merge("a", "b")
    merge("c", "b")
    assert post_tag_rows() == [(post, "b")]
    assert list(follows()) == [(reader, "b")]


def test_a_tag_cannot_be_merged_into_itself() -> None:
    make_tags("Climate")
    with session_scope() as session, pytest.raises(InvalidInput, match="itself"):
        tag = find_tag(session, "climate")
        merge_tags(session, tag, tag)


def test_merge_and_rename_update_the_tags_a_feed_adds(t0: dt.datetime) -> None:
    with session_scope() as session:
        feed_id = feeds.add_feed(session, "https://blog.example.org/feed", "Climate, Health").id
    make_tags("Environment")
    merge("climate", "environment")
    with session_scope() as session:
        rename_tag(session, find_tag(session, "health"), "Public Health")
    with session_scope() as session:
        feed = session.get(Feed, feed_id)
        assert feed is not None and feed.extra_tags == "Environment, Public Health"


def test_rename_changes_name_and_slug_and_refuses_a_taken_slug(t0: dt.datetime) -> None:
    make_tags("Climate, Health")
    reader = make_subscriber("ana@example.org", "climate", "weekly", now=t0)
    with session_scope() as session:
        assert rename_tag(session, find_tag(session, "climate"), "Climate Crisis") == "climate"
    assert list(follows()) == [(reader, "climate-crisis")]
    with session_scope() as session:
        tag = find_tag(session, "climate-crisis")
        assert tag.name == "Climate Crisis"
        # A new spelling of the same slug is a rename too.
        rename_tag(session, tag, "CLIMATE crisis")
        assert (tag.slug, tag.name) == ("climate-crisis", "CLIMATE crisis")
    for bad, message in [
        ("health", "already has the slug 'health'"),
        ("a, b", "comma"),
        ("--", "no letters"),
    ]:
        with session_scope() as session, pytest.raises(InvalidInput, match=message):
            rename_tag(session, find_tag(session, "climate-crisis"), bad)
    with session_scope() as session:
        names = sorted(session.scalars(select(Tag.name)))
    assert names == ["CLIMATE crisis", "Health"]


def test_sign_up_offers_listed_tags_and_keeps_a_readers_unlisted_one() -> None:
    make_tags("Climate, Health, Internal")
    with session_scope() as session:
        find_tag(session, "internal").listed = False
    with session_scope() as session:
        assert [t.slug for t in offered_tags(session)] == ["climate", "health"]
        kept = offered_tags(session, ["internal", "no-such-tag"])
        assert [t.slug for t in kept] == ["climate", "health", "internal"]
