"""JSON shapes of the REST API and the webhook, documented in the OpenAPI schema."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import HTTPException, status
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from newsletter import archive, stats
from newsletter.models import Cadence, Delivery, DeliveryStatus, Post, Tag
from newsletter.posts import PostInput
from newsletter.text import first_unsafe_char
from subscribers.models import (
    Subscriber,
    SubscriberStatus,
    Suppression,
    SuppressionEvent,
    SuppressionReason,
)

TagName = Annotated[str, Field(min_length=1, max_length=120)]


def _searchable(value: str) -> str:
    unsafe = first_unsafe_char(value)
    if unsafe is not None:
        raise ValueError(f"holds {unsafe}, a character no address, name or tag holds")
    return value


# A search term or cursor: control characters (NUL, which PostgreSQL refuses in any
# text) and the like are refused with a 422 before a query sees them.
SearchText = Annotated[str, AfterValidator(_searchable)]
# The largest id or offset the database takes (a 32-bit INTEGER column in
# PostgreSQL): anything above it is refused with a 422, never passed to SQL.
MAX_DB_INT = 2**31 - 1


class PostPayload(BaseModel):
    """A post as a client or a CMS sends it. HTML is sanitised on the way in."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "title": "Budget day",
                    "url": "https://blog.example.org/2026/03/budget/",
                    "tags": ["Politics", "Public Services"],
                    "summary": "What changes.",
                    "body": "<p>The budget…</p>",
                    "author": "Marta Reis",
                    "published_at": "2026-03-02T09:00:00+00:00",
                    "guid": "https://blog.example.org/?p=1042",
                }
            ]
        },
    )

    title: str = Field(min_length=1, max_length=500, description="Plain text; markup is shown.")
    url: str = Field(min_length=1, max_length=2000, description="Absolute http(s) URL.")
    tags: list[TagName] = Field(
        default_factory=list, max_length=50, description="Display names; matched by slug."
    )
    summary: str = Field(
        "", max_length=20_000, description="Short summary; HTML is reduced to text."
    )
    body: str = Field(
        "",
        max_length=1_000_000,
        description="Body HTML, cleaned to a safe allow-list; relative links made absolute.",
    )
    author: str | None = Field(None, max_length=255, description="Author name (plain text).")
    published_at: dt.datetime | None = Field(
        None, description="ISO 8601; display only (arrival decides who gets it). Default: now."
    )
    guid: str | None = Field(
        None, min_length=1, max_length=512, description="Stable identity; defaults to the URL."
    )

    def to_input(self) -> PostInput:
        return PostInput(
            title=self.title,
            url=self.url,
            tags=list(self.tags),
            summary=self.summary,
            body_html=self.body,
            author=self.author,
            published_at=self.published_at,
            guid=self.guid,
        )


class PostPatch(BaseModel):
    """Fields to change; those left out keep their value. An edit never mails anyone."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(None, min_length=1, max_length=500)
    url: str | None = Field(None, min_length=1, max_length=2000)
    tags: list[TagName] | None = Field(None, max_length=50, description="Replaces the tags.")
    summary: str | None = Field(
        None, max_length=20_000, description="An empty string derives it from the body."
    )
    body: str | None = Field(None, max_length=1_000_000)
    author: str | None = Field(None, max_length=255, description="null clears it.")
    published_at: dt.datetime | None = None


class TagRef(BaseModel):
    slug: str
    name: str


def _slug(tag: Tag) -> str:
    return tag.slug


class PostOut(BaseModel):
    id: int
    guid: str
    title: str
    url: str
    author: str | None
    summary: str
    body: str = Field(description="Sanitised HTML.")
    tags: list[TagRef]
    published_at: dt.datetime
    received_at: dt.datetime = Field(description="When it reached the pipeline.")
    planned_at: dt.datetime | None = Field(description="When its immediate readers were planned.")
    held_at: dt.datetime | None = Field(
        None, description="Held back from planning since then (POST .../release lets it go)."
    )
    held_by: str | None = None
    updated_at: dt.datetime
    source: str = Field(description="cli, api, webhook, feed, import or backlog.")
    feed_id: int | None

    @classmethod
    def of(cls, post: Post) -> PostOut:
        return cls(
            id=post.id,
            guid=post.guid,
            title=post.title,
            url=post.url,
            author=post.author,
            summary=post.summary,
            body=post.body_html,
            tags=[TagRef(slug=t.slug, name=t.name) for t in sorted(post.tags, key=_slug)],
            published_at=post.published_at,
            received_at=post.received_at,
            planned_at=post.planned_at,
            held_at=post.held_at,
            held_by=post.held_by,
            updated_at=post.updated_at,
            source=post.source,
            feed_id=post.feed_id,
        )


class PostList(BaseModel):
    items: list[PostOut]
    total: int
    limit: int
    offset: int


class TagCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: TagName = Field(description='Display name, e.g. "Public Services".')


class TagOut(BaseModel):
    id: int
    slug: str
    name: str
    created_at: dt.datetime
    posts: int = Field(description="Posts carrying it.")
    followers: int = Field(description="Subscribers following it.")

    @classmethod
    def of(cls, tag: Tag, posts: int, followers: int) -> TagOut:
        return cls(
            id=tag.id,
            slug=tag.slug,
            name=tag.name,
            created_at=tag.created_at,
            posts=posts,
            followers=followers,
        )


class TagList(BaseModel):
    items: list[TagOut]
    total: int
    limit: int
    offset: int


class ErrorOut(BaseModel):
    detail: str = Field(description="What went wrong, in one sentence.")


class ValidationErrorItem(BaseModel):
    loc: list[str | int] = Field(description="Where: body, a field name, a parameter.")
    msg: str
    type: str


class ValidationErrorOut(BaseModel):
    detail: list[ValidationErrorItem]


ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "The request is unusable as a whole",
    401: "Missing, invalid or revoked bearer token",
    403: "The token's role may not use this route: it needs an admin token",
    404: "No such item",
    409: "It conflicts with what is stored",
    413: "The body is too large",
    422: "Invalid input: the body or a parameter fails validation, or a field is unusable "
    "(a relative URL, a tag with no letters, an unknown time zone)",
}


def error_responses(*codes: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of a route, all JSON: `detail` is one sentence, or
    for 422 a list of {loc, msg, type}. `described` overrides a description, keyed
    `e409="..."`."""
    responses: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        responses[code] = {
            "model": ValidationErrorOut if code == 422 else ErrorOut,
            "description": described.get(f"e{code}") or ERROR_DESCRIPTIONS[code],
        }
    return responses


def unprocessable(exc: Exception, *where: str | int) -> HTTPException:
    """A 422 in FastAPI's own shape, for input only a service can judge (an unknown time
    zone, an address already taken)."""
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        [{"loc": list(where or ("body",)), "msg": str(exc), "type": "value_error"}],
    )


class WebhookResult(BaseModel):
    status: Literal["created", "updated", "unchanged"] = Field(
        description="created (201), or a known guid: updated or unchanged (200), never re-sent."
    )
    id: int
    guid: str


class WebhookError(BaseModel):
    error: str = Field(description="A stable code, e.g. bad_signature or payload_too_large.")
    detail: str
    errors: list[dict[str, Any]] | None = Field(None, description="Field errors, for 422.")


# -- readers ----------------------------------------------------------------------

Email = Annotated[str, Field(min_length=3, max_length=320)]


class SubscriberOut(BaseModel):
    id: int
    email: str
    name: str
    status: SubscriberStatus
    cadence: Cadence
    timezone: str = Field(description="IANA zone of the daily and weekly slot.")
    send_hour: int = Field(description="Local hour of a daily or weekly digest (0-23).")
    send_weekday: int = Field(description="Day of a weekly digest, 0 = Monday.")
    tags: list[TagRef]
    suppressed: SuppressionReason | None = Field(
        description="Why the address is on the suppression list, or null: nothing is "
        "mailed to a suppressed address."
    )
    subscribed_at: dt.datetime = Field(description="Posts received before it never go to them.")
    confirmed_at: dt.datetime | None
    unsubscribed_at: dt.datetime | None
    next_digest_at: dt.datetime | None = Field(description="Next daily or weekly slot, UTC.")
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, subscriber: Subscriber, suppressed: SuppressionReason | None) -> SubscriberOut:
        return cls(
            id=subscriber.id,
            email=subscriber.email,
            name=subscriber.name,
            status=subscriber.status,
            cadence=subscriber.cadence,
            timezone=subscriber.timezone,
            send_hour=subscriber.send_hour,
            send_weekday=subscriber.send_weekday,
            tags=[TagRef(slug=t.slug, name=t.name) for t in subscriber.tags],
            suppressed=suppressed,
            subscribed_at=subscriber.subscribed_at,
            confirmed_at=subscriber.confirmed_at,
            unsubscribed_at=subscriber.unsubscribed_at,
            next_digest_at=subscriber.next_digest_at,
            created_at=subscriber.created_at,
            updated_at=subscriber.updated_at,
        )


class SubscriberList(BaseModel):
    items: list[SubscriberOut]
    next_after: str | None = Field(
        description="Pass as `after` for the next page (with the same filters); null on "
        "the last page."
    )
    limit: int


class SubscriberPatch(BaseModel):
    """Fields to change; those left out (or null) keep their value. Checked whole before
    anything is written: one bad field and nothing changes."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"cadence": "weekly", "send_weekday": "friday", "tags": ["Health"]}]
        },
    )

    name: str | None = Field(None, max_length=200)
    email: Email | None = Field(None, description="A new address (normalised as at sign-up).")
    status: SubscriberStatus | None = Field(
        None, description="unsubscribed also puts the address on the suppression list."
    )
    cadence: Cadence | None = None
    timezone: str | None = Field(None, min_length=1, max_length=64, examples=["Europe/Lisbon"])
    send_hour: int | None = Field(None, ge=0, le=23)
    send_weekday: int | str | None = Field(
        None, description="0-6 (0 = Monday) or a day's name: monday..sunday."
    )
    tags: list[TagName] | None = Field(
        None, min_length=1, max_length=50, description="Replaces the tags (existing tags only)."
    )


class FollowOut(BaseModel):
    slug: str
    name: str
    since: dt.datetime = Field(description="Posts of this tag received before it are not sent.")


class SuppressionEventOut(BaseModel):
    action: str = Field(description="added, changed (a stronger reason) or lifted.")
    reason: str
    detail: str | None
    actor: str = Field(description="Who or what did it: an admin, an API token, smtp.")
    created_at: dt.datetime

    @classmethod
    def of(cls, event: SuppressionEvent) -> SuppressionEventOut:
        return cls(
            action=event.action,
            reason=event.reason,
            detail=event.detail,
            actor=event.actor,
            created_at=event.created_at,
        )


class DeliveryOut(BaseModel):
    """One digest meant for this reader, and what became of it."""

    id: int
    digest_id: int
    subject: str
    status: DeliveryStatus
    skip_reason: str | None = Field(description="Why it was not sent (when skipped).")
    smtp_reply: str | None = Field(
        description="The mail server's last refusal or the last error, for a failed or "
        "retried send."
    )
    attempts: int
    created_at: dt.datetime = Field(description="When it was planned.")
    sent_at: dt.datetime | None
    next_attempt_at: dt.datetime | None
    updated_at: dt.datetime

    @classmethod
    def of(cls, delivery: Delivery, subject: str) -> DeliveryOut:
        return cls(
            id=delivery.id,
            digest_id=delivery.digest_id,
            subject=subject,
            status=delivery.status,
            skip_reason=delivery.skip_reason,
            smtp_reply=delivery.last_error,
            attempts=delivery.attempts,
            created_at=delivery.created_at,
            sent_at=delivery.sent_at,
            next_attempt_at=delivery.next_attempt_at,
            updated_at=delivery.updated_at,
        )


class DeliveryList(BaseModel):
    items: list[DeliveryOut]
    next_before: int | None = Field(
        description="Pass as `before` for the next (older) page; null on the last page."
    )
    limit: int


# -- suppressions -----------------------------------------------------------------


class SuppressionOut(BaseModel):
    email: str
    reason: SuppressionReason
    detail: str | None = Field(description="The bounce, complaint or admin's note.")
    created_at: dt.datetime

    @classmethod
    def of(cls, row: Suppression) -> SuppressionOut:
        return cls(email=row.email, reason=row.reason, detail=row.detail, created_at=row.created_at)


class SuppressionList(BaseModel):
    items: list[SuppressionOut]
    next_after: str | None = Field(
        description="Pass as `after` for the next page (with the same filters); null on "
        "the last page."
    )
    limit: int


class SuppressionCreate(BaseModel):
    """An admin's suppression: nothing is mailed to the address until it is lifted."""

    model_config = ConfigDict(extra="forbid")

    email: Email
    note: str = Field("", max_length=1000, description="Why, for whoever lifts it later.")


class SubscriberDetail(SubscriberOut):
    follows: list[FollowOut] = Field(description="Their tags, with when each was followed.")
    suppression: SuppressionOut | None = Field(description="Their address's suppression.")
    suppression_history: list[SuppressionEventOut] = Field(
        description="Every add, change and lift of their address, newest first."
    )


# -- digests ----------------------------------------------------------------------


class DigestCounts(BaseModel):
    readers: int = Field(description="Readers it was planned for (deleted readers included).")
    sent: int
    failed: int
    skipped: int
    pending: int = Field(description="Queued or being sent.")


class DigestPostOut(BaseModel):
    id: int
    title: str
    url: str
    published_at: dt.datetime
    tags: list[TagRef]


class DigestOut(BaseModel):
    id: int
    subject: str = Field(description="As the web copy shows it (no reader's values).")
    cadence: Cadence
    created_at: dt.datetime = Field(description="When it was rendered.")
    first_sent_at: dt.datetime | None
    posts: list[DigestPostOut] = Field(description="Its posts still stored, newest first.")
    counts: DigestCounts
    rendered: bool = Field(description="False when its posts could not be rendered together.")

    @classmethod
    def of(cls, summary: archive.Summary) -> DigestOut:
        return cls(**_digest_fields(summary))


def _digest_fields(summary: archive.Summary) -> dict[str, Any]:
    counts = summary.counts
    return {
        "id": summary.id,
        "subject": summary.subject,
        "cadence": summary.cadence,
        "created_at": summary.created_at,
        "first_sent_at": counts.first_sent,
        "posts": [
            DigestPostOut(
                id=p.id,
                title=p.title,
                url=p.url,
                published_at=p.published_at,
                tags=[TagRef(slug=t.slug, name=t.name) for t in p.tags],
            )
            for p in summary.posts
        ],
        "counts": DigestCounts(
            readers=counts.readers,
            sent=counts.sent,
            failed=counts.failed,
            skipped=counts.skipped,
            pending=counts.pending,
        ),
        "rendered": summary.rendered,
    }


class DigestList(BaseModel):
    items: list[DigestOut]
    next_before: int | None = Field(
        description="Pass as `before` for the next (older) page; null on the last page."
    )
    limit: int


class DigestDetail(DigestOut):
    text: str = Field(description="The web copy's plain-text part (no reader's values).")
    html: str = Field(description="The web copy's HTML part (no reader's values).")

    @classmethod
    def of_copy(cls, summary: archive.Summary, copy: archive.WebCopy) -> DigestDetail:
        return cls(**_digest_fields(summary), text=copy.text, html=copy.html)


# -- statistics -------------------------------------------------------------------


class TagFollowers(BaseModel):
    slug: str
    name: str
    followers: int


class ReaderStats(BaseModel):
    as_of: dt.datetime = Field(description="When they were counted (counts are cached).")
    total: int
    by_status: dict[SubscriberStatus, dict[Cadence, int]] = Field(
        description="Readers per status, and per cadence within it."
    )
    tags: list[TagFollowers] = Field(description="Every tag, most followed first.")


class DayStats(BaseModel):
    day: dt.date = Field(description="A UTC day.")
    digests: int = Field(description="Digests made that day.")
    sent: int = Field(description="Messages planned that day and sent.")
    failed: int = Field(description="Messages planned that day that failed for good.")


class DaysStats(BaseModel):
    as_of: dt.datetime = Field(description="When they were counted (counts are cached).")
    days: list[DayStats] = Field(description="The last 30 days, today included, oldest first.")


class SendStats(BaseModel):
    since: dt.datetime | None = Field(description="When the send began; null: none lately.")
    running: bool = Field(description="Messages of it are still queued or being sent.")
    counts: dict[DeliveryStatus, int]
    total: int
    done: int
    percent: int


class FailureOut(BaseModel):
    delivery_id: int
    digest_id: int
    subject: str
    cadence: Cadence
    smtp_reply: str
    created_at: dt.datetime = Field(description="When it was planned.")
    failed_at: dt.datetime
    subscriber_id: int | None = Field(description="Null for an editor token, or once deleted.")
    email: str | None = Field(description="Null for an editor token, or once deleted.")


class StatsOut(BaseModel):
    readers: ReaderStats
    days: DaysStats
    send: SendStats = Field(description="The send in progress, or the latest one.")
    failures: list[FailureOut] = Field(
        description="The newest failed messages; for an editor token without the reader "
        "and with addresses in the reply masked."
    )

    @classmethod
    def of(cls, view: stats.Overview, failures: list[stats.Failure]) -> StatsOut:
        readers, progress = view.readers.value, view.progress
        return cls(
            readers=ReaderStats(
                as_of=view.readers.as_of,
                total=readers.total,
                by_status=readers.by_status,
                tags=[
                    TagFollowers(slug=t.slug, name=t.name, followers=t.followers)
                    for t in readers.tags
                ],
            ),
            days=DaysStats(
                as_of=view.days.as_of,
                days=[
                    DayStats(day=d.day, digests=d.digests, sent=d.sent, failed=d.failed)
                    for d in view.days.value
                ],
            ),
            send=SendStats(
                since=progress.since,
                running=progress.running,
                counts=progress.counts,
                total=progress.total,
                done=progress.done,
                percent=progress.percent,
            ),
            failures=[
                FailureOut(
                    delivery_id=f.delivery_id,
                    digest_id=f.digest_id,
                    subject=f.subject,
                    cadence=f.cadence,
                    smtp_reply=f.error,
                    created_at=f.created_at,
                    failed_at=f.failed_at,
                    subscriber_id=f.subscriber_id,
                    email=f.email,
                )
                for f in failures
            ],
        )
