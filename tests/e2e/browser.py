"""Headless Chromium for end-to-end tests: Debian's `chromium` driven by
Playwright for Python (pip `playwright`; its own browser downloads are never
used: `executable_path` points at the system Chromium).

Fixtures (import them into a test module or a conftest):

- `browser`: one Chromium for the test, always closed; the test is skipped,
  with the reason, when Playwright or Chromium is missing or does not start.
- `open_page`: `open_page(url) -> Page`, each in a context of its own (its
  own cookies and localStorage: a separate user), closed after the test.

`screenshot(page, path)` saves a PNG and returns its path.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("CHAT_TEST_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAUNCH_TIMEOUT_MS = 60_000
ACTION_TIMEOUT_MS = 15_000


def _unavailable() -> str | None:
    """Why no browser can run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install playwright)"
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture
def browser() -> Iterator[Any]:
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import Error, sync_playwright

    with sync_playwright() as playwright:
        try:
            # launch() gives every browser a fresh temporary profile (--user-data-dir)
            chromium = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=FLAGS, timeout=LAUNCH_TIMEOUT_MS
            )
        except Error as exc:
            pytest.skip(f"Chromium did not start: {exc}")
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[[str], Any]]:
    contexts: list[Any] = []

    def _open(url: str) -> Any:
        context = browser.new_context(viewport={"width": 1100, "height": 640})
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        page.goto(url)
        return page

    yield _open
    for context in contexts:
        context.close()


def screenshot(page: Any, path: Path) -> Path:
    page.screenshot(path=str(path), full_page=True)
    return path
