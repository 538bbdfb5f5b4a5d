"""Send again, in this one process, the ledger a `send.py --keep` run left behind, and
show where the sending process spends its CPU per message.

    python bench/send.py --readers 100000 --keep      # once, to make the ledger
    python bench/resend.py [--messages 20000] [--connections 4]

The first `--messages` deliveries are put back to queued, then `sending.send_batch`
takes them in batches of NEWSLETTER_SEND_BATCH_SIZE, one after another, as a worker's
send tasks would, into a fresh smtp-sink. No Celery and no planning run beside it, so
the figures are the send's own: CPU per message of this process (user and system)
and of PostgreSQL's processes, and the thread CPU time of each step of a send
(`time.thread_time` around the engine's own functions; a step's time includes the
steps it calls: `_take` includes `_build`). Run by hand; results go in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import resource
import secrets
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from postfix_tools import CACHE, Sink, fetch, free_port
from rich.console import Console
from rich.table import Table

# The steps of a send whose thread CPU time is counted.
STEPS = ("_claim_and_read", "_load_sendable", "_take", "_build", "_attempt", "_write_outcomes")


class Meter:
    """Thread CPU time per step and per kind of thread (the name before its dash)."""

    def __init__(self) -> None:
        self.steps: collections.Counter[str] = collections.Counter()
        self.threads: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def wrap(self, module: Any, name: str) -> None:
        step = getattr(module, name)

        @functools.wraps(step)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return step(*args, **kwargs)
            finally:
                self._add(self.steps, name, time.thread_time() - started)

        setattr(module, name, timed)

    def count_threads(self) -> None:
        run: Callable[[threading.Thread], None] = threading.Thread.run
        meter = self

        def timed_run(thread: threading.Thread) -> None:
            started = time.thread_time()
            try:
                run(thread)
            finally:
                meter._add(meter.threads, thread.name.split("-")[0], time.thread_time() - started)

        threading.Thread.run = timed_run  # type: ignore[method-assign]

    def _add(self, counter: collections.Counter[str], key: str, seconds: float) -> None:
        with self._lock:
            counter[key] += seconds


def postgres_cpu() -> float:
    """CPU seconds of every PostgreSQL process so far (the server runs on this machine)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if b"postgres" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument(
        "--database-url", default="postgresql+psycopg://postgres@127.0.0.1/bench_send"
    )
    args = parser.parse_args()
    console = Console()

    postfix = fetch()
    sink = Sink(postfix, free_port(), CACHE.parent / "resend-sink.log").start()
    os.environ.update(
        NEWSLETTER_ENV="production",
        NEWSLETTER_SECRET_KEY=secrets.token_urlsafe(32),
        NEWSLETTER_DATABASE_URL=args.database_url,
        NEWSLETTER_BROKER_URL="",
        NEWSLETTER_BASE_URL="https://news.example.org",
        NEWSLETTER_FROM="digest@news.example.org",
        NEWSLETTER_SMTP_URL=sink.url,
        NEWSLETTER_SMTP_CONNECTIONS=str(args.connections),
    )
    from sqlalchemy import text

    from newsletter.config import get_settings
    from newsletter.db import get_engine, session_scope
    from newsletter.delivery import sending

    try:
        with session_scope() as session:
            ids = list(
                session.scalars(
                    text("SELECT id FROM deliveries ORDER BY id LIMIT :n"), {"n": args.messages}
                )
            )
            session.execute(
                text(
                    "UPDATE deliveries SET status = 'queued', claimed_at = NULL, "
                    "sent_at = NULL, next_attempt_at = NULL, attempts = 0 "
                    "WHERE id = ANY(:ids)"
                ),
                {"ids": ids},
            )
        if not ids:
            raise SystemExit("no deliveries: run `bench/send.py --keep` first")
        with get_engine().connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                "VACUUM ANALYZE deliveries"
            )

        meter = Meter()
        for step in STEPS:
            meter.wrap(sending, step)
        meter.count_threads()
        size = get_settings().send_batch_size
        base = sink.messages
        before, pg_before = resource.getrusage(resource.RUSAGE_SELF), postgres_cpu()
        started = time.monotonic()
        for start in range(0, len(ids), size):
            sending.send_batch(ids[start : start + size])
        sink.wait_for(base + len(ids), timeout=60)
        seconds = time.monotonic() - started
        after, pg_after = resource.getrusage(resource.RUSAGE_SELF), postgres_cpu()
        sent = sink.messages - base
    finally:
        sink.stop()

    def per(seconds_used: float) -> str:
        return f"{1e6 * seconds_used / max(sent, 1):.0f} us"

    table = Table(title=f"Sending {sent:,} messages again, one process")
    table.add_column("")
    table.add_column("per message", justify="right")
    table.add_row("rate", f"{sent / seconds:,.0f} msg/s ({args.connections} connections)")
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    table.add_row("this process", f"{per(user + system)} (user {per(user)}, system {per(system)})")
    table.add_row("PostgreSQL", per(pg_after - pg_before))
    for name, used in meter.threads.most_common():
        table.add_row(f"  thread {name}", per(used))
    for name, used in meter.steps.most_common():
        table.add_row(f"  step {name}", per(used))
    console.print(table)


if __name__ == "__main__":
    main()
