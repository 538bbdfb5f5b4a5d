"""Next send slots in the reader's own time zone, across date lines and DST."""

from __future__ import annotations

import datetime as dt

import pytest

from newsletter.errors import InvalidInput
from newsletter.models import Cadence
from subscribers.cadence import next_slot, parse_cadence, parse_timezone, parse_weekday

UTC = dt.UTC


def at(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("tz", "after", "expected"),
    [
        ("UTC", at(2026, 3, 2, 7, 59), at(2026, 3, 2, 8)),
        ("UTC", at(2026, 3, 2, 8, 0), at(2026, 3, 3, 8)),
        ("Europe/Lisbon", at(2026, 7, 1, 6), at(2026, 7, 1, 7)),  # WEST, UTC+1
        ("America/New_York", at(2026, 3, 2, 23), at(2026, 3, 3, 13)),
        ("Asia/Tokyo", at(2026, 3, 2, 22), at(2026, 3, 2, 23)),  # local date ahead of UTC
        ("Pacific/Kiritimati", at(2026, 3, 2, 17), at(2026, 3, 2, 18)),  # UTC+14
        ("Pacific/Pago_Pago", at(2026, 3, 2, 18), at(2026, 3, 2, 19)),  # UTC-11
    ],
)
def test_daily_slot(tz: str, after: dt.datetime, expected: dt.datetime) -> None:
    assert next_slot(Cadence.DAILY, tz, 8, 0, after) == expected


def test_daily_slot_across_dst_change() -> None:
    # US clocks spring forward on 8 March 2026: 08:00 moves from 13:00 to 12:00 UTC.
    first = next_slot(Cadence.DAILY, "America/New_York", 8, 0, at(2026, 3, 7, 14))
    second = next_slot(Cadence.DAILY, "America/New_York", 8, 0, first)
    assert (first, second) == (at(2026, 3, 8, 12), at(2026, 3, 9, 12))


def test_hour_skipped_by_dst_still_sends_that_day() -> None:
    slot = next_slot(Cadence.DAILY, "Europe/Lisbon", 1, 0, at(2026, 3, 28, 23))
    assert slot is not None and slot.date() == dt.date(2026, 3, 29)


def test_weekly_slot_on_weekday() -> None:
    # Friday 09:00 in Tokyo is Friday 00:00 UTC.
    slot = next_slot(Cadence.WEEKLY, "Asia/Tokyo", 9, 4, at(2026, 3, 2, 10))
    assert slot == at(2026, 3, 6, 0)
    assert next_slot(Cadence.WEEKLY, "Asia/Tokyo", 9, 4, slot) == at(2026, 3, 13, 0)


def test_immediate_has_no_slot() -> None:
    assert next_slot(Cadence.IMMEDIATE, "UTC", 8, 0, at(2026, 3, 2)) is None


@pytest.mark.parametrize("bad", ["hourly", "", "Daily!"])
def test_unknown_cadence(bad: str) -> None:
    with pytest.raises(InvalidInput, match="cadence"):
        parse_cadence(bad)


@pytest.mark.parametrize("bad", ["Mars/Olympus", "+02:00", "CEST", "europe/lisbon "])
def test_bad_time_zone(bad: str) -> None:
    if bad.strip() == "europe/lisbon":
        with pytest.raises(InvalidInput):
            parse_timezone(bad)
        return
    with pytest.raises(InvalidInput, match="time zone"):
        parse_timezone(bad)


def test_weekday_names() -> None:
    assert parse_weekday("Friday") == 4
    assert parse_weekday("mon") == 0
    assert parse_weekday(6) == 6
    with pytest.raises(InvalidInput):
        parse_weekday("someday")
