"""The broker and the database go away and come back, before and during a send."""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import READERS, Rig

pytestmark = pytest.mark.faults

# How long each outage lasts.
OUTAGE = 2.0


def test_broker_down_at_publish(rig: Rig) -> None:
    """The post commits while Redis is down: its task is lost, the sweeper plans it."""
    rig.add_readers()
    with rig.worker(), rig.ticker():
        rig.broker.stop()
        post_id = rig.publish()
        assert not rig.post_planned(post_id)
        rig.broker.start()
        fault_end = time.monotonic()
        recovery = rig.recover(fault_end)
        rig.quiesce()
    rig.verdict(recovery, faults=1)


def test_broker_down_mid_send(rig: Rig) -> None:
    """Redis dies (losing every queued send task) while batches are being sent."""
    rig.add_readers()
    rig.smtp.script.pace = 0.01
    with rig.worker(), rig.ticker():
        rig.publish()
        rig.wait_accepted(READERS // 4)
        rig.broker.stop()
        time.sleep(OUTAGE)  # the outage itself
        rig.broker.start()
        fault_end = time.monotonic()
        recovery = rig.recover(fault_end)
        rig.quiesce()
    rig.verdict(recovery, faults=1)


def test_database_restarted_mid_send(rig: Rig) -> None:
    """PostgreSQL stops (every session cut) and starts again while batches are sent:
    outcomes known meanwhile are kept and written once it is back, none sent twice."""
    rig.add_readers()
    rig.smtp.script.pace = 0.01
    with rig.worker(), rig.ticker():
        rig.publish()
        rig.wait_accepted(READERS // 4)
        rig.pg.stop("fast")
        time.sleep(OUTAGE)  # the outage itself
        rig.pg.start()
        fault_end = time.monotonic()
        recovery = rig.recover(fault_end)
        rig.quiesce()
    rig.verdict(recovery, faults=1)
