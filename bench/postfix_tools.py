"""Postfix's smtp-sink and smtp-source for benchmarks, without installing the mail service.

Both come from Debian's postfix package: `apt-get download postfix` into a cache
folder, unpacked there with `dpkg -x`, run with LD_LIBRARY_PATH pointing at the
package's private libraries. smtp-sink accepts mail as fast as the wire allows and
throws it away, so it measures the sender, not the server; smtp-source is the
reference sender at the same message size and number of connections.

smtp-sink's `-c` writes "sess=N quit=N mesg=N\\r" to stdout after every message it
accepts (flushed each time); a reader thread timestamps each count as it arrives,
which gives the instant any given message was accepted. The bytes the sink read
(/proc/PID/io rchar) divided by the messages gives their average size on the wire,
SMTP commands included.
"""

from __future__ import annotations

import bisect
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_MESSAGES = re.compile(rb"mesg=(\d+)")
CACHE = Path(__file__).resolve().parent / ".cache" / "postfix"
# Fixed envelope for smtp-source; the sink accepts any address.
SOURCE_FROM = "bench@news.example.org"
SOURCE_TO = "reader@example.org"


class PostfixError(RuntimeError):
    """The Postfix tools could not be fetched or started; the message says why."""


@dataclass(frozen=True)
class Postfix:
    """An unpacked postfix package: where its binaries and libraries are."""

    root: Path

    @property
    def sink(self) -> Path:
        return self.root / "usr" / "sbin" / "smtp-sink"

    @property
    def source(self) -> Path:
        return self.root / "usr" / "sbin" / "smtp-source"

    def env(self) -> dict[str, str]:
        return {**os.environ, "LD_LIBRARY_PATH": str(self.root / "usr" / "lib" / "postfix")}

    def version(self) -> str:
        """The package version, from the .deb's file name."""
        debs = sorted(self.root.parent.glob("postfix_*.deb"))
        return debs[-1].name.split("_")[1] if debs else "unknown"


def fetch(cache: Path = CACHE) -> Postfix:
    """The unpacked package in `cache`, downloading and unpacking it on first use."""
    root = cache / "root"
    postfix = Postfix(root)
    if postfix.sink.exists() and postfix.source.exists():
        return postfix
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise PostfixError(f"{tool} not found: smtp-sink comes from Debian's postfix package")
    cache.mkdir(parents=True, exist_ok=True)
    if not list(cache.glob("postfix_*.deb")):
        done = subprocess.run(
            ["apt-get", "download", "postfix"], cwd=cache, capture_output=True, text=True
        )
        if done.returncode != 0 or not list(cache.glob("postfix_*.deb")):
            raise PostfixError(
                "apt-get download postfix failed (run apt-get update first?):\n"
                + done.stderr.strip()
            )
    deb = sorted(cache.glob("postfix_*.deb"))[-1]
    partial = cache / "root.partial"
    shutil.rmtree(partial, ignore_errors=True)
    unpacked = subprocess.run(
        ["dpkg", "-x", str(deb), str(partial)], capture_output=True, text=True
    )
    if unpacked.returncode != 0:
        raise PostfixError(f"dpkg -x {deb.name} failed:\n{unpacked.stderr.strip()}")
    shutil.rmtree(root, ignore_errors=True)
    partial.rename(root)
    if not (postfix.sink.exists() and postfix.source.exists()):
        raise PostfixError(f"{deb.name} holds no smtp-sink/smtp-source")
    return postfix


def free_port() -> int:
    """A TCP port nobody listens on right now (the sink binds it a moment later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def bytes_read(pid: int) -> int:
    """Bytes a process has read through read(2) so far (/proc/PID/io rchar)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise PostfixError(f"no rchar in /proc/{pid}/io")


class Sink:
    """smtp-sink on 127.0.0.1:port, with the instant each message count was reached."""

    def __init__(self, postfix: Postfix, port: int, log_path: Path) -> None:
        self.postfix = postfix
        self.port = port
        self.log_path = log_path
        self._counts: list[int] = []
        self._times: list[float] = []
        self._changed = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._proc is not None, "sink not started"
        return self._proc.pid

    def start(self, timeout: float = 10.0) -> Sink:
        user = ["-u", "root"] if os.geteuid() == 0 else []
        command = [str(self.postfix.sink), "-c", *user, f"127.0.0.1:{self.port}", "1000"]
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=log, env=self.postfix.env()
            )
        self._reader = threading.Thread(target=self._read, name="smtp-sink counter", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise PostfixError(f"smtp-sink exited at start: {self.log_path.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise PostfixError(f"smtp-sink not listening on {self.port}") from None
                time.sleep(0.05)

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        tail = b""
        while chunk := os.read(fd, 65536):
            at = time.monotonic()
            *records, tail = (tail + chunk).split(b"\r")
            counts = _MESSAGES.findall(b"\r".join(records))
            if not counts:
                continue
            count = int(counts[-1])
            with self._changed:
                self._counts.append(count)
                self._times.append(at)
                self._changed.notify_all()

    @property
    def messages(self) -> int:
        """Messages accepted since the sink started."""
        with self._changed:
            return self._counts[-1] if self._counts else 0

    def reached_at(self, count: int) -> float | None:
        """time.monotonic() when the sink had accepted `count` messages; None if not yet."""
        with self._changed:
            index = bisect.bisect_left(self._counts, count)
            return self._times[index] if index < len(self._counts) else None

    def last_change(self) -> float | None:
        with self._changed:
            return self._times[-1] if self._times else None

    def wait_for(self, count: int, timeout: float) -> bool:
        """Wait until `count` messages were accepted; False after `timeout` seconds."""
        with self._changed:
            return self._changed.wait_for(
                lambda: bool(self._counts) and self._counts[-1] >= count, timeout
            )

    def bytes_read(self) -> int:
        return bytes_read(self.pid)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


@dataclass(frozen=True)
class SourceRun:
    messages: int
    connections: int
    payload: int
    seconds: float
    wire_bytes: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


def run_source(
    postfix: Postfix,
    sink: Sink,
    *,
    messages: int,
    connections: int,
    payload: int,
    timeout: float = 600.0,
) -> SourceRun:
    """smtp-source into `sink`: `messages` messages of `payload` body bytes over
    `connections` sessions kept open (-d), timed from its start to the sink's
    acceptance of the last one."""
    command = [
        str(postfix.source),
        "-d",
        "-s",
        str(connections),
        "-m",
        str(messages),
        "-l",
        str(payload),
        "-f",
        SOURCE_FROM,
        "-t",
        SOURCE_TO,
        f"127.0.0.1:{sink.port}",
    ]
    base, read_before = sink.messages, sink.bytes_read()
    start = time.monotonic()
    done = subprocess.run(command, env=postfix.env(), capture_output=True, timeout=timeout)
    if done.returncode != 0:
        raise PostfixError(f"smtp-source failed: {done.stderr.decode(errors='replace')}")
    if not sink.wait_for(base + messages, timeout=10):
        raise PostfixError(f"the sink counted {sink.messages - base} of {messages} messages")
    end = sink.reached_at(base + messages)
    assert end is not None
    wire = (sink.bytes_read() - read_before) / messages
    return SourceRun(messages, connections, payload, end - start, wire)


def source_overhead(postfix: Postfix, sink: Sink, samples: int = 50) -> float:
    """Bytes on the wire per smtp-source message beyond its -l payload (its headers and
    the SMTP commands), so a run can match another sender's measured message size."""
    payload = 1000
    run = run_source(postfix, sink, messages=samples, connections=1, payload=payload)
    return run.wire_bytes - payload
