"""CSV import and export: every kind of bad row, encodings, dry runs, round trips, the API."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from newsletter.apitokens import create_token
from newsletter.cli import app
from newsletter.db import session_scope
from newsletter.tags import get_or_create_tags, parse_tag_names
from newsletter.web.app import create_app
from subscribers.lists import export_csv, import_csv
from subscribers.models import Subscriber, SubscriberStatus, SuppressionReason
from subscribers.suppression import suppress

pytestmark = pytest.mark.usefixtures("app_env")

runner = CliRunner()
HEADER = "email,name,tags,cadence,timezone\n"


@pytest.fixture(autouse=True)
def tags(app_env: str) -> None:
    with session_scope() as session:
        get_or_create_tags(session, parse_tag_names("Politics, Health, Public Services"))


def count() -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(Subscriber)) or 0)


def export() -> str:
    out = io.StringIO()
    with session_scope() as session:
        export_csv(session, out)
    return out.getvalue()


BAD_FILE = (
    HEADER
    + "ana@example.org,Ana,politics,daily,Europe/Lisbon\n"  # line 2: fine
    + "not-an-address,Bob,politics,daily,UTC\n"  # 3
    + "carl@example.org,Carl,politics,hourly,UTC\n"  # 4
    + "dina@example.org,Dina,politics,daily,Mars/Olympus\n"  # 5
    + "ANA@example.org,Ana again,health,weekly,UTC\n"  # 6: duplicate of 2
    + "eve@example.org,Eve,astrology,daily,UTC\n"  # 7: unknown tag
    + "fay@example.org,Fay,,daily,UTC\n"  # 8: no tags
    + "gus@example.org,Gus,health,daily,UTC\n"  # 9: fine
    + "hal@example.org,Hal,health,daily,UTC,extra\n"  # 10: fine (extra column ignored)
    + "suppressed@example.org,Sue,health,daily,UTC\n"  # 11: suppressed
)


def test_every_kind_of_bad_row_is_reported_with_its_line() -> None:
    with session_scope() as session:
        suppress(session, "suppressed@example.org", SuppressionReason.HARD_BOUNCE)
    with session_scope() as session:
        report = import_csv(session, BAD_FILE)
    reasons = {r.line: r.reason for r in report.rejected}
    assert sorted(reasons) == [3, 4, 5, 6, 7, 8, 11]
    assert "invalid email address" in reasons[3]
    assert "unknown cadence" in reasons[4]
    assert "unknown time zone" in reasons[5]
    assert reasons[6] == "duplicate of line 2"
    assert "unknown tag" in reasons[7] and "astrology" in reasons[7]
    assert "no tags" in reasons[8]
    assert "suppressed (hard_bounce)" in reasons[11]
    assert (report.created, report.rows) == (3, 10)
    assert count() == 3


def test_cli_import_exit_status_and_dry_run(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text(BAD_FILE)
    result = runner.invoke(app, ["subscribers", "import", str(path), "--dry-run"])
    assert result.exit_code == 1
    assert "line" in result.stderr and "duplicate of line 2" in result.stderr
    assert "would be created" in result.stdout
    assert count() == 0
    result = runner.invoke(app, ["subscribers", "import", str(path)])
    assert result.exit_code == 1 and count() == 4
    clean = tmp_path / "clean.csv"
    clean.write_text(HEADER + "ivy@example.org,Ivy,politics,weekly,UTC\n")
    assert runner.invoke(app, ["subscribers", "import", str(clean)]).exit_code == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"mail,name\nx@example.org,X\n", "missing column"),
        (
            "email,name,tags,cadence,timezone\nzoe@example.org,Zo\xeb,politics,daily,UTC\n".encode(
                "latin-1"
            ),
            "not UTF-8",
        ),
    ],
)
def test_unusable_file_exits_2_and_writes_nothing(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    result = runner.invoke(app, ["subscribers", "import", str(path)])
    assert result.exit_code == 2 and message in result.stderr
    assert count() == 0


def test_bom_semicolons_and_unicode() -> None:
    data = "\ufeffemail;name;tags;cadence;timezone\nzoë@exämple.org;Zoë Ångström;Politics, Public Services;weekly;Asia/Tokyo\n"
    with session_scope() as session:
        report = import_csv(session, data.encode("utf-8"))
    assert report.rejected == [] and report.created == 1
    with session_scope() as session:
        zoe = session.scalars(select(Subscriber)).one()
        assert zoe.name == "Zoë Ångström" and zoe.timezone == "Asia/Tokyo"
        assert sorted(t.slug for t in zoe.tags) == ["politics", "public-services"]


def test_create_tags_option() -> None:
    data = HEADER + "eve@example.org,Eve,Astrology,daily,UTC\n"
    with session_scope() as session:
        assert len(import_csv(session, data).rejected) == 1
    with session_scope() as session:
        assert import_csv(session, data, create_tags=True).created == 1


def test_import_never_revives_an_unsubscribed_address() -> None:
    with session_scope() as session:
        import_csv(
            session,
            HEADER.strip() + ",status\nana@example.org,Ana,politics,daily,UTC,unsubscribed\n",
        )
    with session_scope() as session:
        report = import_csv(session, HEADER + "ana@example.org,Ana,politics,daily,UTC\n")
    assert [r.reason for r in report.rejected] == ["address is suppressed (unsubscribed)"]
    with session_scope() as session:
        assert session.scalars(select(Subscriber.status)).one() is SubscriberStatus.UNSUBSCRIBED


def test_round_trip_of_ten_thousand_rows_changes_nothing() -> None:
    rows = [HEADER.strip() + ",status,send_hour,send_weekday"]
    cadences = ["immediate", "daily", "weekly"]
    zones = ["UTC", "Europe/Lisbon", "America/New_York", "Asia/Tokyo"]
    tag_sets = ["Politics", "Health", "Politics, Health", "Public Services, Health"]
    statuses = ["active"] * 8 + ["paused", "unsubscribed"]
    for n in range(10_000):
        rows.append(
            f'reader{n:05d}@example.org,Reader {n},"{tag_sets[n % 4]}",{cadences[n % 3]},'
            f"{zones[n % 4]},{statuses[n % 10]},{n % 24},{n % 7}"
        )
    with session_scope() as session:
        report = import_csv(session, "\n".join(rows) + "\n")
    assert report.rejected == [] and report.created == 10_000
    first = export()
    assert len(first.splitlines()) == 10_001
    with session_scope() as session:
        again = import_csv(session, first)
    assert (again.created, again.updated, again.unchanged, again.rejected) == (0, 0, 10_000, [])
    assert export() == first


def test_rest_api_import_and_export() -> None:
    client = TestClient(create_app())
    data = HEADER + "ana@example.org,Ana,politics,daily,UTC\nbad,Bob,politics,daily,UTC\n"
    assert client.post("/api/subscribers/import", content=data).status_code == 401
    assert (
        client.get("/api/subscribers/export", headers={"Authorization": "Bearer nope"}).status_code
        == 401
    )
    with session_scope() as session:
        token, _ = create_token(session, "admin ui")
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "text/csv"}
    dry = client.post("/api/subscribers/import?dry_run=true", content=data, headers=auth)
    assert dry.status_code == 200 and dry.json()["dry_run"] is True and count() == 0
    response = client.post("/api/subscribers/import", content=data, headers=auth)
    body = response.json()
    assert response.status_code == 200 and body["created"] == 1
    assert body["rejected"] == [
        {"line": 3, "email": "bad", "reason": body["rejected"][0]["reason"]}
    ]
    assert (
        client.post("/api/subscribers/import", content=b"nonsense\n", headers=auth).status_code
        == 400
    )
    exported = client.get("/api/subscribers/export", headers=auth)
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    assert list(csv.reader(io.StringIO(exported.text)))[1][:2] == ["ana@example.org", "Ana"]
    schema = client.get("/openapi.json").json()
    assert (
        "/api/subscribers/import" in schema["paths"]
        and "/api/subscribers/export" in schema["paths"]
    )
