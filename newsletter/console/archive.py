"""The console's archive: every sent digest with its counts and its rendered copy.

The queries and the web copy live in `newsletter.archive` (the public archive and
the API use them too); the copy is shown in a sandboxed frame served by its own
route, as the preview is, with no reader's name, address or token in it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import HTMLResponse

from newsletter import archive
from newsletter.console.preview import WIDTHS
from newsletter.console.security import ConsoleRoute, EditorDep
from newsletter.console.views import page
from newsletter.db import session_scope
from newsletter.web.archive import copy_frame
from newsletter.web.schemas import MAX_DB_INT

router = APIRouter(prefix="/admin", include_in_schema=False, route_class=ConsoleRoute)

PAGE_SIZE = 50
DigestId = Annotated[int, Path(ge=1, le=MAX_DB_INT)]


@router.get("/archive")
def archive_list(
    staff: EditorDep, before: Annotated[int | None, Query(ge=1, le=MAX_DB_INT)] = None
) -> HTMLResponse:
    with session_scope() as session:
        result = archive.sent_digests(session, before, PAGE_SIZE)
        return page(
            "archive.html",
            staff,
            "archive",
            digests=result.digests,
            next_before=result.next_before,
            first_page=before is None,
        )


@router.get("/archive/{digest_id}")
def archive_digest(staff: EditorDep, digest_id: DigestId) -> HTMLResponse:
    with session_scope() as session:
        digest, summary = archive.summary(session, digest_id)
        return page(
            "archive_digest.html",
            staff,
            "archive",
            digest=summary,
            text=archive.fill_copy(digest, summary.posts).text if summary.rendered else "",
            widths=WIDTHS,
        )


@router.get("/archive/{digest_id}/copy")
def archive_copy(staff: EditorDep, digest_id: DigestId) -> HTMLResponse:
    """The digest's web copy alone, for the page's sandboxed frame."""
    with session_scope() as session:
        return copy_frame(archive.web_copy(session, archive.get_digest(session, digest_id)).html)
