"""When a daily or weekly reader's next digest is due, in their own time zone."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from newsletter.errors import InvalidInput
from newsletter.models import Cadence

WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


def schedule_text(cadence: Cadence | str, hour: int, weekday: int, timezone: str) -> str:
    """When a reader gets mail, as the emails and pages say it: "as soon as they are
    published", "daily at 08:00 (Europe/Lisbon)", "weekly on Mondays at 08:00 (UTC)"."""
    cadence = Cadence(cadence)
    if cadence is Cadence.IMMEDIATE:
        return "as soon as they are published"
    when = f"at {hour:02d}:00 ({timezone})"
    if cadence is Cadence.WEEKLY:
        return f"weekly on {WEEKDAYS[weekday % 7].capitalize()}s {when}"
    return f"daily {when}"


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


# At most this many characters are looked at: a form or API value of thousands of
# digits is refused before int() sees it (int() refuses over 4,300 digits anyway).
_MAX_NUMBER_CHARS = 4


def whole_number(value: int | str) -> int | None:
    """A non-negative whole number written in ASCII digits, or None.

    str.isdigit() and int() accept "²" and other scripts' digits; only 0-9 are meant.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if not text or len(text) > _MAX_NUMBER_CHARS or not (text.isascii() and text.isdigit()):
        return None
    return int(text)


def _shown(value: object) -> str:
    """The refused value for an error message, cut short so a huge one stays readable."""
    text = repr(value)
    return text if len(text) <= 20 else text[:20] + "..."


def parse_hour(value: int | str) -> int:
    hour = whole_number(value)
    if hour is None:
        raise InvalidInput(f"send hour must be a whole number 0-23, got {_shown(value)}")
    if not 0 <= hour <= 23:
        raise InvalidInput(f"send hour must be 0-23, got {_shown(hour)}")
    return hour


def parse_weekday(value: int | str) -> int:
    number = whole_number(value)
    if number is not None and 0 <= number <= 6:
        return number
    text = str(value).strip().lower()
    for index, day in enumerate(WEEKDAYS):
        if len(text) >= 3 and day.startswith(text):
            return index
    raise InvalidInput(f"unknown weekday {_shown(value)}: use monday..sunday or 0-6 (0 = Monday)")


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
