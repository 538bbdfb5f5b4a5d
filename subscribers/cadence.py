"""When a daily or weekly reader's next digest is due, in their own time zone."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from newsletter.errors import InvalidInput
from newsletter.models import Cadence

WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


def parse_cadence(value: str | Cadence) -> Cadence:
    try:
        return Cadence(str(value).strip().lower())
    except ValueError:
        choices = "|".join(c.value for c in Cadence)
        raise InvalidInput(f"unknown cadence {value!r}: choose one of {choices}") from None


@lru_cache(maxsize=1)
def zone_names() -> frozenset[str]:
    """Every IANA zone this machine knows (from the tzdata package or the system)."""
    return frozenset(available_timezones())


def parse_timezone(name: str) -> str:
    """An IANA zone name such as Europe/Lisbon; offsets and abbreviations are refused."""
    name = name.strip()
    if name not in zone_names() and name != "UTC":
        raise InvalidInput(f"unknown time zone {name!r}: use an IANA name like Europe/Lisbon")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"unknown time zone {name!r}") from None
    return name


def parse_hour(value: int | str) -> int:
    try:
        hour = int(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"send hour must be a whole number 0-23, got {value!r}") from None
    if not 0 <= hour <= 23:
        raise InvalidInput(f"send hour must be 0-23, got {hour}")
    return hour


def parse_weekday(value: int | str) -> int:
    text = str(value).strip().lower()
    if text.isdigit() and 0 <= int(text) <= 6:
        return int(text)
    for index, day in enumerate(WEEKDAYS):
        if len(text) >= 3 and day.startswith(text):
            return index
    raise InvalidInput(f"unknown weekday {value!r}: use monday..sunday or 0-6 (0 = Monday)")


def _local_slot(day: dt.date, hour: int, zone: ZoneInfo) -> dt.datetime:
    # A wall-clock hour skipped by a DST jump maps forward (fold=0 semantics), which
    # is what a reader expects: "8 am" still arrives that morning.
    return dt.datetime.combine(day, dt.time(hour), tzinfo=zone).astimezone(dt.UTC)


def next_slot(
    cadence: Cadence, timezone: str, hour: int, weekday: int, after: dt.datetime
) -> dt.datetime | None:
    """The first send time strictly after `after`, in UTC; None for immediate readers."""
    if cadence is Cadence.IMMEDIATE:
        return None
    zone = ZoneInfo(timezone)
    local_day = after.astimezone(zone).date()
    # Looking a day back covers zones whose local date lags the UTC date.
    for offset in range(-1, 9):
        day = local_day + dt.timedelta(days=offset)
        if cadence is Cadence.WEEKLY and day.weekday() != weekday:
            continue
        slot = _local_slot(day, hour, zone)
        if slot > after:
            return slot
    raise AssertionError("a slot always exists within eight days")
