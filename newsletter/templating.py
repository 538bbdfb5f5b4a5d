"""Where the templates live and the Jinja2 environments that read them."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from newsletter.delivery.personalise import defuse
from newsletter.text import clean_text


def templates_dir() -> Path:
    """`newsletter/templates` in an installed wheel, the repository's `templates/` in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "templates", here.parent / "templates"):
        if (candidate / "email").is_dir():
            return candidate
    raise RuntimeError("templates folder not found; reinstall the package")


def format_date(value: dt.datetime) -> str:
    return f"{value.day} {value:%b %Y}"


def _autoescape(name: str | None) -> bool:
    return name is not None and name.endswith((".html", ".mjml.j2", ".html.j2"))


def finalize(value: object) -> object:
    """Every value a template prints: without what XML 1.0 forbids, placeholders defused.

    Ingress cleans all text already; this is defence in depth for rows stored
    before it did, since one such character makes MRML refuse the whole digest.
    """
    if isinstance(value, Markup):
        return Markup(clean_text(str(value)))
    if isinstance(value, str):
        value = clean_text(value)
    return defuse(value)


@lru_cache(maxsize=1)
def environment() -> Environment:
    """One environment for email and web: HTML and MJML escaped, plain text left alone."""
    env = Environment(
        loader=FileSystemLoader(templates_dir()),
        autoescape=_autoescape,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        finalize=finalize,
    )
    env.filters["date"] = format_date
    return env
