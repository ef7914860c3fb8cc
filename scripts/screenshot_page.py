#!/usr/bin/env python
"""Take a full-page screenshot of a built book page with headless Chromium.

Usage (after `jupyter-book build .`):

    python scripts/screenshot_page.py book/01_background.html out.png
    python scripts/screenshot_page.py _build/html/book/intro.html intro.png --width 1000

PAGE is a path relative to _build/html, or a path to a file inside _build/html.  The
page is served from a local HTTP server on 127.0.0.1 (no other network access is
needed), and the screenshot is taken once MathJax has typeset the math, the widgets
have rendered and the images have loaded.

Needs Debian's `chromium` and `chromium-driver` packages (or another Chromium and a
matching chromedriver on PATH) and the `selenium` Python package.

The helpers in this file (`serve_directory`, `start_chromium`, `open_page`, ...) are
also used by tests/test_book_html.py.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

ROOT = Path(__file__).resolve().parents[1]
HTML_DIR = ROOT / "_build" / "html"

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMEDRIVER_CANDIDATES = ("chromedriver", "/usr/lib/chromium/chromedriver")

# Flags for a quiet, self-contained headless browser (no sync, updates, QUIC, GPU...).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
    "--hide-scrollbars",
)


def find_chromium() -> Optional[str]:
    """Path of a Chromium binary, or None."""
    env = os.environ.get("CHROMIUM_BIN")
    if env:
        return env if Path(env).exists() else shutil.which(env)
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def find_chromedriver() -> Optional[str]:
    """Path of chromedriver, or None."""
    env = os.environ.get("CHROMEDRIVER_BIN")
    if env:
        return env if Path(env).exists() else shutil.which(env)
    for name in CHROMEDRIVER_CANDIDATES:
        path = shutil.which(name) if "/" not in name else (name if Path(name).exists() else None)
        if path:
            return path
    return None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serve `directory` on 127.0.0.1 (a free port); yields the base URL ending in '/'."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="book-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextlib.contextmanager
def start_chromium(width: int = 1280, height: int = 1000):
    """Start headless Chromium through chromedriver; yields a selenium WebDriver.

    The browser gets a fresh profile in a temporary folder, removed afterwards.
    Console messages are recorded (driver.get_log("browser")).
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = find_chromium()
    chromedriver = find_chromedriver()
    if chromium is None or chromedriver is None:
        raise RuntimeError(
            "headless Chromium needs `chromium` and `chromedriver` "
            "(Debian: apt-get install -y chromium chromium-driver)"
        )
    with tempfile.TemporaryDirectory(prefix="book-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.add_argument(f"--window-size={width},{height}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service(executable_path=chromedriver, log_output=os.devnull)
        driver = webdriver.Chrome(options=options, service=service)
        try:
            driver.set_page_load_timeout(60)
            driver.set_script_timeout(60)
            yield driver
        finally:
            driver.quit()


# Resolves when MathJax (if present) has typeset the page, the widget outputs (if the
# page stores widget state) have rendered, and every image has finished loading.
_WAIT_FOR_PAGE_JS = r"""
const done = arguments[arguments.length - 1];
const deadline = Date.now() + arguments[0] * 1000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
(async () => {
  const notes = [];
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    try { await MathJax.startup.promise; } catch (e) { notes.push("MathJax: " + e); }
  }
  const wantsWidgets = !!document.querySelector(
    'script[type="application/vnd.jupyter.widget-state+json"]');
  if (wantsWidgets) {
    while (!document.querySelector(".jupyter-widgets") && Date.now() < deadline) {
      await sleep(100);
    }
  }
  while (Array.from(document.images).some((i) => !i.complete) && Date.now() < deadline) {
    await sleep(100);
  }
  await sleep(300);  // let late console messages arrive
  done(notes.join("; "));
})();
"""


def open_page(driver, url: str, timeout_s: float = 45.0) -> str:
    """Load `url` and wait until math, widgets and images are rendered.

    Returns problems noticed while waiting ('' if none).
    """
    driver.get(url)
    return driver.execute_async_script(_WAIT_FOR_PAGE_JS, timeout_s) or ""


def full_page_screenshot(driver, out: Path, width: int = 1280, max_height: int = 20000) -> None:
    """Save a PNG of the whole page (not just the window) to `out`.

    The window is made as tall as the page for the capture, then restored.  (Capturing
    beyond the viewport with Chromium's DevTools calls instead breaks the theme's layout:
    the sidebar and the left edge of the text disappear from the picture.)
    """
    before = driver.get_window_size()
    inner = driver.execute_script("return window.innerHeight;")
    chrome = max(0, before["height"] - inner)  # the window's own bars, if any
    height = driver.execute_script(
        "return Math.max(document.documentElement.scrollHeight, document.body.scrollHeight);"
    )
    height = int(min(max(height, 200), max_height))
    try:
        driver.set_window_size(width, height + chrome)
        time.sleep(0.5)  # relayout
        out.write_bytes(driver.get_screenshot_as_png())
    finally:
        driver.set_window_size(before["width"], before["height"])


def _page_relative_path(page: str) -> str:
    path = Path(page)
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, HTML_DIR / path]
    for candidate in candidates:
        candidate = candidate.resolve()
        if candidate.is_file():
            try:
                return candidate.relative_to(HTML_DIR.resolve()).as_posix()
            except ValueError:
                continue
    raise SystemExit(
        f"screenshot_page.py: {page!r} is not a page of the built book in {HTML_DIR} "
        "(run `jupyter-book build .` first)"
    )


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("page", help="page, e.g. book/01_background.html")
    parser.add_argument("out", type=Path, help="PNG file to write")
    parser.add_argument("--width", type=int, default=1280, help="viewport width in pixels")
    parser.add_argument("--html-dir", type=Path, default=None,
                        help="the built book's html folder (default: _build/html of this checkout; "
                             "for `jupyter-book build . --path-output DIR` give DIR/_build/html)")
    args = parser.parse_args(argv)
    if args.html_dir is not None:
        global HTML_DIR
        HTML_DIR = args.html_dir.resolve()

    relative = _page_relative_path(args.page)
    with serve_directory(HTML_DIR) as base, start_chromium(width=args.width) as driver:
        notes = open_page(driver, base + relative)
        full_page_screenshot(driver, args.out, width=args.width)
        errors = [m["message"] for m in driver.get_log("browser") if m.get("level") == "SEVERE"]
    for note in filter(None, [notes, *errors]):
        print(f"warning: {note}", file=sys.stderr)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
