"""Time `newsletter subscribers list` and `show` with 1,000,000 readers in PostgreSQL.

    python bench/list_subscribers.py [--readers 1000000] [--runs 10] [--keep] [--explain]
        [--admin-dsn postgresql://postgres@127.0.0.1:5432/postgres]
    python bench/list_subscribers.py --existing DSN   # time again a database --keep left

Fills a fresh, migrated database the way `bench/console.py` does (the same readers,
tags, follows and deliveries), then runs each command in-process through the real
command line (parsing, queries, the printed table) `--runs` times and reports the
median and the slowest run. `--explain` prints PostgreSQL's plan of every query a
command sent, to check each page is an index range scan. Target: every command
under a second. Run by hand; results go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.console import bench_database, fill, reader_count

console = Console()
TARGET_MS = 1000


def _env(dsn: str) -> None:
    os.environ.update(
        NEWSLETTER_DATABASE_URL=dsn,
        NEWSLETTER_ENV="development",
        NEWSLETTER_SECRET_KEY="bench-secret-key-0123456789",
        NEWSLETTER_BASE_URL="https://news.example.org",
        NEWSLETTER_FROM="digest@news.example.org",
        NEWSLETTER_BROKER_URL="",
        NEWSLETTER_SMTP_URL="",
    )


def _cases(dsn: str, readers: int) -> list[tuple[str, list[str]]]:
    with psycopg.connect(dsn) as conn:
        middle = conn.execute(
            "SELECT email FROM subscribers ORDER BY email, id OFFSET %s LIMIT 1",
            (readers // 2,),
        ).fetchone()
        reader = conn.execute(
            "SELECT s.email FROM subscribers AS s JOIN deliveries AS d ON d.subscriber_id = s.id "
            "WHERE d.status = 'failed' LIMIT 1"
        ).fetchone()
    assert middle and reader
    return [
        ("list, first page", ["subscribers", "list"]),
        ("list, search `mar`", ["subscribers", "list", "--search", "mar"]),
        (
            "list, tag `housing`, active",
            ["subscribers", "list", "--tag", "housing", "--status", "active"],
        ),
        (
            "list, tag `data`, paused (rare)",
            ["subscribers", "list", "--tag", "data", "--status", "paused"],
        ),
        ("list, new tag `launch` (20 followers)", ["subscribers", "list", "--tag", "launch"]),
        (
            f"list, page after the {readers // 2:,}th reader",
            ["subscribers", "list", "--after", middle[0]],
        ),
        ("list, 1000 a page", ["subscribers", "list", "--limit", "1000"]),
        ("show a reader with deliveries", ["subscribers", "show", reader[0]]),
    ]


def measure(dsn: str, readers: int, runs: int, explain: bool) -> list[tuple[str, list[float]]]:
    """Each case run `runs` times in-process; milliseconds per run."""
    _env(dsn)
    from typer.testing import CliRunner

    from newsletter.cli import app

    runner = CliRunner()
    results = []
    for name, args in _cases(dsn, readers):
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            result = runner.invoke(app, args)
            times.append((time.perf_counter() - start) * 1000)
            assert result.exit_code == 0, result.output
        results.append((name, times))
        if explain:
            _explain(dsn, name, args)
    return results


def _explain(dsn: str, name: str, args: list[str]) -> None:
    """Run the command once more and print PostgreSQL's plan of each SELECT it sent."""
    from sqlalchemy import event
    from typer.testing import CliRunner

    from newsletter import db
    from newsletter.cli import app

    sent: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            sent.append((statement, params))

    engine = db.get_engine(dsn)
    event.listen(engine, "before_cursor_execute", record)
    CliRunner().invoke(app, args)
    event.remove(engine, "before_cursor_execute", record)
    console.rule(name)
    with psycopg.connect(dsn) as conn:
        for statement, params in sent:
            plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, params)
            console.print("\n".join(row[0] for row in plan), highlight=False)
            console.print()


def report(readers: int, results: list[tuple[str, list[float]]]) -> None:
    table = Table(title=f"`newsletter subscribers ...` at {readers:,} readers (in-process)")
    for column in ("command", "median ms", "slowest ms", "target", "ok"):
        table.add_column(column, justify="left" if column == "command" else "right")
    for name, times in results:
        ok = "[green]yes[/]" if max(times) < TARGET_MS else "[red]NO[/]"
        table.add_row(
            name, f"{statistics.median(times):.0f}", f"{max(times):.0f}", f"< {TARGET_MS}", ok
        )
    console.print(table)
    print("\n| command | median | slowest |")
    print("|---|---|---|")
    for name, times in results:
        print(f"| {name} | {statistics.median(times):.0f} ms | {max(times):.0f} ms |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readers", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=10, help="timed runs per command")
    parser.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    parser.add_argument("--explain", action="store_true", help="print each query's plan")
    parser.add_argument(
        "--existing", metavar="DSN", help="time a database a --keep run left (no fill, no drop)"
    )
    args = parser.parse_args()
    if args.readers < 100:
        parser.error("--readers: at least 100")
    from newsletter import db

    if args.existing:
        readers = reader_count(args.existing)
        try:
            report(readers, measure(args.existing, readers, args.runs, args.explain))
        finally:
            db.dispose_engines()
        return

    with bench_database(args.admin_dsn, args.keep) as dsn:
        # A tenth of the console bench's deliveries: enough for `show`, quicker to fill.
        fill(dsn, args.readers, args.readers // 5)
        report(args.readers, measure(dsn, args.readers, args.runs, args.explain))


if __name__ == "__main__":
    main()
