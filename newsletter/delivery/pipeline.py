"""One planning-and-sending pass, shared by beat's task, `digests run` and the demo."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from newsletter.db import session_scope
from newsletter.delivery import planning, sending
from newsletter.dispatch import send_task, tasks_run_in_process
from subscribers.signup import expire_pending


@dataclass
class RunSummary:
    plan: planning.PlanReport = field(default_factory=planning.PlanReport)
    send: sending.SendReport = field(default_factory=sending.SendReport)
    stranded: int = 0
    batches: int = 0
    expired_signups: int = 0

    def rows(self) -> list[tuple[str, int]]:
        rows = [
            ("subscribers due", self.plan.subscribers),
            ("posts swept up", self.plan.posts_swept),
            ("digests rendered", self.plan.digests_rendered),
            ("digests reused", self.plan.digests_reused),
            ("deliveries planned", self.plan.planned),
            ("posts that could not be rendered", len(self.plan.failed_posts)),
            ("readers whose digest could not be rendered", self.plan.failed_deliveries),
            ("planning errors", self.plan.planning_errors),
            ("deliveries picked up again", self.stranded),
            ("sent", self.send.sent),
            ("failed", self.send.failed),
            ("sent, but the server's answer never came", self.send.unknown),
            ("deferred for retry", len(self.send.deferred)),
            ("unconfirmed sign-ups expired", self.expired_signups),
        ]
        rows += [(f"skipped: {reason}", n) for reason, n in sorted(self.plan.skipped.items())]
        rows += [
            (f"not sent: {reason}", n)
            for reason, n in sorted(self.send.skipped.items())
            if reason != "not_claimable"
        ]
        return rows


def dispatch(delivery_ids: Sequence[int]) -> int:
    """Hand these deliveries to send tasks, a task per batch; the number of tasks. The
    one way work goes to senders: planning, the sweeper and retries all use it."""
    batches = planning.batches(delivery_ids)
    for batch in batches:
        send_task("send_batch", batch)
    return len(batches)


def run_due(
    now: dt.datetime | None = None,
    on_total: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> RunSummary:
    """Plan what is due at `now`, pick up lost work, and send it (or hand it to workers).

    With workers, each chunk's deliveries go to send tasks as soon as the chunk is
    committed, so sending starts while planning goes on and no list of every delivery
    is held; in process, planning ends before sending starts.
    """
    if not tasks_run_in_process():
        return _hand_to_workers(now, on_total)
    transport_factory = sending.smtp_transport_factory()
    summary = RunSummary(plan=planning.plan_due(now))
    with session_scope() as session:
        summary.expired_signups = expire_pending(session, now)
    stranded = set(planning.stranded_deliveries(now)) - set(summary.plan.deliveries)
    summary.stranded = len(stranded)
    batches = planning.batches(sorted(set(summary.plan.deliveries) | stranded))
    summary.batches = len(batches)
    if on_total:
        on_total(sum(len(b) for b in batches))
    for batch in batches:
        summary.send.merge(
            sending.send_batch(
                batch, now, transport_factory=transport_factory, on_progress=on_progress
            )
        )
    return summary


def _hand_to_workers(now: dt.datetime | None, on_total: Callable[[int], None] | None) -> RunSummary:
    """Plan, handing each committed chunk's deliveries to send tasks in batches."""
    summary = RunSummary()

    def hand_on(delivery_ids: list[int]) -> None:
        summary.batches += dispatch(delivery_ids)

    # Lost work is looked for before planning, so none of this run's own deliveries
    # (already with a sender, perhaps) is taken for lost.
    stranded = planning.stranded_deliveries(now)
    summary.plan = planning.plan_due(now, on_chunk=hand_on)
    with session_scope() as session:
        summary.expired_signups = expire_pending(session, now)
    summary.stranded = len(stranded)
    hand_on(stranded)
    if on_total:
        on_total(summary.plan.planned + summary.stranded)
    return summary
