"""The system Chromium driven by Playwright, shared by every browser test.

No browser is downloaded: Debian's chromium is used. A missing piece FAILS the
test with the command that installs it; browser tests never skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def artefact(name: str) -> Path:
    """Where a browser test keeps a screenshot, for people to look at after the run."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name


# Every visible element whose box sticks out of the viewport, horizontally.
OUTSIDE_VIEWPORT_JS = """
() => {
  const out = [];
  const width = document.documentElement.clientWidth;
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) continue;
    if (r.left < -0.5 || r.right > width + 0.5) {
      out.push(`${el.tagName}.${el.className} [${r.left.toFixed(1)}, ${r.right.toFixed(1)}]: `
               + (el.textContent || '').trim().slice(0, 40));
    }
  }
  return out;
}
"""


@contextmanager
def launch_chromium() -> Iterator[Browser]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "playwright is not installed: `pip install playwright` (it is in the `test` "
            "extra); no `playwright install` is needed, the system Chromium is used",
            pytrace=False,
        )
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: `apt-get install chromium` "
            "(scripts/services.sh does it)",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
