"""Migration 0010 on existing data, on SQLite and PostgreSQL: readers planned before it
get the time of their last delivery as their last planning, and going back down puts
back the guard rows compaction deleted, so the older code still never sends twice."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from newsletter import db

T1 = "2026-01-01 08:00:00+00:00"
T2 = "2026-01-02 08:00:00+00:00"


def rows(url: str, sql: str) -> list[tuple[object, ...]]:
    with db.get_engine(url).begin() as conn:
        return [tuple(row) for row in conn.execute(text(sql))]


def test_0010_backfills_the_last_planning_and_its_downgrade_restores_guard_rows(
    empty_url: str,
) -> None:
    db.upgrade(empty_url, "0009")
    statements = [
        "INSERT INTO subscribers (id, uid, email, name, status, cadence, timezone, send_hour,"
        " send_weekday, subscribed_at, created_at, updated_at) VALUES"
        " (1, 'u1', 'ana@example.org', '', 'active', 'daily', 'UTC', 8, 0, :t, :t, :t),"
        " (2, 'u2', 'ben@example.org', '', 'active', 'daily', 'UTC', 8, 0, :t, :t, :t)",
        "INSERT INTO posts (id, guid, title, url, summary, body_html, published_at,"
        " received_at, updated_at, source) VALUES"
        " (1, 'g1', 'One', 'https://x.example/1', '', '', :t, :t, :t, 'cli'),"
        " (2, 'g2', 'Two', 'https://x.example/2', '', '', :t, :t, :t, 'cli')",
        "INSERT INTO digests (id, content_key, cadence, post_ids, subject, html, text, created_at)"
        " VALUES (1, 'k1', 'daily', '[1]', 's', 'h', 't', :t),"
        " (2, 'k2', 'daily', '[1, 2]', 's', 'h', 't', :t)",
        "INSERT INTO deliveries (id, subscriber_id, digest_id, status, attempts, message_id,"
        " created_at, updated_at) VALUES"
        " (1, 1, 1, 'sent', 1, '<m1@x>', :t, :t), (2, 1, 2, 'sent', 1, '<m2@x>', :t2, :t2)",
        "INSERT INTO delivery_posts (subscriber_id, post_id, delivery_id) VALUES (1, 1, 1)",
    ]
    with db.get_engine(empty_url).begin() as conn:
        for sql in statements:
            conn.execute(text(sql), {"t": T1, "t2": T2})

    db.upgrade(empty_url)
    found = rows(
        empty_url, "SELECT id, planned_through, settled_through FROM subscribers ORDER BY id"
    )
    assert [(r[0], r[1] is not None, r[2]) for r in found] == [(1, True, None), (2, False, None)]
    assert str(found[0][1]).startswith("2026-01-02 08:00:00")  # ana's latest delivery

    config = Config()
    config.set_main_option("script_location", str(db.migrations_dir()))
    config.attributes["engine"] = db.get_engine(empty_url)
    command.downgrade(config, "0009")
    # Every post of every delivery is guarded again, the row that was there kept as it was.
    assert rows(
        empty_url, "SELECT subscriber_id, post_id, delivery_id FROM delivery_posts ORDER BY post_id"
    ) == [(1, 1, 1), (1, 2, 2)]
    db.upgrade(empty_url)
