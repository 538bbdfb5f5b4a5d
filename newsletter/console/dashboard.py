"""The console's first page: readers, sends and failures at a glance.

The figures come from `newsletter.stats`. Charts are drawn here, server-side, as
inline SVG: no script and no library. Each bar is a rectangle in a 300 x 100 box
the page stretches to its width; the SVG has a title and a description for screen
readers, every bar a tooltip, and the same figures follow as a table.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from newsletter import stats
from newsletter.console.security import ConsoleRoute, EditorDep
from newsletter.console.views import page
from newsletter.db import session_scope
from subscribers.models import SubscriberStatus

router = APIRouter(prefix="/admin", include_in_schema=False, route_class=ConsoleRoute)

WIDTH = 300.0
HEIGHT = 100.0
# A bar that is not zero is drawn at least this high, so one failure among 60,000
# messages still shows.
MIN_HEIGHT = 1.0
TAGS_SHOWN = 15


@dataclass(frozen=True)
class Segment:
    kind: str  # the CSS class that colours it
    y: float
    height: float


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    label: str
    segments: list[Segment]


@dataclass(frozen=True)
class Series:
    kind: str
    label: str
    value: Callable[[stats.Day], int]


@dataclass(frozen=True)
class Chart:
    id: str
    title: str
    description: str
    top: int  # the value at the top of the box
    series: list[Series]
    bars: list[Bar]
    first: str
    last: str

    @property
    def middle(self) -> str:
        """The value at half height, as the axis shows it ("" when the top is 1)."""
        if self.top <= 1:
            return ""
        return f"{self.top // 2:,}" if self.top % 2 == 0 else f"{self.top / 2:,.1f}"


def nice_top(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten that is at least `value` (and 1)."""
    if value <= 1:
        return 1
    power = int(10 ** math.floor(math.log10(value)))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= value)


def day_label(day: stats.Day) -> str:
    return f"{day.day.day} {day.day:%b}"


def bar_chart(id: str, title: str, days: list[stats.Day], series: list[Series]) -> Chart:
    """Stacked bars, one per day, with the series' values from the bottom up."""
    totals = [sum(s.value(d) for s in series) for d in days]
    top = nice_top(max(totals, default=0))
    slot = WIDTH / max(len(days), 1)
    bars: list[Bar] = []
    for i, day in enumerate(days):
        y = HEIGHT
        segments: list[Segment] = []
        for s in series:
            value = s.value(day)
            if value <= 0:
                continue
            height = max(HEIGHT * value / top, MIN_HEIGHT)
            y = max(y - height, 0.0)
            segments.append(Segment(s.kind, round(y, 2), round(height, 2)))
        parts = ", ".join(f"{s.value(day):,} {s.label}" for s in series)
        label = f"{day_label(day)}: {parts}"
        bars.append(Bar(round(i * slot + 1, 2), round(slot - 2, 2), label, segments))
    first, last = day_label(days[0]), day_label(days[-1])
    in_all = ", ".join(f"{sum(s.value(d) for d in days):,} {s.label}" for s in series)
    description = f"{title}, {first} to {last} (UTC days): {in_all}."
    if any(totals):
        busiest = max(range(len(days)), key=totals.__getitem__)
        description += f" The busiest day was {day_label(days[busiest])}, with {totals[busiest]:,}."
    return Chart(id, title, description, top, series, bars, first, last)


def charts(days: list[stats.Day]) -> list[Chart]:
    messages = bar_chart(
        "messages",
        "Messages per day",
        days,
        [Series("sent", "sent", lambda d: d.sent), Series("failed", "failed", lambda d: d.failed)],
    )
    digests = bar_chart(
        "digests", "Digests per day", days, [Series("digests", "digests", lambda d: d.digests)]
    )
    return [messages, digests]


@router.get("/")
def dashboard(staff: EditorDep) -> HTMLResponse:
    with session_scope() as session:
        view = stats.overview(session)
    failures = view.failures
    if not staff.is_admin:
        # Who a message was for is readers' data: admins only.
        failures = [f.without_reader() for f in failures]
    readers = view.readers.value
    most = readers.tags[0].followers if readers.tags else 0
    return page(
        "dashboard.html",
        staff,
        "dashboard",
        readers=readers,
        readers_as_of=view.readers.as_of,
        statuses=list(SubscriberStatus),
        active_by_cadence=readers.by_status[SubscriberStatus.ACTIVE],
        tags=readers.tags[:TAGS_SHOWN],
        more_tags=max(len(readers.tags) - TAGS_SHOWN, 0),
        most_followers=max(most, 1),
        days=view.days.value,
        days_as_of=view.days.as_of,
        charts=charts(view.days.value),
        progress=view.progress,
        failures=failures,
        cache_seconds=stats.CACHE_SECONDS,
    )
