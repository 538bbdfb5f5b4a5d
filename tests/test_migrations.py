"""The migrations are the only way the schema is made: up, down and up again, with data."""

from __future__ import annotations

from sqlalchemy import inspect, text

from newsletter import db
from newsletter.db import Base


def test_upgrade_keeps_data_and_matches_models(empty_url: str) -> None:
    db.upgrade(empty_url, "0001")
    engine = db.get_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO posts (guid, title, url, summary, body_html, published_at, received_at, updated_at)"
                " VALUES ('g', 'T', 'https://x.example/', '', '', :t, :t, :t)"
            ),
            {"t": "2026-01-01 00:00:00+00:00"},
        )
    db.upgrade(empty_url)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT source FROM posts")).scalar_one() == "cli"
    tables = set(inspect(engine).get_table_names()) - {"alembic_version"}
    assert tables == set(Base.metadata.tables)
    db.upgrade(empty_url)  # a second upgrade is a no-op


def test_downgrade_to_base_and_back(empty_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    db.upgrade(empty_url)
    config = Config()
    config.set_main_option("script_location", str(db.migrations_dir()))
    config.attributes["engine"] = db.get_engine(empty_url)
    command.downgrade(config, "base")
    assert set(inspect(db.get_engine(empty_url)).get_table_names()) <= {"alembic_version"}
    db.upgrade(empty_url)


def test_models_and_migrations_agree(empty_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    db.upgrade(empty_url)
    with db.get_engine(empty_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_addresses_stored_before_normalisation_are_rewritten(empty_url: str) -> None:
    db.upgrade(empty_url, "0005")
    engine = db.get_engine(empty_url)
    stored = {
        "\uff54\uff45\uff53\uff54@example.org": "test@example.org",  # full-width
        "ana@xn--bcher-kva.de": "ana@b\u00fccher.de",  # punycode domain
        "ben@example.org": "ben@example.org",  # already in today's form
        # Its normal form is taken by the row above: left for an admin.
        "ben@xn--exmple-cua.org": "ben@xn--exmple-cua.org",
        "ben@ex\u00e4mple.org": "ben@ex\u00e4mple.org",
    }
    with engine.begin() as conn:
        for n, email in enumerate(stored):
            conn.execute(
                text(
                    "INSERT INTO subscribers (uid, email, name, status, cadence, timezone,"
                    " send_hour, send_weekday, subscribed_at, created_at, updated_at)"
                    " VALUES (:uid, :email, '', 'active', 'daily', 'UTC', 8, 0, :t, :t, :t)"
                ),
                {"uid": f"u{n}", "email": email, "t": "2026-01-01 00:00:00+00:00"},
            )
    db.upgrade(empty_url)
    with engine.begin() as conn:
        emails = set(conn.execute(text("SELECT email FROM subscribers")).scalars())
    assert emails == set(stored.values())
