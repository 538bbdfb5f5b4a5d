"""The reader forms' plumbing: their fields, what they show again after a mistake,
and the redirect that carries what was typed (Post/Redirect/Get).

A form with mistakes answers with a 303 to its own page; what was typed rides in a
signed cookie that lives a few minutes and is scoped to that page's path (never the
query: an address would end up in logs and browser history).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel

from newsletter import timezones, tokens
from newsletter.config import get_settings
from newsletter.errors import InvalidInput
from newsletter.tags import offered_tags
from newsletter.web.deps import SessionDep
from subscribers import signup
from subscribers.cadence import WEEKDAYS, whole_number, zone_names

# The fields of the reader forms, in page order: the first one with a mistake gets focus.
FIELD_ORDER = ("email", "name", "tags", "cadence", "timezone", "send_hour", "send_weekday")
CADENCES = [
    ("immediate", "As soon as a post is published"),
    ("daily", "A daily digest"),
    ("weekly", "A weekly digest"),
]


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


FORM_COOKIE = "reader_form"
FORM_COOKIE_SECONDS = 600
# A browser keeps cookies up to 4 KB; a form too big for one is answered in place.
FORM_COOKIE_MAX = 3500


def back_to_form(request: Request, path: str, values: dict[str, Any]) -> RedirectResponse | None:
    """A 303 to the form's page carrying what was typed, or None if it cannot fit."""
    token = tokens.make_token("form", {"u": path, "v": values})
    if len(token) > FORM_COOKIE_MAX:
        return None
    response = see_other(path)
    response.set_cookie(
        FORM_COOKIE, token, max_age=FORM_COOKIE_SECONDS, path=path, httponly=True,
        samesite="lax", secure=request.url.scheme == "https",
    )  # fmt: skip
    return response


def typed_form(request: Request, path: str) -> dict[str, Any] | None:
    """What was typed into this page's form before its redirect, if anything."""
    token = request.cookies.get(FORM_COOKIE)
    if not token:
        return None
    try:
        data = tokens.read_data("form", token, max_age=FORM_COOKIE_SECONDS)
    except InvalidInput:
        return None
    values = data.get("v")
    return values if data["u"] == path and isinstance(values, dict) else None


def forget_form(response: Response, path: str) -> Response:
    response.delete_cookie(FORM_COOKIE, path=path)
    return response


def choices_context(
    session: SessionDep, chosen: dict[str, Any], errors: dict[str, str] | None = None
) -> dict[str, Any]:
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
    picked = {**defaults, **{k: v for k, v in chosen.items() if v not in (None, "")}}
    zone = str(picked["timezone"])
    # A name that is no zone at all (a forged form) shows the list at UTC.
    picked["timezone"] = timezones.canonical(zone) if zone in zone_names() else timezones.UTC
    errors = errors or {}
    return {
        "all_tags": offered_tags(session, chosen.get("tags") or []),
        "zone_regions": timezones.regions(),
        # Old names, for the search box and the browser's guess ("Asia/Calcutta").
        "zone_aliases": timezones.old_names(),
        # A zone that is no longer offered (typed before the list existed) stays choosable.
        "odd_zone": None if picked["timezone"] in timezones.canonical_names() else zone,
        "cadences": CADENCES,
        "weekdays": WEEKDAYS,
        "chosen": picked,
        "errors": errors,
        "first_error": next((f for f in FIELD_ORDER if f in errors), None),
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
        """The validated choices; FieldErrors names every bad field at once."""
        return signup.check_preferences(
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
