"""Pages a reader uses on their own: sign up, confirm, preferences, unsubscribe.

Every form answers its POST with a 303 to a GET page (Post/Redirect/Get), so Back
and reload never send a form twice; what happened travels as a fixed key in the
query (`?done=saved`), never as text. A form with mistakes goes back to its page
too, what was typed riding along in a signed cookie that lives a few minutes (not
the query: an address would end up in logs and history), and is shown with every
mistake next to its field (400). The one exception is RFC 8058's one-click
unsubscribe POST, which mailbox providers send and which answers 200 at once.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from newsletter import tokens
from newsletter.config import get_settings
from newsletter.db import session_scope, utcnow
from newsletter.dispatch import send_task, tasks_run_in_process
from newsletter.errors import InvalidInput, NotFound
from newsletter.models import Cadence, Tag
from newsletter.transactional import send_transactional
from newsletter.web.deps import SessionDep, client_ip
from newsletter.web.reader_forms import (
    PreferencesForm,
    SubscribeForm,
    back_to_form,
    choices_context,
    forget_form,
    see_other,
    typed_form,
)
from newsletter.web.rendering import render_page
from subscribers import services, signup, suppression
from subscribers.cadence import next_slot, schedule_text
from subscribers.models import Subscriber, SubscriberStatus, SuppressionReason

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


# What a finished POST says on the page it redirects to, by the key in `?done=`.
DONE = {
    "saved": "Your preferences are saved.",
    "paused": "Digests paused. Nothing is sent until you resume.",
    "resumed": "Digests resumed.",
    "weekly": "Done: you now get one weekly digest instead.",
    "resubscribed": "Welcome back: you are subscribed again, with the same tags and schedule.",
}
# How long the undo on the "you are unsubscribed" page works.
UNDO_DAYS = 7


def _dead_link(kind: str, exc: Exception) -> HTMLResponse:
    """A link that no longer works, saying why and what to do next."""
    reason = str(exc)
    status = 404 if isinstance(exc, NotFound) else 400
    hours = get_settings().pending_ttl_hours
    again = "Sign up again and we will mail you a new link."
    fresh_prefs = (
        "To get a fresh link to your preferences, sign up again with the same address: "
        "if you are subscribed, we mail you the link and change nothing else."
    )
    if isinstance(exc, NotFound):
        title, advice = "This subscription no longer exists", "Nothing more is sent to it. " + again
    elif "expired" in reason and kind == "confirm":
        title, advice = (
            "This link has expired",
            f"Confirmation links work for {hours} hours. {again}",
        )
    elif "expired" in reason:
        title, advice = "This link has expired", fresh_prefs
    elif "not valid" in reason:
        title = "This link is not valid"
        advice = "Copy the whole link from the email (it may have been cut in two). "
        advice += again if kind == "confirm" else fresh_prefs
    else:
        title, advice = "This link cannot be used", ""
    # The reason, unless the title already says it.
    message = "" if reason.lower() in title.lower() else reason[:1].upper() + reason[1:] + "."
    return render_page(
        "web/error.html", status_code=status, title=title, message=message, advice=advice,
        next_url="/subscribe", next_label="Go to the sign-up page",
    )  # fmt: skip


@router.get("/")
def home() -> RedirectResponse:
    """The app's root is the sign-up page (the blog itself lives at `site_url`)."""
    return see_other("/subscribe")


def _signup_errors(
    session: SessionDep, form: SubscribeForm
) -> tuple[dict[str, str], signup.Preferences | None]:
    errors: dict[str, str] = {}
    prefs = None
    try:
        signup.check_address(form.email)
    except InvalidInput as exc:
        errors["email"] = str(exc)
    try:
        prefs = form.preferences(session)
    except services.FieldErrors as exc:
        errors.update(exc.errors)
    return errors, prefs


def _subscribe_form(
    session: SessionDep, form: SubscribeForm | None, errors: dict[str, str]
) -> HTMLResponse:
    return render_page(
        "web/subscribe.html", status_code=400 if errors else 200, guess_zone=form is None,
        **choices_context(session, form.chosen() if form else {}, errors),
    )  # fmt: skip


@router.get("/subscribe", response_class=HTMLResponse)
def subscribe_page(request: Request, session: SessionDep) -> Response:
    typed = typed_form(request, "/subscribe")
    if typed is None:
        return _subscribe_form(session, None, {})
    try:
        form = SubscribeForm.model_validate(typed)
    except ValueError:
        return forget_form(_subscribe_form(session, None, {}), "/subscribe")
    errors, _ = _signup_errors(session, form)
    return forget_form(_subscribe_form(session, form, errors), "/subscribe")


@router.post("/subscribe", response_model=None)
def subscribe(
    request: Request,
    session: SessionDep,
    background: BackgroundTasks,
    form: Annotated[SubscribeForm, Form()],
) -> Response:
    """The same answer, after the same work, for a new, pending, known or suppressed
    address: nothing is revealed. A name typed here is ignored: only the owner names
    themselves, on the confirmation page."""
    errors, prefs = _signup_errors(session, form)
    if errors or prefs is None:
        back = back_to_form(request, "/subscribe", form.model_dump())
        return back or _subscribe_form(session, form, errors)
    try:
        address, allowed = signup.admit_signup(session, form.email, _client_ip(request))
    except signup.RateLimited as exc:
        session.commit()
        return render_page("web/error.html", status_code=429, title="Slow down", message=str(exc))
    session.commit()
    background.add_task(answer_signup_after_response, address, prefs.choices(), allowed)
    return see_other("/subscribe/check-inbox")


@router.get("/subscribe/check-inbox", response_class=HTMLResponse)
def check_inbox_page() -> HTMLResponse:
    return render_page("web/check_inbox.html")


def _confirmed_page(subscriber: Subscriber, fresh: bool) -> HTMLResponse:
    return render_page(
        "web/confirmed.html",
        subscriber=subscriber,
        fresh=fresh,
        schedule=schedule_text(
            subscriber.cadence.value, subscriber.send_hour, subscriber.send_weekday,
            subscriber.timezone,
        ),
        preferences_url=tokens.link("preferences", subscriber.uid),
    )  # fmt: skip


def _already_confirmed(subscriber: Subscriber, token: str) -> bool:
    """Whether this link was clicked already: the reader is in and confirmed after
    the link was issued (token times are whole seconds)."""
    if subscriber.status not in (SubscriberStatus.ACTIVE, SubscriberStatus.PAUSED):
        return False
    if subscriber.confirmed_at is None:
        return False
    confirmed = subscriber.confirmed_at.replace(tzinfo=subscriber.confirmed_at.tzinfo or dt.UTC)
    return confirmed >= tokens.signed_at("confirm", token).replace(microsecond=0)


@router.get("/confirm/{token}", response_class=HTMLResponse)
def confirm_page(token: str, session: SessionDep, done: str = "") -> HTMLResponse:
    """A page with a button: link scanners that fetch URLs must not confirm anyone.

    It asks for the reader's name, empty: the sign-up form never asked, so no name a
    stranger typed is shown or kept. Once the link was used it says so instead, with
    the way to the preferences, and never shows the button again."""
    try:
        subscriber, data = signup.check_confirmation(session, token)
    except (InvalidInput, NotFound) as exc:
        return _dead_link("confirm", exc)
    if _already_confirmed(subscriber, token):
        return _confirmed_page(subscriber, fresh=done == "confirmed")
    names = list(
        session.scalars(select(Tag.name).where(Tag.slug.in_(data.get("t", []))).order_by(Tag.slug))
    )
    schedule = schedule_text(
        data.get("c", ""), data.get("h", 8), data.get("w", 0), data.get("z", "UTC")
    )
    return render_page("web/confirm.html", tag_names=names, schedule=schedule)


@router.post("/confirm/{token}", response_model=None)
def confirm(
    token: str,
    session: SessionDep,
    background: BackgroundTasks,
    name: Annotated[str, Form()] = "",
) -> HTMLResponse | RedirectResponse:
    try:
        subscriber, changed = signup.confirm(session, token, name)
    except (InvalidInput, NotFound) as exc:
        return _dead_link("confirm", exc)
    session.commit()
    if changed:
        background.add_task(_send_mail, "welcome", subscriber.id, {})
    return see_other(f"/confirm/{token}?done=confirmed")


def _unsubscribe_subscriber(session: SessionDep, token: str) -> Subscriber:
    return services.by_uid(session, tokens.read_token("unsubscribe", token))


def _unsubscribed_page(subscriber: Subscriber) -> HTMLResponse:
    return render_page(
        "web/unsubscribed.html",
        email=subscriber.email,
        undo_path=_undo_path(subscriber),
        undo_days=UNDO_DAYS,
    )


def _undo_path(subscriber: Subscriber) -> str | None:
    """The signed undo for a reader who left in the last few days, else None."""
    if not _can_undo(subscriber, utcnow()):
        return None
    return f"/resubscribe/{tokens.make_token('resubscribe', subscriber.uid)}"


def _can_undo(subscriber: Subscriber, now: dt.datetime) -> bool:
    left = subscriber.unsubscribed_at
    if subscriber.status is not SubscriberStatus.UNSUBSCRIBED or left is None:
        return False
    return left.replace(tzinfo=left.tzinfo or dt.UTC) >= now - dt.timedelta(days=UNDO_DAYS)


@router.get("/unsubscribe/{token}", response_class=HTMLResponse)
def unsubscribe_page(token: str, session: SessionDep) -> HTMLResponse:
    """The link in the body: a confirmation page, so a link scanner cannot unsubscribe
    anyone; it offers what people often take instead (a pause, fewer emails)."""
    try:
        subscriber = _unsubscribe_subscriber(session, token)
    except (InvalidInput, NotFound) as exc:
        return _dead_link("unsubscribe", exc)
    if subscriber.status is SubscriberStatus.UNSUBSCRIBED:
        return _unsubscribed_page(subscriber)
    return render_page(
        "web/unsubscribe.html",
        email=subscriber.email,
        paused=subscriber.status is SubscriberStatus.PAUSED,
        weekly=subscriber.cadence is Cadence.WEEKLY,
    )


@router.post("/unsubscribe/{token}", response_model=None)
def unsubscribe(
    token: str, session: SessionDep, action: Annotated[str, Form()] = ""
) -> HTMLResponse | RedirectResponse:
    """RFC 8058 one-click: a POST with `List-Unsubscribe=One-Click` (no `action`)
    unsubscribes at once, with 200 and no redirect; no cookie or login is needed, the
    signed token is enough. The page's own buttons name an action and are redirected."""
    try:
        subscriber = _unsubscribe_subscriber(session, token)
    except (InvalidInput, NotFound) as exc:
        return _dead_link("unsubscribe", exc)
    now = utcnow()
    preferences = f"/preferences/{tokens.make_token('preferences', subscriber.uid)}"
    try:
        if action == "pause":
            signup.set_paused(session, subscriber, True, now)
            session.commit()
            return see_other(f"{preferences}?done=paused")
        if action == "weekly":
            services.update_subscriber(
                session, subscriber, services.SubscriberChanges(cadence="weekly"), now,
                actor="the subscriber",
            )  # fmt: skip
            session.commit()
            return see_other(f"{preferences}?done=weekly")
    except InvalidInput as exc:
        return _dead_link("unsubscribe", exc)
    services.unsubscribe(session, subscriber)
    if action:
        session.commit()
        return see_other(f"/unsubscribe/{token}")
    return _unsubscribed_page(subscriber)


@router.get("/resubscribe/{token}", response_class=HTMLResponse)
def resubscribe_page(token: str) -> HTMLResponse:
    """The undo, as a link: a button again, so fetching the URL changes nothing."""
    return render_page("web/unsubscribed.html", email=None, undo_path=f"/resubscribe/{token}")


@router.post("/resubscribe/{token}", response_model=None)
def resubscribe(token: str, session: SessionDep) -> HTMLResponse | RedirectResponse:
    """Undo an unsubscribe made in the last few days, with the same choices."""
    try:
        uid = tokens.read_token("resubscribe", token, max_age=UNDO_DAYS * 86400)
        subscriber = services.by_uid(session, uid)
        if subscriber.status is SubscriberStatus.UNSUBSCRIBED:
            if not _can_undo(subscriber, utcnow()):
                raise InvalidInput("this link has expired")
            services.undo_unsubscribe(session, subscriber)
    except (InvalidInput, NotFound) as exc:
        return _dead_link("resubscribe", exc)
    session.commit()
    return see_other(f"/preferences/{tokens.make_token('preferences', uid)}?done=resubscribed")


def _preferences_subscriber(session: SessionDep, token: str) -> Subscriber:
    max_age = get_settings().preferences_link_days * 86400
    return services.by_uid(session, tokens.read_token("preferences", token, max_age=max_age))


def _when_local(moment: dt.datetime, zone: str) -> str:
    """'Friday 6 March at 18:00', in the reader's own time zone."""
    from zoneinfo import ZoneInfo

    local = moment.replace(tzinfo=moment.tzinfo or dt.UTC).astimezone(ZoneInfo(zone))
    return f"{local:%A} {local.day} {local:%B} at {local:%H:%M}"


def _state(session: SessionDep, subscriber: Subscriber) -> dict[str, str]:
    """What the reader gets now, in plain words, and what to do about it."""
    blocked = suppression.find(session, subscriber.email)
    contact = get_settings().from_
    if blocked is not None and blocked.reason is not SuppressionReason.UNSUBSCRIBED:
        why = {
            SuppressionReason.HARD_BOUNCE: "mail to it bounced: the mailbox could not be reached",
            SuppressionReason.COMPLAINT: "a message we sent was reported as spam",
            SuppressionReason.MANUAL: "the publisher stopped it",
        }[blocked.reason]
        return {
            "kind": "stopped",
            "text": f"We are not sending anything to this address because {why}.",
            "todo": f"If that is a mistake, write to {contact} and ask for it to be lifted.",
        }
    if subscriber.status is SubscriberStatus.PAUSED:
        return {
            "kind": "paused",
            "text": "Your digests are paused: nothing is sent to you.",
            "todo": "Press \u201cResume digests\u201d below to get them again.",
        }
    if subscriber.cadence is Cadence.IMMEDIATE:
        return {"kind": "active", "text": "Each post in your tags is sent as it is published."}
    due = subscriber.next_digest_at or next_slot(
        subscriber.cadence, subscriber.timezone, subscriber.send_hour,
        subscriber.send_weekday, utcnow(),
    )  # fmt: skip
    if due is None:
        return {"kind": "active", "text": ""}
    when = _when_local(due, subscriber.timezone)
    return {
        "kind": "active",
        "text": f"Your next digest is due {when} ({subscriber.timezone} time), "
        "if there are new posts in your tags.",
    }


def _preferences_page(
    session: SessionDep,
    subscriber: Subscriber,
    status_code: int = 200,
    errors: dict[str, str] | None = None,
    chosen: dict[str, Any] | None = None,
    done: str = "",
) -> HTMLResponse:
    stored = {
        "name": subscriber.name,
        "tags": [t.slug for t in subscriber.tags],
        "cadence": subscriber.cadence.value,
        "timezone": subscriber.timezone,
        "send_hour": subscriber.send_hour,
        "send_weekday": subscriber.send_weekday,
    }
    return render_page(
        "web/preferences.html",
        status_code=status_code,
        subscriber=subscriber,
        state=_state(session, subscriber),
        done=DONE.get(done),
        unsubscribe_path=f"/unsubscribe/{tokens.make_token('unsubscribe', subscriber.uid)}",
        undo_path=_undo_path(subscriber),
        guess_zone=False,
        **choices_context(session, {**stored, **(chosen or {})}, errors),
    )


@router.get("/preferences/{token}", response_class=HTMLResponse)
def preferences_page(request: Request, token: str, session: SessionDep, done: str = "") -> Response:
    try:
        subscriber = _preferences_subscriber(session, token)
    except (InvalidInput, NotFound) as exc:
        return _dead_link("preferences", exc)
    path = f"/preferences/{token}"
    typed = typed_form(request, path)
    if typed is None:
        return _preferences_page(session, subscriber, done=done)
    try:
        form = PreferencesForm.model_validate(typed)
        form.preferences(session)
        errors: dict[str, str] = {}
    except services.FieldErrors as exc:
        errors = exc.errors
    except ValueError:
        return forget_form(_preferences_page(session, subscriber, done=done), path)
    page = _preferences_page(
        session, subscriber, 400 if errors else 200, errors, form.chosen(), done
    )
    return forget_form(page, path)


@router.post("/preferences/{token}", response_model=None)
def update_preferences(
    request: Request,
    token: str,
    session: SessionDep,
    form: Annotated[PreferencesForm, Form()],
) -> Response:
    try:
        subscriber = _preferences_subscriber(session, token)
    except (InvalidInput, NotFound) as exc:
        return _dead_link("preferences", exc)
    now: dt.datetime = utcnow()
    action = form.action
    try:
        if action in ("pause", "resume"):
            signup.set_paused(session, subscriber, action == "pause", now)
            done = "paused" if action == "pause" else "resumed"
        elif action == "save":
            if subscriber.status is SubscriberStatus.UNSUBSCRIBED:
                raise InvalidInput("this address is unsubscribed; sign up again to get digests")
            signup.apply_preferences(session, subscriber, form.preferences(session), now)
            done = "saved"
        else:
            raise InvalidInput(f"unknown action {action!r}")
    except services.FieldErrors as exc:
        session.rollback()
        back = back_to_form(request, f"/preferences/{token}", form.model_dump())
        if back is not None:
            return back
        subscriber = _preferences_subscriber(session, token)
        return _preferences_page(session, subscriber, 400, exc.errors, form.chosen())
    except InvalidInput as exc:
        session.rollback()
        subscriber = _preferences_subscriber(session, token)
        return _preferences_page(
            session, subscriber, 400, {"form": str(exc)[:1].upper() + str(exc)[1:] + "."},
            form.chosen(),
        )  # fmt: skip
    session.commit()
    return see_other(f"/preferences/{token}?done={done}")
