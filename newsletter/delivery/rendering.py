"""Digest rendering: Jinja2 -> MJML -> HTML -> inlined CSS, once per distinct digest.

Rendering costs milliseconds (premailer alone ~7 ms); substitution costs microseconds.
So a digest is rendered once with `@@NL_FIELD@@` placeholders, and each reader's copy
is made by `personalize.fill`.

Everything a rendering shows follows from its content key (the cadence and the post
ids) and the settings: the posts past `digest_max_posts` are counted, not shown, and
the "view in your browser" link is signed from the key, so readers who share a key
share one rendering.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from html import escape
from typing import Any

import cssutils
from itsdangerous import BadSignature, URLSafeSerializer
from markupsafe import Markup
from mjml import mjml2html
from premailer import Premailer

from newsletter.config import get_settings
from newsletter.delivery.personalise import placeholder
from newsletter.errors import NotFound
from newsletter.models import Cadence, Post, Tag
from newsletter.sanitize import html_to_text
from newsletter.templating import environment
from newsletter.text import trim_words

# Bump when a template change must not reuse digests rendered before it.
TEMPLATE_VERSION = "3"
# Gmail clips a message whose HTML passes about 102 KB, hiding the footer with the
# unsubscribe link. A digest over this budget (a very high `summary_max_chars` or
# `digest_max_posts`) shows fewer posts until it fits, so no setting can get it clipped.
HTML_BUDGET = 90_000
# Where a digest's web copy is served (newsletter/web/archive.py).
WEB_COPY_PATH = "/view"

cssutils.log.setLevel(logging.CRITICAL)

_HEADINGS = {
    Cadence.IMMEDIATE: "New posts",
    Cadence.DAILY: "Your daily digest",
    Cadence.WEEKLY: "Your weekly digest",
}
# True for every reader who shares the rendering, their first digest included.
_INTROS = {
    Cadence.IMMEDIATE: "Just published, in the tags you follow:",
    Cadence.DAILY: "New posts in the tags you follow:",
    Cadence.WEEKLY: "New posts in the tags you follow:",
}


@dataclass(frozen=True)
class RenderedDigest:
    subject: str
    html: str
    text: str
    # The digest's "view in your browser" link, where it has one.
    web_url: str = ""

    def with_web_url(self, url: str) -> RenderedDigest:
        """The same digest linking elsewhere for its web copy: a preview is never
        stored, so its own link would lead nowhere."""
        if not self.web_url:
            return self
        return replace(
            self,
            html=self.html.replace(escape(self.web_url), escape(url)),
            text=self.text.replace(self.web_url, url),
            web_url=url,
        )


# The link at the top of a digest; a web copy, already in the browser, goes without.
_VIEW_LINK = re.compile(r"<a href=\"[^\"]*\"[^>]*>View in your browser</a>")


def without_view_link(html_body: str) -> str:
    return _VIEW_LINK.sub("", html_body, count=1)


@dataclass(frozen=True)
class ShownPost:
    """A post as a digest shows it: its summary, or the start of its body, trimmed."""

    title: str
    url: str
    author: str | None
    published_at: dt.datetime
    tags: Sequence[Tag]
    excerpt: str


def excerpt(post: Post, max_chars: int) -> str:
    """The post's summary, or else the start of its body as text, cut at a word."""
    text = post.summary or (html_to_text(post.body_html) if post.body_html else "")
    return trim_words(text, max_chars)


class _OfflinePremailer(Premailer):  # type: ignore[misc]
    """Premailer whose CSS parser fetches nothing.

    `allow_network=False` only skips `<link>` tags; cssutils would still follow an
    `@import` (as `mj-font` writes), so its fetcher is replaced by one that returns
    nothing.
    """

    def _parse_css_string(self, css_body: str, validate: bool = True) -> Any:
        parser = cssutils.CSSParser(validate=validate, fetcher=lambda url: (None, ""))
        return parser.parseString(css_body)


_DOCTYPE = re.compile(r"^\s*<!doctype html>", re.IGNORECASE)


def inline_css(html: str) -> str:
    """Inline CSS the way that keeps MRML's layout in every client (see DESIGN facts).

    The doctype is upper-cased first: premailer keeps only `<!DOCTYPE html>`, and
    without a doctype Chrome renders in quirks mode.
    """
    html = _DOCTYPE.sub("<!DOCTYPE html>", html, count=1)
    premailer = _OfflinePremailer(
        html,
        allow_network=False,
        strip_important=False,
        keep_style_tags=True,
        remove_classes=False,
        exclude_pseudoclasses=True,
        disable_validation=True,
        cssutils_logging_level=logging.CRITICAL,
    )
    result: str = premailer.transform(pretty_print=False)
    return result


def content_key(cadence: Cadence, post_ids: Sequence[int]) -> str:
    """Identity of a digest's content: readers with the same key share one rendering."""
    raw = f"v{TEMPLATE_VERSION}:{cadence.value}:{','.join(map(str, sorted(post_ids)))}"
    return hashlib.sha256(raw.encode()).hexdigest()


# -- the web copy's link ----------------------------------------------------------


def _web_copy_serializer() -> URLSafeSerializer:
    # Untimed: the link in a sent email keeps working, and the same content always
    # gets the same link (two planners rendering it at once write the same bytes).
    return URLSafeSerializer(get_settings().secret_key, salt="newsletter.web-copy")


def web_copy_url(cadence: Cadence, post_ids: Sequence[int]) -> str:
    """The signed link to the web copy of the digest with this content.

    It names the content key, which anyone could compute from guessable post ids,
    so it is signed; and one of the posts, which finds the digest again after an
    edit gave it a new key (posts.py retires the old one).
    """
    ids = sorted(post_ids)
    token = _web_copy_serializer().dumps([ids[0], content_key(cadence, ids)])
    return f"{get_settings().public_base_url}{WEB_COPY_PATH}/{token}"


def read_web_copy_token(token: str) -> tuple[int, str]:
    """A web copy link's post id and content key; NotFound if it was not signed here."""
    try:
        data = _web_copy_serializer().loads(token)
    except BadSignature:
        raise NotFound("this link is not valid") from None
    match data:
        case [int(post_id), str(key)]:
            return post_id, key
    raise NotFound("this link is not valid")


# -- the digest -------------------------------------------------------------------


def render_digest(posts: Sequence[Post], cadence: Cadence) -> RenderedDigest:
    """Render the shared body of a digest: the newest `digest_max_posts` posts, the
    rest counted with a link to the web copy, which lists them all."""
    if not posts:
        raise ValueError("a digest needs at least one post")
    settings = get_settings()
    ordered = sorted(posts, key=lambda p: (p.published_at, p.id), reverse=True)
    shown = [
        ShownPost(
            title=p.title,
            url=p.url,
            author=p.author,
            published_at=p.published_at,
            tags=p.tags,
            excerpt=excerpt(p, settings.summary_max_chars),
        )
        for p in ordered[: settings.digest_max_posts]
    ]
    web_url = web_copy_url(cadence, [p.id or 0 for p in ordered])
    context = {
        "total": len(ordered),
        "cadence": cadence.value,
        "heading": _HEADINGS[cadence],
        "intro": _INTROS[cadence],
        "site_name": settings.site_name,
        "web_url": web_url,
        "slot": lambda name: Markup(placeholder(name)),
    }
    while True:
        rendered = render_email(
            "digest", {**context, "posts": shown, "more": len(ordered) - len(shown)}
        )
        size = len(rendered.html.encode())
        if size <= HTML_BUDGET or len(shown) == 1:
            return replace(rendered, web_url=web_url)
        # Posts cost about the same each: keep the share that fits, one less for luck.
        fits = len(shown) * HTML_BUDGET // size - 1
        shown = shown[: max(1, min(fits, len(shown) - 1))]


def render_email(name: str, context: dict[str, Any]) -> RenderedDigest:
    """Any email in `templates/email/<name>/`: subject, MJML body (inlined) and text body."""
    context = {"site_name": get_settings().site_name, **context}
    env = environment()
    mjml_source = env.get_template(f"email/{name}/body.mjml.j2").render(context)
    # fonts={}: MRML would otherwise add a Google Fonts link for some font names.
    html = inline_css(mjml2html(mjml_source, fonts={}))
    text = env.get_template(f"email/{name}/body.txt.j2").render(context).strip() + "\n"
    subject = " ".join(env.get_template(f"email/{name}/subject.txt.j2").render(context).split())
    return RenderedDigest(subject=subject, html=html, text=text)
