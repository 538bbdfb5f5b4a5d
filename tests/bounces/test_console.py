"""The console's reader page shows the reader's bounces and complaints; deleting the
reader deletes them (a diagnostic often quotes the address)."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from newsletter.bounces.intake import ingest_message
from newsletter.bounces.models import BounceRecord
from newsletter.db import session_scope
from subscribers.models import Subscriber
from subscribers.services import forget_subscriber
from tests.bounces.conftest import fixture
from tests.cli_runner import count
from tests.console.conftest import ADMIN, make_user, signed_in
from tests.factories import make_subscriber


@pytest.fixture(autouse=True)
def env(app_env: str, bounce_env: None) -> None:
    """An admin, a database and a bounce address."""
    make_user(ADMIN, "admin")


def test_the_reader_page_lists_bounces_with_what_they_did(t0: dt.datetime) -> None:
    reader = make_subscriber("ana@example.net", "politics", now=t0)
    other = make_subscriber("ben@example.net", "politics", now=t0)
    ingest_message(fixture("postfix-hard.eml"), source="cli", now=t0 + dt.timedelta(days=1))
    c = signed_in(ADMIN)
    html = c.get(f"/admin/subscribers/{reader}").text
    table = html[html.index('id="bounce-events"') :].split("</table>")[0]
    assert "2026-03-03 10:00" in table and "hard" in table and "dsn, cli" in table
    assert "suppressed" in table and "Status: 5.1.1" in table
    assert "&lt;ana@example.net&gt;: Recipient address rejected" in table  # escaped
    html = c.get(f"/admin/subscribers/{other}").text
    assert "No bounce or complaint was received for this reader." in html


def test_deleting_the_reader_deletes_their_bounce_events(t0: dt.datetime) -> None:
    make_subscriber("ana@example.net", "politics", now=t0)
    ingest_message(fixture("postfix-hard.eml"), source="cli", now=t0)
    assert count(BounceRecord) == 1
    with session_scope() as session:
        reader = session.scalar(select(Subscriber).where(Subscriber.email == "ana@example.net"))
        assert reader is not None
        forget_subscriber(session, reader)
    assert count(BounceRecord) == 0
