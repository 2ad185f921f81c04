"""Build the executed book once (warnings are errors), then check it in a real browser.

The browser is Debian's Chromium (``/usr/bin/chromium``, or ``$CHROMIUM``) driven by
Playwright; the pages are served from ``_build/html`` by a local ``http.server`` and
every request to another host is blocked and reported: the book must work offline.
Screenshots go to ``_build/screenshots/<page>.png``.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
from book_tools import ROOT, course, notebooks

sys.path.insert(0, str(ROOT / "book" / "_tools"))
import plain_markdown  # noqa: E402

BUILD = ROOT / "_build"
HTML = BUILD / "html"
SCREENSHOTS = BUILD / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.slow

PAGES = notebooks.toc_files(ROOT)  # docnames, e.g. "book/01_odes"
CONFIG = notebooks.load_config(ROOT)


def _source(docname: str) -> Path:
    path = ROOT / docname
    return path if path.suffix else path.with_suffix(".md")


# ------------------------------------------------------------------------------- build


@pytest.fixture(scope="module")
def book() -> Path:
    """Build the book once for this module: every chapter executed, -W -n --keep-going.

    The chapters run (two at a time) in ``.ci/execute_chapters.py``, which fills the
    build's execution cache, or does nothing when ``bash .ci/run``'s ``chapters`` step
    already did for the current code; the build then takes every output from the cache.
    """
    BUILD.mkdir(exist_ok=True)
    bindir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # Agg would hide the figures
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    executed = subprocess.run([sys.executable, str(ROOT / ".ci" / "execute_chapters.py"), "--if-stale"],
                              cwd=ROOT, env=env, capture_output=True, text=True)
    assert executed.returncode == 0, f"a chapter failed:\n{executed.stdout[-3000:]}\n{executed.stderr[-6000:]}"
    cmd = [str(bindir / "jupyter-book"), "build", str(ROOT), "--all", "-W", "-n", "--keep-going"]
    log = BUILD / "book-build.log"
    with log.open("w") as out:
        result = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    text = log.read_text(errors="replace")
    assert result.returncode == 0, f"book build failed (log: {log}):\n{text[-6000:]}"
    return HTML


def test_book_builds_every_page(book):
    for docname in PAGES:
        assert (book / f"{docname}.html").is_file(), f"{docname}.html was not built"
    assert (book / "index.html").is_file()


def test_no_page_names_a_remote_asset(book):
    """No script, stylesheet, image or font comes from another host (no CDN)."""
    asset = re.compile(r"<(?:script|img|link|source|iframe)\b[^>]*?\b(?:src|href)=\"((?:https?:)?//[^\"]+)\"", re.I)
    cdn = re.compile(r"cdn\.jsdelivr\.net|cdnjs\.cloudflare\.com|unpkg\.com|googleapis\.com|mathjax\.org", re.I)
    for page in book.rglob("*.html"):
        text = page.read_text(errors="replace")
        links = [m for m in asset.findall(text) if not m.startswith(("https://github.com", "https://colab."))]
        assert not links, f"{page.relative_to(book)} loads remote assets: {links}"
        assert not cdn.search(text), f"{page.relative_to(book)} names a CDN: {cdn.search(text).group(0)}"


def test_mathjax_is_served_from_the_book(book):
    assert (book / "_static" / course.MATHJAX_PATH).is_file()
    assert (book / "_static" / "mathjax" / "es5" / "output" / "chtml" / "fonts" / "woff-v2").is_dir()


def test_every_notebook_chapter_has_its_colab_notebook(book):
    for docname in PAGES:
        source = _source(docname)
        if source.suffix == ".md" and course.is_notebook_chapter(source.read_text(encoding="utf-8")):
            assert (ROOT / "book" / "colab" / f"{source.stem}.ipynb").is_file(), docname


def test_colab_equation_numbers_are_the_books(book):
    """The Colab notebooks print "Eq. (N)" and \\tag{N} with the numbers that
    plain_markdown.book_equation_numbers gives (consecutive through the book); the
    built pages must number them the same."""
    eqno = re.compile(r'<span class="eqno">\((\d+)\)<a class="headerlink" href="#equation-([\w.:-]+)"')
    numbers = plain_markdown.book_equation_numbers(ROOT, PAGES)
    for docname in PAGES:
        source = _source(docname)
        if not (source.suffix == ".md" and course.is_notebook_chapter(source.read_text(encoding="utf-8"))):
            continue
        html = (book / f"{docname}.html").read_text(errors="replace")
        built = {label: int(n) for n, label in eqno.findall(html)}
        assert built == numbers[docname], docname


# ----------------------------------------------------------------------------- browser


# GitHub Pages serves a project's site under https://<owner>.github.io/<repo>/: the
# browser check serves the build under the same subpath, so a link to the server's root
# ("/_static/...") breaks here as it would there.
SUBPATH = "/" + course.github_owner_repo(CONFIG["repository"]["url"])[1]


@pytest.fixture(scope="module")
def server(book):
    handler = functools.partial(_SubpathHandler, directory=str(book))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}{SUBPATH}"
    httpd.shutdown()
    httpd.server_close()


class _SubpathHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the build under SUBPATH only; everything else is a 404."""

    def translate_path(self, path):
        if path != SUBPATH and not path.startswith(SUBPATH + "/"):
            return str(Path(self.directory) / "no-such-file-outside-the-subpath")
        return super().translate_path(path[len(SUBPATH):] or "/")

    def log_message(self, *args):
        pass


LINK = re.compile(r"""<(?:a|link|img|script|source|iframe)\b[^>]*?\b(?:href|src)=["']([^"']*)["']""", re.I)
ANCHOR_IDS = re.compile(r"""\b(?:id|name)=["']([^"']+)["']""")


def test_every_internal_link_resolves(book):
    """Every page, anchor, image and equation reference of the whole site exists, and no
    link starts at the server's root (it would break under the Pages subpath)."""
    ids: dict[Path, set[str]] = {}

    def anchors(page: Path) -> set[str]:
        if page not in ids:
            ids[page] = set(ANCHOR_IDS.findall(page.read_text(errors="replace")))
        return ids[page]

    broken = []
    pages = [p for p in book.rglob("*.html") if "_static" not in p.parts]
    for page in pages:
        for link in LINK.findall(page.read_text(errors="replace")):
            if not link or re.match(r"^[a-z][a-z0-9+.-]*:", link, re.I):
                continue  # external (http:, mailto:, data:, javascript:) or empty
            where = f"{page.relative_to(book)} -> {link}"
            if link.startswith("/"):
                broken.append(f"{where} (from the server root)")
                continue
            target, _, fragment = link.partition("#")
            path = (page.parent / target.split("?")[0]).resolve() if target else page
            if path.is_dir():
                path = path / "index.html"
            if not path.is_file() or not path.is_relative_to(book.resolve()):
                broken.append(f"{where} (no such file)")
            elif fragment and path.suffix == ".html" and fragment not in anchors(path):
                broken.append(f"{where} (no such anchor)")
    assert pages and not broken, f"{len(broken)} broken links, e.g.: {broken[:10]}"


def test_the_pdf_of_the_book(book, browser):
    """The book as one PDF (book/_tools/pdf.py): every page of the toc, math typeset
    (the tool fails on untypeset math or a broken image), several pages a chapter."""
    sys.path.insert(0, str(ROOT / "book" / "_tools"))
    import pdf

    out = BUILD / "pdf" / "score-sde-course.pdf"
    report = pdf.make_pdf(book, out, browser=browser)
    assert out.read_bytes().startswith(b"%PDF")
    assert report["pages"] >= 5 * len(notebooks.chapter_sources(ROOT)), report
    assert report["math"] > 500, report  # every chapter is full of formulas


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install -y chromium"
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


VISIBLE_TEXT = """() => {
  const root = (document.querySelector('article') || document.querySelector('main') || document.body).cloneNode(true);
  root.querySelectorAll('pre, code, .highlight, mjx-container, script, style, .cell_input').forEach(e => e.remove());
  return root.textContent;
}"""

LOAD_IMAGES = """async () => {
  window.scrollTo(0, document.body.scrollHeight);
  const imgs = Array.from(document.images);
  imgs.forEach(i => { i.loading = 'eager'; });
  await Promise.all(imgs.map(i => i.complete ? null : new Promise(r => { i.onload = r; i.onerror = r; })));
  window.scrollTo(0, 0);
  return imgs.map(i => ({src: i.currentSrc || i.src, w: i.naturalWidth, complete: i.complete}));
}"""


WIDE_BLOCKS = """() => Array.from(document.querySelectorAll('article pre, main pre'))
  .filter(p => p.offsetParent !== null && p.scrollWidth > p.clientWidth + 1)
  .map(p => [(p.textContent.split('\\n').find(l => l.length > 0) || '').slice(0, 60), p.scrollWidth - p.clientWidth])"""


def _has_math(source: Path) -> bool:
    text = source.read_text(encoding="utf-8")
    if course.is_jupytext_myst(text):
        text = "\n".join(c.source for c in course.read_myst(text).cells if c.cell_type == "markdown")
    text = re.sub(r"^(`{3,}|~{3,})(?!\{math\}).*?^\1", "", text, flags=re.S | re.M)  # code fences
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code
    return bool(re.search(r"\$\$|\$[^$\s][^$\n]*\$|\{math\}|\\begin\{", text))


@pytest.mark.parametrize("docname", PAGES)
def test_page_in_browser(docname, server, browser):
    source = _source(docname)
    text = source.read_text(encoding="utf-8")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    blocked, failed, js_errors = [], [], []

    def route(r):
        if urlparse(r.request.url).hostname == "127.0.0.1":
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.on("pageerror", lambda e: js_errors.append(str(e)))
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.on("requestfailed", lambda r: failed.append(f"{r.failure} {r.url}") if r.url not in blocked else None)
    try:
        response = page.goto(f"{server}/{docname}.html", wait_until="load")
        assert response is not None and response.ok, f"{docname}: HTTP {response and response.status}"

        # Math: MathJax (served by the book) typesets every formula.
        n_math = page.locator(".math").count()
        if n_math:
            page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=30_000)
            page.evaluate("() => MathJax.startup.promise.then(() => true)")
        untypeset = page.evaluate("() => Array.from(document.querySelectorAll('.math')).filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 80))")
        assert not untypeset, f"{docname}: formulas left untypeset: {untypeset[:5]}"
        assert page.locator("mjx-merror, [data-mjx-error]").count() == 0, f"{docname}: MathJax reported a TeX error"
        if _has_math(source):
            assert page.locator("mjx-container").count() > 0, f"{docname}: the source has math, the page has no typeset math"
        visible = page.evaluate(VISIBLE_TEXT)
        for raw in ("$$", "\\(", "\\)", "\\[", "\\]", "\\begin{"):
            assert raw not in visible, f"{docname}: raw TeX {raw!r} in the page: ...{visible[max(0, visible.find(raw) - 80):visible.find(raw) + 80]}..."

        # Nothing scrolls sideways: every code block and output fits the column at 1280 px.
        wide = page.evaluate(WIDE_BLOCKS)
        assert not wide, f"{docname}: blocks that scroll sideways (first line, overflow in px): {wide[:5]}"

        # Animations: present where the chapter makes one, and they advance when played.
        for i in range(page.locator("div.animation").count()):
            anim = page.locator("div.animation").nth(i)
            first = anim.locator("img").first.get_attribute("src")
            anim.locator("button[title='Play']").click()
            page.wait_for_function(
                "([el, src]) => el.querySelector('img').src !== src", arg=[anim.element_handle(), first], timeout=5_000
            )
            anim.locator("button[title='Pause']").click()
        if course.is_jupytext_myst(text) and "plotting.animation(" in text:
            assert page.locator("div.animation").count() > 0, f"{docname}: the chapter animates, the page shows none"

        # Figures: every image loaded.
        images = page.evaluate(LOAD_IMAGES)
        broken = [i["src"] for i in images if not i["complete"] or i["w"] == 0]
        assert not broken, f"{docname}: images that did not load: {broken}"
        if course.is_jupytext_myst(text) and re.search(r"\bplt\.|\.subplots\(|\bplotting\.", text):
            figures = page.locator(".cell_output img").count()
            assert figures > 0, f"{docname}: the chapter plots, but no figure is shown"

        # Outputs: no traceback or error output anywhere.
        assert page.locator(".cell_output .traceback, .cell_output .output.error, .output.traceback").count() == 0, (
            f"{docname}: a cell shows an error output"
        )
        outputs = " ".join(page.locator(".cell_output").all_text_contents())
        assert "Traceback (most recent call last)" not in outputs, f"{docname}: a cell output shows a traceback"

        # Exercises: the stub is shown, the solution collapsed behind "Show solution".
        page_text = page.evaluate("() => document.body.textContent")
        assert "BEGIN SOLUTION" not in page_text and "END SOLUTION" not in page_text, f"{docname}: markers shown"
        if course.is_jupytext_myst(text):
            nb = course.read_myst(text)
            n_exercises = sum(c.cell_type == "code" and course.has_markers(c.source) for c in nb.cells)
            solutions = page.locator("details.above-input", has_text="Show solution")
            assert solutions.count() == n_exercises, f"{docname}: {solutions.count()} collapsed solutions, {n_exercises} exercises"
            for i in range(n_exercises):
                assert not solutions.nth(i).evaluate("d => d.open"), f"{docname}: solution {i + 1} is not collapsed"
            stubs = page.locator(".cell_input", has_text="NotImplementedError")
            assert stubs.count() >= n_exercises, f"{docname}: stubs missing"

        # The Colab entry point, for chapters that have a student notebook.
        if source.suffix == ".md" and course.is_notebook_chapter(text):
            link = page.locator("a#colab-link.colab-link")
            assert link.count() == 1, f"{docname}: no 'Open in Colab' link"
            assert link.is_visible()
            href = link.get_attribute("href")
            owner, repo = course.github_owner_repo(CONFIG["repository"]["url"])
            m = re.fullmatch(rf"https://colab\.research\.google\.com/github/{owner}/{repo}/blob/main/(book/colab/[\w.-]+\.ipynb)", href)
            assert m, f"{docname}: unexpected Colab link {href}"
            assert (ROOT / m.group(1)).is_file(), f"{docname}: the Colab link points to a missing {m.group(1)}"
            assert Path(m.group(1)).stem == source.stem

        assert not blocked, f"{docname}: the page requested other hosts: {blocked}"
        assert not failed, f"{docname}: failed requests: {failed}"
        assert not js_errors, f"{docname}: JavaScript errors: {js_errors}"
    finally:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{Path(docname).name}.png"), full_page=True)
        page.close()
