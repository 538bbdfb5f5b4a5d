"""The public archive, on digests sent through the real pipeline: off by default (404),
on it shows listed tags only, their sent digests newest first, an Atom feed that
parses, and each digest's web copy with nothing of any reader in it."""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET

import pytest
from fastapi.testclient import TestClient

from newsletter import archive
from newsletter.web import archive as web_archive
from newsletter.web.app import create_app
from newsletter.web.rendering import FRAME_CSP
from tests.conftest import ScriptedHandler, apply_env
from tests.console.test_archive import Archive, assert_nothing_personal, build_archive

ATOM = "{http://www.w3.org/2005/Atom}"
BASE = "https://news.example.org"


@pytest.fixture
def built(app_env: str, smtp: ScriptedHandler, t0: dt.datetime) -> Archive:
    return build_archive(smtp, t0)


@pytest.fixture
def public(built: Archive, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    apply_env(monkeypatch, NEWSLETTER_PUBLIC_ARCHIVE="true")
    return TestClient(create_app(), base_url=BASE)


def listed_digests(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'<a href="/archive/d/(\d+)">', html)]


def test_off_by_default(built: Archive) -> None:
    c = TestClient(create_app(), base_url=BASE)
    for path in (
        "/archive/",
        "/archive/politics/",
        "/archive/politics/feed.atom",
        f"/archive/d/{built.daily}",
        f"/archive/d/{built.daily}/copy",
    ):
        response = c.get(path)
        assert response.status_code == 404, path
        assert "Budget vote" not in response.text
    # The page a web copy's links open is not part of the archive: it is always there.
    assert c.get("/about/web-copy?link=preferences").status_code == 200


def test_index_lists_listed_tags_with_sent_digests(public: TestClient) -> None:
    page = public.get("/archive/")
    assert page.status_code == 200
    assert 'href="/static/site.css"' in page.text
    tags = re.findall(r'<a href="/archive/([^/]+)/">', page.text)
    assert tags == ["health", "politics"]  # "secret" is unlisted
    assert "Quiet plans" not in page.text
    # The app's policy holds: no inline script or style anywhere on the page.
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "<script>" not in page.text and "style=" not in page.text


def test_tag_page_lists_its_sent_digests_newest_first(public: TestClient, built: Archive) -> None:
    page = public.get("/archive/health/")
    assert page.status_code == 200
    # Never-sent digests are left out: only copies that left count.
    assert listed_digests(page.text) == sorted([built.daily, built.health], reverse=True)
    assert "Clinic hours" in page.text and 'href="/archive/health/feed.atom"' in page.text
    # "Clinic hours" is tagged politics too; "Quiet plans" only with the unlisted tag.
    politics = public.get("/archive/politics/")
    assert listed_digests(politics.text) == sorted([built.daily, built.health], reverse=True)
    assert "Quiet plans" not in politics.text
    assert public.get("/archive/politics").status_code == 200  # redirected to the slash


def test_tag_page_is_keyset_paged(
    public: TestClient, built: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web_archive, "PAGE_SIZE", 1)
    first = public.get("/archive/health/")
    newest, older = sorted([built.daily, built.health], reverse=True)
    assert listed_digests(first.text) == [newest]
    link = re.search(r'href="(/archive/health/\?before=\d+)" rel="next"', first.text)
    assert link and link.group(1) == f"/archive/health/?before={newest}"
    second = public.get(link.group(1))
    assert listed_digests(second.text) == [older] and 'rel="next"' not in second.text
    assert public.get("/archive/health/?before=0").status_code == 422


def test_unlisted_and_unsent_are_not_public(public: TestClient, built: Archive) -> None:
    for path in (
        "/archive/secret/",
        "/archive/secret/feed.atom",
        "/archive/nope/",
        f"/archive/d/{built.secret}",
        f"/archive/d/{built.secret}/copy",
        f"/archive/d/{built.never_sent}",
        "/archive/d/99999",
    ):
        response = public.get(path)
        assert response.status_code == 404, path
        assert "Quiet plans" not in response.text


def test_digest_page_and_copy(public: TestClient, built: Archive) -> None:
    page = public.get(f"/archive/d/{built.daily}")
    assert page.status_code == 200
    assert "Budget vote" in page.text and 'href="/archive/politics/"' in page.text
    assert f'src="/archive/d/{built.daily}/copy"' in page.text and "sandbox=" in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "style=" not in page.text and "<script>" not in page.text
    assert_nothing_personal(page.text, built)

    copy = public.get(f"/archive/d/{built.daily}/copy")
    assert copy.status_code == 200
    assert copy.headers["content-security-policy"] == FRAME_CSP
    assert copy.headers["x-frame-options"] == "SAMEORIGIN"
    assert "Budget vote" in copy.text and "Hello," in copy.text
    assert '<base target="_blank">' in copy.text  # links leave the frame for a tab
    assert_nothing_personal(copy.text, built)
    assert f"{BASE}/about/web-copy?link=unsubscribe" in copy.text


def test_atom_feed(public: TestClient, built: Archive) -> None:
    response = public.get("/archive/health/feed.atom")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/atom+xml")
    feed = ET.fromstring(response.content)
    assert feed.tag == f"{ATOM}feed"
    assert feed.findtext(f"{ATOM}title") == "The Digest: health"
    assert feed.findtext(f"{ATOM}id", "").startswith("tag:news.example.org,")
    self_link = feed.find(f"{ATOM}link[@rel='self']")
    assert self_link is not None and self_link.get("href") == f"{BASE}/archive/health/feed.atom"
    entries = feed.findall(f"{ATOM}entry")
    links = [e.find(f"{ATOM}link[@rel='alternate']") for e in entries]
    assert [link.get("href") for link in links if link is not None] == [
        f"{BASE}/archive/d/{n}" for n in sorted([built.daily, built.health], reverse=True)
    ]
    stamp = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
    assert stamp.match(feed.findtext(f"{ATOM}updated", ""))
    for entry in entries:
        assert stamp.match(entry.findtext(f"{ATOM}updated", ""))
        assert entry.findtext(f"{ATOM}title")
        content = entry.find(f"{ATOM}content")
        assert content is not None and content.get("type") == "html"
        assert "Clinic hours</a>" in (content.text or "")  # HTML, escaped once as XML
    ids = [e.findtext(f"{ATOM}id") for e in entries]
    assert len(set(ids)) == 2
    # Ids stay the same from one fetch to the next.
    again = ET.fromstring(public.get("/archive/health/feed.atom").content)
    assert [e.findtext(f"{ATOM}id") for e in again.findall(f"{ATOM}entry")] == ids
    assert_nothing_personal(response.text, built)


def test_feed_escapes_what_a_title_holds(public: TestClient, built: Archive) -> None:
    from newsletter.db import session_scope
    from newsletter.models import Post

    with session_scope() as session:
        post = session.query(Post).filter(Post.title == "Clinic hours").one()
        post.title = "Clinic <hours> & \"more\" ]]> 'x'"
    response = public.get("/archive/health/feed.atom")
    feed = ET.fromstring(response.content)  # still well-formed
    summaries = [e.findtext(f"{ATOM}summary") for e in feed.findall(f"{ATOM}entry")]
    assert all("Clinic <hours> & \"more\" ]]> 'x'" in (s or "") for s in summaries)


def test_queries_serve_a_tag_with_nothing_sent(public: TestClient, built: Archive) -> None:
    from newsletter.db import session_scope
    from newsletter.tags import get_or_create_tags

    with session_scope() as session:
        get_or_create_tags(session, {"empty": "Empty"})
        assert "empty" not in [t.slug for t in archive.listed_tags(session)]
    page = public.get("/archive/empty/")
    assert page.status_code == 200 and "Nothing was sent with this tag yet" in page.text
    feed = ET.fromstring(public.get("/archive/empty/feed.atom").content)
    assert feed.findall(f"{ATOM}entry") == [] and feed.findtext(f"{ATOM}updated")
