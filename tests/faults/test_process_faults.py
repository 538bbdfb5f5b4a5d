"""Workers die and planners race: a killed worker, two `digests run`, beat started twice."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import psycopg
import pytest

from tests.faults.conftest import READERS, REPO_ROOT, Rig

pytestmark = pytest.mark.faults


@pytest.mark.parametrize(
    ("connections", "unrecorded"),
    [(1, 1), (4, 8)],
    ids=["one-connection-each-outcome-committed", "four-connections-grouped-outcomes"],
)
def test_worker_killed_mid_batch_then_a_new_one(
    rig: Rig, connections: int, unrecorded: int
) -> None:
    """SIGKILL while a batch is half sent: a new worker takes the batch over once the
    lease lapses. At most NEWSLETTER_UNRECORDED_LIMIT messages go twice (sent, their
    outcome not yet committed): with a limit of 1, only the message in flight."""
    rig.setenv(
        NEWSLETTER_SMTP_CONNECTIONS=str(connections),
        NEWSLETTER_UNRECORDED_LIMIT=str(unrecorded),
    )
    rig.add_readers()
    rig.smtp.script.pace = 0.01
    with rig.ticker():
        with rig.worker() as doomed:
            rig.publish()
            rig.wait_accepted(READERS // 3)
            doomed.proc.kill()
            doomed.proc.wait(timeout=10)
        killed_at = len(rig.smtp.messages)
        with rig.worker():
            fault_end = time.monotonic()
            recovery = rig.recover(fault_end)
            rig.quiesce()
    assert killed_at < READERS, "the kill came after the send had finished"
    rig.verdict(
        recovery,
        faults=1,
        extra_allowed=unrecorded,
        note=f"killed after {killed_at} messages accepted, {connections} connection(s), "
        f"unrecorded limit {unrecorded}",
    )


def digests_run() -> subprocess.Popen[bytes]:
    """`newsletter digests run` as a user would start it, with this process's settings."""
    return subprocess.Popen(
        [sys.executable, "-m", "newsletter.cli", "digests", "run"],
        cwd=REPO_ROOT,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def waiting_for_locks(conn: psycopg.Connection[tuple[int]]) -> int:
    row = conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()
    assert row is not None
    return row[0]


def test_two_planners_racing_plan_each_reader_once(rig: Rig) -> None:
    """Two `digests run` over the same due daily readers, held at the ledger's door
    until both have worked out the same plan, then let go at the same instant."""
    rig.add_readers(cadence="daily")
    with rig.worker(), psycopg.connect(rig.database_url, autocommit=True) as gate:
        post_id = rig.publish()
        rig.wait_for(lambda: rig.post_planned(post_id), "the post to be handled")
        rig.make_due()
        start = time.monotonic()
        gate.execute("BEGIN")
        gate.execute("LOCK TABLE deliveries IN SHARE ROW EXCLUSIVE MODE")
        runs = [digests_run(), digests_run()]
        rig.wait_for(lambda: waiting_for_locks(gate) == 2, "both planners to wait")
        gate.execute("COMMIT")
        outputs = [run.communicate(timeout=120)[0].decode() for run in runs]
        for run, output in zip(runs, outputs, strict=True):
            assert run.returncode == 0, output
        recovery = rig.recover(start)
        rig.quiesce()
    planned = [rig.planned_in(output) for output in outputs]
    assert sum(planned) == READERS, outputs
    rig.verdict(recovery, faults=1, note=f"deliveries planned by each: {planned}")


def test_beat_started_twice(rig: Rig) -> None:
    """Two beat processes fire every schedule entry twice, onto two workers at once."""
    rig.add_readers(cadence="daily")
    with rig.worker(), rig.worker():
        post_id = rig.publish()
        rig.wait_for(lambda: rig.post_planned(post_id), "the post to be handled")
        rig.make_due()
        with rig.beat(), rig.beat():
            start = time.monotonic()
            recovery = rig.recover(start)
            rig.wait_for(
                lambda: all("plan-due-digests" in rig.beat_log(n) for n in (1, 2)),
                "both beats to send the planning task",
            )
        rig.quiesce()
    runs = re.findall(r"'deliveries planned': (\d+)", rig.worker_logs())
    assert len(runs) >= 2, "each beat's planning task ran"
    planned = [int(n) for n in runs if n != "0"]
    rig.verdict(recovery, faults=1, note=f"planning runs: {len(runs)}, planned: {planned}")
