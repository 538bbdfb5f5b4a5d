"""Staff accounts, their server-side sessions, failed logins and the audit log."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from newsletter.db import Base, UTCDateTime, created_ts, intpk
from newsletter.models import str_enum


class StaffRole(enum.StrEnum):
    """Editors work on what goes out (posts, tags, previews, archive, statistics);
    admins do everything, readers' data and staff included."""

    ADMIN = "admin"
    EDITOR = "editor"


class StaffUser(Base):
    """A person who signs in to the console; only an argon2 hash of the password is kept."""

    __tablename__ = "staff_users"

    id: Mapped[intpk]
    email: Mapped[str] = mapped_column(String(320), unique=True)
    role: Mapped[StaffRole] = mapped_column(str_enum(StaffRole, "staff_role"))
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[created_ts]
    last_login_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())

    def __repr__(self) -> str:
        return f"StaffUser({self.email!r}, {self.role.value})"


class StaffSession(Base):
    """A signed-in browser. The cookie holds a random id; only its SHA-256 is stored, so
    a copy of the database cannot be used to take over a session."""

    __tablename__ = "staff_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("staff_users.id", ondelete="CASCADE"), index=True
    )
    csrf_token: Mapped[str] = mapped_column(String(64))
    ip: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[created_ts]
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)

    user: Mapped[StaffUser] = relationship(lazy="joined")


class LoginAttempt(Base):
    """A failed login, kept for the lockout window, counted per address and per IP.

    The address is stored as typed (normalised) whether or not an account has it, so
    a lockout says nothing about which accounts exist.
    """

    __tablename__ = "staff_login_attempts"
    __table_args__ = (
        Index("ix_staff_login_attempts_email_at", "email", "created_at"),
        Index("ix_staff_login_attempts_ip_at", "ip", "created_at"),
    )

    id: Mapped[intpk]
    email: Mapped[str] = mapped_column(String(320))
    ip: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[created_ts]


class AuditEntry(Base):
    """One console action: who (kept as an address too, so it outlives the account),
    what, on what, when, from where, with details as JSON."""

    __tablename__ = "audit_entries"

    id: Mapped[intpk]
    actor_id: Mapped[int | None] = mapped_column(
        ForeignKey("staff_users.id", ondelete="SET NULL"), index=True
    )
    actor_email: Mapped[str] = mapped_column(String(320), default="")
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(500), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    ip: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[created_ts]


class ConsoleJob(Base):
    """A long console action run by a worker (a bulk action, a CSV import): its
    progress for the page that watches it, and its report when done."""

    __tablename__ = "console_jobs"

    id: Mapped[intpk]
    # "bulk_tag_add", "bulk_tag_remove", "bulk_pause", "bulk_unsubscribe",
    # "bulk_delete", "import"
    kind: Mapped[str] = mapped_column(String(32))
    # The selection (the list's filters) and the action's argument, as JSON.
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # "queued", "running", "done", "failed"
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    report: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(320), default="")
    created_at: Mapped[created_ts]
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


__all__ = ["AuditEntry", "ConsoleJob", "LoginAttempt", "StaffRole", "StaffSession", "StaffUser"]
