"""The whole book as one PDF, for readers offline, printed by headless Chromium.

    python book/_tools/pdf.py [--html _build/html] [--out _build/pdf/score-sde-course.pdf]

Serves the built HTML from a local HTTP server, opens the first page, appends the
article of every other page of the table of contents in book order (their math still
as TeX), lets the book's own MathJax typeset everything, and prints the result with
the page's print styles (no sidebars). Animations print as their first frame's place
holder with a note. Fails (exit 1) when math is left untypeset or an image is broken.
Chromium: ``$CHROMIUM`` or ``/usr/bin/chromium``, driven by Playwright.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import re
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import notebooks  # noqa: E402  (the table of contents)

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]

ASSEMBLE = """async (pages) => {
  const article = document.querySelector('article.bd-article') || document.querySelector('article');
  const parser = new DOMParser();
  for (const url of pages) {
    const html = await (await fetch(url)).text();
    const doc = parser.parseFromString(html, 'text/html');
    const other = doc.querySelector('article.bd-article') || doc.querySelector('article');
    const section = document.createElement('div');
    section.style.breakBefore = 'page';
    section.innerHTML = other.innerHTML;
    article.appendChild(section);
  }
  document.querySelectorAll('div.animation').forEach(a => {
    const note = document.createElement('p');
    note.textContent = '(An animation: play it in the online book.)';
    a.replaceWith(note);
  });
  document.querySelectorAll('details').forEach(d => { d.open = true; });
  await MathJax.startup.promise;
  await MathJax.typesetPromise();
  const imgs = Array.from(document.images);
  imgs.forEach(i => { i.loading = 'eager'; });
  await Promise.all(imgs.map(i => i.complete ? null : new Promise(r => { i.onload = r; i.onerror = r; })));
  return {
    untypeset: Array.from(document.querySelectorAll('.math')).filter(e => !e.querySelector('mjx-container')).length,
    errors: document.querySelectorAll('mjx-merror, [data-mjx-error]').length,
    broken: imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src),
    math: document.querySelectorAll('mjx-container').length,
  };
}"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def page_count(pdf: bytes) -> int:
    """Pages of a PDF: its page objects (``/Type /Page``, not ``/Pages``)."""
    return len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", pdf))


def make_pdf(html_dir: Path, out: Path, *, browser=None) -> dict:
    """Print the book built in ``html_dir`` to ``out``; returns what was checked."""
    docnames = notebooks.toc_files(ROOT)
    handler = functools.partial(_Quiet, directory=str(html_dir))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    own = None
    try:
        if browser is None:
            from playwright.sync_api import sync_playwright

            own = sync_playwright().start()
            browser = own.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page()
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(base) else r.abort())
        page.goto(f"{base}/{docnames[0]}.html", wait_until="load")
        page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=60_000)
        report = page.evaluate(ASSEMBLE, [f"{base}/{d}.html" for d in docnames[1:]])
        if report["untypeset"] or report["errors"] or report["broken"]:
            raise RuntimeError(f"the book did not render cleanly for printing: {report}")
        page.emulate_media(media="print")
        out.parent.mkdir(parents=True, exist_ok=True)
        page.pdf(path=str(out), format="A4", print_background=True,
                 margin={"top": "15mm", "bottom": "15mm", "left": "12mm", "right": "12mm"})
        page.close()
        report["pages"] = page_count(out.read_bytes())
        report["bytes"] = out.stat().st_size
        return report
    finally:
        if own is not None:
            browser.close()
            own.stop()
        httpd.shutdown()
        httpd.server_close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--html", type=Path, default=ROOT / "_build" / "html")
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "pdf" / "score-sde-course.pdf")
    args = parser.parse_args(argv)
    report = make_pdf(args.html, args.out)
    print(f"wrote {args.out}: {report['pages']} pages, {report['bytes'] / 1e6:.1f} MB, {report['math']} formulas")
    return 0


if __name__ == "__main__":
    sys.exit(main())
