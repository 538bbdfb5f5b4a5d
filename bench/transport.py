"""The SMTP transport alone against smtp-source: how fast `smtp.SmtpTransport` puts
prebuilt messages on the wire, with nothing around it (no database, no Celery, no
copy to build), beside smtp-source's rate into the same smtp-sink.

    python bench/transport.py [--messages 75006] [--processes 2] [--threads 4] [--size 24000]

Each process sends over `--threads` connections, one thread each, as a send task
does: every message's envelope goes out with the end of the one before it
(`SmtpTransport.send(message, following)`). The messages are built before the clock
starts. What this gives is the floor of the sending side: the rest of a send's work
per message (the claim, the reader's copy, the outcome) is what `send.py` measures
on top of it. Fetches Postfix's tools like `send.py` (`postfix_tools.py`). Run by
hand; results go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import threading
import time
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from postfix_tools import CACHE, Sink, fetch, free_port, run_source, source_overhead
from rich.console import Console
from rich.table import Table

from newsletter.delivery.mime import OutgoingMessage
from newsletter.delivery.smtp import SmtpConfig, SmtpTransport

SENDER = "digest@news.example.org"
RECIPIENT = "reader@example.org"
# Distinct messages cycled through, so no copy is the same object twice in a row.
KINDS = 64


def message(n: int, size: int) -> OutgoingMessage:
    head = (
        f"From: {SENDER}\r\nTo: {RECIPIENT}\r\nSubject: transport {n}\r\n"
        f"Message-ID: <{n}@news.example.org>\r\nMIME-Version: 1.0\r\n\r\n"
    ).encode()
    line = b"x" * 74 + b"\r\n"
    data = head + line * max(1, (size - len(head)) // len(line))
    # No line starts with a dot: the data is already as DATA carries it.
    return OutgoingMessage(SENDER, RECIPIENT, data, f"<{n}@news.example.org>", wire=data)


def connection(port: int, count: int, messages: list[OutgoingMessage]) -> None:
    with SmtpTransport(SmtpConfig("127.0.0.1", port)) as transport:
        for k in range(count):
            following = messages[(k + 1) % len(messages)] if k + 1 < count else None
            transport.send(messages[k % len(messages)], following)


def shares(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def process(
    port: int, count: int, threads: int, size: int, ready: Event, go: Event, out: Any
) -> None:
    messages = [message(n, size) for n in range(KINDS)]
    ready.set()
    go.wait()
    before = resource.getrusage(resource.RUSAGE_SELF)
    workers = [
        threading.Thread(target=connection, args=(port, share, messages))
        for share in shares(count, threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    after = resource.getrusage(resource.RUSAGE_SELF)
    out.put((after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=75_006)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4, help="connections per process")
    parser.add_argument("--size", type=int, default=24_000, help="bytes per message")
    args = parser.parse_args()
    console = Console()

    postfix = fetch()
    sink = Sink(postfix, free_port(), CACHE.parent / "transport-sink.log").start()
    try:
        context = multiprocessing.get_context("fork")
        go, out = context.Event(), context.Queue()
        readies = [context.Event() for _ in range(args.processes)]
        procs = [
            context.Process(
                target=process,
                args=(sink.port, share, args.threads, args.size, ready, go, out),
            )
            for share, ready in zip(shares(args.messages, args.processes), readies, strict=True)
        ]
        for proc in procs:
            proc.start()
        for ready in readies:
            ready.wait()
        base, read_before = sink.messages, sink.bytes_read()
        start = time.monotonic()
        go.set()
        for proc in procs:
            proc.join()
        if not sink.wait_for(base + args.messages, timeout=60):
            raise SystemExit(f"the sink counted {sink.messages - base} of {args.messages}")
        end = sink.reached_at(base + args.messages)
        assert end is not None
        seconds = end - start
        wire = (sink.bytes_read() - read_before) / args.messages
        used = [out.get() for _ in procs]
        user, system = sum(u for u, _ in used), sum(s for _, s in used)

        connections = args.processes * args.threads
        console.log(f"smtp-source: same message size, {connections} connections")
        payload = max(round(wire - source_overhead(postfix, sink)), 100)
        source = run_source(
            postfix, sink, messages=args.messages, connections=connections, payload=payload
        )
    finally:
        sink.stop()

    rate = args.messages / seconds
    table = Table(title="The SMTP transport alone, prebuilt messages")
    table.add_column("")
    table.add_column("", justify="right")
    table.add_row("messages", f"{args.messages:,}")
    table.add_row("connections", f"{args.processes} processes x {args.threads}")
    table.add_row("on the wire, per message", f"{wire / 1000:.1f} KB")
    table.add_row("transport", f"{rate:,.0f} msg/s ({seconds:.2f} s)")
    table.add_row(
        "transport CPU per message",
        f"{1e6 * (user + system) / args.messages:.0f} us "
        f"(user {1e6 * user / args.messages:.0f}, system {1e6 * system / args.messages:.0f})",
    )
    table.add_row(
        "smtp-source",
        f"{source.rate:,.0f} msg/s ({source.seconds:.2f} s, "
        f"{source.wire_bytes / 1000:.1f} KB each)",
    )
    table.add_row("[bold]transport / smtp-source", f"{rate / source.rate:.2f}")
    console.print(table)


if __name__ == "__main__":
    main()
