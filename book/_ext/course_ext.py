"""The course's Sphinx extension: the wiring of ``book/_tools/course.py`` into the build.

Registered in ``_config.yml`` under ``sphinx: local_extensions: {course_ext: book/_ext}``.
On ``source-read`` each chapter's exercise cells become a stub and a folded solution
(:func:`course.book_source`); on ``doctree-read`` a chapter with a student notebook gets
its "Open in Colab" link under the title; when the HTML build finishes, MathJax 3 and
the course's CSS are copied into ``_static``. Everything that is not Sphinx wiring lives
in ``course``, which the tools and the tests import without a Sphinx application.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

# the pure half lives with the tools (book/_tools), which run as plain scripts
sys.path.append(str(Path(__file__).resolve().parents[1] / "_tools"))

from course import (  # noqa: E402
    COURSE_CSS,
    MATHJAX_PATH,
    book_source,
    colab_badge,
    colab_url,
    is_jupytext_myst,
    is_notebook_chapter,
    mathjax_es5_dir,
)


def _repository(app) -> tuple[str, str]:
    options = app.config.html_theme_options or {}
    url = options.get("repository_url")
    if not url:
        raise RuntimeError("course: set repository.url in _config.yml (needed for the Colab links)")
    return url, options.get("repository_branch") or "main"


def _on_config_inited(app, config) -> None:
    path = str(config.mathjax_path)
    if "://" in path or path.startswith("//"):
        from sphinx.errors import ConfigError

        raise ConfigError(
            f"course: mathjax_path is a remote URL ({path}); the book serves MathJax itself, "
            f"set sphinx.config.mathjax_path: {MATHJAX_PATH} in _config.yml"
        )
    _repository(app)  # fail early on a missing repository url


def _chapter_text(app, docname: str) -> str | None:
    path = Path(app.env.doc2path(docname))
    if path.suffix != ".md":
        return None
    return path.read_text(encoding="utf-8")


def _on_source_read(app, docname: str, source: list[str]) -> None:
    if str(app.env.doc2path(docname)).endswith(".md") and is_jupytext_myst(source[0]):
        source[0] = book_source(source[0], name=str(app.env.doc2path(docname, False)))


def _on_doctree_read(app, doctree) -> None:
    """The "Open in Colab" link, under the title of each chapter with a student notebook."""
    from docutils import nodes

    docname = app.env.docname
    text = _chapter_text(app, docname)
    if text is None or not is_notebook_chapter(text):
        return
    section = next(iter(doctree.findall(nodes.section)), None)
    if section is None or not isinstance(section[0], nodes.title):
        return
    url, branch = _repository(app)
    section.insert(1, nodes.raw("", colab_badge(colab_url(url, Path(docname).name, branch)), format="html"))


def _on_build_finished(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    static = Path(app.outdir) / "_static"
    target = static / Path(MATHJAX_PATH).parent
    if not (target / "tex-chtml.js").is_file():
        shutil.copytree(mathjax_es5_dir(), target, dirs_exist_ok=True)
    static.mkdir(parents=True, exist_ok=True)
    (static / "course.css").write_text(COURSE_CSS, encoding="utf-8")


def _is_thebe_script(js) -> bool:
    filename = getattr(js, "filename", js)
    body = getattr(js, "attributes", {}).get("body", "")
    return str(filename).endswith("sphinx-thebe.js") or "THEBE_JS_URL" in (body or "")


def _on_html_page_context(app, pagename, templatename, context, doctree) -> None:
    # sphinx-thebe (loaded by Jupyter Book whatever the config) puts an unpkg.com URL in
    # every page. Thebe is off (launch_buttons.thebe: false): drop its scripts, so that
    # no page names a CDN.
    if "script_files" in context:
        context["script_files"] = [js for js in context["script_files"] if not _is_thebe_script(js)]


def setup(app):
    app.connect("config-inited", _on_config_inited)
    app.connect("source-read", _on_source_read)
    app.connect("doctree-read", _on_doctree_read)
    app.connect("html-page-context", _on_html_page_context)
    app.connect("build-finished", _on_build_finished)
    app.add_css_file("course.css")
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
