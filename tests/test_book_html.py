"""The book builds with the usual command, without warnings, and its pages render in a real
browser, offline.

1. `jupyter-book build . --all -W -n --keep-going` (any warning fails) runs once per test
   session into a fresh folder, exactly as a reader would run it after
   `pip install -e ".[book]"`, with `node` and `npm` on PATH replaced by stubs that record
   any call: the build must not need Node.js.
2. No page loads a script or stylesheet from another site: MathJax (from the
   sphinx-mathjax-offline package), RequireJS and the widget manager (book/_static/vendor/)
   are in the built site.
3. Each page of the table of contents is opened in headless Chromium from a local HTTP
   server on 127.0.0.1, and the test checks that
   * the math is typeset by MathJax (no raw TeX such as `$$` or `\\[` is left visible),
   * every chapter has at least one figure (a loaded image) or a rendered widget,
   * the widgets stored in the notebook render from their saved state,
   * no image is broken, the console shows no error, and no request leaves 127.0.0.1,
   * no code cell is wider than the text column (no horizontal scroll bar at 1280 px),
   * Chinese text appears only inside elements marked `lang="zh"` (the intro's table of
     the source article's sections), so every heading is legible without CJK fonts,
   * one header: the theme's full-width navbar is not shown, and exactly one "Toggle
     primary sidebar" button is visible; clicking it collapses the sidebar.

Chromium comes from Debian (`apt-get install -y chromium chromium-driver`) and is driven
through chromedriver by the `selenium` package.  Without them the browser tests are
skipped, except under CI=true, where they fail.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD_ARGS = ["build", ".", "--all", "-W", "-n", "--keep-going"]
IN_CI = os.environ.get("CI", "").strip().lower() == "true"
BUILD_TIMEOUT_S = 1800


def _unavailable(reason: str):
    """Skip locally; fail under CI=true, where everything must be installed."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true, so this is an error, not a skip)", pytrace=False)
    pytest.skip(reason)


def _toc_pages() -> list[str]:
    """Page names (without suffix) listed in _toc.yml, in order."""
    text = (ROOT / "_toc.yml").read_text(encoding="utf-8")
    return re.findall(r"^\s*(?:-\s*)?(?:root|file)\s*:\s*([^\s#]+)", text, flags=re.M)


def _toc_chapters() -> list[str]:
    """The chapters themselves: _toc.yml's entries directly under ``chapters:``, not their
    ``sections:`` (sub-pages of a chapter)."""
    text = (ROOT / "_toc.yml").read_text(encoding="utf-8")
    indents = re.findall(r"^( *)chapters\s*:", text, flags=re.M)
    found = []
    for indent in set(indents):
        found += re.findall(rf"^{indent}  - file\s*:\s*([^\s#]+)", text, flags=re.M)
    return [p for p in _toc_pages() if p in found]


PAGES = _toc_pages()
CHAPTERS = [p for p in PAGES if re.match(r"book/\d\d_", p)]  # chapters and their sub-pages


def _load_browser_helpers():
    spec = importlib.util.spec_from_file_location(
        "book_screenshot_page", ROOT / "scripts" / "screenshot_page.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


helpers = _load_browser_helpers()


# ---------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------


def _jupyter_book() -> str:
    """The jupyter-book of the Python environment that runs the tests."""
    jb = Path(sys.executable).with_name("jupyter-book")
    if jb.exists():
        return str(jb)
    found = shutil.which("jupyter-book")
    if found is None:
        pytest.fail('jupyter-book not found; install it with: pip install -e ".[book]"')
    return found


def _node_stubs(folder: Path, calls: Path) -> None:
    """`node`, `npm` and `npx` that only record that they were called, and fail."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("node", "npm", "npx"):
        stub = folder / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\nexit 1\n')
        stub.chmod(0o755)


@pytest.fixture(scope="session")
def built_book(tmp_path_factory) -> Path:
    """`jupyter-book build . --all -W -n --keep-going` into a fresh folder; returns the HTML.

    With pytest-xdist every worker asks for this fixture: a file lock makes one worker
    build and the others reuse its result (keyed by the test run's id).
    """
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid-{os.getpid()}-{time.time()}"
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    out = shared / "book-build"
    out.mkdir(exist_ok=True)
    lock_path, stamp_path = out / ".lock", out / ".ok"
    log_path, calls = out / "book-build.log", out / "node-calls.txt"
    html = out / "_build" / "html"

    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if stamp_path.exists() and stamp_path.read_text() == run_id:
                return html
            shutil.rmtree(out / "_build", ignore_errors=True)
            calls.unlink(missing_ok=True)
            _node_stubs(out / "stubs", calls)
            env = dict(os.environ)
            env["PATH"] = os.pathsep.join(
                [str(out / "stubs"), str(Path(sys.executable).parent), env.get("PATH", "")])
            env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
            command = [_jupyter_book(), *BUILD_ARGS, "--path-output", str(out)]
            started = time.monotonic()
            with open(log_path, "w") as log:
                try:
                    proc = subprocess.run(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT,
                                          timeout=BUILD_TIMEOUT_S)
                    returncode = proc.returncode
                except subprocess.TimeoutExpired:
                    returncode = "timeout"
            elapsed = time.monotonic() - started
            # Sphinx colours its messages even in a file; strip the ANSI codes.
            output = re.sub(r"\x1b\[[0-9;]*m", "", log_path.read_text(errors="replace"))
            if returncode != 0:
                tail = "\n".join(output.splitlines()[-80:])
                pytest.fail(
                    f"`jupyter-book {' '.join(BUILD_ARGS)}` failed (exit {returncode}, "
                    f"{elapsed:.0f} s); full log in {log_path}; last lines:\n{tail}",
                    pytrace=False,
                )
            if calls.exists():
                pytest.fail(f"the book build called Node.js tools:\n{calls.read_text()}",
                            pytrace=False)
            stamp_path.write_text(run_id)
            return html
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def site_url(built_book):
    with helpers.serve_directory(built_book) as url:
        yield url


@pytest.fixture(scope="session")
def browser(built_book):
    if helpers.find_chromium() is None:
        _unavailable("chromium is not installed (apt-get install -y chromium chromium-driver)")
    if helpers.find_chromedriver() is None:
        _unavailable("chromedriver is not installed (apt-get install -y chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        _unavailable("the `selenium` package is not installed (pip install selenium)")
    with helpers.start_chromium() as driver:
        yield driver


# ---------------------------------------------------------------------------------------
# Build and static checks
# ---------------------------------------------------------------------------------------


def test_book_builds_without_warnings(built_book):
    """The -W build gate: the fixture fails on any warning; every TOC page is written."""
    missing = [p for p in PAGES if not (built_book / f"{p}.html").is_file()]
    assert not missing, f"pages listed in _toc.yml but not built: {missing}"
    assert (built_book / "index.html").is_file()


_BIB_LABEL = re.compile(r'<span class="label"><span class="fn-bracket">\[</span>(.*?)<span class="fn-bracket">\]</span>')
_CITE_LINK = re.compile(r'<a class="reference internal" href="bibliography\.html#([^"]+)"[^>]*>(.*?)</a>', re.S)


def test_bibliography_is_author_year_as_the_text_cites(built_book):
    """One citation style: the text cites "Hinton et al., 2015" and the bibliography labels its
    entries the same way (no numbers); the page shows no instructions to authors."""
    page = (built_book / "book" / "bibliography.html").read_text(encoding="utf-8")
    labels = [re.sub(r"<[^>]+>", "", x) for x in _BIB_LABEL.findall(page)]
    bib = (ROOT / "book" / "references.bib").read_text(encoding="utf-8")
    assert len(labels) == len(re.findall(r"^@\w+\{", bib, flags=re.M)) > 0
    assert all(re.fullmatch(r"\D+, \d{4}[a-z]?", label) for label in labels), labels
    assert labels == sorted(labels, key=str.lower), "sorted by author"
    assert "{cite}" not in page and "cites one with" not in page
    # a chapter's author-year citation names an entry whose label starts with the same author
    chapter = (built_book / "book" / "01_background.html").read_text(encoding="utf-8")
    cited = {re.sub(r"<[^>]+>", "", text) for _, text in _CITE_LINK.findall(chapter)}
    full = {c for c in cited if re.fullmatch(r"\D+, \d{4}", c)}
    assert full and full <= set(labels), full - set(labels)


_SCRIPT_SRC = re.compile(r"<script\b[^>]*\bsrc\s*=\s*[\"']([^\"']+)[\"']", re.I)
_STYLESHEET = re.compile(
    r"<link\b(?=[^>]*\brel\s*=\s*[\"']?stylesheet)[^>]*\bhref\s*=\s*[\"']([^\"']+)[\"']", re.I
)


def test_pages_load_no_remote_scripts(built_book):
    """No <script src> or stylesheet points to a CDN (or anywhere outside the site)."""
    remote = []
    for page in sorted(built_book.rglob("*.html")):
        html = page.read_text(encoding="utf-8", errors="replace")
        for url in _SCRIPT_SRC.findall(html) + _STYLESHEET.findall(html):
            if re.match(r"(?i)^(https?:)?//", url):
                remote.append(f"{page.relative_to(built_book)}: {url}")
    assert not remote, "pages load resources from other sites:\n" + "\n".join(remote)

    static = built_book / "_static"
    for needed in (
        "mathjax/tex-chtml.js",  # from the sphinx-mathjax-offline package
        "mathjax/output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff",
        "vendor/requirejs/require.js",  # committed in book/_static/vendor/
        "vendor/html-manager/embed-amd.js",
    ):
        assert (static / needed).is_file(), f"missing offline asset _static/{needed}"
    math_page = (built_book / "book" / "03_algorithm_and_math.html").read_text(encoding="utf-8")
    assert re.search(r'<script[^>]+src="\.\./_static/mathjax/tex-chtml\.js"', math_page), (
        "the pages do not load the local MathJax")


# ---------------------------------------------------------------------------------------
# Browser checks
# ---------------------------------------------------------------------------------------

# Collects what the checks need from the rendered page.  Visible text is taken from the
# article, without code, program output, already typeset math and widgets.
_INSPECT_JS = r"""
const article = document.querySelector("article") || document.querySelector("main") || document.body;
const clone = article.cloneNode(true);
clone.querySelectorAll(
  "pre, code, script, style, mjx-container, .highlight, .cell_input, .cell_output, " +
  ".output, .jupyter-widgets, .MathJax, .MathJax_Preview"
).forEach((e) => e.remove());
const images = Array.from(article.querySelectorAll("img")).map((img) => ({
  src: img.currentSrc || img.src,
  complete: img.complete,
  width: img.naturalWidth,
}));
const widgets = Array.from(document.querySelectorAll(".jupyter-widgets"))
  .filter((e) => e.getBoundingClientRect().height > 0).length;
const here = location.origin + "/";
// Chinese characters outside an element marked lang="zh" (shown as boxes without CJK fonts)
const cjk = /[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]/;
const unmarked = [];
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
while (walker.nextNode()) {
  const node = walker.currentNode;
  if (cjk.test(node.textContent) && !(node.parentElement && node.parentElement.closest('[lang^="zh"]'))
      && !(node.parentElement && node.parentElement.closest("script, style"))) {
    unmarked.push(node.textContent.trim().slice(0, 60));
  }
}
const requests = performance.getEntriesByType("resource").map((e) => e.name)
  .filter((name) => !name.startsWith(here) && !name.startsWith("data:") && !name.startsWith("blob:"));
return {
  text: clone.textContent,
  mathNodes: article.querySelectorAll(".math").length,
  mjx: document.querySelectorAll("mjx-container").length,
  mathjaxErrors: document.querySelectorAll("mjx-merror, [data-mjx-error]").length,
  images: images,
  widgets: widgets,
  widgetState: !!document.querySelector('script[type="application/vnd.jupyter.widget-state+json"]'),
  requests: requests,
  unmarkedChinese: unmarked,
  wideCode: Array.from(document.querySelectorAll("div.cell_input pre"))
    .filter((p) => p.clientWidth > 0 && p.scrollWidth > p.clientWidth + 1)
    .map((p) => p.textContent.trim().slice(0, 60)),
  links: Array.from(article.querySelectorAll("a[href]")).map((a) => a.getAttribute("href")).join(" "),
  zhSpans: document.querySelectorAll('article [lang^="zh"]').length,
};
"""

_RAW_TEX = re.compile(r"\$\$|\\\[|\\\]|\\\(|\\\)|\\begin\{|\\frac\b")


@pytest.fixture(scope="session")
def rendered_pages(browser, site_url):
    """Open every page once; returns {page: (inspection dict, console errors, notes)}."""
    cache = {}

    def render(page: str):
        if page not in cache:
            browser.get_log("browser")  # drop messages of the previous page
            notes = helpers.open_page(browser, f"{site_url}{page}.html")
            info = browser.execute_script(_INSPECT_JS)
            errors = [
                m.get("message", "")
                for m in browser.get_log("browser")
                if m.get("level") == "SEVERE"
            ]
            cache[page] = (info, errors, notes)
        return cache[page]

    return render


@pytest.mark.parametrize("page", PAGES)
def test_page_has_no_console_errors_or_remote_requests(rendered_pages, page):
    info, errors, notes = rendered_pages(page)
    assert not errors, f"{page}: console errors:\n" + "\n".join(errors)
    assert not notes, f"{page}: {notes}"
    assert not info["requests"], f"{page}: requests leave the local server: {info['requests']}"


@pytest.mark.parametrize("page", PAGES)
def test_math_is_typeset(rendered_pages, page):
    info, _, _ = rendered_pages(page)
    raw = sorted(set(_RAW_TEX.findall(info["text"])))
    assert not raw, f"{page}: raw TeX left in the page text: {raw}"
    if info["mathNodes"]:
        assert info["mjx"] > 0, f"{page}: {info['mathNodes']} math nodes but MathJax rendered none"
    assert info["mathjaxErrors"] == 0, f"{page}: MathJax reported errors"


@pytest.mark.parametrize("page", PAGES)
def test_images_and_widgets_render(rendered_pages, page):
    info, _, _ = rendered_pages(page)
    broken = [img["src"] for img in info["images"] if not img["complete"] or img["width"] == 0]
    assert not broken, f"{page}: images that did not load: {broken}"
    if info["widgetState"]:
        assert info["widgets"] > 0, f"{page}: widget state is saved but no widget rendered"


@pytest.mark.parametrize("page", CHAPTERS)
def test_chapter_has_a_figure(rendered_pages, page):
    info, _, _ = rendered_pages(page)
    figures = [img for img in info["images"] if img["complete"] and img["width"] > 0]
    assert figures or info["widgets"], f"{page}: no figure (loaded image) and no rendered widget"


@pytest.mark.parametrize("page", PAGES)
def test_chinese_text_is_marked_and_optional(rendered_pages, page):
    """Headings and text are English; Chinese appears only in lang="zh" elements."""
    info, _, _ = rendered_pages(page)
    assert not info["unmarkedChinese"], (
        f"{page}: Chinese text outside lang=\"zh\" elements: {info['unmarkedChinese']}")


@pytest.mark.parametrize("page", CHAPTERS)
def test_code_cells_fit_the_column(rendered_pages, page):
    """In a 1280-pixel window no code cell needs a horizontal scroll bar."""
    info, _, _ = rendered_pages(page)
    assert not info["wideCode"], f"{page}: code cells wider than the column: {info['wideCode']}"


def test_intro_identifies_the_source_article(rendered_pages):
    """The intro names the article, its language, and maps its sections to the chapters."""
    info, _, _ = rendered_pages("book/intro")
    text = " ".join(info["text"].split())
    assert "The source article" in text and "Chinese" in text
    assert info["zhSpans"] >= 7, "the original headings should be in lang=\"zh\" spans"
    # chapters 1-6 follow the article's six sections (later chapters go beyond it)
    for chapter in [c for c in _toc_chapters() if re.match(r"book/0[1-6]_", c)]:
        assert f"{chapter.split('/')[-1]}.html" in info["links"], f"intro table lacks {chapter}"


# The theme's "Toggle primary sidebar" buttons (Bootstrap moves `title` to
# `data-bs-original-title` when it sets up the tooltips).
_TOGGLE = ", ".join(f'button[{attr}="Toggle primary sidebar"]'
                    for attr in ("title", "aria-label", "data-bs-original-title"))

# Visible elements of the theme's chrome, before and after a click on the sidebar toggle.
_CHROME_JS = r"""
const visible = (e) => {
  const r = e.getBoundingClientRect();
  const s = getComputedStyle(e);
  return r.width > 0 && r.height > 0 && s.visibility !== "hidden" && s.display !== "none";
};
const sidebar = document.querySelector("#pst-primary-sidebar, .bd-sidebar-primary");
const r = sidebar ? sidebar.getBoundingClientRect() : null;
return {
  navbars: Array.from(document.querySelectorAll("header.bd-header")).filter(visible).length,
  toggles: Array.from(document.querySelectorAll(arguments[0])).filter(visible).length,
  sidebarShown: !!sidebar && visible(sidebar) && r.right > 10,
};
"""


def test_one_header_and_the_sidebar_toggle_collapses_the_sidebar(browser, site_url):
    from selenium.webdriver.common.by import By

    browser.set_window_size(1280, 1000)
    helpers.open_page(browser, f"{site_url}book/02_concepts.html")
    before = browser.execute_script(_CHROME_JS, _TOGGLE)
    assert before["navbars"] == 0, "a second, full-width header (the theme's navbar) is shown"
    assert before["toggles"] == 1, f"{before['toggles']} visible primary-sidebar toggles"
    assert before["sidebarShown"], "the primary sidebar is not shown on a wide window"
    buttons = [b for b in browser.find_elements(By.CSS_SELECTOR, _TOGGLE) if b.is_displayed()]
    buttons[0].click()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        after = browser.execute_script(_CHROME_JS, _TOGGLE)
        if not after["sidebarShown"]:
            break
        time.sleep(0.2)
    assert not after["sidebarShown"], "clicking the visible toggle did not collapse the sidebar"
