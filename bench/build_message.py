"""Time the per-reader work of a send without the network: one shared digest, many
readers' copies built from it (personal values, substitution, MIME), as the sender
does for every message.

    python bench/build_message.py [--posts 5] [--copies 2000]

No database and no SMTP server: the digest is rendered once from posts held in
memory, then `compose.message_for` builds each reader's copy from the digest's
compiled form (encoded once per digest and process). Prints the message size and
the time per copy, split into its parts, beside the one-off path (`fill` and
`mime.build_message`, which encodes the whole message each time), and what sealing
adds on the way to the wire (`smtp.Sealer`: the VERP envelope sender and DKIM
signatures with RSA-2048, Ed25519 or both, keys made in memory). Run by hand;
results go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PARAGRAPH = (
    "The council met on Tuesday to settle the budget for the coming year, and the "
    "debate ran long into the evening as members weighed housing against transport. "
)


def timed(run: Callable[[], object], copies: int) -> float:
    """CPU milliseconds per call: the median of five rounds of `copies` calls. CPU
    time, not the clock's, so other work on a shared machine skews it less."""
    rounds = []
    for _ in range(5):
        start = time.process_time()
        for _ in range(copies):
            run()
        rounds.append((time.process_time() - start) * 1000 / copies)
    return statistics.median(rounds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--posts", type=int, default=5, help="posts in the digest")
    parser.add_argument("--copies", type=int, default=2000, help="copies built per round")
    parser.add_argument(
        "--summary-paragraphs", type=int, default=3, help="paragraphs per summary (3: about 40 KB)"
    )
    args = parser.parse_args()
    os.environ.setdefault("NEWSLETTER_BASE_URL", "https://news.example.org")
    os.environ.setdefault("NEWSLETTER_FROM", "digest@news.example.org")

    from dkim.canonicalization import Relaxed, Simple  # type: ignore[import-untyped]
    from rich.console import Console
    from rich.table import Table

    from newsletter.config import get_settings
    from newsletter.delivery import dkim
    from newsletter.delivery.compose import (
        compile_digest,
        compiled,
        message_for,
        personal_values,
        whole_message,
    )
    from newsletter.delivery.rendering import render_digest
    from newsletter.delivery.smtp import Sealer
    from newsletter.models import Cadence, Delivery, Digest, Post, Tag
    from subscribers.models import Subscriber, SubscriberStatus

    settings = get_settings()
    now = dt.datetime(2026, 11, 27, 8, tzinfo=dt.UTC)
    tags = [Tag(id=i, slug=s, name=s.title()) for i, s in enumerate(("politics", "housing"), 1)]
    posts = [
        Post(
            id=n,
            guid=f"post-{n}",
            title=f"Budget day, part {n}: what changes for renters",
            url=f"https://blog.example.org/posts/{n}/",
            author="Marta Reis",
            summary=PARAGRAPH * args.summary_paragraphs,
            body_html="",
            published_at=now - dt.timedelta(hours=n),
            tags=tags,
        )
        for n in range(1, args.posts + 1)
    ]
    rendered = render_digest(posts, Cadence.DAILY)
    digest = Digest(
        id=1,
        cadence=Cadence.DAILY,
        subject=rendered.subject,
        html=rendered.html,
        text=rendered.text,
    )

    def reader(name: str) -> Subscriber:
        return Subscriber(
            id=1,
            uid="0123456789abcdefghijkl",
            email="ana.lima@example.org",
            name=name,
            status=SubscriberStatus.ACTIVE,
            cadence=Cadence.DAILY,
            timezone="Europe/Lisbon",
            send_hour=8,
            send_weekday=0,
            tags=tags,
        )

    ana, zoe = reader("Ana Lima"), reader("Zoë Ångström")
    delivery = Delivery(id=1, message_id="<1.abc@news.example.org>")
    message = message_for(delivery, digest, ana, settings)
    values = personal_values(ana, settings)
    template = compiled(digest, settings)
    assert template is not None, "the digest did not compile"

    def one_off() -> object:
        return whole_message(delivery, digest, ana, settings, values)

    parts = [
        ("personal values (links signed)", lambda: personal_values(ana, settings)),
        (
            "copy from the compiled digest (MIME, no values)",
            lambda: template.copy(ana.name, ana.email, delivery.message_id, values),
        ),
        (
            "whole copy (compose.message_for)",
            lambda: message_for(delivery, digest, ana, settings),
        ),
        (
            "whole copy, non-ASCII name (RFC 2047 To)",
            lambda: message_for(delivery, digest, zoe, settings),
        ),
        ("one-off: fill + mime.build_message", one_off),
    ]
    bounced = settings.model_copy(update={"bounce_address": "bounces@news.example.org"})
    rsa_key = dkim.SigningKey(b"rsa", dkim.generate_key("rsa", 2048))
    ed_key = dkim.SigningKey(b"ed", dkim.generate_key("ed25519"))
    domain = "news.example.org"
    sealers = [
        ("DKIM RSA-2048", Sealer(bounced, dkim.Signer(domain, [rsa_key]))),
        ("DKIM Ed25519", Sealer(bounced, dkim.Signer(domain, [ed_key]))),
        ("DKIM RSA-2048 + Ed25519", Sealer(bounced, dkim.Signer(domain, [rsa_key, ed_key]))),
    ]
    copy = message_for(delivery, digest, ana, settings)
    body = copy.data[copy.data.index(b"\r\n\r\n") + 4 :]
    digest_of_header = hashlib.sha256(copy.data[:1000]).digest()
    for label, sealer in [("no DKIM", Sealer(bounced, None)), *sealers]:
        parts.append(
            (
                f"whole copy, sealed: VERP + {label}",
                lambda sealer=sealer: sealer.seal(message_for(delivery, digest, ana, settings)),
            )
        )
    parts += [
        ("  of which the RSA-2048 signature (OpenSSL)", lambda: rsa_key.sign(digest_of_header)),
        ("  of which the Ed25519 signature (OpenSSL)", lambda: ed_key.sign(digest_of_header)),
        (
            f"  body canonicalised simple + SHA-256 ({len(body) / 1024:.0f} KB, used)",
            lambda: hashlib.sha256(Simple.canonicalize_body(body)).digest(),
        ),
        (
            "  body canonicalised relaxed + SHA-256 (dkimpy, not used)",
            lambda: hashlib.sha256(Relaxed.canonicalize_body(body)).digest(),
        ),
    ]
    once = [
        (
            "compiling the digest (once per digest and process)",
            lambda: compile_digest(digest.subject, digest.text, digest.html, settings),
        ),
    ]
    table = Table(
        "step",
        "CPU ms per copy",
        title=f"One reader's copy: {len(message.data) / 1024:.1f} KB on the wire, "
        f"HTML {len(digest.html) / 1024:.1f} KB, {args.posts} posts",
    )
    for label, run in parts:
        table.add_row(label, f"{timed(run, args.copies):.3f}")
    for label, run in once:
        table.add_row(label, f"{timed(run, max(1, args.copies // 100)):.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
