"""Staff accounts, passwords, sign-in with lockout, server-side sessions and the audit log.

Everything here takes a database session and writes nothing the caller does not
commit; the web views and the CLI are thin layers over it.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import secrets
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from newsletter.console.models import AuditEntry, LoginAttempt, StaffRole, StaffSession, StaffUser
from newsletter.db import utcnow
from newsletter.errors import InvalidInput, NotFound
from newsletter.text import one_line
from subscribers.services import normalize_email

MIN_PASSWORD_LENGTH = 12
# Far longer than any pass phrase; refused before hashing so a request cannot make
# the server hash megabytes.
MAX_PASSWORD_LENGTH = 1024


@dataclass(frozen=True)
class LoginPolicy:
    """How failed sign-ins are slowed and then locked, per address and per client IP.

    An IP is allowed more failures than an address: several people may share one
    (an office behind NAT), while one address is one person.
    """

    account_failures: int = 5
    ip_failures: int = 20
    window: dt.timedelta = dt.timedelta(minutes=15)
    lock: dt.timedelta = dt.timedelta(minutes=15)
    # The answer to a failed attempt waits delay_step * 2**(failures - 1) seconds,
    # at most max_delay: cheap for a person who mistyped, slow for a script.
    delay_step: float = 0.25
    max_delay: float = 2.0

    def __post_init__(self) -> None:
        if self.lock > self.window:
            raise ValueError("a lock cannot outlast the window its failures are counted in")

    def delay(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        return min(self.max_delay, self.delay_step * 2.0 ** (failures - 1))


POLICY = LoginPolicy()

# A session ends after this long without a request, and in any case this long after
# sign-in; the last-seen time is written at most once a minute.
SESSION_IDLE = dt.timedelta(hours=2)
SESSION_MAX = dt.timedelta(hours=12)
TOUCH_EVERY = dt.timedelta(minutes=1)


# -- passwords --------------------------------------------------------------------


@lru_cache(maxsize=1)
def _hasher() -> PasswordHasher:
    return PasswordHasher()  # argon2id with the library's current recommended costs


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    """Checked when no account has the address, so a miss costs what a hit costs."""
    return _hasher().hash(secrets.token_urlsafe(16))


def check_password(plain: str) -> str:
    """`plain` if it is acceptable as a new password, else InvalidInput saying why."""
    if len(plain) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"the password must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(plain) > MAX_PASSWORD_LENGTH:
        raise InvalidInput(f"the password must be at most {MAX_PASSWORD_LENGTH} characters")
    if plain != plain.strip():
        raise InvalidInput("the password must not start or end with white space")
    return plain


def hash_password(plain: str) -> str:
    return _hasher().hash(check_password(plain))


def verify_password(password_hash: str, plain: str) -> bool:
    if len(plain) > MAX_PASSWORD_LENGTH:
        return False
    try:
        return _hasher().verify(password_hash, plain)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


# -- accounts ---------------------------------------------------------------------


def parse_role(value: str) -> StaffRole:
    try:
        return StaffRole(value.strip().lower())
    except ValueError:
        choices = " or ".join(r.value for r in StaffRole)
        raise InvalidInput(f"unknown role {one_line(value, 40)!r}: choose {choices}") from None


def find_user(session: Session, email: str) -> StaffUser | None:
    return session.scalar(select(StaffUser).where(StaffUser.email == email))


def create_user(session: Session, email: str, role: str | StaffRole, password: str) -> StaffUser:
    """A new account; refuses a bad address, role or password, or a taken address."""
    address = normalize_email(email)
    staff_role = role if isinstance(role, StaffRole) else parse_role(role)
    password_hash = hash_password(password)
    if find_user(session, address) is not None:
        raise InvalidInput(f"a staff account for {address} already exists")
    user = StaffUser(email=address, role=staff_role, password_hash=password_hash)
    session.add(user)
    session.flush()
    return user


def list_users(session: Session) -> list[StaffUser]:
    return list(session.scalars(select(StaffUser).order_by(StaffUser.email)))


def get_user(session: Session, email: str) -> StaffUser:
    try:
        address = normalize_email(email)
    except InvalidInput:
        address = one_line(email, 80)
    user = find_user(session, address)
    if user is None:
        raise NotFound(f"no staff account for {address}")
    return user


def remove_user(session: Session, user: StaffUser) -> None:
    """Delete the account; its sessions go with it, its audit entries keep its address."""
    session.execute(delete(StaffSession).where(StaffSession.user_id == user.id))
    session.delete(user)
    session.flush()


def count_admins(session: Session) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(StaffUser).where(StaffUser.role == StaffRole.ADMIN)
        )
        or 0
    )


# -- sign-in ----------------------------------------------------------------------


class LoginOutcome(enum.Enum):
    OK = "ok"
    WRONG = "wrong"
    LOCKED = "locked"


@dataclass(frozen=True)
class LoginResult:
    outcome: LoginOutcome
    email: str
    user: StaffUser | None = None
    # Failures counted against this address or IP, this one included.
    failures: int = 0
    # This failure is the one that started a lockout (audited once).
    lock_started: bool = False


def login_key(raw: str) -> str:
    """The address an attempt is counted under: normalised if valid, else as typed."""
    try:
        return normalize_email(raw)
    except InvalidInput:
        return one_line(raw, 320).lower()


def _lock_state(
    session: Session, column: Any, value: str, limit: int, now: dt.datetime
) -> tuple[int, bool]:
    """Failures counted against `value` in the window, and whether it is locked.

    A lock lasts `POLICY.lock` from the failure that reached the limit; attempts
    refused while locked are not recorded, so the lock ends on time.
    """
    count, newest = session.execute(
        select(func.count(), func.max(LoginAttempt.created_at)).where(
            column == value, LoginAttempt.created_at >= now - POLICY.window
        )
    ).one()
    locked = count >= limit and newest is not None and now < newest + POLICY.lock
    return int(count), locked


def _locked(session: Session, email: str, ip: str, now: dt.datetime) -> tuple[int, bool]:
    """The larger failure count (per address, per IP) and whether either is locked."""
    by_email, email_locked = _lock_state(
        session, LoginAttempt.email, email, POLICY.account_failures, now
    )
    by_ip, ip_locked = _lock_state(session, LoginAttempt.ip, ip, POLICY.ip_failures, now)
    return max(by_email, by_ip), email_locked or ip_locked


def authenticate(
    session: Session, email: str, password: str, ip: str, now: dt.datetime | None = None
) -> LoginResult:
    """Check a sign-in. Unknown addresses and wrong passwords cost the same work and
    get the same answer; failures are recorded, and enough of them lock the address
    (or the IP) for a while whether or not an account has that address."""
    now = now or utcnow()
    key = login_key(email)
    ip = ip[:64]
    _, locked = _locked(session, key, ip, now)
    if locked:
        return LoginResult(LoginOutcome.LOCKED, key)
    user = find_user(session, key)
    if user is not None and verify_password(user.password_hash, password):
        if _hasher().check_needs_rehash(user.password_hash):
            user.password_hash = _hasher().hash(password)
        user.last_login_at = now
        return LoginResult(LoginOutcome.OK, key, user)
    if user is None:
        verify_password(_dummy_hash(), password)
    forget = now - dt.timedelta(days=1)
    session.execute(delete(LoginAttempt).where(LoginAttempt.created_at < forget))
    session.add(LoginAttempt(email=key, ip=ip, created_at=now))
    session.flush()
    failures, locked = _locked(session, key, ip, now)
    if locked:
        return LoginResult(LoginOutcome.LOCKED, key, failures=failures, lock_started=True)
    return LoginResult(LoginOutcome.WRONG, key, failures=failures)


# -- sessions ---------------------------------------------------------------------


def _session_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(
    session: Session,
    user: StaffUser,
    ip: str,
    old_token: str | None = None,
    now: dt.datetime | None = None,
) -> str:
    """A new session for `user`; the one the browser had before (if any) is ended, so a
    session id planted before sign-in is worth nothing after it. Returns the cookie value."""
    now = now or utcnow()
    if old_token:
        end_session(session, old_token)
    session.execute(delete(StaffSession).where(StaffSession.expires_at < now))
    token = secrets.token_urlsafe(32)
    session.add(
        StaffSession(
            id_hash=_session_hash(token),
            user_id=user.id,
            csrf_token=secrets.token_urlsafe(32),
            ip=ip[:64],
            created_at=now,
            last_seen_at=now,
            expires_at=now + min(SESSION_IDLE, SESSION_MAX),
        )
    )
    session.flush()
    return token


def load_session(
    session: Session, token: str, now: dt.datetime | None = None
) -> StaffSession | None:
    """The live session for a cookie value, its idle timer renewed; None if unknown or over."""
    if not token or len(token) > 200:
        return None
    now = now or utcnow()
    row = session.get(StaffSession, _session_hash(token))
    if row is None:
        return None
    if row.expires_at <= now:
        session.delete(row)
        return None
    if now - row.last_seen_at >= TOUCH_EVERY:
        row.last_seen_at = now
        row.expires_at = min(now + SESSION_IDLE, row.created_at + SESSION_MAX)
    return row


def end_session(session: Session, token: str) -> bool:
    """Delete the server-side session; True if there was one."""
    if not token or len(token) > 200:
        return False
    row = session.get(StaffSession, _session_hash(token))
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True


# -- audit log --------------------------------------------------------------------


def audit(
    session: Session,
    action: str,
    *,
    actor: StaffUser | None = None,
    actor_email: str | None = None,
    target: str = "",
    detail: dict[str, Any] | None = None,
    ip: str = "",
) -> AuditEntry:
    """Record one console action. `actor_email` names someone without an account (a
    failed sign-in) or the command line."""
    entry = AuditEntry(
        actor_id=actor.id if actor is not None else None,
        actor_email=(actor.email if actor is not None else actor_email or "")[:320],
        action=action,
        target=one_line(target, 500),
        detail=detail or {},
        ip=ip[:64],
        created_at=utcnow(),
    )
    session.add(entry)
    session.flush()
    return entry


@dataclass(frozen=True)
class AuditPage:
    entries: list[AuditEntry]
    # The id to pass as `before` for the next (older) page; None on the last page.
    next_before: int | None


def audit_page(session: Session, before: int | None = None, limit: int = 50) -> AuditPage:
    """Newest first, by keyset on the id (not OFFSET): every page costs the same."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit + 1)
    if before is not None:
        query = query.where(AuditEntry.id < before)
    rows = list(session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return AuditPage(rows, rows[-1].id if more and rows else None)
