"""JSON shapes of the REST API and the webhook, documented in the OpenAPI schema."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from newsletter.models import Post, Tag
from newsletter.posts import PostInput

TagName = Annotated[str, Field(min_length=1, max_length=120)]
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
