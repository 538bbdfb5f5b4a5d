"""Import progress counts data rows, to the last one, in a dry run too."""

from __future__ import annotations

import pytest

from newsletter.db import session_scope
from newsletter.tags import get_or_create_tags, parse_tag_names
from subscribers import lists
from subscribers.lists import import_csv

pytestmark = pytest.mark.usefixtures("app_env")

# Progress every 3 rows here (every thousand in use), so a small file shows it.
EVERY = 3
ROWS = 2 * EVERY + 2


def _file() -> str:
    lines = ["email,name,tags,cadence,timezone"]
    lines += [f"r{n}@example.org,R,politics,daily,UTC" for n in range(ROWS - 1)]
    lines.append("not-an-address,X,politics,daily,UTC")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("dry_run", [True, False])
def test_progress_reaches_every_data_row(dry_run: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lists, "PROGRESS_EVERY", EVERY)
    with session_scope() as session:
        get_or_create_tags(session, parse_tag_names("politics"))
    calls: list[tuple[str, int, int]] = []
    with session_scope() as session:
        report = import_csv(
            session, _file(), dry_run=dry_run, on_progress=lambda *c: calls.append(c)
        )
    checking = [c for c in calls if c[0] == "checking rows"]
    assert checking[0] == ("checking rows", EVERY, ROWS)
    assert checking[-1] == ("checking rows", ROWS, ROWS) and report.rows == ROWS
    writing = [c for c in calls if c[0] == "writing"]
    if dry_run:
        assert writing == []
    else:
        assert writing[-1] == ("writing", ROWS - 1, ROWS - 1) and report.created == ROWS - 1
