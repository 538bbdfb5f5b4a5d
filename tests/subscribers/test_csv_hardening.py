"""CSV lists against hostile cells: formulas, huge cells, line breaks and NUL in names."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from newsletter.apitokens import create_token
from newsletter.cli import app
from newsletter.db import session_scope
from newsletter.tags import get_or_create_tags, parse_tag_names
from newsletter.web.app import create_app
from subscribers.lists import escape_cell, import_csv, unescape_cell
from subscribers.models import Subscriber
from tests.cli_runner import count
from tests.subscribers.test_lists import export

runner = CliRunner()
HEADER = "email,name,tags,cadence,timezone\n"
FORMULAS = ["=1+1", "+1", "-2", "@SUM(A1)", "\tx", "\rx", "'=quoted", "''=twice"]


@pytest.mark.parametrize("value", [*FORMULAS, "plain", "'plain", "", "'", "a=b"])
def test_escape_round_trips_every_value(value: str) -> None:
    escaped = escape_cell(value)
    assert unescape_cell(escaped) == value
    assert not escaped.startswith(("=", "+", "-", "@", "\t", "\r"))


def test_plain_values_are_not_escaped() -> None:
    assert escape_cell("Ana") == "Ana" and escape_cell("a=b") == "a=b"
    assert escape_cell("=1+1") == "'=1+1"


@pytest.mark.usefixtures("app_env")
def test_formula_names_and_tags_are_exported_escaped_and_read_back() -> None:
    with session_scope() as session:
        get_or_create_tags(session, parse_tag_names("=cmd, politics"))
    rows = [
        ["ana@example.org", '=HYPERLINK("http://evil")', "=cmd", "daily", "UTC"],
        ["bob@example.org", "+44 Bob", "politics", "daily", "UTC"],
        ["cat@example.org", "-Cat", "politics", "daily", "UTC"],
        ["dan@example.org", "@Dan", "politics", "daily", "UTC"],
        # Read as an escaped cell: stored as "'=Eve", exported escaped again.
        ["eve@example.org", "''=Eve", "politics", "daily", "UTC"],
    ]
    data = io.StringIO()
    csv.writer(data, lineterminator="\n").writerows([HEADER.strip().split(","), *rows])
    with session_scope() as session:
        report = import_csv(session, data.getvalue())
    assert report.rejected == [] and report.created == 5

    text = export()
    exported = {r[0]: r for r in csv.reader(io.StringIO(text))}
    for cells in exported.values():
        assert not any(c.startswith(("=", "+", "-", "@", "\t", "\r")) for c in cells)
    assert exported["ana@example.org"][1] == '\'=HYPERLINK("http://evil")'
    assert exported["ana@example.org"][2] == "'=cmd"
    assert exported["eve@example.org"][1] == "''=Eve"

    with session_scope() as session:
        names = dict(session.execute(select(Subscriber.email, Subscriber.name)).all())
    assert names["ana@example.org"] == '=HYPERLINK("http://evil")'
    assert names["eve@example.org"] == "'=Eve"
    # Re-importing the export changes nothing: the escape is read back.
    with session_scope() as session:
        again = import_csv(session, text)
    assert again.rejected == [] and again.unchanged == 5 and again.updated == 0


@pytest.mark.usefixtures("app_env")
def test_line_breaks_and_nul_in_names_are_cleaned_at_import() -> None:
    with session_scope() as session:
        get_or_create_tags(session, parse_tag_names("politics"))
    data = HEADER + 'ana@example.org,"Ana\r\nBcc: x@evil.example\x00",politics,daily,UTC\n'
    with session_scope() as session:
        report = import_csv(session, data)
    assert report.rejected == []
    with session_scope() as session:
        name = session.scalar(select(Subscriber.name))
    assert name == "Ana Bcc: x@evil.example"


@pytest.mark.usefixtures("app_env")
def test_a_one_mebibyte_cell_is_refused_by_the_api_and_the_cli(tmp_path: Path) -> None:
    with session_scope() as session:
        get_or_create_tags(session, parse_tag_names("politics"))
        token, _ = create_token(session, "admin ui")
    data = (
        HEADER
        + "ana@example.org,Ana,politics,daily,UTC\n"
        + "bob@example.org,"
        + "x" * (1 << 20)
        + ",politics,daily,UTC\n"
    )
    client = TestClient(create_app())
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "text/csv"}
    response = client.post("/api/subscribers/import", content=data, headers=auth)
    assert response.status_code == 400
    assert "line 3" in response.json()["detail"] and "KiB" in response.json()["detail"]
    assert count(Subscriber) == 0

    path = tmp_path / "big.csv"
    path.write_text(data, encoding="utf-8")
    result = runner.invoke(app, ["subscribers", "import", str(path)])
    assert result.exit_code == 2
    assert "longer than" in result.stderr
    assert count(Subscriber) == 0
