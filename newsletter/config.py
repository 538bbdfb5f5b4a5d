"""One settings object, read from the environment (and `.env`), validated at start."""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# A known placeholder: accepted while developing, refused in production so a
# deployment can never sign unsubscribe links with a key that is in the source.
DEVELOPMENT_SECRET = "development-only-secret-change-me"
# Words that mark a key copied from an example rather than generated.
_PLACEHOLDER_WORDS = ("change-me", "changeme", "change_me", "development-only", "example")
MIN_SECRET_LENGTH = 16

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ProxyTrust:
    """Who may say where a request came from (X-Forwarded-For), read from the right.

    `hops`: that many proxies stand in front of the app, each appending the address
    it saw. `networks`: proxies are the peers in these networks. Neither: the peer
    address is the client, and the header is ignored.
    """

    hops: int = 0
    networks: tuple[IPNetwork, ...] = ()


def parse_trusted_proxies(value: str) -> ProxyTrust:
    """`2` (a count of hops) or `10.0.0.0/8, 192.168.1.7` (networks); blank trusts none."""
    text = value.strip()
    if not text:
        return ProxyTrust()
    if text.isascii() and text.isdigit():
        hops = int(text)
        if hops > 20:
            raise ValueError("at most 20 proxy hops")
        return ProxyTrust(hops=hops)
    networks = []
    for part in text.split(","):
        try:
            networks.append(ipaddress.ip_network(part.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"{part.strip()[:50]!r} is neither a count "
                "of proxy hops nor a network like 10.0.0.0/8"
            ) from None
    return ProxyTrust(networks=tuple(networks))


def _secret_key_problem(key: str) -> str | None:
    """Why `key` cannot sign production links, or None if it can."""
    stripped = key.strip()
    if not stripped:
        return "NEWSLETTER_SECRET_KEY must be set outside development"
    lowered = stripped.lower()
    if lowered == DEVELOPMENT_SECRET or any(w in lowered for w in _PLACEHOLDER_WORDS):
        return "NEWSLETTER_SECRET_KEY is a placeholder: generate a random one"
    if len(stripped) < MIN_SECRET_LENGTH:
        return f"NEWSLETTER_SECRET_KEY must be at least {MIN_SECRET_LENGTH} characters"
    if len(set(stripped)) < 8:
        return "NEWSLETTER_SECRET_KEY is too simple: generate a random one"
    return None


class Settings(BaseSettings):
    """Every knob the pipeline has; names are the public contract in the README."""

    # hide_input_in_errors: a validation error must never print a secret or a URL
    # with a password in it, whoever logs it.
    model_config = SettingsConfigDict(
        env_prefix="NEWSLETTER_",
        env_file=".env",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
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
    # Deliveries per send task: one claim, one load and one set of connections serve
    # this many messages (per-task costs stay a small share of each message's), while
    # a lost task's rows are still few enough to be taken over in one go.
    send_batch_size: int = Field(500, ge=1, le=5000)
    # SMTP connections one send task keeps open at once (a thread each), so the wait
    # for one server reply never idles the others.
    smtp_connections: int = Field(4, ge=1, le=32)
    # Messages a send task may have sent whose outcome is not yet committed (outcomes
    # are written in groups, off the sending threads): the most a worker killed at any
    # instant can send a second time, per send task it was running.
    unrecorded_limit: int = Field(32, ge=1, le=1000)
    # Per-recipient-domain limits in messages per second, across every worker and host
    # (shared through Redis when the broker is Redis): "gmail.com=50,yahoo.com=20".
    domain_rates: str = ""
    # Subscribers planned per transaction. A chunk costs about ten statements and a
    # commit whatever its size: from 2,000 readers on they are a small share of its
    # time (measured: 1,000 to 10,000 plan equally fast), while a bigger chunk only
    # holds more readers' rows locked for longer and more ids in memory.
    plan_chunk_size: int = Field(2000, ge=1, le=50000)
    # Default local hour (0-23) and weekday (0 = Monday) for daily/weekly digests.
    default_send_hour: int = Field(8, ge=0, le=23)
    default_send_weekday: int = Field(0, ge=0, le=6)
    # How often beat runs the planner and sweeper, in seconds.
    plan_interval: int = Field(300, ge=10)
    max_send_attempts: int = Field(8, ge=1)
    # Sending (see docs/design.md, "Never twice"). A claim on a batch lasts this many
    # seconds and is renewed every third of it while the batch is sent, so a dead
    # worker's batch is taken over within about a minute...
    sending_lease: int = Field(60, ge=10)
    # ... by the sweeper, which beat runs this often (seconds) on its own.
    sweep_interval: int = Field(30, ge=5)
    # The sweeper takes a post still unplanned this many seconds after it arrived to
    # have lost its task (broker down at commit); planning it twice is harmless.
    unplanned_grace: float = Field(30.0, ge=0)
    # ... and a queued delivery untouched this many seconds to have lost its send task.
    stale_queued: float = Field(60.0, ge=0)
    # The first retry after a temporary failure waits this many seconds, each next
    # one twice as long, up to six hours.
    retry_backoff: float = Field(60.0, gt=0)
    # Seconds to wait for the reply to the end of DATA (RFC 5321 asks for 10 minutes).
    smtp_data_timeout: float = Field(600.0, gt=0)
    # After a 421 or a dropped connection: pause this long (seconds), reconnect and go
    # on, at most this many times in a row without the server answering a message.
    smtp_reconnect_pause: float = Field(1.0, ge=0)
    smtp_max_reconnects: int = Field(3, ge=0)
    # No reply to the end of DATA: "assume_delivered" records the message sent (no
    # second copy ever), "retry" sends it again later (maybe a second copy).
    unknown_outcome: Literal["assume_delivered", "retry"] = "assume_delivered"
    # While the database is unreachable a sender stops, keeps the outcomes it knows
    # and retries writing them for up to this many seconds.
    db_outage_wait: float = Field(300.0, gt=0)
    # Unconfirmed sign-ups (and their confirmation links) expire after this long.
    pending_ttl_hours: int = Field(48, ge=1)
    # Preference links in emails stay valid this long; unsubscribe links never expire.
    preferences_link_days: int = Field(180, ge=1)
    # Sign-up requests allowed per hour, so the form cannot mail-bomb anyone.
    signup_per_ip_per_hour: int = Field(20, ge=1)
    signup_per_email_per_hour: int = Field(3, ge=1)
    # Which proxies may name the client address in X-Forwarded-For: a count of hops
    # or comma-separated networks (see `parse_trusted_proxies`); blank: none.
    trusted_proxies: str = ""
    # Deprecated: `true` means NEWSLETTER_TRUSTED_PROXIES=1 (one proxy in front).
    trust_proxy: bool = False
    # Where the console's "Send me a test" also goes (comma-separated addresses), for
    # a team that checks every issue in the same shared inboxes.
    test_addresses: str = ""
    # Sent digests served as public web pages per listed tag, with an Atom feed.
    public_archive: bool = False

    # Deliverability (README, "Deliverability").
    # DKIM: all three set signs every message (off while any is blank). The key file
    # holds one PEM private key, RSA (rsa-sha256) or Ed25519 (ed25519-sha256); a
    # second selector and key add a second signature (dual signing: RSA for every
    # verifier, Ed25519 for those that know it).
    dkim_domain: str | None = None
    dkim_selector: str | None = None
    dkim_key_file: str | None = None
    dkim_selector_2: str | None = None
    dkim_key_file_2: str | None = None
    # Envelope sender for every message, with a per-delivery token (VERP):
    # bounces@news.example.org sends as bounces+<token>@news.example.org. Blank: the
    # From address, without a token.
    bounce_address: str | None = None
    # The mailbox the bounce address delivers to, read by beat:
    # imaps://user:password@host/INBOX (or imap:// on a trusted network).
    bounce_mailbox_url: str | None = None
    # How often beat reads that mailbox, in seconds.
    bounce_poll_interval: int = Field(300, ge=10)
    # Where recognised bounces go once handled: blank deletes them, a folder name
    # moves them there.
    bounce_processed_folder: str = ""
    # Soft bounces (mailbox full, greylisted for days) this many within this many
    # days suppress the address as a hard bounce would.
    soft_bounce_limit: int = Field(3, ge=1, le=100)
    soft_bounce_window_days: int = Field(14, ge=1, le=365)
    # Signs provider bounce events posted to /hooks/bounces/... (503 while unset).
    bounce_webhook_secret: str | None = None
    # Posts shown in one digest; the rest are counted as "N more posts", linked to
    # the digest's web copy, which lists them all. Gmail clips HTML over about 102 KB
    # (hiding the footer). Measured: a digest's HTML is about 13 KB plus 3.9 KB a post
    # with 500-character titles, summaries at the limit below and four tags, so 15
    # posts make 71 KB (10: 51 KB, 20: 90 KB). A digest still over 90 KB (very high
    # values here) shows fewer posts until it fits (rendering.HTML_BUDGET).
    digest_max_posts: int = Field(15, ge=1, le=200)
    # A post's summary (or the start of its body) in a digest is trimmed at a word to
    # this many characters, ellipsis included. A summary is stored at 400 characters
    # at most (posts.py), so by default only a body's start is cut here.
    summary_max_chars: int = Field(420, ge=50, le=5000)
    # The blog itself: the site name links here in pages and emails. Blank: base_url.
    site_url: str | None = None

    @field_validator(
        "broker_url",
        "smtp_url",
        "webhook_secret",
        "dkim_domain",
        "dkim_selector",
        "dkim_key_file",
        "dkim_selector_2",
        "dkim_key_file_2",
        "bounce_address",
        "bounce_mailbox_url",
        "bounce_webhook_secret",
        "site_url",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("smtp_url")
    @classmethod
    def _valid_relays(cls, value: str | None) -> str | None:
        if value is not None:
            # Imported here: the engine reads its settings from this module.
            from newsletter.delivery.relays import parse_relays

            parse_relays(value)
        return value

    @field_validator("domain_rates")
    @classmethod
    def _valid_domain_rates(cls, value: str) -> str:
        from newsletter.delivery.ratelimit import parse_domain_rates

        parse_domain_rates(value)
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_proxies(cls, value: str) -> str:
        parse_trusted_proxies(value)
        return value

    @model_validator(mode="after")
    def _refuse_placeholder_secret(self) -> Settings:
        if self.env != "development":
            problem = _secret_key_problem(self.secret_key)
            if problem:
                raise ValueError(problem)
        return self

    @property
    def public_base_url(self) -> str:
        return self.base_url.rstrip("/")

    @property
    def proxy_trust(self) -> ProxyTrust:
        trust = parse_trusted_proxies(self.trusted_proxies)
        if not trust.hops and not trust.networks and self.trust_proxy:
            return ProxyTrust(hops=1)
        return trust


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests clear this cache after changing the environment."""
    return Settings()


def describe_errors(exc: ValidationError) -> str:
    """One line per problem, naming the variable but never echoing a value (secrets)."""
    lines = []
    settings = exc.title == Settings.__name__
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        name = (f"NEWSLETTER_{field.upper()}: " if settings else f"{field}: ") if field else ""
        lines.append(name + error["msg"].removeprefix("Value error, "))
    return "; ".join(lines)


def settings_or_exit() -> Settings:
    """The settings, or exit status 2 with a clear message: long-running processes
    (the web server, the worker) refuse to start rather than fail on every request."""
    try:
        settings = get_settings()
    except ValidationError as exc:
        print(f"configuration error: {describe_errors(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    # A DKIM key that cannot be read stops the process here, not at its first send.
    from newsletter.delivery.dkim import DkimKeyError, signer_for

    try:
        signer_for(settings)
    except DkimKeyError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return settings
