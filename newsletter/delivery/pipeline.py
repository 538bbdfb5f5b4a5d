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
        """The run in plain words (the CLI's summary, the worker task's result); reasons
        for skipping appear only when they happened."""
        plan, send = self.plan, self.send
        rows = [
            ("subscribers due", plan.subscribers),
            ("posts planned late (missed by an earlier run)", plan.posts_swept),
            ("digests written", plan.digests_rendered),
            ("readers given a digest already written for the same posts", plan.digests_reused),
            ("deliveries planned", plan.planned),
            ("deliveries resumed after an interrupted run", self.stranded),
            ("sent", send.sent),
            ("sent, but the mail server never confirmed it", send.unknown),
            ("deferred (tried again later)", len(send.deferred)),
            ("failed", send.failed),
            ("posts that could not be rendered", len(plan.failed_posts)),
            ("readers whose digest could not be rendered", plan.failed_deliveries),
            ("planning errors", plan.planning_errors),
            ("unconfirmed sign-ups expired", self.expired_signups),
        ]
        rows += [
            (f"readers skipped: {plain_reason(r)}", n) for r, n in sorted(plan.skipped.items())
        ]
        rows += [
            (f"not sent: {plain_reason(r)}", n)
            for r, n in sorted(send.skipped.items())
            if r != "not_claimable"
        ]
        return rows


# Why readers or emails were left out, as an operator would say it.
_REASONS = {
    "suppressed": "their address is suppressed",
    "nothing_new": "nothing new for them",
    "only_failed_posts": "their only new posts could not be rendered",
    "post_missing": "the post was deleted first",
    "subscriber_deleted": "the reader was deleted",
    "subscriber_paused": "the reader paused",
    "subscriber_unsubscribed": "the reader unsubscribed",
    "subscriber_pending": "the reader has not confirmed",
    "taken_over": "another sender took them over",
}


def plain_reason(reason: str) -> str:
    return _REASONS.get(reason, reason.replace("_", " "))


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

    Each chunk's deliveries go out as soon as the chunk is committed, to send tasks
    or (in process) sent right away, so sending starts while planning goes on and no
    list of every delivery is held. `on_total` is told the deliveries known so far
    each time more are planned.
    """
    summary = RunSummary()
    known = 0
    in_process = tasks_run_in_process()
    transport_factory = sending.smtp_transport_factory() if in_process else None

    def hand_on(delivery_ids: list[int]) -> None:
        nonlocal known
        known += len(delivery_ids)
        if on_total and delivery_ids:
            on_total(known)
        if not in_process:
            summary.batches += dispatch(delivery_ids)
            return
        for batch in planning.batches(delivery_ids):
            summary.batches += 1
            summary.send.merge(
                sending.send_batch(
                    batch, now, transport_factory=transport_factory, on_progress=on_progress
                )
            )

    # Lost work is looked for before planning, so none of this run's own deliveries
    # (already with a sender, perhaps) is taken for lost.
    stranded = planning.stranded_deliveries(now)
    summary.plan = planning.plan_due(now, on_chunk=hand_on)
    with session_scope() as session:
        summary.expired_signups = expire_pending(session, now)
    summary.stranded = len(stranded)
    hand_on(stranded)
    return summary
