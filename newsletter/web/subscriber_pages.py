"""Pages a reader uses on their own: sign up, confirm, preferences, unsubscribe."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Form, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from newsletter import tokens
from newsletter.config import get_settings
from newsletter.db import session_scope, utcnow
from newsletter.dispatch import send_task, tasks_run_in_process
from newsletter.errors import InvalidInput
from newsletter.models import Tag
from newsletter.tags import offered_tags
from newsletter.transactional import schedule_text, send_transactional
from newsletter.web.deps import SessionDep, client_ip
from newsletter.web.rendering import render_page
from subscribers import services, signup
from subscribers.cadence import WEEKDAYS, whole_number, zone_names
from subscribers.models import Subscriber, SubscriberStatus

router = APIRouter(include_in_schema=False)
log = logging.getLogger(__name__)


def _client_ip(request: Request) -> str:
    return client_ip(request)[:64]


def _send_mail(kind: str, subscriber_id: int, extra: dict[str, Any]) -> None:
    """Send now in this process, or hand the mail to a worker; never raises."""
    if not tasks_run_in_process():
        send_task("send_transactional", kind, subscriber_id, extra)
        return
    try:
        send_transactional(kind, subscriber_id, extra)
    except Exception:
        log.exception("could not send %s email to subscriber #%d", kind, subscriber_id)


def _decide_signup(
    address: str, choices: dict[str, Any], allowed: bool
) -> signup.SignupResult | None:
    """Which mail answers a sign-up, decided in a session of its own; None if it failed."""
    for attempt in (1, 2):
        try:
            with session_scope() as session:
                return signup.answer_signup(session, address, choices, allowed)
        except IntegrityError:
            if attempt == 1:
                continue  # the same new address twice at once: the other request made the row
            log.exception("could not answer a sign-up")
        except Exception:
            log.exception("could not answer a sign-up")
            break
    return None


def answer_signup_after_response(address: str, choices: dict[str, Any], allowed: bool) -> None:
    """Every sign-up, whatever its address's state, schedules exactly this, and nothing
    else, to run after the response: the decision, the pending row and the mail (or
    none) all happen outside the time the answer takes, so that time reveals nothing."""
    result = _decide_signup(address, choices, allowed)
    if result is None or result.subscriber_id is None:
        return
    if result.outcome is signup.Outcome.CONFIRM:
        _send_mail("confirm", result.subscriber_id, {"preferences": result.preferences})
    elif result.outcome is signup.Outcome.ALREADY:
        _send_mail("already_subscribed", result.subscriber_id, {})


def _choices_context(session: SessionDep, chosen: dict[str, Any]) -> dict[str, Any]:
    settings = get_settings()
    defaults = {
        "email": "",
        "name": "",
        "tags": [],
        "cadence": "weekly",
        "timezone": "UTC",
        "send_hour": settings.default_send_hour,
        "send_weekday": settings.default_send_weekday,
    }
    return {
        "all_tags": offered_tags(session, chosen.get("tags") or []),
        "zones": sorted(zone_names()),
        "weekdays": WEEKDAYS,
        "chosen": {**defaults, **{k: v for k, v in chosen.items() if v not in (None, "")}},
    }


def _int_or_none(value: str | None) -> int | None:
    return whole_number(value) if value is not None else None


class ChoicesForm(BaseModel):
    """The fields of `_choices.html`, as sign-up and preferences both post them."""

    name: str = ""
    tags: list[str] = []
    cadence: str = "weekly"
    timezone: str = "UTC"
    send_hour: str | None = None
    send_weekday: str | None = None

    def preferences(self, session: SessionDep) -> signup.Preferences:
        return signup.parse_preferences(
            session, self.tags, self.cadence, self.timezone,
            self.send_hour, self.send_weekday, self.name,
        )  # fmt: skip

    def chosen(self) -> dict[str, Any]:
        """What to show again in the form after an error."""
        return {
            **self.model_dump(),
            "send_hour": _int_or_none(self.send_hour),
            "send_weekday": _int_or_none(self.send_weekday),
        }


class SubscribeForm(ChoicesForm):
    email: str = ""


class PreferencesForm(ChoicesForm):
    action: str = "save"


@router.get("/subscribe", response_class=HTMLResponse)
def subscribe_page(session: SessionDep) -> HTMLResponse:
    return render_page("web/subscribe.html", **_choices_context(session, {}))


@router.post("/subscribe", response_class=HTMLResponse)
def subscribe(
    request: Request,
    session: SessionDep,
    background: BackgroundTasks,
    form: Annotated[SubscribeForm, Form()],
) -> HTMLResponse:
    """The same page, after the same work, for a new, pending, known or suppressed
    address: nothing is revealed. A name typed here is ignored: only the owner names
    themselves, on the confirmation page."""
    try:
        prefs = form.preferences(session)
        address, allowed = signup.admit_signup(session, form.email, _client_ip(request))
    except InvalidInput as exc:
        return render_page(
            "web/subscribe.html", status_code=400, error=str(exc),
            **_choices_context(session, form.chosen()),
        )  # fmt: skip
    except signup.RateLimited as exc:
        session.commit()
        return render_page("web/error.html", status_code=429, title="Slow down", message=str(exc))
    session.commit()
    background.add_task(answer_signup_after_response, address, prefs.choices(), allowed)
    return render_page("web/check_inbox.html")


@router.get("/confirm/{token}", response_class=HTMLResponse)
def confirm_page(token: str, session: SessionDep) -> HTMLResponse:
    """A page with a button: link scanners that fetch URLs must not confirm anyone.

    It asks for the reader's name, empty: the sign-up form never asked, so no name a
    stranger typed is shown or kept."""
    _, data = signup.check_confirmation(session, token)
    names = list(
        session.scalars(select(Tag.name).where(Tag.slug.in_(data.get("t", []))).order_by(Tag.slug))
    )
    schedule = schedule_text(
        data.get("c", ""), data.get("h", 8), data.get("w", 0), data.get("z", "UTC")
    )
    return render_page("web/confirm.html", tag_names=names, schedule=schedule)


@router.post("/confirm/{token}", response_class=HTMLResponse)
def confirm(
    token: str,
    session: SessionDep,
    background: BackgroundTasks,
    name: Annotated[str, Form()] = "",
) -> HTMLResponse:
    subscriber, changed = signup.confirm(session, token, name)
    session.commit()
    if changed:
        background.add_task(_send_mail, "welcome", subscriber.id, {})
    return render_page(
        "web/confirmed.html",
        subscriber=subscriber,
        schedule=schedule_text(
            subscriber.cadence.value, subscriber.send_hour, subscriber.send_weekday,
            subscriber.timezone,
        ),
        preferences_url=tokens.link("preferences", subscriber.uid),
    )  # fmt: skip


@router.get("/unsubscribe/{token}", response_class=HTMLResponse)
def unsubscribe_page(token: str, session: SessionDep) -> HTMLResponse:
    """The link in the body: a confirmation page, so a link scanner cannot unsubscribe anyone."""
    subscriber = services.by_uid(session, tokens.read_token("unsubscribe", token))
    if subscriber.status is SubscriberStatus.UNSUBSCRIBED:
        return render_page("web/unsubscribed.html", email=subscriber.email)
    return render_page("web/unsubscribe.html", email=subscriber.email)


@router.post("/unsubscribe/{token}", response_class=HTMLResponse)
def unsubscribe(token: str, session: SessionDep) -> HTMLResponse:
    """RFC 8058 one-click: a POST with `List-Unsubscribe=One-Click` unsubscribes at once,
    with 200 and no redirect; no cookie or login is needed, the signed token is enough."""
    subscriber = services.by_uid(session, tokens.read_token("unsubscribe", token))
    services.unsubscribe(session, subscriber)
    return render_page("web/unsubscribed.html", email=subscriber.email)


def _preferences_subscriber(session: SessionDep, token: str) -> Subscriber:
    max_age = get_settings().preferences_link_days * 86400
    return services.by_uid(session, tokens.read_token("preferences", token, max_age=max_age))


def _preferences_page(
    session: SessionDep, subscriber: Subscriber, status_code: int = 200, **extra: Any
) -> HTMLResponse:
    chosen = {
        "name": subscriber.name,
        "tags": [t.slug for t in subscriber.tags],
        "cadence": subscriber.cadence.value,
        "timezone": subscriber.timezone,
        "send_hour": subscriber.send_hour,
        "send_weekday": subscriber.send_weekday,
        **extra.pop("chosen", {}),
    }
    return render_page(
        "web/preferences.html",
        status_code=status_code,
        subscriber=subscriber,
        unsubscribe_path=f"/unsubscribe/{tokens.make_token('unsubscribe', subscriber.uid)}",
        **_choices_context(session, chosen),
        **extra,
    )


@router.get("/preferences/{token}", response_class=HTMLResponse)
def preferences_page(token: str, session: SessionDep) -> HTMLResponse:
    return _preferences_page(session, _preferences_subscriber(session, token))


@router.post("/preferences/{token}", response_class=HTMLResponse)
def update_preferences(
    token: str,
    session: SessionDep,
    form: Annotated[PreferencesForm, Form()],
) -> HTMLResponse:
    subscriber = _preferences_subscriber(session, token)
    now: dt.datetime = utcnow()
    action = form.action
    try:
        if action == "pause":
            signup.set_paused(session, subscriber, True, now)
            message = "Digests paused. Nothing is sent until you resume."
        elif action == "resume":
            signup.set_paused(session, subscriber, False, now)
            message = "Digests resumed."
        elif action == "save":
            if subscriber.status is SubscriberStatus.UNSUBSCRIBED:
                raise InvalidInput("this address is unsubscribed; sign up again to get digests")
            signup.apply_preferences(session, subscriber, form.preferences(session), now)
            message = "Your preferences are saved."
        else:
            raise InvalidInput(f"unknown action {action!r}")
    except InvalidInput as exc:
        session.rollback()
        subscriber = _preferences_subscriber(session, token)
        return _preferences_page(session, subscriber, 400, error=str(exc), chosen=form.chosen())
    session.commit()
    session.refresh(subscriber)
    return _preferences_page(session, subscriber, saved=message)
