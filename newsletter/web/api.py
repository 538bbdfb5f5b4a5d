"""The REST API under /api/: posts and tags, behind bearer tokens.

Tokens come from `newsletter tokens create` and are stored hashed. Posts and tags
are an editor's work, so any live token reaches them; the admin routes (readers,
suppressions) are in `subscribers_api` and `console_api`, and this router includes
the latter. A post created here is announced like one from the CLI (its readers are
planned after the commit); an edit changes the stored post and mails nobody again.
Every refusal is JSON: 401 (token), 403 (role), 404, 409 (conflict) and 422
(validation, the same shape as FastAPI's own: `detail` is a list of {loc, msg, type}).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter.delivery.ledger import drop_guards
from newsletter.errors import InvalidInput
from newsletter.models import DeliveryPost, Post, Tag, post_tags
from newsletter.posts import (
    DuplicatePost,
    PostInput,
    add_post,
    hold_post,
    release_post,
    update_post,
)
from newsletter.tags import get_or_create_tags, parse_tag_names, slugify
from newsletter.web import console_api
from newsletter.web.auth import TokenDep, actor, require_token
from newsletter.web.console_api import commit
from newsletter.web.deps import SessionDep, StrictJSONRoute
from newsletter.web.schemas import (
    MAX_DB_INT,
    PostList,
    PostOut,
    PostPatch,
    PostPayload,
    TagCreate,
    TagList,
    TagOut,
    error_responses,
    unprocessable,
)
from subscribers.models import subscriber_tags

router = APIRouter(
    prefix="/api", dependencies=[Depends(require_token)], route_class=StrictJSONRoute
)

R401 = error_responses(401)
R404 = error_responses(404)
R409_POST = error_responses(409, e409="A post with this guid (or URL) already exists")
R422 = error_responses(422)

Limit = Annotated[int, Query(ge=1, le=200, description="Items per page (1-200).")]
Offset = Annotated[int, Query(ge=0, le=MAX_DB_INT, description="Items to skip.")]
PostId = Annotated[int, Path(ge=1, le=MAX_DB_INT, description="The post's id.")]
TagSlug = Annotated[str, Path(description='The tag\'s slug (a name works too: "Public Services").')]


def _post(session: Session, post_id: int) -> Post:
    post = session.get(Post, post_id)
    if post is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no post #{post_id}")
    return post


# -- posts ------------------------------------------------------------------------


@router.post(
    "/posts",
    tags=["posts"],
    summary="Create a post",
    status_code=status.HTTP_201_CREATED,
    response_model=PostOut,
    responses={**R401, **R409_POST, **R422},
)
def create_post(payload: PostPayload, session: SessionDep) -> PostOut:
    """Store a post; readers following any of its tags are planned once it is committed."""
    try:
        post = add_post(session, payload.to_input(), source="api")
    except DuplicatePost as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except InvalidInput as exc:
        raise unprocessable(exc) from None
    commit(session, "a post with this guid was stored at the same moment")
    return PostOut.of(post)


@router.get(
    "/posts",
    tags=["posts"],
    summary="List posts",
    response_model=PostList,
    responses={**R401, **R422},
)
def list_posts(
    session: SessionDep,
    limit: Limit = 50,
    offset: Offset = 0,
    tag: Annotated[
        str | None, Query(description="Only posts carrying this tag (slug or name).")
    ] = None,
) -> PostList:
    """Most recently received first."""
    query = select(Post)
    if tag:
        query = query.join(post_tags, post_tags.c.post_id == Post.id).join(
            Tag, (Tag.id == post_tags.c.tag_id) & (Tag.slug == slugify(tag))
        )
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    posts = session.scalars(
        query.order_by(Post.received_at.desc(), Post.id.desc()).limit(limit).offset(offset)
    )
    return PostList(items=[PostOut.of(p) for p in posts], total=total, limit=limit, offset=offset)


@router.get(
    "/posts/{post_id}",
    tags=["posts"],
    summary="Get a post",
    response_model=PostOut,
    responses={**R401, **R404, **R422},
)
def get_post(post_id: PostId, session: SessionDep) -> PostOut:
    """One post with its tags and sanitised body."""
    return PostOut.of(_post(session, post_id))


@router.patch(
    "/posts/{post_id}",
    tags=["posts"],
    summary="Edit a post",
    response_model=PostOut,
    responses={**R401, **R404, **R422},
)
def patch_post(post_id: PostId, patch: PostPatch, session: SessionDep) -> PostOut:
    """Change the fields given; the guid stays, and nobody is mailed again."""
    post = _post(session, post_id)
    given = patch.model_fields_set
    data = PostInput(
        title=patch.title if patch.title is not None else post.title,
        url=patch.url if patch.url is not None else post.url,
        tags=list(patch.tags) if patch.tags is not None else [t.name for t in post.tags],
        summary=patch.summary if patch.summary is not None else post.summary,
        body_html=patch.body if patch.body is not None else post.body_html,
        author=patch.author if "author" in given else post.author,
        published_at=patch.published_at,
    )
    try:
        update_post(session, post, data)
    except InvalidInput as exc:
        raise unprocessable(exc) from None
    commit(session, "the post changed at the same moment; try again")
    return PostOut.of(post)


@router.post(
    "/posts/{post_id}/hold",
    tags=["posts"],
    summary="Hold a post back from planning",
    response_model=PostOut,
    responses={**R401, **R404, **R422},
)
def hold(post_id: PostId, request: Request, session: SessionDep, token: TokenDep) -> PostOut:
    """Nobody is planned the post until it is released; readers who already have it keep
    it. Holding a held post changes nothing."""
    post = _post(session, post_id)
    if hold_post(post, actor(token)):
        console_api.audit(session, request, token, "post_held", f"post #{post.id}", {})
    commit(session, "the post changed at the same moment; try again")
    return PostOut.of(post)


@router.post(
    "/posts/{post_id}/release",
    tags=["posts"],
    summary="Release a held post",
    response_model=PostOut,
    responses={**R401, **R404, **R422},
)
def release(post_id: PostId, request: Request, session: SessionDep, token: TokenDep) -> PostOut:
    """The post goes to exactly the readers it would have reached, each once: immediate
    readers now, daily and weekly readers in their next digest."""
    post = _post(session, post_id)
    if release_post(session, post):
        console_api.audit(session, request, token, "post_released", f"post #{post.id}", {})
    commit(session, "the post changed at the same moment; try again")
    return PostOut.of(post)


@router.delete(
    "/posts/{post_id}",
    tags=["posts"],
    summary="Delete a post",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={**R401, **R404, **R422},
)
def delete_post(post_id: PostId, session: SessionDep) -> Response:
    """Remove a post and its tags; digests already sent are not recalled."""
    post = _post(session, post_id)
    drop_guards(session, posts=DeliveryPost.post_id == post.id)
    session.delete(post)
    commit(session, "the post is in use")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# -- tags -------------------------------------------------------------------------


def _counts() -> tuple[Any, Any]:
    posts = select(func.count()).where(post_tags.c.tag_id == Tag.id).scalar_subquery()
    followers = select(func.count()).where(subscriber_tags.c.tag_id == Tag.id).scalar_subquery()
    return posts, followers


def _tag_out(session: Session, slug: str) -> TagOut:
    posts, followers = _counts()
    row = session.execute(select(Tag, posts, followers).where(Tag.slug == slug)).first()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no tag {slug!r}")
    return TagOut.of(row[0], row[1], row[2])


def _tag(session: Session, ref: str) -> Tag:
    tag = session.scalar(select(Tag).where(Tag.slug == slugify(ref)))
    if tag is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no tag {ref!r}")
    return tag


R409_TAG = error_responses(409, e409="A tag with this slug already exists")


@router.post(
    "/tags",
    tags=["tags"],
    summary="Create a tag",
    status_code=status.HTTP_201_CREATED,
    response_model=TagOut,
    responses={**R401, **R409_TAG, **R422},
)
def create_tag(payload: TagCreate, session: SessionDep) -> TagOut:
    """A tag readers can follow before any post carries it."""
    try:
        names = parse_tag_names([payload.name])
    except InvalidInput as exc:
        raise unprocessable(exc) from None
    if not names:
        raise unprocessable(InvalidInput("a tag needs a name"))
    [(slug, _name)] = names.items()
    if session.scalar(select(Tag.id).where(Tag.slug == slug)) is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"tag {slug!r} already exists")
    get_or_create_tags(session, names)
    commit(session, f"tag {slug!r} was created at the same moment")
    return _tag_out(session, slug)


@router.get(
    "/tags",
    tags=["tags"],
    summary="List tags",
    response_model=TagList,
    responses={**R401, **R422},
)
def list_tags(session: SessionDep, limit: Limit = 50, offset: Offset = 0) -> TagList:
    """Every tag by slug, with its number of posts and followers."""
    posts, followers = _counts()
    total = session.scalar(select(func.count()).select_from(Tag)) or 0
    rows = session.execute(
        select(Tag, posts, followers).order_by(Tag.slug).limit(limit).offset(offset)
    )
    return TagList(
        items=[TagOut.of(t, p, f) for t, p, f in rows], total=total, limit=limit, offset=offset
    )


@router.get(
    "/tags/{slug}",
    tags=["tags"],
    summary="Get a tag",
    response_model=TagOut,
    responses={**R401, **R404, **R422},
)
def get_tag(slug: TagSlug, session: SessionDep) -> TagOut:
    """One tag with its counts."""
    return _tag_out(session, _tag(session, slug).slug)


@router.patch(
    "/tags/{slug}",
    tags=["tags"],
    summary="Rename a tag",
    response_model=TagOut,
    responses={**R401, **R404, **R409_TAG, **R422},
)
def rename_tag(slug: TagSlug, payload: TagCreate, session: SessionDep) -> TagOut:
    """A new display name (and so slug); posts and followers stay with the tag."""
    tag = _tag(session, slug)
    try:
        [(new_slug, name)] = parse_tag_names([payload.name]).items()
    except InvalidInput as exc:
        raise unprocessable(exc) from None
    except ValueError:
        raise unprocessable(InvalidInput("a tag needs a name")) from None
    if new_slug != tag.slug and session.scalar(select(Tag.id).where(Tag.slug == new_slug)):
        raise HTTPException(status.HTTP_409_CONFLICT, f"tag {new_slug!r} already exists")
    tag.slug, tag.name = new_slug, name
    commit(session, f"tag {new_slug!r} was created at the same moment")
    return _tag_out(session, new_slug)


@router.delete(
    "/tags/{slug}",
    tags=["tags"],
    summary="Delete a tag",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={
        **R401,
        **R404,
        **error_responses(409, e409="Readers follow it and force is not set"),
        **R422,
    },
)
def delete_tag(
    slug: TagSlug,
    session: SessionDep,
    force: Annotated[
        bool, Query(description="Delete even if subscribers follow it (they stop following).")
    ] = False,
) -> Response:
    """Remove a tag from every post and subscriber."""
    tag = _tag(session, slug)
    followers = session.scalar(select(func.count()).where(subscriber_tags.c.tag_id == tag.id))
    if followers and not force:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"{followers} subscriber(s) follow {tag.slug!r}; pass force=true to delete it anyway",
        )
    session.delete(tag)
    commit(session, "the tag is in use")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# Suppressions, digests and statistics: their own module, under this router's token check.
router.include_router(console_api.router)
