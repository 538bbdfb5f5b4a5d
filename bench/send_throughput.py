"""Plan and send N daily digests in K distinct groups; print where the time goes.

    python bench/send_throughput.py --readers 5000 --groups 10 [--smtp-url smtp://127.0.0.1:2525]
        [--database-url postgresql+psycopg://postgres@127.0.0.1/bench]

Without --smtp-url it starts the built-in aiosmtpd server (itself the bottleneck);
point it at Postfix's smtp-sink to measure the pipeline. Run by hand; results go in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--readers", type=int, default=5000)
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--smtp-url")
    parser.add_argument("--database-url")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp()
    os.environ.update(
        NEWSLETTER_DATABASE_URL=args.database_url or f"sqlite:///{tmp}/bench.db",
        NEWSLETTER_BROKER_URL="",
        NEWSLETTER_BASE_URL="https://news.example.org",
        NEWSLETTER_FROM="digest@news.example.org",
    )
    from newsletter.outbox import OutboxHandler, OutboxServer

    server = None
    if not args.smtp_url:
        server = OutboxServer(OutboxHandler()).__enter__()
    os.environ["NEWSLETTER_SMTP_URL"] = args.smtp_url or (server.url if server else "")

    from sqlalchemy import insert

    from newsletter import db
    from newsletter.db import session_scope
    from newsletter.delivery import planning, sending
    from newsletter.models import Tag
    from newsletter.posts import PostInput, add_post
    from subscribers.models import Subscriber, subscriber_tags

    db.upgrade()
    t0 = dt.datetime(2026, 1, 5, 6, tzinfo=dt.UTC)
    with session_scope() as session:
        tags = [Tag(slug=f"tag-{g}", name=f"Tag {g}") for g in range(args.groups)]
        session.add_all(tags)
        session.flush()
        rows = [
            {
                "email": f"reader{n}@example.org",
                "name": f"Reader {n}",
                "cadence": "daily",
                "timezone": "UTC",
                "send_hour": 8,
                "send_weekday": 0,
                "status": "active",
                "subscribed_at": t0,
                "next_digest_at": t0 + dt.timedelta(hours=2),
                "uid": f"uid{n:08d}",
            }
            for n in range(args.readers)
        ]
        ids = [r.id for r in session.execute(insert(Subscriber).returning(Subscriber.id), rows)]
        session.execute(
            insert(subscriber_tags),
            [
                {"subscriber_id": sid, "tag_id": tags[i % args.groups].id, "created_at": t0}
                for i, sid in enumerate(ids)
            ],
        )
    for g in range(args.groups):
        with session_scope() as session:
            add_post(
                session,
                PostInput(
                    f"Post {g}", f"https://blog.example.org/{g}/", f"tag-{g}", "Summary " * 30
                ),
                now=t0 + dt.timedelta(minutes=5),
            )

    due = t0 + dt.timedelta(hours=3)
    start = time.perf_counter()
    report = planning.plan_due(due)
    planned = time.perf_counter() - start
    factory = sending.smtp_transport_factory()
    start = time.perf_counter()
    sent = 0
    for batch in planning.batches(report.deliveries):
        sent += sending.send_batch(batch, due, transport_factory=factory).sent
    elapsed = time.perf_counter() - start
    if server:
        server.__exit__(None, None, None)
    print(f"readers {args.readers}, distinct digests rendered {report.digests_rendered}")
    print(f"planning: {planned:.2f} s ({args.readers / planned:,.0f} readers/s)")
    print(f"sending:  {elapsed:.2f} s, {sent} sent ({sent / elapsed:,.0f} msgs/s)")


if __name__ == "__main__":
    main()
