"""One-off emails to one reader (confirm, welcome, already subscribed), through the same
rendering and SMTP path as digests.

A confirmation goes to an address whose owner has not said anything yet: it holds
no name (neither in To nor in the greeting) and nothing else a stranger could have
typed; only the publisher's tag names and the schedule picked from the form's lists.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter import tokens
from newsletter.config import get_settings
from newsletter.db import session_scope
from newsletter.delivery.mime import build_message, new_message_id
from newsletter.delivery.rendering import render_email
from newsletter.delivery.sending import TransportFactory, smtp_transport_factory
from newsletter.models import Tag
from subscribers import suppression
from subscribers.cadence import schedule_text
from subscribers.models import Subscriber

log = logging.getLogger(__name__)

KINDS = frozenset({"confirm", "welcome", "already_subscribed"})


def _context(
    session: Session, kind: str, subscriber: Subscriber, extra: dict[str, Any]
) -> dict[str, Any]:
    if kind == "confirm":
        # The preferences asked for, not the stored row: they apply only on click.
        prefs = confirmation_payload(extra["preferences"])
        names = session.scalars(select(Tag.name).where(Tag.slug.in_(prefs["t"])).order_by(Tag.slug))
        return {
            "tags": list(names),
            "schedule": schedule_text(prefs["c"], prefs["h"], prefs["w"], prefs["z"]),
            "confirm_url": tokens.link("confirm", prefs),
            "valid_hours": get_settings().pending_ttl_hours,
        }
    return {
        "name": subscriber.name,
        "tags": [t.name for t in subscriber.tags],
        "schedule": schedule_text(
            subscriber.cadence.value,
            subscriber.send_hour,
            subscriber.send_weekday,
            subscriber.timezone,
        ),
        "preferences_url": tokens.link("preferences", subscriber.uid),
        "unsubscribe_url": tokens.link("unsubscribe", subscriber.uid),
    }


def confirmation_payload(preferences: dict[str, Any]) -> dict[str, Any]:
    """The confirmation link's payload: the subscriber key and the choices, nothing else.

    The link is signed here, when the mail is built, so it never travels through a task
    queue or a log line; a payload from an older release that still holds a name (`n`)
    loses it.
    """
    return {k: preferences[k] for k in ("u", "t", "c", "z", "h", "w") if k in preferences}


def send_transactional(
    kind: str,
    subscriber_id: int,
    extra: dict[str, Any] | None = None,
    transport_factory: TransportFactory | None = None,
) -> str:
    """Send one email of `kind`; returns 'sent' or a named reason it was not sent.

    Transport errors propagate so the task can retry them.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown email kind {kind!r}")
    settings = get_settings()
    with session_scope() as session:
        subscriber = session.get(Subscriber, subscriber_id)
        if subscriber is None:
            return "subscriber_missing"
        blocked = suppression.find(session, subscriber.email)
        if blocked is not None and (kind != "confirm" or blocked.reason in suppression.BLOCKS_ALL):
            return "suppressed"
        rendered = render_email(kind, _context(session, kind, subscriber, extra or {}))
        headers = {"Auto-Submitted": "auto-generated"}
        if kind == "welcome":
            unsubscribe = tokens.link("unsubscribe", subscriber.uid)
            headers["List-Unsubscribe"] = f"<{unsubscribe}>"
            headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        message = build_message(
            from_name=settings.from_name,
            from_address=settings.from_,
            to_name="" if kind == "confirm" else subscriber.name,
            to_address=subscriber.email,
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
            message_id=new_message_id(settings.from_),
            headers=headers,
        )
    factory = transport_factory or smtp_transport_factory(settings)
    with factory() as transport:
        transport.send(message)
    log.info("%s email sent to subscriber #%d", kind, subscriber_id)
    return "sent"
