"""Preview for editors: the next digest for a tag set or a real reader, and a test send
to the editor's own address and NEWSLETTER_TEST_ADDRESSES.

The preview is built by `newsletter.preview.build_preview`, the code the CLI's
`newsletter preview` runs: the same rendering and personal values as a send. The
digest is shown in a sandboxed frame served by its own route, whose policy lets the
email's inline styles apply and nothing else run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from email import policy
from email.parser import BytesHeaderParser
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from newsletter.config import Settings, get_settings
from newsletter.console import services
from newsletter.console.models import StaffUser
from newsletter.console.security import ConsoleRoute, CsrfDep, EditorDep, Staff, request_ip
from newsletter.console.views import page
from newsletter.db import session_scope, utcnow
from newsletter.delivery.mime import OutgoingMessage, Unsendable, build_message, new_message_id
from newsletter.delivery.sending import smtp_transport_factory
from newsletter.delivery.smtp import (
    ConnectionLost,
    OutcomeUnknown,
    PermanentFailure,
    TemporaryFailure,
)
from newsletter.errors import InvalidInput, NotFound
from newsletter.models import Cadence
from newsletter.preview import Preview, build_preview
from newsletter.text import one_line
from newsletter.web.rendering import framed, render_page
from subscribers.services import normalize_email

router = APIRouter(prefix="/admin", include_in_schema=False, route_class=ConsoleRoute)

TEST_PREFIX = "[Test] "
WIDTHS = (("375", "375 px"), ("600", "600 px"), ("desktop", "Desktop"))
# The explanatory page opens inside that frame when a sample link is clicked.
SAMPLE_PAGE_CSP = "default-src 'self'; frame-ancestors 'self'; base-uri 'none'; form-action 'self'"
SAMPLE_LINKS = {
    "preferences": (
        "Preferences link",
        "In a reader's copy this link opens their own preferences page, where they change "
        "their tags, schedule and time zone.",
    ),
    "unsubscribe": (
        "Unsubscribe link",
        "In a reader's copy this link unsubscribes that reader at once, and mail clients "
        "offer it as their unsubscribe button.",
    ),
    "web-copy": (
        "View in your browser",
        "In a reader's copy this link opens the digest's web copy, which lists every post "
        "it holds and shows nothing of the reader.",
    ),
    "post": (
        "Sample post",
        "Sample posts show how a digest looks before the first post exists. In a real "
        "digest this link opens the post.",
    ),
}
SEND_FAILURES = (
    ConnectionLost,
    OutcomeUnknown,
    PermanentFailure,
    TemporaryFailure,
    Unsendable,
    OSError,
)


@dataclass(frozen=True)
class Choice:
    """What the editor asked to preview: a tag set and cadence, or a reader."""

    tags: str = ""
    cadence: str = ""
    email: str = ""

    @property
    def given(self) -> bool:
        return bool(self.tags.strip() or self.email.strip())

    def query(self) -> str:
        return urlencode({"tags": self.tags, "cadence": self.cadence, "email": self.email})

    def build(self, test_copy: bool = False) -> Preview:
        """The preview, through the send's own code path; samples only for a tag set."""
        with session_scope() as session:
            result = build_preview(
                session,
                self.tags.strip() or None,
                self.cadence or None,
                self.email.strip() or None,
                utcnow(),
                samples=True,
                sample_links=test_copy,
            )
            # Nothing a preview touched is written: sample posts stay in memory.
            session.expunge_all()
            session.rollback()
            return result


TagsQuery = Annotated[str, Query(max_length=1000)]
CadenceQuery = Annotated[str, Query(max_length=20)]
EmailQuery = Annotated[str, Query(max_length=320)]


def message_headers(preview: Preview) -> list[tuple[str, str]]:
    """The reader's copy's headers as the wire has them, in order."""
    parsed = BytesHeaderParser(policy=policy.default).parsebytes(preview.message.data)
    return [(name, str(value)) for name, value in parsed.items()]


def preview_page(
    staff: Staff,
    choice: Choice,
    status_code: int = 200,
    notice: str | None = None,
    error: str | None = None,
) -> HTMLResponse:
    """The form, and the preview when something was chosen (a bad choice: a 400 page
    that says why, with the form kept)."""
    result: Preview | None = None
    if choice.given:
        try:
            result = choice.build()
        except InvalidInput as exc:
            error, status_code = str(exc), 400
        except NotFound as exc:
            error, status_code = str(exc), 404
    return page(
        "preview.html",
        staff,
        "preview",
        status_code=status_code,
        choice=choice,
        cadences=[c.value for c in Cadence],
        widths=WIDTHS,
        result=result,
        headers=message_headers(result) if result else [],
        frame_url=f"/admin/preview/frame?{choice.query()}",
        recipients=recipients_for_test(staff.email),
        notice=notice,
        error=error,
    )


@router.get("/preview")
def preview(
    staff: EditorDep,
    tags: TagsQuery = "",
    cadence: CadenceQuery = "",
    email: EmailQuery = "",
    sent: Annotated[str, Query(max_length=10)] = "",
) -> HTMLResponse:
    notice = (
        f"Test sent to {', '.join(recipients_for_test(staff.email).addresses)}." if sent else None
    )
    return preview_page(staff, Choice(tags, cadence, email), notice=notice)


@router.get("/preview/frame")
def preview_frame(
    staff: EditorDep, tags: TagsQuery = "", cadence: CadenceQuery = "", email: EmailQuery = ""
) -> HTMLResponse:
    """The digest's HTML alone, for the page's sandboxed frame."""
    choice = Choice(tags, cadence, email)
    if not choice.given:
        raise InvalidInput("choose tags or a reader to preview")
    return framed(choice.build().html)


@router.get("/preview/sample-link")
def sample_link(link: Annotated[str, Query(max_length=20)] = "") -> HTMLResponse:
    """Where a tag-set preview's links lead. Open to anyone: a test copy is often
    forwarded, and the page holds nothing but this explanation."""
    title, message = SAMPLE_LINKS.get(link, SAMPLE_LINKS["post"])
    response = render_page("web/admin/sample_link.html", title=title, message=message)
    response.headers["content-security-policy"] = SAMPLE_PAGE_CSP
    response.headers["x-frame-options"] = "SAMEORIGIN"
    return response


@dataclass(frozen=True)
class Recipients:
    """Where a test goes: the editor's own address and NEWSLETTER_TEST_ADDRESSES, and
    the entries of that setting that are not addresses (shown on the page, skipped)."""

    addresses: list[str]
    problems: list[str]


def recipients_for_test(staff_email: str) -> Recipients:
    addresses = [staff_email]
    problems = []
    for entry in get_settings().test_addresses.split(","):
        if not entry.strip():
            continue
        try:
            address = normalize_email(entry)
        except InvalidInput as exc:
            problems.append(f"NEWSLETTER_TEST_ADDRESSES: {exc}; it is left out")
            continue
        if address not in addresses:
            addresses.append(address)
    return Recipients(addresses, problems)


def send_tests(preview: Preview, addresses: Sequence[str]) -> dict[str, str]:
    """The previewed digest to each staff address, through the normal SMTP path, one
    message each on one connection; no delivery is recorded, as no reader was mailed.
    Returns the addresses that could not be sent to, with the reason."""
    settings = get_settings()
    failures: dict[str, str] = {}
    try:
        with smtp_transport_factory(settings)() as transport:
            for address in addresses:
                try:
                    transport.send(_test_message(preview, address, settings))
                except SEND_FAILURES as exc:
                    failures[address] = _reason(exc)
    except SEND_FAILURES as exc:
        # No connection to the server: nothing went anywhere.
        for address in addresses:
            failures.setdefault(address, _reason(exc))
    return failures


def _test_message(preview: Preview, address: str, settings: Settings) -> OutgoingMessage:
    return build_message(
        from_name=settings.from_name,
        from_address=settings.from_,
        to_name="",
        to_address=address,
        subject=one_line(TEST_PREFIX + preview.subject, 300),
        text=preview.text,
        html=preview.html,
        message_id=new_message_id(settings.from_),
        headers=preview.headers,
    )


def _reason(exc: BaseException) -> str:
    return one_line(str(exc) or type(exc).__name__, 300)


def _audit_test(
    staff: Staff, choice: Choice, preview: Preview, ip: str, sent: list[str], failed: dict[str, str]
) -> None:
    detail: dict[str, object] = {
        "tags": choice.tags,
        "cadence": choice.cadence,
        "reader": choice.email,
        "subject": preview.subject,
        "sample": preview.sample,
        "to": sent,
    }
    if failed:
        detail["failed"] = failed
    with session_scope() as session:
        services.audit(
            session,
            "preview_test_sent" if sent else "preview_test_failed",
            actor=session.get(StaffUser, staff.user_id),
            target=staff.email,
            detail=detail,
            ip=ip,
        )


@router.post("/preview/test")
async def preview_test(
    request: Request,
    staff: CsrfDep,
    tags: Annotated[str, Form(max_length=1000)] = "",
    cadence: Annotated[str, Form(max_length=20)] = "",
    email: Annotated[str, Form(max_length=320)] = "",
) -> Response:
    """ "Send me a test": the preview as shown, to the editor's own address and the
    configured test addresses."""
    choice = Choice(tags, cadence, email)
    if not choice.given:
        raise InvalidInput("choose tags or a reader to preview")
    ip = request_ip(request)
    result = await run_in_threadpool(choice.build, True)
    recipients = recipients_for_test(staff.email)
    failed = await run_in_threadpool(send_tests, result, recipients.addresses)
    sent = [a for a in recipients.addresses if a not in failed]
    await run_in_threadpool(_audit_test, staff, choice, result, ip, sent, failed)
    if not failed:
        return RedirectResponse(f"/admin/preview?{choice.query()}&sent=1", status_code=303)
    reasons = "; ".join(f"{address}: {reason}" for address, reason in failed.items())
    message = f"The test could not be sent to {reasons}"
    notice = f"Test sent to {', '.join(sent)}." if sent else None
    status = 200 if sent else 502
    return await run_in_threadpool(preview_page, staff, choice, status, notice, message)
