"""Pages a subscriber reaches from links in their email: unsubscribe and preferences."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from newsletter import tokens
from newsletter.web.deps import SessionDep
from newsletter.web.rendering import render_page
from subscribers import services

router = APIRouter()


@router.get("/unsubscribe/{token}", response_class=HTMLResponse)
def unsubscribe_page(token: str, session: SessionDep) -> HTMLResponse:
    """The link in the body: a confirmation page, so a link scanner cannot unsubscribe anyone."""
    subscriber = services.by_uid(session, tokens.read_token("unsubscribe", token))
    if subscriber.status.value == "unsubscribed":
        return render_page("web/unsubscribed.html", email=subscriber.email)
    return render_page("web/unsubscribe.html", email=subscriber.email)


@router.post("/unsubscribe/{token}", response_class=HTMLResponse)
def unsubscribe(token: str, session: SessionDep) -> HTMLResponse:
    """RFC 8058 one-click: a POST with `List-Unsubscribe=One-Click` unsubscribes at once,
    with 200 and no redirect; no cookie or login is needed, the signed token is enough."""
    subscriber = services.by_uid(session, tokens.read_token("unsubscribe", token))
    services.unsubscribe(session, subscriber)
    return render_page("web/unsubscribed.html", email=subscriber.email)


@router.get("/preferences/{token}", response_class=HTMLResponse)
def preferences_page(token: str, session: SessionDep) -> HTMLResponse:
    subscriber = services.by_uid(session, tokens.read_token("preferences", token))
    return render_page(
        "web/preferences.html",
        subscriber=subscriber,
        unsubscribe_url=tokens.link("unsubscribe", subscriber.uid),
    )
