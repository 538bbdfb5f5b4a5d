"""The public archive: sent digests per listed tag as web pages, with an Atom feed,
when NEWSLETTER_PUBLIC_ARCHIVE is on (404 otherwise); and each digest's web copy
behind the signed "view in your browser" link in it, served either way.

A digest's web copy is shown in a sandboxed frame served by its own route, whose
policy lets the email's inline styles apply and nothing run; the page around it
keeps the site's policy (no inline script or style).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import HTMLResponse, Response
from markupsafe import Markup

from newsletter import archive
from newsletter.config import get_settings
from newsletter.delivery.rendering import WEB_COPY_PATH
from newsletter.errors import NotFound
from newsletter.models import Tag
from newsletter.templating import environment
from newsletter.web.deps import SessionDep
from newsletter.web.rendering import framed, render_page
from newsletter.web.schemas import MAX_DB_INT

PAGE_SIZE = 20
FEED_SIZE = 20
ATOM_TYPE = "application/atom+xml; charset=utf-8"
ABOUT_LINKS = {
    "preferences": "Manage your preferences",
    "unsubscribe": "Unsubscribe",
}
CADENCE_LABELS = {"immediate": "as published", "daily": "daily digest", "weekly": "weekly digest"}
_HEAD = re.compile(r"<head\b[^>]*>", re.IGNORECASE)
# Links in a web copy open in a new tab: the sandboxed frame may not load another
# site in place (the page's policy allows frames from this site only).
_NEW_TAB = '<base target="_blank">'


def require_public_archive() -> None:
    if not get_settings().public_archive:
        raise NotFound("there is no public archive here")


router = APIRouter(include_in_schema=False)
public = APIRouter(include_in_schema=False, dependencies=[Depends(require_public_archive)])

Before = Annotated[int | None, Query(ge=1, le=MAX_DB_INT)]
DigestId = Annotated[int, Path(ge=1, le=MAX_DB_INT)]
# itsdangerous's URL-safe alphabet; a web copy link's token is about 130 characters.
WebCopyToken = Annotated[str, Path(max_length=400, pattern=r"^[A-Za-z0-9_.-]+$")]
TagSlug = Annotated[str, Path(max_length=120)]


def copy_frame(html: str) -> HTMLResponse:
    """A web copy for its frame, its links opening in a new tab."""
    html, found = _HEAD.subn(lambda m: m.group(0) + _NEW_TAB, html, count=1)
    return framed(html if found else _NEW_TAB + html)


def digest_with_copy(summary: archive.Summary, copy_url: str, listed: bool) -> HTMLResponse:
    """A digest's page: its posts, each linked, above its web copy in a frame. Search
    engines are kept off a page only a link in an email leads to (`listed` False)."""
    return render_page(
        "web/archive/digest.html",
        digest=summary,
        cadence_labels=CADENCE_LABELS,
        copy_url=copy_url,
        public_archive=get_settings().public_archive,
        listed=listed,
    )


@router.get("/about/web-copy")
def about_links(link: Annotated[str, Query(max_length=20)] = "") -> HTMLResponse:
    """Where a web copy's personal links lead. Always served: the console's copy and a
    "view in your browser" copy use it too, with or without a public archive."""
    return render_page(
        "web/archive/about_links.html",
        link=ABOUT_LINKS.get(link, ""),
        public_archive=get_settings().public_archive,
    )


@router.get(WEB_COPY_PATH + "/{token}")
def web_copy_page(token: WebCopyToken, session: SessionDep) -> HTMLResponse:
    """A digest's "view in your browser" page: every post it holds (those its email
    counted as "N more posts" too), and the copy without anything of its reader."""
    _, summary = archive.linked_digest(session, token)
    return digest_with_copy(summary, f"{WEB_COPY_PATH}/{token}/copy", listed=False)


@router.get(WEB_COPY_PATH + "/{token}/copy")
def web_copy_frame(token: WebCopyToken, session: SessionDep) -> HTMLResponse:
    """The web copy alone, for that page's sandboxed frame."""
    digest, summary = archive.linked_digest(session, token)
    return copy_frame(archive.fill_copy(digest, summary.posts).html)


@public.get("/archive/")
def archive_index(session: SessionDep) -> HTMLResponse:
    return render_page("web/archive/index.html", tags=archive.listed_tags(session))


@public.get("/archive/d/{digest_id:int}")
def digest_page(digest_id: DigestId, session: SessionDep) -> HTMLResponse:
    _, summary = archive.public_digest(session, digest_id)
    return digest_with_copy(summary, f"/archive/d/{digest_id}/copy", listed=True)


@public.get("/archive/d/{digest_id:int}/copy")
def digest_copy(digest_id: DigestId, session: SessionDep) -> HTMLResponse:
    """The digest's web copy alone, for the page's sandboxed frame."""
    digest, summary = archive.public_digest(session, digest_id)
    return copy_frame(archive.fill_copy(digest, summary.posts).html)


@public.get("/archive/{tag_slug}/")
def tag_page(tag_slug: TagSlug, session: SessionDep, before: Before = None) -> HTMLResponse:
    tag = archive.listed_tag(session, tag_slug)
    result = archive.sent_digests(session, before, PAGE_SIZE, tag.id, with_counts=False)
    return render_page(
        "web/archive/tag.html",
        tag=tag,
        digests=result.digests,
        next_before=result.next_before,
        first_page=before is None,
        cadence_labels=CADENCE_LABELS,
    )


# -- the Atom feed ----------------------------------------------------------------


def atom_date(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tag_uri(day: dt.datetime, specific: str) -> str:
    """An Atom id (RFC 4151) that stays the same whatever the page's address becomes."""
    host = urlsplit(get_settings().public_base_url).hostname or "localhost"
    return f"tag:{host},{day:%Y-%m-%d}:{specific}"


def entry_html(summary: archive.Summary) -> str:
    """An entry's content: its posts as links (escaped once more by the template)."""
    items = Markup("").join(
        Markup('<li><a href="{}">{}</a></li>').format(post.url, post.title)
        for post in summary.posts
    )
    return str(Markup("<ul>{}</ul>").format(items))


def feed_xml(tag: Tag, summaries: list[archive.Summary]) -> str:
    base = get_settings().public_base_url
    entries = [
        {
            "id": tag_uri(s.created_at, f"digest:{s.id}"),
            "title": s.subject,
            "url": f"{base}/archive/d/{s.id}",
            "date": atom_date(s.date),
            "summary": " · ".join(post.title for post in s.posts),
            "html": entry_html(s),
        }
        for s in summaries
    ]
    updated = max((s.date for s in summaries), default=tag.created_at)
    return (
        environment()
        .get_template("web/archive/feed.atom.j2")
        .render(
            site_name=get_settings().site_name,
            feed_id=tag_uri(tag.created_at, f"archive:tag-{tag.id}"),
            tag=tag,
            page_url=f"{base}/archive/{tag.slug}/",
            self_url=f"{base}/archive/{tag.slug}/feed.atom",
            updated=atom_date(updated),
            entries=entries,
        )
    )


@public.get("/archive/{tag_slug}/feed.atom")
def tag_feed(tag_slug: TagSlug, session: SessionDep) -> Response:
    tag = archive.listed_tag(session, tag_slug)
    xml = feed_xml(
        tag, archive.sent_digests(session, None, FEED_SIZE, tag.id, with_counts=False).digests
    )
    return Response(xml, media_type=ATOM_TYPE, headers={"cache-control": "public, max-age=300"})


router.include_router(public)
