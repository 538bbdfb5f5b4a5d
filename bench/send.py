"""The delivery engine end to end: N readers in PostgreSQL, real Celery workers on Redis,
Postfix's smtp-sink on loopback; the time from `digests run` to the last message accepted.

    python bench/send.py [--readers 100000] [--workers 2] [--connections N]
        [--database-url postgresql+psycopg://postgres@127.0.0.1/bench_send]
        [--broker-url redis://127.0.0.1:6379/7] [--keep] [--json FILE]
    python bench/send.py --plan-only --readers 1000000    # planning alone, nothing sent

Each run drops and recreates the database, migrates it with `newsletter.db.upgrade()`
and fills it with COPY (not timed): readers following 1-4 of 30 tags drawn from a
Zipf-like popularity, 70% daily, 15% weekly, 15% immediate, in five time zones and
several send hours, every daily and weekly reader due at the run's instant; five posts
from the last day (a daily digest of all five is about 40 KB on the wire). The broker's
Redis database is flushed at the start and the end.

Timed: `newsletter digests run --now <start>` in its own process and, at the same
instant, one new post for the immediate readers (its `post_published` task goes to the
workers); the clock stops when smtp-sink accepts the last message the ledger planned.
Then smtp-source sends as many messages of the same size over the same number of SMTP
connections into the same smtp-sink, for the ratio. The ledger is checked at the end:
every planned delivery sent, no reader promised a post twice, as many messages on the
wire as deliveries sent, renders equal to the distinct digests the data calls for.

Peak RSS is each process's VmHWM (/proc/PID/status), sampled every half second and
read from wait4() for the `digests run` process. Logs of the run (workers, smtp-sink,
the command's output) go to bench/.cache/runs/. Run by hand; results go in
docs/benchmarks.md, and bench/README.md says more.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import redis
from postfix_tools import PostfixError, Sink, SourceRun, fetch, free_port, run_source
from postfix_tools import source_overhead as measure_source_overhead
from psycopg import sql
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import URL, make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RUNS = Path(__file__).resolve().parent / ".cache" / "runs"

console = Console()
if not console.is_terminal:
    console = Console(width=110)  # a log file: room for the labels on one line
say = Console(stderr=True, highlight=False, log_path=False)

TAG_NAMES = [
    "Politics", "Health", "Climate", "Housing", "Transport", "Education", "Economy",
    "Culture", "Sports", "Science", "Technology", "Energy", "Justice", "Local News",
    "World", "Business", "Food", "Travel", "Music", "Film", "Books", "Opinion",
    "Elections", "Public Services", "Environment", "Cities", "Work", "Media",
    "Security", "History",
]  # fmt: skip


def table(weights: dict[Any, float], slots: int = 10_000) -> list[Any]:
    """Each value repeated in proportion to its weight: a weighted draw is one index."""
    total = sum(weights.values())
    return [value for value, w in weights.items() for _ in range(round(slots * w / total))]


# Tag k is followed in proportion to 1 / (k + 1): a few big tags, a long tail.
TAG_TABLE = table({k: 1 / (k + 1) for k in range(len(TAG_NAMES))})
FOLLOWS_TABLE = table({1: 40, 2: 30, 3: 20, 4: 10})
CADENCE_TABLE = table({"daily": 70, "weekly": 15, "immediate": 15})
ZONE_TABLE = table(
    {"UTC": 15, "Europe/Berlin": 30, "America/New_York": 30, "Asia/Tokyo": 10,
     "Australia/Sydney": 15}
)  # fmt: skip
SEND_HOURS = [6, 7, 8, 8, 8, 9, 12, 18]
FIRST = [
    "Ana", "Ben", "Carla", "Dan", "Emi", "Farid", "Greta", "Hugo", "Ines", "Jon", "Kenji",
    "Lena", "Marta", "Nuno", "Olga",
]  # fmt: skip
LAST = [
    "Lima", "Silva", "Weber", "Smith", "Tanaka", "Haddad", "Novak", "Costa", "Brown",
    "Klein", "Sato", "Reis", "Moreau",
]  # fmt: skip
DOMAINS = ["example.org", "example.com", "example.net", "mail.example.org"]
# Three paragraphs per post summary: a daily digest of five posts is about 40 KB on the
# wire, like bench/build_message.py's.
PARAGRAPH = (
    "The council met on Tuesday to settle the budget for the coming year, and the "
    "debate ran long into the evening as members weighed housing against transport. "
)
SUMMARY_PARAGRAPHS = 3
TAGS_PER_POST = 3
TAGS_PER_IMMEDIATE_POST = 2

SUBSCRIBER_COLUMNS = [
    "id", "uid", "email", "name", "status", "cadence", "timezone", "send_hour",
    "send_weekday", "subscribed_at", "next_digest_at", "confirmed_at", "created_at",
    "updated_at",
]  # fmt: skip
SENDABLE = ("queued", "sending", "sent")
COPY_CHUNK = 50_000


# --- data ---------------------------------------------------------------------------


class Draw:
    """Seeded draws from the tables above (one random() each: a million readers in seconds)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.random = self.rng.random

    def one(self, values: list[Any]) -> Any:
        return values[int(self.random() * len(values))]

    def tags(self, count: int) -> list[int]:
        """`count` distinct tag indexes, drawn by popularity."""
        chosen: set[int] = set()
        while len(chosen) < count:
            chosen.add(self.one(TAG_TABLE))
        return sorted(chosen)


def last_slot(cadence: str, zone: str, hour: int, weekday: int, at: dt.datetime) -> dt.datetime:
    """The reader's latest send time at or before `at`, in UTC: they are due at `at`."""
    tz = ZoneInfo(zone)
    local_day = at.astimezone(tz).date()
    for back in range(9):
        day = local_day - dt.timedelta(days=back)
        if cadence == "weekly" and day.weekday() != weekday:
            continue
        slot = dt.datetime.combine(day, dt.time(hour), tzinfo=tz).astimezone(dt.UTC)
        if slot <= at:
            return slot
    raise AssertionError("a slot always exists within eight days")


@dataclass
class Dataset:
    """What was written, and what the planner should make of it."""

    readers: int = 0
    cadences: Counter[str] = field(default_factory=Counter)
    zones: Counter[str] = field(default_factory=Counter)
    follows: int = 0
    post_tags: list[list[int]] = field(default_factory=list)
    immediate_tags: list[int] = field(default_factory=list)
    # Messages the data calls for: daily/weekly readers with a followed tag on one of the
    # day's posts, immediate readers following a tag of the new post.
    expected_scheduled: int = 0
    expected_immediate: int = 0
    # Distinct digests: one per (cadence, posts) among scheduled readers.
    expected_digests: int = 0
    seconds: float = 0.0


def generate(
    readers: int, tag_ids: list[int], data: Dataset, t0: dt.datetime, seed: int
) -> Iterator[tuple[tuple[Any, ...], list[tuple[int, int, dt.datetime]]]]:
    """Subscriber rows and their tag follows, counting what the planner should do."""
    draw = Draw(seed)
    # Bit i of a tag's mask: the day's post i carries that tag.
    posts_of_tag = [0] * len(TAG_NAMES)
    for i, tags in enumerate(data.post_tags):
        for k in tags:
            posts_of_tag[k] |= 1 << i
    immediate = set(data.immediate_tags)
    digests: set[tuple[str, int]] = set()
    slots: dict[tuple[str, str, int, int], dt.datetime] = {}
    scheduled_since = t0 - dt.timedelta(days=30)
    # Immediate readers joined after the day's posts, which went out to the immediate
    # readers of that time: the new post is all they are owed.
    immediate_since = t0 - dt.timedelta(minutes=10)
    for n in range(1, readers + 1):
        cadence = draw.one(CADENCE_TABLE)
        zone = draw.one(ZONE_TABLE)
        hour = draw.one(SEND_HOURS)
        weekday = int(draw.random() * 7)
        follows = draw.tags(draw.one(FOLLOWS_TABLE))
        first, last = draw.one(FIRST), draw.one(LAST)
        next_at = None
        if cadence == "immediate":
            since = immediate_since
            if immediate.intersection(follows):
                data.expected_immediate += 1
        else:
            since = scheduled_since
            key = (cadence, zone, hour, weekday if cadence == "weekly" else 0)
            next_at = slots.get(key)
            if next_at is None:
                next_at = slots[key] = last_slot(*key, t0)
            posts = 0
            for k in follows:
                posts |= posts_of_tag[k]
            if posts:
                data.expected_scheduled += 1
                digests.add((cadence, posts))
        data.cadences[cadence] += 1
        data.zones[zone] += 1
        data.follows += len(follows)
        uid = f"{draw.rng.getrandbits(128):032x}"
        email = f"{first}.{last}.{n}@{DOMAINS[n % len(DOMAINS)]}".lower()
        row = (n, uid, email, f"{first} {last}", "active", cadence, zone, hour, weekday,
               since, next_at, since, since, since)  # fmt: skip
        yield row, [(n, tag_ids[k], since) for k in follows]
    data.readers = readers
    data.expected_digests = len(digests)


def database_urls(url: str) -> tuple[URL, str, str]:
    """The SQLAlchemy URL, a libpq URL for the database and one for the server."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("postgresql") or not parsed.database:
        raise SystemExit(f"--database-url must name a PostgreSQL database, got {url!r}")
    plain = parsed.set(drivername="postgresql")
    admin = plain.set(database="postgres")
    return (
        parsed,
        plain.render_as_string(hide_password=False),
        admin.render_as_string(hide_password=False),
    )


def drop_database(admin_dsn: str, name: str, *, create: bool = False) -> None:
    """Drop the database (closing its sessions), and make it again empty if `create`."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        if create:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def fill(dsn: str, readers: int, posts: int, t0: dt.datetime, seed: int) -> Dataset:
    """Tags and posts through the project's own code, readers and follows by COPY."""
    from newsletter.db import session_scope
    from newsletter.posts import add_post
    from newsletter.tags import get_or_create_tags, parse_tag_names

    started = time.perf_counter()
    draw = Draw(seed)
    data = Dataset()
    data.post_tags = [draw.tags(TAGS_PER_POST) for _ in range(posts)]
    data.immediate_tags = draw.tags(TAGS_PER_IMMEDIATE_POST)
    with session_scope() as session:
        tags = get_or_create_tags(session, parse_tag_names(TAG_NAMES))
        by_name = {tag.name: tag.id for tag in tags}
        tag_ids = [by_name[name] for name in TAG_NAMES]
        # The day's posts, spread over the last 20 hours; recorded as planned (their
        # immediate readers were served when they arrived), so only the daily and
        # weekly readers are owed them now.
        spacing = dt.timedelta(hours=19) / max(len(data.post_tags), 1)
        for index, tags_of_post in enumerate(data.post_tags):
            arrived = t0 - dt.timedelta(hours=20) + index * spacing
            add_post(session, post_input(index, tags_of_post), now=arrived, announce=False)
    columns = sql.SQL(", ").join(map(sql.Identifier, SUBSCRIBER_COLUMNS))
    copy_readers = sql.SQL("COPY subscribers ({}) FROM STDIN").format(columns)
    copy_follows = "COPY subscriber_tags (subscriber_id, tag_id, created_at) FROM STDIN"
    rows = generate(readers, tag_ids, data, t0, seed)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        # Readers, then their follows, a chunk at a time in one transaction: the
        # follows' foreign key sees the readers, and memory stays flat at any size.
        while chunk := list(itertools.islice(rows, COPY_CHUNK)):
            with cur.copy(copy_readers) as copy:
                for row, _ in chunk:
                    copy.write_row(row)
            with cur.copy(copy_follows) as copy:
                for _, follows in chunk:
                    for follow in follows:
                        copy.write_row(follow)
        cur.execute("SELECT setval('subscribers_id_seq', (SELECT max(id) FROM subscribers))")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    data.seconds = time.perf_counter() - started
    return data


def post_input(index: int, tag_indexes: list[int], *, breaking: bool = False) -> Any:
    from newsletter.posts import PostInput

    title = (
        "Breaking: the night train returns to the northern line"
        if breaking
        else f"Budget day, part {index + 1}: what changes for renters"
    )
    slug = "breaking" if breaking else f"budget-{index + 1}"
    return PostInput(
        title=title,
        url=f"https://blog.example.org/posts/{slug}/",
        tags=[TAG_NAMES[k] for k in tag_indexes],
        summary=PARAGRAPH * SUMMARY_PARAGRAPHS,
        author="Marta Reis",
    )


# --- processes ----------------------------------------------------------------------


def read_hwm(pid: int) -> int | None:
    """Peak resident set size of a live process in kB (VmHWM), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def children_of() -> dict[int, list[int]]:
    """Every live process's children, from /proc/*/stat."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


class PeakRss:
    """Peak RSS of watched processes and all their descendants, sampled in a thread."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.roots: dict[int, str] = {}
        self.labels: dict[int, str] = {}
        self.peaks: dict[int, int] = {}
        self._children: Counter[int] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak rss", daemon=True)

    def watch(self, pid: int, label: str) -> None:
        with self._lock:
            self.roots[pid] = label
            self.labels[pid] = label
        self.sample(discover=True)

    def record(self, pid: int, kilobytes: int) -> None:
        """A peak known another way (wait4's ru_maxrss for a process that has exited)."""
        with self._lock:
            self.peaks[pid] = max(self.peaks.get(pid, 0), kilobytes)

    def sample(self, discover: bool) -> None:
        with self._lock:
            if discover:
                tree = children_of()
                for root, label in self.roots.items():
                    stack = list(tree.get(root, []))
                    while stack:
                        pid = stack.pop()
                        if pid not in self.labels:
                            self._children[root] += 1
                            self.labels[pid] = f"{label} child {self._children[root]}"
                        stack.extend(tree.get(pid, []))
            for pid in self.labels:
                hwm = read_hwm(pid)
                if hwm is not None:
                    self.peaks[pid] = max(self.peaks.get(pid, 0), hwm)

    def _run(self) -> None:
        rounds = 0
        while not self._stop.wait(self.interval):
            rounds += 1
            self.sample(discover=rounds % 4 == 0)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.sample(discover=False)

    def rows(self) -> list[tuple[str, int, float]]:
        """(label, pid, peak MB), in the order the processes were first seen."""
        with self._lock:
            seen = [(label, pid) for pid, label in self.labels.items() if pid in self.peaks]
            return [(label, pid, self.peaks[pid] / 1024) for label, pid in seen]


@dataclass
class Command:
    """A child process reaped with wait4(), for its exit status and peak RSS."""

    proc: subprocess.Popen[bytes]
    ended: float | None = None
    status: int | None = None
    max_rss_kb: int = 0
    done: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def spawn(cls, command: list[str], env: dict[str, str], out: Path, err: Path) -> Command:
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=stdout, stderr=stderr)
        spawned = cls(proc)
        threading.Thread(target=spawned._reap, name="reap", daemon=True).start()
        return spawned

    def _reap(self) -> None:
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.ended = time.monotonic()
        self.status = os.waitstatus_to_exitcode(status)
        self.proc.returncode = self.status  # Popen must not wait for it again
        self.max_rss_kb = usage.ru_maxrss
        self.done.set()


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    hostname: str
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # warm shutdown
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_workers(
    count: int, concurrency: int, env: dict[str, str], run_dir: Path, loglevel: str
) -> list[Worker]:
    workers = []
    tag = uuid.uuid4().hex[:6]
    for n in range(1, count + 1):
        hostname = f"bench{n}-{tag}@localhost"
        log = run_dir / f"worker-{n}.log"
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker",
            "worker",
            "--pool=prefork",
            f"--concurrency={concurrency}",
            f"--loglevel={loglevel}",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            f"--hostname={hostname}",
        ]
        with log.open("wb") as out:
            proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
        workers.append(Worker(proc, hostname, log))
    return workers


def wait_ready(workers: list[Worker], timeout: float = 60.0) -> None:
    """Every worker answers a ping (and so consumes the queue)."""
    from worker import app as celery_app

    waiting = {w.hostname for w in workers}
    deadline = time.monotonic() + timeout
    while waiting:
        for w in workers:
            if w.proc.poll() is not None:
                raise SystemExit(f"worker {w.hostname} exited at start; see {w.log}")
        for reply in celery_app.control.ping(destination=sorted(waiting), timeout=0.5) or []:
            waiting -= set(reply)
        if waiting and time.monotonic() > deadline:
            raise SystemExit(f"workers not ready after {timeout:.0f} s: {sorted(waiting)}")


def broker_idle(client: redis.Redis) -> bool:
    """No task queued and none taken but unacknowledged."""
    with client.pipeline(transaction=True) as pipe:
        pipe.llen("celery")
        pipe.hlen("unacked")
        queued, unacked = pipe.execute()
    return int(queued) == 0 and int(unacked) == 0


def wait_broker_idle(client: redis.Redis, settle: float = 1.0, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    idle_since: float | None = None
    while time.monotonic() < deadline:
        now = time.monotonic()
        if broker_idle(client):
            idle_since = idle_since or now
            if now - idle_since >= settle:
                return True
        else:
            idle_since = None
        time.sleep(0.1)
    return False


# --- the ledger ---------------------------------------------------------------------


def scalar(dsn: str, query: str, *params: Any) -> Any:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query, params).fetchone()
        return row[0] if row else None


def table_writes(dsn: str) -> dict[str, tuple[int, int]]:
    """Rows inserted and updated so far, per table (PostgreSQL's statistics)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT relname, n_tup_ins, n_tup_upd FROM pg_stat_user_tables")
        return {name: (ins, upd) for name, ins, upd in rows}


def writes_between(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
) -> dict[str, tuple[int, int]]:
    changed = {}
    for name, (ins, upd) in sorted(after.items()):
        was = before.get(name, (0, 0))
        if (ins - was[0], upd - was[1]) != (0, 0):
            changed[name] = (ins - was[0], upd - was[1])
    return changed


@dataclass
class Ledger:
    statuses: dict[str, int]
    digests: int
    digests_used: int
    # (reader, post) pairs promised in more than one sendable delivery.
    twice: int | None
    created_span: float | None
    sent_span: float | None

    @property
    def sendable(self) -> int:
        return sum(self.statuses.get(s, 0) for s in SENDABLE)


def read_ledger(dsn: str) -> Ledger:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT status, count(*) FROM deliveries GROUP BY status")
        statuses = {str(status): int(count) for status, count in rows}
        digests, used = conn.execute(
            "SELECT (SELECT count(*) FROM digests),"
            " (SELECT count(DISTINCT digest_id) FROM deliveries)"
        ).fetchone() or (0, 0)
        # The scheduled readers' rows only: the immediate post is planned on its own.
        created, sent = conn.execute(
            "SELECT extract(epoch FROM max(d.created_at) - min(d.created_at)),"
            " extract(epoch FROM max(d.sent_at) - min(d.sent_at))"
            " FROM deliveries d JOIN digests g ON g.id = d.digest_id"
            " WHERE g.cadence <> 'immediate'"
        ).fetchone() or (None, None)
        try:
            twice = conn.execute(
                "SELECT count(*) FROM (SELECT d.subscriber_id, p.post_id FROM deliveries d"
                " JOIN digests g ON g.id = d.digest_id,"
                " json_array_elements_text(g.post_ids::json) AS p(post_id)"
                " WHERE d.status IN ('queued', 'sending', 'sent')"
                " GROUP BY 1, 2 HAVING count(*) > 1) AS repeated"
            ).fetchone()
        except psycopg.Error:
            conn.rollback()
            twice = None
    return Ledger(
        statuses=statuses,
        digests=int(digests),
        digests_used=int(used),
        twice=None if twice is None else int(twice[0]),
        created_span=None if created is None else float(created),
        sent_span=None if sent is None else float(sent),
    )


# --- machine ------------------------------------------------------------------------


def machine(dsn: str) -> dict[str, str]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory = "unknown"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": str(os.cpu_count()),
        "cpu": model,
        "memory": memory,
        "load average before the run": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "postgresql": str(scalar(dsn, "SHOW server_version")),
        "commit": head + (" (with local changes)" if dirty else ""),
    }


# --- the run ------------------------------------------------------------------------


@dataclass
class Result:
    mode: str
    readers: int
    workers: int
    concurrency: int
    connections: int
    setup_seconds: float = 0.0
    machine: dict[str, str] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    expected_deliveries: int = 0
    expected_digests: int = 0
    planned_deliveries: int | None = None
    command_seconds: float | None = None
    command_status: int | None = None
    immediate_planned: float | None = None
    first_accepted: float | None = None
    last_accepted: float | None = None
    accepted: int = 0
    wire_bytes: float | None = None
    source: SourceRun | None = None
    ledger: Ledger | None = None
    writes: dict[str, tuple[int, int]] = field(default_factory=dict)
    peak_rss: list[tuple[str, int, float]] = field(default_factory=list)
    # None: could not be checked against this schema (shown, not failed).
    checks: dict[str, bool | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    run_dir: str = ""

    @property
    def rate(self) -> float | None:
        """Messages per second from the start to the last planned message accepted."""
        if not self.last_accepted or not self.planned_deliveries:
            return None
        return self.planned_deliveries / self.last_accepted

    def as_json(self) -> str:
        return json.dumps(
            asdict(self) | {"rate": self.rate, "source_rate": self.source and self.source.rate},
            indent=2,
            default=str,
        )


def newsletter_command() -> list[str]:
    script = Path(sys.executable).parent / "newsletter"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from newsletter.cli import main; main()"]


def parse_env(pairs: list[str]) -> dict[str, str]:
    extra = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--env takes KEY=VALUE, got {pair!r}")
        extra[key.strip()] = value
    return extra


def dkim_env(kind: str, env: dict[str, str], run_dir: Path) -> dict[str, str]:
    """Hook for signed runs: a key made by the project's own command, and its settings."""
    key = run_dir / f"dkim-{kind}.pem"
    command = [*newsletter_command(), "dkim", "keygen", "--selector", "bench"]
    command += ["--algorithm", kind, "--out", str(key)]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"--dkim: `newsletter dkim keygen` failed:\n{done.stderr.strip()}")
    return {
        "NEWSLETTER_DKIM_DOMAIN": "news.example.org",
        "NEWSLETTER_DKIM_SELECTOR": "bench",
        "NEWSLETTER_DKIM_KEY_FILE": str(key),
    }


class Bench:
    """One run: setup, workers, the timed pass, smtp-source, the ledger's checks."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.url, self.dsn, self.admin_dsn = database_urls(args.database_url)
        self.run_dir = RUNS / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.extra = parse_env(args.env)
        self.env = {
            **os.environ,
            "NEWSLETTER_ENV": "production",
            "NEWSLETTER_SECRET_KEY": secrets.token_urlsafe(32),
            "NEWSLETTER_DATABASE_URL": args.database_url,
            "NEWSLETTER_BROKER_URL": args.broker_url,
            "NEWSLETTER_BASE_URL": "https://news.example.org",
            "NEWSLETTER_FROM": "digest@news.example.org",
            # Never reached in --plan-only: nothing is sent there.
            "NEWSLETTER_SMTP_URL": "smtp://127.0.0.1:2525",
            "PYTHONUNBUFFERED": "1",
        }
        self.postfix = None if args.plan_only else fetch()
        self.sink: Sink | None = None
        self.workers: list[Worker] = []
        self.rss = PeakRss()
        self.client = redis.Redis.from_url(args.broker_url)
        self.data = Dataset()
        self.command: Command | None = None
        self.result = Result(
            mode="plan-only" if args.plan_only else "send",
            readers=args.readers,
            workers=0 if args.plan_only else args.workers,
            concurrency=args.concurrency,
            connections=0,
            run_dir=str(self.run_dir),
        )

    def configure(self) -> None:
        """Settings for the workers, `digests run` and this process (which publishes the
        immediate post and pings the workers)."""
        if self.postfix is not None:
            port = self.args.port or free_port()
            self.sink = Sink(self.postfix, port, self.run_dir / "smtp-sink.log").start()
            self.env["NEWSLETTER_SMTP_URL"] = self.sink.url
        self.env.update(self.extra)
        os.environ.update(self.env)
        if self.args.dkim:
            self.env.update(dkim_env(self.args.dkim, self.env, self.run_dir))
            os.environ.update(self.env)
        from newsletter.config import get_settings

        per_task = int(getattr(get_settings(), "smtp_connections", 4))
        self.result.connections = self.args.connections or (
            self.args.workers * self.args.concurrency * per_task
        )

    def setup(self) -> None:
        from newsletter import db

        say.log(f"[bold]setup[/]: {self.args.readers:,} readers into {self.url.database}")
        started = time.perf_counter()
        drop_database(self.admin_dsn, str(self.url.database), create=True)
        db.upgrade()
        t0 = db.utcnow().replace(second=0, microsecond=0)
        self.data = fill(self.dsn, self.args.readers, self.args.posts, t0, self.args.seed)
        db.dispose_engines()
        self.client.flushdb()
        result = self.result
        result.setup_seconds = time.perf_counter() - started
        result.machine = machine(self.dsn)
        if self.postfix is not None:
            result.machine["smtp-sink, smtp-source"] = f"postfix {self.postfix.version()}"
        result.expected_digests = self.data.expected_digests
        result.expected_deliveries = self.data.expected_scheduled
        if not self.args.plan_only:
            result.expected_deliveries += self.data.expected_immediate
            result.expected_digests += 1 if self.data.expected_immediate else 0
        result.data = {
            "cadences": dict(self.data.cadences),
            "zones": dict(self.data.zones),
            "follows": self.data.follows,
            "post_tags": [[TAG_NAMES[k] for k in tags] for tags in self.data.post_tags],
            "immediate_post_tags": [TAG_NAMES[k] for k in self.data.immediate_tags],
        }
        say.log(
            f"setup done in {result.setup_seconds:.1f} s; the data calls for "
            f"{self.data.expected_scheduled:,} digests"
            + ("" if self.args.plan_only else f" and {self.data.expected_immediate:,} alerts")
        )

    def start_workers(self) -> None:
        if self.sink is not None:
            self.rss.watch(self.sink.pid, "smtp-sink")
        if self.args.plan_only:
            return
        self.workers = start_workers(
            self.args.workers,
            self.args.concurrency,
            self.env,
            self.run_dir,
            self.args.worker_loglevel,
        )
        for n, w in enumerate(self.workers, 1):
            self.rss.watch(w.proc.pid, f"worker {n}")
        wait_ready(self.workers)
        self.rss.sample(discover=True)
        say.log(f"{len(self.workers)} worker(s) ready")

    def timed(self) -> None:
        """`digests run` and the immediate post, to the last planned message accepted."""
        from newsletter.db import session_scope
        from newsletter.posts import add_post

        args, result, sink = self.args, self.result, self.sink
        with session_scope() as session:  # a warm connection for the post below
            session.connection()
        base = sink.messages if sink else 0
        read_before = sink.bytes_read() if sink else 0
        instant = dt.datetime.now(dt.UTC)
        say.log(f"[bold]start[/]: digests run --now {instant.isoformat()}")
        start = time.monotonic()
        command = Command.spawn(
            [*newsletter_command(), "digests", "run", "--now", instant.isoformat()],
            self.env,
            self.run_dir / "digests-run.out",
            self.run_dir / "digests-run.err",
        )
        self.rss.watch(command.proc.pid, "digests run")
        self.command = command
        post_id = None
        if not args.plan_only:
            with session_scope() as session:
                post = add_post(session, post_input(0, self.data.immediate_tags, breaking=True))
                post_id = post.id
        self.follow(command, start, base, post_id)
        if command.ended is not None:
            result.command_seconds = command.ended - start
            result.command_status = command.status
            self.rss.record(command.proc.pid, command.max_rss_kb)
        err = (self.run_dir / "digests-run.err").read_text(errors="replace").splitlines()
        if err:
            say.log(f"digests run wrote {len(err):,} line(s) to stderr; the last ones:")
            say.out("\n".join(err[-10:]), highlight=False)
        if command.status:
            result.problems.append(f"digests run exited with {command.status}")
        if sink is not None:
            first = sink.reached_at(base + 1)
            result.first_accepted = None if first is None else first - start
            if result.planned_deliveries:
                last = sink.reached_at(base + result.planned_deliveries)
                result.last_accepted = None if last is None else last - start
            # A second copy would arrive after the last planned one: let the queue drain.
            if not wait_broker_idle(self.client):
                result.problems.append("the broker never went idle")
            result.accepted = sink.messages - base
            if result.accepted:
                result.wire_bytes = (sink.bytes_read() - read_before) / result.accepted

    def follow(self, command: Command, start: float, base: int, post_id: int | None) -> None:
        """Wait for `digests run` to end and, when sending, for the planned messages to be
        accepted; report progress every few seconds."""
        args, result, sink = self.args, self.result, self.sink
        seen, last_progress, last_report = base, start, start
        with psycopg.connect(self.dsn, autocommit=True) as probe:
            while True:
                now = time.monotonic()
                if command.done.is_set() and result.command_seconds is None:
                    assert command.ended is not None
                    result.command_seconds = command.ended - start
                    say.log(f"digests run exited ({command.status}) after {now - start:.1f} s")
                    if command.status or sink is None:
                        return
                if post_id is not None and result.immediate_planned is None:
                    row = probe.execute(
                        "SELECT planned_at IS NOT NULL FROM posts WHERE id = %s", (post_id,)
                    ).fetchone()
                    if row and row[0]:
                        result.immediate_planned = now - start
                        say.log(f"immediate post planned after {now - start:.1f} s")
                if (
                    result.planned_deliveries is None
                    and command.done.is_set()
                    and (post_id is None or result.immediate_planned is not None)
                ):
                    row = probe.execute(
                        "SELECT count(*) FROM deliveries WHERE status = ANY(%s)", (list(SENDABLE),)
                    ).fetchone()
                    result.planned_deliveries = int(row[0]) if row else 0
                    say.log(f"{result.planned_deliveries:,} deliveries planned to send")
                accepted = sink.messages if sink else base
                if accepted != seen or not command.done.is_set():
                    seen, last_progress = accepted, now
                if (
                    result.planned_deliveries is not None
                    and accepted - base >= result.planned_deliveries
                ):
                    return
                if now - last_progress > args.timeout:
                    result.problems.append(f"no progress for {args.timeout:.0f} s")
                    return
                if now - last_report >= 5:
                    last_report = now
                    row = probe.execute("SELECT max(id) FROM deliveries").fetchone()
                    rows = row[0] if row and row[0] else 0
                    say.log(
                        f"  {now - start:6.1f} s: ledger at delivery {rows:,}"
                        + (f", {accepted - base:,} accepted" if sink else "")
                    )
                time.sleep(0.05)

    def stop_workers(self) -> None:
        self.rss.sample(discover=True)
        for w in self.workers:
            w.stop()
        self.rss.stop()
        self.result.peak_rss = self.rss.rows()

    def compare_with_source(self) -> None:
        result = self.result
        if self.postfix is None or self.sink is None or not result.accepted:
            return
        say.log("smtp-source: same message size, same number of connections")
        overhead = measure_source_overhead(self.postfix, self.sink)
        payload = max(round((result.wire_bytes or 0) - overhead), 100)
        result.source = run_source(
            self.postfix,
            self.sink,
            messages=result.accepted,
            connections=result.connections,
            payload=payload,
        )

    def check(self) -> None:
        result = self.result
        ledger = result.ledger = read_ledger(self.dsn)
        if result.planned_deliveries is None:
            result.planned_deliveries = ledger.sendable
        sent = ledger.statuses.get("sent", 0)
        result.checks = {
            "`digests run` exited cleanly": result.command_status == 0,
            "planned deliveries = what the data calls for": (
                result.planned_deliveries == result.expected_deliveries
            ),
            "renders (digests rows) = distinct digests the data calls for": (
                ledger.digests == result.expected_digests
            ),
            "no reader promised the same post twice": None
            if ledger.twice is None
            else ledger.twice == 0,
        }
        if not self.args.plan_only:
            tracebacks = 0
            for w in self.workers:
                log = w.log.read_text(errors="replace")
                tracebacks += log.count("Traceback")
                errors = [line for line in log.splitlines() if "ERROR/" in line]
                if errors:  # the first one says most
                    result.problems.append(f"{w.log.name}: {errors[0][:300]}")
            result.checks |= {
                "every planned delivery sent": sent == result.planned_deliveries,
                "smtp-sink got one message per delivery sent": result.accepted == sent,
                "no traceback in the worker logs": tracebacks == 0,
            }

    def close(self) -> None:
        if self.command is not None and not self.command.done.is_set():
            self.command.proc.terminate()
            self.command.done.wait(10)
        for w in self.workers:
            w.stop()
        if self.sink is not None:
            self.sink.stop()
        self.client.flushdb()
        self.client.close()
        if not self.args.keep:
            from newsletter import db

            db.dispose_engines()
            drop_database(self.admin_dsn, str(self.url.database))

    def run(self) -> Result:
        try:
            self.configure()
            self.setup()
            self.start_workers()
            writes_before = table_writes(self.dsn)
            self.rss.start()
            self.timed()
            self.stop_workers()
            time.sleep(1.0)  # closed backends flush their statistics
            self.result.writes = writes_between(writes_before, table_writes(self.dsn))
            self.check()
            self.compare_with_source()
        finally:
            self.close()
        return self.result


def stop_on_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--readers", type=int, default=100_000)
    parser.add_argument("--posts", type=int, default=5, help="posts of the day")
    parser.add_argument("--workers", type=int, default=2, help="celery worker processes")
    parser.add_argument("--concurrency", type=int, default=1, help="prefork children per worker")
    parser.add_argument(
        "--connections",
        type=int,
        help="smtp-source sessions (default: workers x concurrency x NEWSLETTER_SMTP_CONNECTIONS)",
    )
    parser.add_argument(
        "--database-url",
        default="postgresql+psycopg://postgres@127.0.0.1/bench_send",
        help="dropped and created again at the start",
    )
    parser.add_argument(
        "--broker-url", default="redis://127.0.0.1:6379/7", help="flushed at start and end"
    )
    parser.add_argument("--port", type=int, help="smtp-sink's port (default: a free one)")
    parser.add_argument("--plan-only", action="store_true", help="plan; no workers, no sending")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--seed", type=int, default=1, help="for the generated data")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds without progress before giving up"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra setting for the workers and `digests run` (repeatable)",
    )
    parser.add_argument("--dkim", choices=["rsa", "ed25519"], help="sign with a fresh key")
    parser.add_argument("--worker-loglevel", default="WARNING")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    if min(args.readers, args.posts, args.workers, args.concurrency) < 1:
        raise SystemExit("--readers, --posts, --workers and --concurrency must be at least 1")
    signal.signal(signal.SIGTERM, stop_on_signal)  # clean up as on Ctrl-C
    try:
        result = Bench(args).run()
    except PostfixError as exc:
        raise SystemExit(str(exc)) from None
    except KeyboardInterrupt:
        raise SystemExit("interrupted; workers stopped, database dropped unless --keep") from None
    show(result)
    if args.json:
        args.json.write_text(result.as_json())
    failed = [name for name, ok in result.checks.items() if ok is False] + result.problems
    if failed:
        raise SystemExit("failed: " + "; ".join(failed))


# --- the report ---------------------------------------------------------------------


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f} s"


def show(result: Result) -> None:
    info = Table(title="bench/send.py", show_header=False)
    for key, value in result.machine.items():
        info.add_row(key, value)
    info.add_row("run logs", result.run_dir)
    console.print(info)

    data, cad = result.data, Counter(result.data.get("cadences", {}))
    setup = Table(title="data (setup not timed)", show_header=False)
    setup.add_row(
        "readers",
        f"{result.readers:,}: {cad['daily']:,} daily, {cad['weekly']:,} weekly, "
        f"{cad['immediate']:,} immediate",
    )
    setup.add_row("tag follows", f"{data.get('follows', 0):,} over {len(TAG_NAMES)} tags")
    zones = Counter(data.get("zones", {}))
    setup.add_row("time zones", ", ".join(f"{z} {n:,}" for z, n in zones.most_common()))
    for n, tags in enumerate(data.get("post_tags", []), 1):
        setup.add_row(f"post {n} tags", ", ".join(tags))
    if result.mode == "send":
        setup.add_row("immediate post tags", ", ".join(data.get("immediate_post_tags", [])))
    setup.add_row("setup time", seconds(result.setup_seconds))
    console.print(setup)

    ledger = result.ledger
    table = Table(title=f"{result.mode}: {result.readers:,} readers", show_header=False)
    planned = "-" if result.planned_deliveries is None else f"{result.planned_deliveries:,}"
    table.add_row(
        "deliveries planned (ledger)", f"{planned} (data: {result.expected_deliveries:,})"
    )
    if ledger is not None:
        table.add_row(
            "renders (digests rows)", f"{ledger.digests:,} (data: {result.expected_digests:,})"
        )
    table.add_row("[bold]planning: `digests run` start to exit", seconds(result.command_seconds))
    if result.command_seconds:
        due = cad["daily"] + cad["weekly"]
        table.add_row("  due readers per second", f"{due / result.command_seconds:,.0f}")
    if ledger is not None and ledger.created_span:
        table.add_row("  ledger rows created, first to last", seconds(ledger.created_span))
    if result.mode == "send":
        table.add_row("immediate post planned after", seconds(result.immediate_planned))
        table.add_row("first message accepted after", seconds(result.first_accepted))
        table.add_row("[bold]last message accepted after", seconds(result.last_accepted))
        if ledger is not None and ledger.sent_span:
            table.add_row("  digests sent, first to last (sent_at)", seconds(ledger.sent_span))
        table.add_row("messages accepted by smtp-sink", f"{result.accepted:,}")
        rate = result.rate
        table.add_row("[bold]msg/s, start to last accepted", f"{rate:,.0f}" if rate else "-")
        if result.wire_bytes:
            table.add_row("average message on the wire", f"{result.wire_bytes / 1024:,.1f} KB")
        table.add_row("SMTP connections", str(result.connections))
        source = result.source
        if source is not None:
            table.add_row(
                "smtp-source, same size and connections",
                f"{source.rate:,.0f} msg/s ({source.messages:,} x "
                f"{source.wire_bytes / 1024:,.1f} KB in {source.seconds:.2f} s)",
            )
            if rate:
                table.add_row("[bold]ours / smtp-source", f"{rate / source.rate:.2f}")
    console.print(table)

    if ledger is not None:
        statuses = Table("delivery status", "rows", title="ledger")
        for status, count in sorted(ledger.statuses.items()):
            statuses.add_row(status, f"{count:,}")
        console.print(statuses)

    writes = Table("table", "inserted", "updated", title="rows written during the run")
    for name, (inserted, updated) in result.writes.items():
        writes.add_row(name, f"{inserted:,}", f"{updated:,}")
    console.print(writes)

    memory = Table("process", "pid", "peak RSS", title="peak RSS (VmHWM)")
    for label, pid, size in result.peak_rss:
        memory.add_row(label, str(pid), f"{size:,.0f} MB")
    console.print(memory)

    checks = Table("check", "", title="checks")
    for name, ok in result.checks.items():
        checks.add_row(name, "[yellow]n/a" if ok is None else "[green]ok" if ok else "[red]FAILED")
    for problem in result.problems:
        checks.add_row(problem, "[red]FAILED")
    console.print(checks)


if __name__ == "__main__":
    main()
