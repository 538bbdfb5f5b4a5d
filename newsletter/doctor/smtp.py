"""The relays of NEWSLETTER_SMTP_URL: reachable, encrypted as the URL asks, logged in."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable
from functools import partial

from newsletter.config import Settings
from newsletter.delivery.relays import Relay, parse_relays
from newsletter.doctor.verdicts import DEFAULT_TIMEOUT, Check, Verdict, ok, problem, warning
from newsletter.errors import InvalidInput


def check_relay(relay: Relay, timeout: float = DEFAULT_TIMEOUT) -> Check:
    """Connect, greet, secure the session the way a send would (the same default TLS
    context: a certificate a send would refuse is refused here too) and log in when
    the URL names a user. Nothing is sent."""
    c = relay.config
    name = f"SMTP {relay.name}"
    step = "connect"
    smtp: smtplib.SMTP | None = None
    try:
        if c.implicit_tls:
            context = ssl.create_default_context()
            smtp = smtplib.SMTP_SSL(c.host, c.port, timeout=timeout, context=context)
        else:
            smtp = smtplib.SMTP(c.host, c.port, timeout=timeout)
        step = "greet"
        smtp.ehlo()
        verdict = _tls_verdict(smtp, relay, name)
        if verdict.verdict is Verdict.PROBLEM:
            return verdict
        if c.starttls:
            step = "start TLS"
            smtp.starttls(context=ssl.create_default_context())
            smtp.ehlo()
        if c.username:
            step = "log in"
            smtp.login(c.username, c.password or "")
            verdict = Check(name, verdict.verdict, f"{verdict.detail}; login accepted")
        return verdict
    except smtplib.SMTPAuthenticationError as exc:
        return problem(name, f"login refused: {exc.smtp_code} {_text(exc.smtp_error)}")
    except smtplib.SMTPNotSupportedError:
        return problem(name, "the URL names a user but the server offers no login (AUTH)")
    except TimeoutError:
        return problem(name, f"cannot {step}: no answer within {timeout:g} s")
    except ssl.SSLError as exc:
        return problem(name, f"cannot {step}: TLS failed ({exc.reason or exc})")
    except smtplib.SMTPServerDisconnected as exc:
        # smtplib reports a read that timed out as a lost connection.
        if isinstance(exc.__context__, TimeoutError):
            return problem(name, f"cannot {step}: no answer within {timeout:g} s")
        return problem(name, f"cannot {step}: {exc}")
    except smtplib.SMTPResponseException as exc:
        return problem(name, f"cannot {step}: {exc.smtp_code} {_text(exc.smtp_error)}")
    except (OSError, smtplib.SMTPException) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return problem(name, f"cannot {step}: {reason or type(exc).__name__}")
    finally:
        if smtp is not None:
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                smtp.close()


def _tls_verdict(smtp: smtplib.SMTP, relay: Relay, name: str) -> Check:
    """What the relay's greeting says about encryption, against what the URL asks."""
    c = relay.config
    offered = smtp.has_extn("starttls")
    if c.implicit_tls:
        return ok(name, "reachable, implicit TLS (smtps) with a trusted certificate")
    if c.starttls and offered:
        return ok(name, "reachable, STARTTLS with a trusted certificate")
    if c.starttls:
        return problem(name, "the URL asks for STARTTLS but the server does not offer it")
    what = "mail and password go" if c.username else "mail goes"
    if offered:
        return warning(
            name, f"reachable, but {what} unencrypted: the server offers STARTTLS, add ?starttls=1"
        )
    return warning(name, f"reachable, but offers no STARTTLS: {what} unencrypted")


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


def check_smtp(settings: Settings, timeout: float) -> list[Callable[[], Check]]:
    """One check per relay in NEWSLETTER_SMTP_URL (as the sender reads it)."""
    if not settings.smtp_url:
        return [partial(problem, "SMTP", "NEWSLETTER_SMTP_URL is not set: nothing can be sent")]
    try:
        relays = parse_relays(settings.smtp_url)
    except InvalidInput as exc:
        return [partial(problem, "SMTP", str(exc))]
    return [partial(check_relay, relay, timeout) for relay in relays]
