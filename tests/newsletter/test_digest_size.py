"""A digest that fits: at most `digest_max_posts` posts, the rest counted and linked,
summaries trimmed at a word, and the HTML under the ~102 KB at which Gmail clips a
message (hiding its footer, unsubscribe link included). The posts a digest only counts
are delivered all the same: the ledger never sends them again."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import re
from email.message import EmailMessage

import pytest
from sqlalchemy import select

from newsletter.config import get_settings
from newsletter.db import session_scope
from newsletter.delivery.compose import message_for
from newsletter.delivery.mime import new_message_id
from newsletter.delivery.pipeline import run_due
from newsletter.delivery.rendering import HTML_BUDGET, content_key, render_digest
from newsletter.models import Cadence, Delivery, DeliveryStatus, Digest, Post, Tag
from newsletter.text import trim_words
from subscribers.models import Subscriber
from tests.conftest import ScriptedHandler, apply_env
from tests.factories import make_post as add_post
from tests.factories import make_subscriber
from tests.newsletter.test_rendering import make_post, parse_html

T0 = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)
WORDS = [
    "council",
    "budget",
    "hearing",
    "district",
    "panel",
    "transport",
    "housing",
    "climate",
    "health",
    "school",
    "procurement",
    "transparency",
    "archive",
]
TAGS = [
    Tag(id=n, slug=f"tag-{n}", name=f"Public Services and Local Politics {n}") for n in range(4)
]


def prose(n_chars: int, seed: int) -> str:
    """Words, not one long token: trimming must find word boundaries."""
    words: list[str] = []
    i = seed
    while sum(len(w) + 1 for w in words) < n_chars:
        words.append(WORDS[i % len(WORDS)])
        i += 7
    return " ".join(words)[:n_chars]


def long_posts(count: int) -> list[Post]:
    """Titles at the 500 characters a title may hold, summaries far over the limit."""
    return [
        make_post(
            n,
            title=f"{n:02d} " + prose(496, n),
            url=f"https://blog.example.org/2026/03/{n:02d}-a-rather-long-slug-for-this-post/",
            author="Margaret Hamilton-Okonkwo",
            summary=prose(3000, n + 1),
            published_at=T0 + dt.timedelta(minutes=n),
            tags=TAGS,
        )
        for n in range(1, count + 1)
    ]


def reader(cadence: Cadence = Cadence.WEEKLY) -> Subscriber:
    subscriber = Subscriber(
        id=5,
        uid="k3yOfMargaret_012",
        email="margaret.hamilton-okonkwo@example.com",
        name="Margaret",
        cadence=cadence,
        timezone="Europe/Lisbon",
        send_hour=8,
        send_weekday=0,
    )
    subscriber.tags = TAGS
    return subscriber


def html_part(posts: list[Post], subscriber: Subscriber) -> str:
    """The HTML part of the message a reader gets, decoded from the MIME on the wire."""
    rendered = render_digest(posts, subscriber.cadence)
    ids = [p.id for p in posts]
    digest = Digest(
        id=1,
        content_key=content_key(subscriber.cadence, ids),
        cadence=subscriber.cadence,
        post_ids=ids,
        subject=rendered.subject,
        html=rendered.html,
        text=rendered.text,
    )
    delivery = Delivery(id=1, digest_id=1, subscriber_id=subscriber.id)
    delivery.message_id = new_message_id(get_settings().from_)
    data = message_for(delivery, digest, subscriber, get_settings()).data
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    body = message.get_body(("html",))
    assert body is not None
    return str(body.get_content())


def test_sixty_long_posts_stay_under_the_gmail_clip_with_the_footer(
    settings_env: dict[str, str],
) -> None:
    posts = long_posts(60)
    html = html_part(posts, reader())
    size = len(html.encode())
    assert size < 100_000, f"{size} bytes: Gmail would clip it"

    parsed = parse_html(html)
    links = dict((text, href) for href, text in parsed.anchors)
    base = settings_env["NEWSLETTER_BASE_URL"]
    assert (links.get("Unsubscribe") or "").startswith(f"{base}/unsubscribe/")
    assert (links.get("Manage your preferences") or "").startswith(f"{base}/preferences/")
    cap = get_settings().digest_max_posts
    newest_first = sorted(posts, key=lambda p: p.published_at, reverse=True)
    shown = [p for p in newest_first if (p.url, p.title) in parsed.anchors]
    # The newest posts are shown, the rest counted with a link to the web copy.
    assert shown == newest_first[:cap]
    more = links.get(f"{60 - cap} more posts") or ""
    assert more.startswith(f"{base}/view/") and more.endswith("#posts")
    assert links["View in your browser"] == more.removesuffix("#posts")
    # Every summary shown is trimmed at a word, ellipsis included, to the limit.
    limit = get_settings().summary_max_chars
    text = " ".join(" ".join(parsed.text).split())
    for post in shown:
        trimmed = trim_words(post.summary, limit)
        assert len(trimmed) <= limit and trimmed.endswith("\u2026")
        assert trimmed in text
        assert trimmed[:-1].split()[-1] in WORDS, "cut inside a word"


def test_the_default_cap_was_measured_at_the_longest_summaries(
    settings_env: dict[str, str],
) -> None:
    """Exactly `digest_max_posts` posts at their longest fit well under the clip,
    without the size guard having to drop any."""
    cap = get_settings().digest_max_posts
    html = render_digest(long_posts(cap), Cadence.WEEKLY).html
    assert len(html.encode()) < 80_000
    assert len(re.findall(r'class="post"', html)) == cap


def test_settings_too_high_to_fit_show_fewer_posts_instead(
    settings_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    apply_env(monkeypatch, NEWSLETTER_DIGEST_MAX_POSTS="200", NEWSLETTER_SUMMARY_MAX_CHARS="5000")
    rendered = render_digest(long_posts(60), Cadence.DAILY)
    assert len(rendered.html.encode()) <= HTML_BUDGET
    shown = len(re.findall(r'class="post"', rendered.html))
    assert 1 <= shown < 60
    assert f"{60 - shown} more posts" in rendered.html
    assert f"{60 - shown} more posts in this digest" in rendered.text
    assert rendered.subject == "60 new posts in @@NL_TAGS@@"


def test_readers_who_share_a_content_key_share_every_byte(
    settings_env: dict[str, str],
) -> None:
    """The cap, the count and the web copy's link follow from the posts alone, so one
    rendering serves everyone with the same key, in whatever order the posts came."""
    posts = long_posts(30)
    first = render_digest(posts, Cadence.DAILY)
    again = render_digest(list(reversed(posts)), Cadence.DAILY)
    assert first == again
    assert first.web_url in first.text
    assert render_digest(posts[:29], Cadence.DAILY).web_url != first.web_url
    assert render_digest(posts, Cadence.WEEKLY).web_url != first.web_url


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("short enough", 50, "short enough"),
        ("the council met today", 15, "the council\u2026"),
        ("the council, met today", 14, "the council\u2026"),
        ("the council met today", 12, "the council\u2026"),
        ("unbreakableword and more", 8, "unbreak\u2026"),
        ("  padded  ", 6, "padded"),
    ],
)
def test_trim_words(text: str, limit: int, expected: str) -> None:
    assert trim_words(text, limit) == expected
    assert len(trim_words(text, limit)) <= limit


# --- the ledger: posts only counted were delivered ----------------------------------------


@pytest.mark.usefixtures("app_env")
def test_posts_past_the_cap_count_as_delivered_and_never_come_again(
    smtp: ScriptedHandler, t0: dt.datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply_env(monkeypatch, NEWSLETTER_DIGEST_MAX_POSTS="2")
    make_subscriber("wes@example.org", "politics", "weekly", t0, send_weekday="wednesday")
    first = [add_post("politics", t0 + n * dt.timedelta(minutes=1)) for n in range(1, 6)]
    run_due(t0 + dt.timedelta(days=7))
    assert len(smtp.messages) == 1
    body = smtp.messages[0].parsed().get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "3 more posts in this digest" in text
    # Sent through the sender's own reader rows: the footer names the weekday.
    assert "weekly on Wednesdays at 08:00 (UTC)" in " ".join(text.split())
    with session_scope() as session:
        titles = {post_id: title for post_id, title in session.execute(select(Post.id, Post.title))}
        (delivery,) = session.scalars(select(Delivery))
        assert delivery.status is DeliveryStatus.SENT
        # The ledger holds all five: the two shown and the three counted.
        assert sorted(delivery.post_ids) == sorted(first)
    unshown = [titles[p] for p in first if titles[p] not in text]
    assert len(unshown) == 3

    later = add_post("politics", t0 + dt.timedelta(days=8))
    run_due(t0 + dt.timedelta(days=21))
    run_due(t0 + dt.timedelta(days=28))
    assert len(smtp.messages) == 2
    second = smtp.messages[1].parsed().get_body(("plain",))
    assert second is not None
    again = second.get_content()
    with session_scope() as session:
        later_post = session.get(Post, later)
        assert later_post is not None
        assert later_post.title in again
    for title in unshown:
        assert title not in again
    assert "more posts" not in again
