"""One settings object, read from the environment (and `.env`), validated at start."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# A known placeholder: accepted while developing, refused in production so a
# deployment can never sign unsubscribe links with a key that is in the source.
DEVELOPMENT_SECRET = "development-only-secret-change-me"


class Settings(BaseSettings):
    """Every knob the pipeline has; names are the public contract in the README."""

    model_config = SettingsConfigDict(
        env_prefix="NEWSLETTER_", env_file=".env", extra="ignore", frozen=True
    )

    env: Literal["development", "production"] = "development"
    database_url: str = "sqlite:///newsletter.db"
    broker_url: str | None = None
    smtp_url: str | None = None
    base_url: str = "http://localhost:8000"
    from_: str = Field("newsletter@localhost", alias="NEWSLETTER_FROM")
    from_name: str = "Newsletter"
    site_name: str = "The Digest"
    secret_key: str = DEVELOPMENT_SECRET
    allow_private_feeds: bool = False
    # Limits on one feed fetch: bytes read, seconds in all, redirects followed.
    feed_max_bytes: int = Field(5 * 1024 * 1024, ge=1024)
    feed_timeout: float = Field(10.0, gt=0, le=120)
    feed_max_redirects: int = Field(5, ge=0, le=20)
    # How often beat looks for feeds whose own poll interval has come, in seconds.
    feed_check_interval: int = Field(60, ge=10)
    # Signs POST /hooks/posts; the endpoint answers 503 while it is unset.
    webhook_secret: str | None = None
    # How old (or how far ahead) a webhook's signed timestamp may be, in seconds.
    webhook_tolerance: int = Field(300, ge=1)
    # Deliveries per send task: one SMTP connection and one task round trip serve
    # this many messages, small enough that a retry repeats little work.
    send_batch_size: int = Field(100, ge=1, le=5000)
    # Subscribers planned per transaction: bounds memory and lock time per chunk.
    plan_chunk_size: int = Field(500, ge=1, le=50000)
    # Default local hour (0-23) and weekday (0 = Monday) for daily/weekly digests.
    default_send_hour: int = Field(8, ge=0, le=23)
    default_send_weekday: int = Field(0, ge=0, le=6)
    # How often beat runs the planner and sweeper, in seconds.
    plan_interval: int = Field(300, ge=10)
    max_send_attempts: int = Field(8, ge=1)
    # Unconfirmed sign-ups (and their confirmation links) expire after this long.
    pending_ttl_hours: int = Field(48, ge=1)
    # Preference links in emails stay valid this long; unsubscribe links never expire.
    preferences_link_days: int = Field(180, ge=1)
    # Sign-up requests allowed per hour, so the form cannot mail-bomb anyone.
    signup_per_ip_per_hour: int = Field(20, ge=1)
    signup_per_email_per_hour: int = Field(3, ge=1)
    # Client IP from X-Forwarded-For, only behind a proxy you trust to set it.
    trust_proxy: bool = False

    @field_validator("broker_url", "smtp_url", "webhook_secret", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _refuse_placeholder_secret(self) -> Settings:
        if self.env != "development" and self.secret_key == DEVELOPMENT_SECRET:
            raise ValueError("NEWSLETTER_SECRET_KEY must be set outside development")
        if self.env != "development" and len(self.secret_key) < 16:
            raise ValueError("NEWSLETTER_SECRET_KEY must be at least 16 characters")
        return self

    @property
    def public_base_url(self) -> str:
        return self.base_url.rstrip("/")


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests clear this cache after changing the environment."""
    return Settings()
