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

    @field_validator("broker_url", "smtp_url", mode="before")
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
