"""Digest rendering: Jinja2 -> MJML -> HTML -> inlined CSS, once per distinct digest.

Rendering costs milliseconds (premailer alone ~7 ms); substitution costs microseconds.
So a digest is rendered once with `@@NL_FIELD@@` placeholders, and each reader's copy
is made by `personalize.fill`.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cssutils
from markupsafe import Markup
from mjml import mjml2html
from premailer import Premailer

from newsletter.config import get_settings
from newsletter.delivery.personalise import placeholder
from newsletter.models import Cadence, Post
from newsletter.templating import environment

# Bump when a template change must not reuse digests rendered before it.
TEMPLATE_VERSION = "2"

cssutils.log.setLevel(logging.CRITICAL)

_HEADINGS = {
    Cadence.IMMEDIATE: "New posts",
    Cadence.DAILY: "Your daily digest",
    Cadence.WEEKLY: "Your weekly digest",
}
_INTROS = {
    Cadence.IMMEDIATE: "Just published, in the tags you follow:",
    Cadence.DAILY: "Here is what was published in the tags you follow since your last digest:",
    Cadence.WEEKLY: "Here is your week in the tags you follow:",
}


@dataclass(frozen=True)
class RenderedDigest:
    subject: str
    html: str
    text: str


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


def render_digest(posts: Sequence[Post], cadence: Cadence) -> RenderedDigest:
    """Render the shared body of a digest; newest posts first."""
    if not posts:
        raise ValueError("a digest needs at least one post")
    settings = get_settings()
    ordered = sorted(posts, key=lambda p: (p.published_at, p.id), reverse=True)
    context = {
        "posts": ordered,
        "cadence": cadence.value,
        "heading": _HEADINGS[cadence],
        "intro": _INTROS[cadence],
        "site_name": settings.site_name,
        "slot": lambda name: Markup(placeholder(name)),
    }
    return render_email("digest", context)


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
