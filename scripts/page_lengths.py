#!/usr/bin/env python
"""Print the length of built book pages in screens (page height / viewport height, 1280 x 800).

    python scripts/page_lengths.py                         # every page of _build/html/book
    python scripts/page_lengths.py --html-dir DIR/_build/html book/04_code_example.html

Uses the same headless Chromium set-up as scripts/screenshot_page.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import screenshot_page as shots  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pages", nargs="*", help="pages relative to the html folder (default: book/*.html)")
    ap.add_argument("--html-dir", type=Path, default=shots.HTML_DIR)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=800, help="one screen, in pixels")
    args = ap.parse_args(argv)
    html = args.html_dir.resolve()
    pages = args.pages or sorted(p.relative_to(html).as_posix() for p in (html / "book").glob("*.html"))
    with shots.serve_directory(html) as base, shots.start_chromium(width=args.width) as driver:
        for page in pages:
            shots.open_page(driver, base + page)
            h = driver.execute_script("return document.documentElement.scrollHeight")
            print(f"{page:45s} {h:7d} px  {h / args.height:5.1f} screens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
