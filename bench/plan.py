"""Time planning alone: N daily readers of T tags, every subset of 1 to 3 tags followed.

    python bench/plan.py [--readers 100000] [--tags 10] [--chunk N] [--keep]
        [--admin-dsn postgresql://postgres@127.0.0.1:5432/postgres] [--database plan_bench]

Creates a fresh PostgreSQL database with the project's own migrations, fills it with
INSERT ... SELECT over generate_series (readers spread evenly over the 175 subsets of
1 to 3 of 10 tags, so 175 distinct digests; one post per tag), then plans every due
reader in a child process, as beat's task does: ledger written, digests rendered,
next slots moved on. Delivery ids are handed on chunk by chunk (as to send tasks),
never collected. Prints readers/s and the child's peak RSS, then the bytes per row
of each ledger table (heap and indexes, from PostgreSQL's own sizes), then times a
ledger compaction a day later (in another child) where the code has one. The posts
arrived two days before the run, so that compaction settles, and deletes, every
guard row. The database is dropped at the end unless --keep. Run by hand; results
go in docs/benchmarks.md and docs/storage.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

T0 = dt.datetime(2026, 1, 5, 6, tzinfo=dt.UTC)
DUE = T0 + dt.timedelta(hours=3)
ARRIVED = T0 - dt.timedelta(days=2)
SUBSCRIBED = T0 - dt.timedelta(days=3)
TABLES = ("deliveries", "delivery_posts", "digests", "subscribers")


def seed(url: str, readers: int, tags: int) -> None:
    from newsletter import db
    from newsletter.db import session_scope
    from newsletter.posts import PostInput, add_post

    db.upgrade(url)
    combos = [c for size in (1, 2, 3) for c in itertools.combinations(range(tags), size)]
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO tags (slug, name, description, listed, created_at)"
            " SELECT 'tag-' || g, 'Tag ' || g, '', true, %(t)s"
            " FROM generate_series(0, %(n)s - 1) g",
            {"t": T0, "n": tags},
        )
        conn.execute(
            "INSERT INTO subscribers (uid, email, name, status, cadence, timezone, send_hour,"
            " send_weekday, subscribed_at, next_digest_at, confirmed_at, created_at, updated_at)"
            " SELECT 'uid' || n, 'reader' || n || '@example.org', 'Reader ' || n, 'active',"
            " 'daily', 'UTC', 8, 0, %(t)s, %(due)s, %(t)s, %(t)s, %(t)s"
            " FROM generate_series(1, %(n)s) n",
            {"t": SUBSCRIBED, "due": T0 + dt.timedelta(hours=2), "n": readers},
        )
        conn.execute("CREATE TEMP TABLE combo (combo int, tag int)")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO combo VALUES (%s, %s)",
                [(i, t) for i, combo in enumerate(combos) for t in combo],
            )
        conn.execute(
            "INSERT INTO subscriber_tags (subscriber_id, tag_id, created_at)"
            " SELECT s.id, t.id, %(t)s FROM subscribers s"
            " JOIN combo c ON c.combo = s.id %% %(k)s JOIN tags t ON t.slug = 'tag-' || c.tag",
            {"t": SUBSCRIBED, "k": len(combos)},
        )
    os.environ["NEWSLETTER_DATABASE_URL"] = url
    for g in range(tags):
        with session_scope() as session:
            add_post(
                session,
                PostInput(
                    f"Post {g}", f"https://blog.example.org/{g}/", f"tag-{g}", "Summary " * 30
                ),
                now=ARRIVED + dt.timedelta(minutes=g),
                announce=False,
            )
    db.dispose_engines()
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def plan_only() -> None:
    """The measured part, in its own process so its peak RSS is planning's alone."""
    planning: Any
    try:
        planning = importlib.import_module("newsletter.delivery.planning")
    except ImportError:  # the code before the delivery package
        planning = importlib.import_module("newsletter.planning")

    handed = 0

    def hand_on(ids: list[int]) -> None:
        nonlocal handed
        handed += len(ids)

    start = time.perf_counter()
    try:
        report = planning.plan_due(DUE, on_chunk=hand_on)
    except TypeError:  # a planner without streaming
        report = planning.plan_due(DUE)
        handed = len(report.deliveries)
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {
        "seconds": seconds,
        "readers": report.subscribers,
        "deliveries": handed,
        "rendered": report.digests_rendered,
        "errors": report.planning_errors,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(result))


def compact_only() -> None:
    """A compaction a day after the run: what a daily beat task would do."""
    try:
        from newsletter.delivery import ledger
    except ImportError:  # the code before compaction
        print(json.dumps({}))
        return
    start = time.perf_counter()
    report = ledger.compact(DUE + dt.timedelta(days=1))
    print(
        json.dumps(
            {
                "seconds": time.perf_counter() - start,
                "readers": report.readers,
                "advanced": report.advanced,
                "deleted": report.deleted,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def sizes(conn: psycopg.Connection[Any]) -> dict[str, tuple[int, float, float]]:
    """Per table: rows, heap bytes per row, index bytes per row."""
    found = {}
    for table in TABLES:
        row = conn.execute(
            f"SELECT count(*), pg_table_size('{table}'), pg_indexes_size('{table}') FROM {table}"
        ).fetchone()
        assert row is not None
        count, heap, indexes = row
        found[table] = (count, heap / max(count, 1), indexes / max(count, 1))
    return found


def child(flag: str, env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, flag], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{flag} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--readers", type=int, default=100_000)
    parser.add_argument("--tags", type=int, default=10)
    parser.add_argument("--chunk", type=int, help="NEWSLETTER_PLAN_CHUNK_SIZE")
    parser.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--database", default="plan_bench")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--plan-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--compact-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plan_only:
        plan_only()
        return
    if args.compact_only:
        compact_only()
        return

    url = args.admin_dsn.rsplit("/", 1)[0] + f"/{args.database}"
    with psycopg.connect(args.admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{args.database}"')
    env = {
        **os.environ,
        "NEWSLETTER_DATABASE_URL": url,
        "NEWSLETTER_BROKER_URL": "",
        "NEWSLETTER_BASE_URL": "https://news.example.org",
        "NEWSLETTER_FROM": "digest@news.example.org",
        "NEWSLETTER_SECRET_KEY": "bench-secret-key-0123456789",
    }
    if args.chunk:
        env["NEWSLETTER_PLAN_CHUNK_SIZE"] = str(args.chunk)
    os.environ.update(env)
    try:
        started = time.perf_counter()
        seed(url, args.readers, args.tags)
        print(
            f"seeded {args.readers:,} readers in {time.perf_counter() - started:.1f} s", flush=True
        )
        result = child("--plan-only", env)
        seconds = result["seconds"]
        print(
            f"planned {result['readers']:,} readers in {seconds:.1f} s"
            f" ({result['readers'] / seconds:,.0f} readers/s);"
            f" deliveries {result['deliveries']:,}; digests rendered {result['rendered']};"
            f" planning errors {result['errors']}; peak RSS {result['peak_rss_mb']:.0f} MB",
            flush=True,
        )
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
            for table, (count, heap, indexes) in sizes(conn).items():
                print(
                    f"  {table}: {count:,} rows, {heap:.0f} B/row heap, {indexes:.0f} B/row indexes"
                )
        compaction = child("--compact-only", env)
        if compaction:
            print(
                f"compaction a day later: {compaction['readers']:,} readers in"
                f" {compaction['seconds']:.1f} s, {compaction['advanced']:,} moved on,"
                f" {compaction['deleted']:,} guard rows deleted;"
                f" peak RSS {compaction['peak_rss_mb']:.0f} MB"
            )
    finally:
        if not args.keep:
            with psycopg.connect(args.admin_dsn, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')


if __name__ == "__main__":
    main()
