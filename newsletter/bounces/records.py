"""Reading back what bounces and complaints were recorded: for the CLI and the console."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter.bounces.models import BounceRecord


def recent(session: Session, limit: int = 50) -> list[BounceRecord]:
    query = select(BounceRecord).order_by(BounceRecord.received_at.desc(), BounceRecord.id.desc())
    return list(session.scalars(query.limit(limit)))


def for_reader(session: Session, subscriber_id: int, limit: int = 50) -> list[BounceRecord]:
    """A reader's bounces and complaints, newest first."""
    query = (
        select(BounceRecord)
        .where(BounceRecord.subscriber_id == subscriber_id)
        .order_by(BounceRecord.occurred_at.desc(), BounceRecord.id.desc())
    )
    return list(session.scalars(query.limit(limit)))


def for_delivery(session: Session, delivery_id: int) -> list[BounceRecord]:
    query = (
        select(BounceRecord)
        .where(BounceRecord.delivery_id == delivery_id)
        .order_by(BounceRecord.occurred_at, BounceRecord.id)
    )
    return list(session.scalars(query))


def summary(diagnostic: str, width: int = 120) -> str:
    """One line of a raw diagnostic: the status and the server's words when it has
    them, else its first line."""
    lines = [line for line in diagnostic.splitlines() if line.strip()]
    wanted = [
        line.split(":", 1)[1].strip()
        for line in lines
        if line.lower().startswith(("status:", "diagnostic-code:", "feedback-type:"))
    ]
    text = " ".join(wanted) if wanted else (lines[0] if lines else "")
    return text if len(text) <= width else text[: width - 1] + "\u2026"
