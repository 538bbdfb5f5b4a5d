"""Time the console's subscriber list and dashboard with 1,000,000 readers in PostgreSQL.

    python bench/console.py [--readers 1000000] [--deliveries N] [--requests 50] [--keep]
        [--admin-dsn postgresql://postgres@127.0.0.1:5432/postgres]
    python bench/console.py --existing DSN    # time again a database --keep left

Creates a fresh database, migrates it with the project's own migrations, fills it
with INSERT ... SELECT over generate_series (names, statuses, cadences, skewed tag
follows, 30 days of digests and deliveries and a send in progress), runs VACUUM
ANALYZE, then times warm requests through the real app (create_app, an admin signed
in through the login form, in-process HTTP). The database is dropped at the end
unless --keep. Run by hand; results go in docs/benchmarks.md (targets: p99 under
200 ms for each list request, under 500 ms for the dashboard).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

console = Console()

FIRST = [
    "Ada",
    "Ana",
    "Andre",
    "Anna",
    "Beatriz",
    "Bruno",
    "Carla",
    "Carlos",
    "Chen",
    "Clara",
    "Daniel",
    "Diana",
    "Eva",
    "Fatima",
    "Felix",
    "Grace",
    "Hana",
    "Hugo",
    "Ines",
    "Ivan",
    "Jakob",
    "Joana",
    "Jose",
    "Julia",
    "Karim",
    "Laura",
    "Leo",
    "Lucia",
    "Luis",
    "Maria",
    "Marco",
    "Mark",
    "Marta",
    "Martin",
    "Mateo",
    "Mia",
    "Nadia",
    "Noah",
    "Nora",
    "Olga",
    "Omar",
    "Paula",
    "Pedro",
    "Priya",
    "Rafael",
    "Rosa",
    "Rui",
    "Sara",
    "Sofia",
    "Sven",
    "Tomas",
    "Uma",
    "Vera",
    "Victor",
    "Wei",
    "Yara",
    "Yusuf",
    "Zoe",
    "Zora",
    "Emil",
]
LAST = [
    "Almeida",
    "Berg",
    "Costa",
    "Dias",
    "Duarte",
    "Eriksen",
    "Ferreira",
    "Fischer",
    "Garcia",
    "Gomes",
    "Hansen",
    "Ito",
    "Jansen",
    "Kowalski",
    "Lima",
    "Lopes",
    "Martins",
    "Meyer",
    "Moreau",
    "Nakamura",
    "Novak",
    "Nunes",
    "Oliveira",
    "Park",
    "Pereira",
    "Petrov",
    "Pinto",
    "Ramos",
    "Reis",
    "Ribeiro",
    "Rocha",
    "Rossi",
    "Santos",
    "Schmidt",
    "Silva",
    "Smith",
    "Sousa",
    "Tanaka",
    "Teixeira",
    "Torres",
    "Vieira",
    "Wagner",
    "Weber",
    "Yilmaz",
    "Zhang",
    "Abreu",
    "Bauer",
    "Cruz",
    "Fonseca",
    "Haddad",
    "Khan",
    "Lund",
    "Mendes",
    "Moura",
    "Neves",
    "Okafor",
    "Patel",
    "Quinn",
    "Sato",
    "Varga",
]
DOMAINS = ("example.org", "example.com", "example.net", "mail.example.org", "news.example.com")
ZONES = ("UTC", "Europe/Lisbon", "Europe/Berlin", "America/New_York", "Asia/Tokyo")
# Tags by popularity: the n-th is followed by 60% / n of the readers (~2 follows each).
TAGS = [
    "Politics",
    "Climate",
    "Health",
    "Technology",
    "Science",
    "Economy",
    "Culture",
    "Sport",
    "Education",
    "Housing",
    "Transport",
    "Europe",
    "Local",
    "Opinion",
    "Data",
]
ERRORS = (
    "550 5.1.1 Recipient address rejected: User unknown in virtual mailbox table",
    "552 5.2.2 Mailbox full",
    "554 5.7.1 Message rejected as spam by Content Filtering",
    "gave up after 5 attempts: 451 4.7.1 Greylisted, please try again later",
)
DIGESTS_PER_DAY = 40
TARGET_LIST_MS = 200
TARGET_DASHBOARD_MS = 500


def sql_array(values: tuple[str, ...] | list[str]) -> str:
    """A text[] literal of plain words (no quotes in them, checked)."""
    assert all("'" not in v for v in values)
    return "ARRAY[" + ", ".join(f"'{v}'" for v in values) + "]"


def pick(values: tuple[str, ...] | list[str]) -> str:
    """A uniformly random element of `values`, evaluated per row."""
    return f"({sql_array(values)})[1 + floor(random() * {len(values)})::int]"


FILL_SUBSCRIBERS = f"""
INSERT INTO subscribers (uid, email, name, status, cadence, timezone, send_hour, send_weekday,
                         subscribed_at, next_digest_at, confirmed_at, unsubscribed_at,
                         created_at, updated_at)
SELECT substr(md5(g::text || 'uid'), 1, 22),
       lower(first) || '.' || lower(last) || g || '@' || domain,
       first || ' ' || last,
       status, cadence, zone, floor(random() * 24)::int, floor(random() * 7)::int,
       since,
       CASE WHEN status = 'active' AND cadence = 'daily' THEN now() + random() * interval '1 day'
            WHEN status = 'active' AND cadence = 'weekly' THEN now() + random() * interval '7 days'
       END,
       CASE WHEN status <> 'pending' THEN since + interval '10 minutes' END,
       CASE WHEN status = 'unsubscribed' THEN since + random() * (now() - since) END,
       since, since
FROM (
    SELECT g, {pick(FIRST)} AS first, {pick(LAST)} AS last, {pick(DOMAINS)} AS domain,
           {pick(ZONES)} AS zone,
           now() - random() * interval '3 years' AS since,
           CASE WHEN r < 0.85 THEN 'active' WHEN r < 0.88 THEN 'pending'
                WHEN r < 0.92 THEN 'paused' ELSE 'unsubscribed' END AS status,
           CASE WHEN c < 0.60 THEN 'daily' WHEN c < 0.85 THEN 'weekly'
                ELSE 'immediate' END AS cadence
    FROM (SELECT g, random() AS r, random() AS c FROM generate_series(1, %(readers)s) AS g) AS n
) AS s
"""

FILL_FOLLOWS = """
INSERT INTO subscriber_tags (subscriber_id, tag_id, created_at)
SELECT reader, tag, since
FROM (
    SELECT s.id AS reader, t.id AS tag, s.subscribed_at AS since, t.rank, random() AS r
    FROM subscribers AS s
    CROSS JOIN (SELECT id, row_number() OVER (ORDER BY id) AS rank FROM tags) AS t
) AS pair
WHERE r < 0.6 / rank
"""

# A tag made two days ago, followed by 20 readers: the kind a skewed plan gets wrong.
NEW_TAG = """
WITH tag AS (
    INSERT INTO tags (slug, name, description, listed, created_at)
    VALUES ('launch', 'Launch', '', true, now() - interval '2 days') RETURNING id
)
INSERT INTO subscriber_tags (subscriber_id, tag_id, created_at)
SELECT s.id, tag.id, now() - interval '1 day' FROM subscribers AS s, tag
WHERE s.id %% %(every)s = 0
"""

# 40 digests a day for 30 days; the newest few are the send in progress.
FILL_DIGESTS = """
INSERT INTO digests (content_key, cadence, post_ids, subject, html, text, created_at)
SELECT md5(g::text || 'digest'),
       (ARRAY['daily', 'daily', 'weekly', 'immediate'])[1 + g %% 4],
       '[1, 2, 3]',
       'Digest ' || g || ': three new posts',
       '<p>Three new posts.</p>', 'Three new posts.',
       CASE WHEN g < %(running)s THEN now() - interval '20 minutes'
            ELSE now() - interval '1 hour' - (g / %(per_day)s) * interval '1 day'
                 - random() * interval '20 hours'
       END
FROM generate_series(0, %(digests)s - 1) AS g
"""

# Deliveries spread over the digests; (reader, digest) pairs are distinct because
# k * 7919 mod N differs for every k < N (7919 is prime). Foreign keys are not
# checked row by row (session_replication_role): the ids are valid by construction.
FILL_DELIVERIES = f"""
INSERT INTO deliveries (subscriber_id, digest_id, status, skip_reason, attempts, last_error,
                        message_id, created_at, updated_at, claimed_at, sent_at)
SELECT subscriber_id, digest_id, status,
       CASE WHEN status = 'skipped' THEN 'unsubscribed' END,
       CASE WHEN status IN ('sent', 'failed') THEN 1 ELSE 0 END,
       CASE WHEN status = 'failed' THEN {pick(ERRORS)} END,
       'bench-' || g || '@news.example.org',
       created_at,
       created_at + interval '5 minutes',
       CASE WHEN status = 'sending' THEN now() END,
       CASE WHEN status = 'sent' THEN created_at + random() * interval '20 minutes' END
FROM (
    SELECT g, d.id AS digest_id, d.created_at,
           %(first_reader)s + ((g / %(digests)s) * 7919 + d.id * 104729) %% %(readers)s
               AS subscriber_id,
           CASE WHEN d.created_at > now() - interval '1 hour' THEN
                CASE WHEN r < 0.55 THEN 'sent' WHEN r < 0.58 THEN 'failed'
                     WHEN r < 0.60 THEN 'skipped' WHEN r < 0.65 THEN 'sending'
                     ELSE 'queued' END
           ELSE
                CASE WHEN r < 0.965 THEN 'sent' WHEN r < 0.975 THEN 'failed'
                     ELSE 'skipped' END
           END AS status
    FROM (SELECT g, random() AS r FROM generate_series(0, %(deliveries)s - 1) AS g) AS n
    JOIN digests AS d ON d.id = %(first_digest)s + n.g %% %(digests)s
) AS x
"""


# Plain indexes (not those behind a primary key or a unique constraint) are dropped
# before the fill and made again after it from their own definitions: one sort per
# index instead of millions of single inserts. The schema ends as migrated.
PLAIN_INDEXES = """
SELECT i.indexname, i.indexdef FROM pg_indexes AS i
JOIN pg_class AS c ON c.relname = i.indexname
WHERE i.schemaname = 'public' AND i.tablename = ANY(%s)
  AND NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conindid = c.oid)
"""
FILLED_TABLES = ["subscribers", "subscriber_tags", "deliveries"]


def fill(dsn: str, readers: int, deliveries: int) -> list[tuple[str, float, int]]:
    """Fill the migrated database; (step, seconds, rows) per step."""
    steps: list[tuple[str, float, int]] = []
    digests = 30 * DIGESTS_PER_DAY
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET maintenance_work_mem = '512MB'")
        conn.execute("SET session_replication_role = replica")
        indexes = conn.execute(PLAIN_INDEXES, (FILLED_TABLES,)).fetchall()
        for index_name, _ in indexes:
            conn.execute(f'DROP INDEX "{index_name}"')

        def step(name: str, sql: str, params: dict[str, Any] | None = None) -> None:
            start = time.perf_counter()
            cursor = conn.execute(sql, params)  # type: ignore[arg-type]
            steps.append((name, time.perf_counter() - start, max(cursor.rowcount, 0)))
            console.log(f"{name}: {steps[-1][2]:,} rows in {steps[-1][1]:.1f} s")

        tags = ", ".join(
            f"('{name.lower()}', '{name}', '', true, now() - interval '3 years')" for name in TAGS
        )
        step(
            "tags", f"INSERT INTO tags (slug, name, description, listed, created_at) VALUES {tags}"
        )
        step("readers", FILL_SUBSCRIBERS, {"readers": readers})
        step("tag follows", FILL_FOLLOWS)
        step("a new tag, 20 followers", NEW_TAG, {"every": max(readers // 20, 1)})
        step(
            "digests",
            FILL_DIGESTS,
            {"digests": digests, "per_day": DIGESTS_PER_DAY, "running": 20},
        )
        first_reader = conn.execute("SELECT min(id) FROM subscribers").fetchone()
        first_digest = conn.execute("SELECT min(id) FROM digests").fetchone()
        assert first_reader and first_digest
        step(
            "deliveries",
            FILL_DELIVERIES,
            {
                "deliveries": deliveries,
                "digests": digests,
                "readers": readers,
                "first_reader": first_reader[0],
                "first_digest": first_digest[0],
            },
        )
        start = time.perf_counter()
        for _, definition in indexes:
            conn.execute(definition)
        steps.append((f"{len(indexes)} indexes", time.perf_counter() - start, 0))
        console.log(f"{len(indexes)} indexes made again in {steps[-1][1]:.1f} s")
        step("vacuum analyze", "VACUUM ANALYZE")
    return steps


@dataclass(frozen=True)
class Timing:
    name: str
    url: str
    target_ms: int
    times_ms: list[float]

    def quantile(self, q: float) -> float:
        ordered = sorted(self.times_ms)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def p99(self) -> float:
        return self.quantile(0.99)

    @property
    def ok(self) -> bool:
        return self.p99 < self.target_ms


def sign_in(client: Any, email: str, password: str) -> None:
    form = client.get("/admin/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token, "no CSRF token on the login form"
    answer = client.post(
        "/admin/login",
        data={"email": email, "password": password, "csrf_token": token.group(1)},
        follow_redirects=False,
    )
    assert answer.status_code == 303, f"sign-in failed: {answer.status_code}"


def time_requests(
    client: Any, name: str, url: str, target_ms: int, requests: int, check: Callable[[str], bool]
) -> Timing:
    """`requests` timed GETs after three untimed ones (warm: caches and plans filled)."""
    for _ in range(3):
        answer = client.get(url)
        assert answer.status_code == 200, f"{url}: {answer.status_code}"
        assert check(answer.text), f"{url}: unexpected page"
    times: list[float] = []
    for _ in range(requests):
        start = time.perf_counter()
        answer = client.get(url)
        times.append((time.perf_counter() - start) * 1000)
        assert answer.status_code == 200
    return Timing(name, url, target_ms, times)


def measure(dsn: str, readers: int, requests: int) -> tuple[list[Timing], float]:
    """Time the console's requests through the real app; also the dashboard's first
    (cold, nothing cached) answer in ms."""
    os.environ.update(
        NEWSLETTER_DATABASE_URL=dsn,
        NEWSLETTER_ENV="development",
        NEWSLETTER_SECRET_KEY="bench-secret-key-0123456789",
        NEWSLETTER_BASE_URL="https://news.example.org",
        NEWSLETTER_FROM="digest@news.example.org",
        NEWSLETTER_BROKER_URL="",
        NEWSLETTER_SMTP_URL="",
    )
    from fastapi.testclient import TestClient

    from newsletter.console import services
    from newsletter.db import session_scope
    from newsletter.web.app import create_app

    email, password = "bench-admin@example.org", "bench password 0123456789"
    with session_scope() as session:
        if services.find_user(session, email) is None:
            services.create_user(session, email, "admin", password)
    with psycopg.connect(dsn) as conn:
        nth = min(10_000, readers // 2)
        row = conn.execute(
            "SELECT email FROM subscribers ORDER BY email, id OFFSET %s LIMIT 1", (nth - 1,)
        ).fetchone()
        assert row
        after = row[0]
    client = TestClient(create_app(), base_url="https://testserver")
    sign_in(client, email, password)
    start = time.perf_counter()
    assert client.get("/admin/").status_code == 200
    cold_ms = (time.perf_counter() - start) * 1000

    def has_rows(html: str) -> bool:
        return 'href="/admin/subscribers/' in html

    def is_list(html: str) -> bool:
        """Rows, or none: a rare filter on a small --readers run may find nobody."""
        return has_rows(html) or "No reader matches" in html

    def has_chart(html: str) -> bool:
        return "<svg" in html

    cases = [
        ("subscriber list, first page", "/admin/subscribers", TARGET_LIST_MS, has_rows),
        ("prefix search `mar`", "/admin/subscribers?q=mar", TARGET_LIST_MS, has_rows),
        (
            "tag + status: `housing`, active",
            "/admin/subscribers?tag=housing&status=active",
            TARGET_LIST_MS,
            has_rows,
        ),
        (
            "tag + status, rare: `data`, paused",
            "/admin/subscribers?tag=data&status=paused",
            TARGET_LIST_MS,
            is_list,
        ),
        (
            "tag + status, new tag: `launch` (20 followers), active",
            "/admin/subscribers?tag=launch&status=active",
            TARGET_LIST_MS,
            is_list,
        ),
        (
            f"page after the {nth:,}th reader",
            f"/admin/subscribers?after={after}",
            TARGET_LIST_MS,
            has_rows,
        ),
        ("dashboard", "/admin/", TARGET_DASHBOARD_MS, has_chart),
    ]
    timings = [time_requests(client, *case[:3], requests, case[3]) for case in cases]
    return timings, cold_ms


def report(
    readers: int, steps: list[tuple[str, float, int]], timings: list[Timing], cold_ms: float
) -> None:
    if steps:
        fill_table = Table(title="Fill")
        for column in ("step", "rows", "seconds"):
            fill_table.add_column(column, justify="left" if column == "step" else "right")
        for name, seconds, rows in steps:
            fill_table.add_row(name, f"{rows:,}" if rows else "", f"{seconds:.1f}")
        fill_table.add_row("total", "", f"{sum(s for _, s, _ in steps):.1f}")
        console.print(fill_table)

    table = Table(title=f"Warm requests, {readers:,} readers")
    for column in ("request", "p50 ms", "p99 ms", "target", "ok"):
        table.add_column(column, justify="left" if column == "request" else "right")
    for t in timings:
        ok = "[green]yes[/]" if t.ok else "[red]NO[/]"
        table.add_row(t.name, f"{t.p50:.1f}", f"{t.p99:.1f}", f"< {t.target_ms}", ok)
    console.print(table)
    console.print(f"dashboard, first request (nothing cached): {cold_ms:.0f} ms")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    console.print(f"load average at the end (1, 5, 15 min): {load} on {os.cpu_count()} cores")

    print("\n| request | p50 | p99 | target |")
    print("|---|---|---|---|")
    for t in timings:
        print(f"| {t.name} | {t.p50:.1f} ms | {t.p99:.1f} ms | < {t.target_ms} ms |")


@contextmanager
def bench_database(admin_dsn: str, keep: bool) -> Iterator[str]:
    """A fresh database migrated by the project's migrations, its DSN; dropped at the
    end unless `keep` (then it can be timed again with --existing)."""
    from newsletter import db

    name = f"newsletter_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = admin_dsn.rsplit("/", 1)[0] + f"/{name}"
    console.log(f"database {name}")
    try:
        db.upgrade(dsn)
        yield dsn
    finally:
        db.dispose_engines()
        if keep:
            console.log(f"kept: {dsn} (rerun: --existing {dsn})")
        else:
            with psycopg.connect(admin_dsn, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def reader_count(dsn: str) -> int:
    """How many readers a database a --keep run left holds."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM subscribers").fetchone()
    return row[0] if row else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readers", type=int, default=1_000_000)
    parser.add_argument("--deliveries", type=int, help="default: two per reader")
    parser.add_argument("--requests", type=int, default=50, help="timed requests per case")
    parser.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    parser.add_argument(
        "--existing", metavar="DSN", help="time a database a --keep run left (no fill, no drop)"
    )
    args = parser.parse_args()
    if args.readers < 100:
        parser.error("--readers: at least 100")
    deliveries = args.deliveries if args.deliveries is not None else 2 * args.readers
    from newsletter import db

    if args.existing:
        readers = reader_count(args.existing)
        try:
            timings, cold_ms = measure(args.existing, readers, args.requests)
            report(readers, [], timings, cold_ms)
        finally:
            db.dispose_engines()
        return

    with bench_database(args.admin_dsn, args.keep) as dsn:
        steps = fill(dsn, args.readers, deliveries)
        timings, cold_ms = measure(dsn, args.readers, args.requests)
        report(args.readers, steps, timings, cold_ms)


if __name__ == "__main__":
    main()
