"""`newsletter demo`: the whole pipeline on SQLite with a built-in SMTP server.

It works in a fresh `newsletter-demo.db` beside `./outbox/`, never in the configured
database, so it can be run any number of times without touching real data.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from newsletter import db
from newsletter.config import get_settings
from newsletter.delivery.pipeline import run_due
from newsletter.models import Delivery, DeliveryStatus, Post
from newsletter.outbox import OutboxHandler, OutboxServer
from newsletter.posts import PostInput, add_post
from newsletter.tags import get_or_create_tags, parse_tag_names
from subscribers.models import Subscriber
from subscribers.services import SubscriberInput, add_subscriber

TAGS = "ResPublica, Public Services, Health, Climate, Technology, Local Politics"

SUBSCRIBERS = [
    # email, tags, cadence, name, time zone, local send hour, weekday
    SubscriberInput("ana.silva@example.org", "ResPublica, Local Politics", "immediate",
                    "Ana Silva", "Europe/Lisbon"),
    SubscriberInput("ben.okafor@example.org", "ResPublica", "immediate",
                    "Ben Okafor", "Africa/Lagos"),
    SubscriberInput("chloe.martin@example.org", "Health, Public Services", "daily",
                    "Chloé Martin", "Europe/Paris", 8),
    SubscriberInput("dev.patel@example.org", "Health, Public Services", "daily",
                    "Dev Patel", "Europe/Paris", 8),
    SubscriberInput("emma.jones@example.org", "Public Services", "daily",
                    "Emma Jones", "America/New_York", 7),
    SubscriberInput("farid.haddad@example.org", "Climate, Technology", "weekly",
                    "Farid Haddad", "Asia/Dubai", 9, "monday"),
    SubscriberInput("grace.lee@example.org", "Technology", "weekly",
                    "", "Australia/Sydney", 9, "friday"),
]  # fmt: skip

POSTS = [
    PostInput(
        "What the new council charter changes for every district",
        "https://blog.example.org/2026/11/council-charter/",
        "ResPublica, Local Politics",
        "The charter moves budget hearings online and gives every district a citizens' panel. "
        "We read all 84 pages so you don't have to.",
        author="Marta Reis",
    ),
    PostInput(
        "Waiting lists: three hospitals, three different stories",
        "https://blog.example.org/2026/11/waiting-lists/",
        "Health, Public Services",
        "Median waits fell at one hospital and doubled at another. The difference is not money.",
        author="Tomás Duarte",
    ),
    PostInput(
        "Bus routes after the timetable reform",
        "https://blog.example.org/2026/11/bus-routes/",
        "Public Services, Local Politics",
        "Night lines are back, two suburbs lost their direct link, and ridership is up 6%.",
        author="Marta Reis",
    ),
    PostInput(
        "Heat pumps in old buildings: the numbers",
        "https://blog.example.org/2026/11/heat-pumps/",
        "Climate, Technology",
        "We measured three retrofits through a winter. One paid for itself in four years.",
        author="Inês Costa",
    ),
    PostInput(
        "Open data portal: what is finally public",
        "https://blog.example.org/2026/11/open-data/",
        "Technology, ResPublica",
        "Procurement contracts, council votes and air quality, all machine-readable at last.",
        author="Tomás Duarte",
    ),
]


def _configure(directory: Path, smtp_url: str) -> Path:
    database = directory / "newsletter-demo.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    os.environ.update(
        NEWSLETTER_DATABASE_URL=f"sqlite:///{database}",
        NEWSLETTER_SMTP_URL=smtp_url,
        NEWSLETTER_BROKER_URL="",
        NEWSLETTER_SECRET_KEY=secrets.token_urlsafe(32),
        NEWSLETTER_ENV="development",
    )
    get_settings.cache_clear()
    db.dispose_engines()
    from worker.celery_app import app, configure

    configure(app)
    return database


def run_demo(directory: Path, console: Console) -> None:
    """Subscribers first, then posts (immediate readers are mailed as each one lands),
    then the clock moves on to every daily and weekly slot and the planner runs."""
    directory = directory.resolve()
    outbox = directory / "outbox"
    shutil.rmtree(outbox, ignore_errors=True)
    outbox.mkdir(parents=True)
    handler = OutboxHandler(outbox)
    with OutboxServer(handler) as server:
        database = _configure(directory, server.url)
        db.upgrade()
        console.print(f"SMTP server on {server.url}; database {database.name}")
        with db.session_scope() as session:
            get_or_create_tags(session, parse_tag_names(TAGS))
        with db.session_scope() as session:
            for reader in SUBSCRIBERS:
                add_subscriber(session, reader)
        for post in POSTS:
            with db.session_scope() as session:
                add_post(session, post)
        immediate = len(handler.messages)
        console.print(f"{len(POSTS)} posts added; {immediate} immediate digests sent")

        with db.session_scope() as session:
            slots = session.scalars(select(Subscriber.next_digest_at)).all()
        later = max(s for s in slots if s is not None)
        first = run_due(later)
        again = run_due(later)
    console.print(
        f"planner at {later:%Y-%m-%d %H:%M} UTC: {first.plan.planned} digests, "
        f"{first.plan.digests_rendered} rendered; run again: {again.plan.planned} more"
    )
    _print_summary(console, outbox)


def _print_summary(console: Console, outbox: Path) -> None:
    table = Table(
        "subscriber", "cadence", "follows", "digests", "posts received", title="Who got what"
    )
    with db.session_scope() as session:
        titles = {pid: title for pid, title in session.execute(select(Post.id, Post.title))}
        received: dict[int, list[int]] = defaultdict(list)
        counts: dict[int, int] = defaultdict(int)
        for delivery in session.scalars(
            select(Delivery).where(Delivery.status == DeliveryStatus.SENT)
        ):
            if delivery.subscriber_id is None:
                continue
            counts[delivery.subscriber_id] += 1
            received[delivery.subscriber_id].extend(delivery.post_ids)
        for s in session.scalars(select(Subscriber).order_by(Subscriber.id)):
            table.add_row(
                s.email,
                s.cadence.value,
                ", ".join(t.name for t in s.tags),
                str(counts[s.id]),
                "\n".join(titles[p] for p in received[s.id]) or "-",
            )
    console.print(table)
    console.print(f"messages are in {outbox}/ (.eml, and .html to open in a browser)")
