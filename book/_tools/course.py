"""The course's one implementation of the solution transform, and the chapter helpers.

An exercise cell holds the reader's function with the solution between two marker lines::

    def euler_step(f, y, t, h):
        \"\"\"One explicit Euler step.\"\"\"
        # BEGIN SOLUTION
        return y + h * f(y, t)
        # END SOLUTION

:func:`split_solution` turns such code into a *stub* (each marked region replaced by
``raise NotImplementedError(...)`` at the marker's indentation) and a *solution* (the
code without the marker lines). Two callers use it, so the book and the notebooks
cannot drift apart:

- the book's Sphinx extension ``book/_ext/course_ext.py``, on Sphinx's ``source-read``
  event (:func:`book_source`, on the MyST text): the rendered chapter shows the stub,
  then the full solution collapsed behind "Show solution"; both cells execute (the stub
  only defines the function, the solution redefines it). The extension also puts an
  "Open in Colab" link (:func:`colab_badge`) under each chapter's title and copies
  MathJax 3 (:func:`mathjax_es5_dir`) into the HTML output, so math is typeset offline.
- ``book/_tools/notebooks.py`` (:func:`student_notebook`): the Colab notebooks in
  ``book/colab/`` get the stub only, and no ``remove-cell`` cells.

This module imports nothing from Sphinx, so the tools (run as scripts from this folder),
the extension and the tests (``pythonpath`` in ``pyproject.toml``) share it.
"""

from __future__ import annotations

import copy
import importlib.util
import re
from pathlib import Path
from urllib.parse import urlparse

# ----------------------------------------------------------------------------- markers

BEGIN_MARKER = "# BEGIN SOLUTION"
END_MARKER = "# END SOLUTION"
STUB_STATEMENT = 'raise NotImplementedError("...write your solution here...")'

_BEGIN = re.compile(r"^(?P<indent>[ \t]*)#[ \t]*BEGIN SOLUTION[ \t]*$")
_END = re.compile(r"^(?P<indent>[ \t]*)#[ \t]*END SOLUTION[ \t]*$")
# Anything that looks like a marker; used to reject near-misses ("# BEGIN SOLUTION:",
# "x = 1  # END SOLUTION") that would otherwise leak a solution into the stub silently.
_LOOSE = re.compile(r"#[ \t]*(BEGIN|END)[ \t]+SOLUTION\b", re.IGNORECASE)

SOLUTION_TAG = "hide-input"
SOLUTION_PROMPTS = {"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"}


class SolutionMarkerError(ValueError):
    """The ``# BEGIN SOLUTION`` / ``# END SOLUTION`` markers of a cell are malformed."""


def has_markers(code: str) -> bool:
    """Whether ``code`` contains anything that looks like a solution marker."""
    return bool(_LOOSE.search(code))


def split_solution(code: str, where: str = "cell", first_line: int = 1) -> tuple[str, str]:
    """Split exercise code into ``(stub, solution)``.

    ``stub``: each region between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` (marker
    lines included) is replaced by one ``raise NotImplementedError(...)`` line at the
    indentation of its ``# BEGIN SOLUTION`` marker. ``solution``: the code with the
    marker lines removed. Code without markers comes back unchanged, twice.

    Raises :class:`SolutionMarkerError` (naming ``where`` and the line, counted from
    ``first_line`` for the code's first line) for a marker that
    is not alone on its line, nested or unbalanced markers, an ``END`` indented
    differently from its ``BEGIN``, or a region at the top level of the cell (its stub
    would raise when the cell runs, so the notebook would not run top to bottom).
    """
    stub: list[str] = []
    solution: list[str] = []
    opened: tuple[int, str] | None = None  # (line number, indentation) of the open BEGIN
    for number, line in enumerate(code.split("\n"), start=first_line):
        begin, end = _BEGIN.match(line), _END.match(line)
        if not (begin or end) and _LOOSE.search(line):
            raise SolutionMarkerError(
                f"{where}, line {number}: a solution marker must be alone on its line, "
                f"exactly {BEGIN_MARKER!r} or {END_MARKER!r}; got {line.strip()!r}"
            )
        if begin:
            if opened is not None:
                raise SolutionMarkerError(
                    f"{where}, line {number}: {BEGIN_MARKER!r} inside the solution opened at "
                    f"line {opened[0]}; markers do not nest, close it with {END_MARKER!r} first"
                )
            if not begin["indent"]:
                raise SolutionMarkerError(
                    f"{where}, line {number}: {BEGIN_MARKER!r} at the top level of the cell; "
                    "put the solution inside the body of the reader's function, or the "
                    "stub would raise when the cell runs"
                )
            opened = (number, begin["indent"])
            stub.append(begin["indent"] + STUB_STATEMENT)
        elif end:
            if opened is None:
                raise SolutionMarkerError(
                    f"{where}, line {number}: {END_MARKER!r} without a {BEGIN_MARKER!r} before it"
                )
            if end["indent"] != opened[1]:
                raise SolutionMarkerError(
                    f"{where}, line {number}: {END_MARKER!r} is indented differently from the "
                    f"{BEGIN_MARKER!r} at line {opened[0]}"
                )
            opened = None
        else:
            solution.append(line)
            if opened is None:
                stub.append(line)
    if opened is not None:
        raise SolutionMarkerError(
            f"{where}, line {opened[0]}: {BEGIN_MARKER!r} is never closed by {END_MARKER!r}"
        )
    return "\n".join(stub), "\n".join(solution)


# ------------------------------------------------------------------- notebook transforms


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _with_tag(metadata: dict, tag: str) -> dict:
    metadata = copy.deepcopy(dict(metadata))
    tags = list(metadata.get("tags", []))
    if tag not in tags:
        tags.append(tag)
    metadata["tags"] = tags
    return metadata


def solution_metadata(metadata: dict) -> dict:
    """The metadata of a solution cell: the exercise cell's, plus collapsed behind "Show solution"."""
    metadata = _with_tag(metadata, SOLUTION_TAG)
    metadata["mystnb"] = {**metadata.get("mystnb", {}), **SOLUTION_PROMPTS}
    return metadata


_CODE_CELL = re.compile(r"^(?P<fence>`{3,}|~{3,})\{code-cell\}")
_ANY_FENCE = re.compile(r"^[ \t]{0,3}(?P<fence>`{3,}|~{3,})")
_COLON_OPTION = re.compile(r"^:(?P<key>[\w-]+):[ \t]*(?P<value>.*)$")


def _closes(line: str, fence: str) -> bool:
    return re.fullmatch(rf"[ \t]{{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*", line) is not None


def _cell_options(body: list[str]) -> tuple[dict, int]:
    """The options of a ``{code-cell}`` (YAML block or ``:key: value`` lines) and their length."""
    import yaml

    if body and body[0].strip() == "---":
        for k in range(1, len(body)):
            if body[k].strip() == "---":
                return (yaml.safe_load("\n".join(body[1:k])) or {}), k + 1
        return {}, 0  # unterminated: left for MyST to report
    options: dict = {}
    k = 0
    while k < len(body) and (m := _COLON_OPTION.match(body[k])):
        options[m["key"]] = yaml.safe_load(m["value"]) if m["value"] else None
        k += 1
    return options, k


def book_source(text: str, name: str = "chapter") -> str:
    """A MyST chapter as the book renders it: each exercise cell becomes two cells.

    The stub (visible, the cell's options unchanged) and, right after it, the solution
    (the cell's options plus tag ``hide-input``: collapsed behind "Show solution").
    Both execute. The rest of the text is untouched, so Sphinx's line numbers stay
    right up to the first exercise.
    """
    import yaml

    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        opening = _ANY_FENCE.match(lines[i])
        if not opening:
            out.append(lines[i])
            i += 1
            continue
        fence = opening["fence"]
        j = i + 1
        while j < len(lines) and not _closes(lines[j], fence):
            j += 1
        if j == len(lines) or not _CODE_CELL.match(lines[i]):
            out += lines[i : j + 1]  # another fenced block (or an unclosed one): as is
            i = j + 1
            continue
        body = lines[i + 1 : j]
        options, n_options = _cell_options(body)
        code = "\n".join(body[n_options:])
        if not has_markers(code):
            out += lines[i : j + 1]
        else:
            stub, solution = split_solution(code, where=name, first_line=i + 2 + n_options)
            meta = yaml.safe_dump(solution_metadata(options), sort_keys=False, default_flow_style=None)
            out += [lines[i], *body[:n_options], stub, lines[j], ""]
            out += [lines[i], "---", meta.rstrip("\n"), "---", solution.lstrip("\n"), lines[j]]
        i = j + 1
    return "\n".join(out)


def student_notebook(nb, name: str = "notebook"):
    """The notebook a student gets: stubs only, no ``remove-cell`` cells. Returns a copy."""
    nb = copy.deepcopy(nb)
    cells = []
    for index, cell in enumerate(nb.cells):
        if "remove-cell" in _tags(cell) or "remove_cell" in _tags(cell):
            continue
        if cell.cell_type == "code" and has_markers(cell.source):
            cell.source, _ = split_solution(cell.source, where=f"{name}, cell {index + 1}")
        cells.append(cell)
    nb.cells = cells
    return nb


# ----------------------------------------------------------------- chapters and Colab

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?\n)---[ \t]*(\n|\Z)", re.DOTALL)


def is_jupytext_myst(text: str) -> bool:
    """Whether ``text`` is a jupytext MyST notebook (front matter with jupytext/kernelspec)."""
    import yaml

    match = _FRONT_MATTER.match(text)
    if not match:
        return False
    try:
        front = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return False
    return isinstance(front, dict) and ("jupytext" in front or "kernelspec" in front)


def read_myst(text: str):
    """Read a jupytext MyST markdown notebook (the chapters' format) into nbformat."""
    import jupytext

    return jupytext.reads(text, fmt="md:myst")


def is_notebook_chapter(text: str) -> bool:
    """A chapter that gets a Colab notebook: a jupytext MyST file with code cells."""
    return is_jupytext_myst(text) and any(c.cell_type == "code" for c in read_myst(text).cells)


def github_owner_repo(repository_url: str) -> tuple[str, str]:
    """``("owner", "repo")`` of a ``https://github.com/owner/repo`` URL."""
    parsed = urlparse(repository_url)
    parts = [p for p in parsed.path.split("/") if p]
    if parsed.netloc.lower() not in ("github.com", "www.github.com") or len(parts) != 2:
        raise ValueError(
            f"repository url must look like https://github.com/<owner>/<repo>, got {repository_url!r}"
        )
    owner, repo = parts
    return owner, repo.removesuffix(".git")


def colab_url(repository_url: str, stem: str, branch: str = "main") -> str:
    """Where Colab opens the student notebook ``book/colab/<stem>.ipynb`` of the repository."""
    owner, repo = github_owner_repo(repository_url)
    return f"https://colab.research.google.com/github/{owner}/{repo}/blob/{branch}/book/colab/{stem}.ipynb"


COLAB_LINK_CLASS = "colab-link"


def colab_badge(url: str) -> str:
    """The "Open in Colab" link: a styled text link (no external image to fetch)."""
    return (
        f'<div class="colab-badge"><a class="{COLAB_LINK_CLASS} reference external" '
        f'id="{COLAB_LINK_CLASS}" href="{url}" target="_blank" rel="noopener">'
        "&#9654; Open in Colab</a></div>"
    )


# -------------------------------------------------------------------------- MathJax

MATHJAX_PATH = "mathjax/es5/tex-chtml.js"  # relative to _static, what _config.yml sets


def mathjax_es5_dir() -> Path:
    """The MathJax 3 ``es5`` folder shipped by the django-static-mathjax package."""
    spec = importlib.util.find_spec("mathjax")  # no import: the package's __init__ is Django's
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("MathJax 3 not found: pip install django-static-mathjax")
    es5 = Path(list(spec.submodule_search_locations)[0]) / "static" / "mathjax" / "es5"
    if not (es5 / "tex-chtml.js").is_file():
        raise RuntimeError(f"MathJax 3 not found: no tex-chtml.js in {es5}")
    return es5


COURSE_CSS = """\
/* Written by book/_ext/course_ext.py (book/_tools/course.py) */
.colab-badge { margin: 0.2rem 0 1.2rem 0; }
a.colab-link, a.colab-link:visited {
  display: inline-block; padding: 0.25em 0.8em; border-radius: 0.35em;
  background: #f9ab00; color: #1f1f1f; font-weight: 600; font-size: 0.9em;
  text-decoration: none; border: 1px solid #e09400;
}
a.colab-link:hover { background: #ffc233; color: #000; text-decoration: none; }
/* Code and outputs: 79 columns (the chapters' limit) fit the content column at 1280 px,
   with room to spare, so that no block scrolls sideways (the browser check asserts it). */
div.highlight pre, div.cell_output pre { font-size: 12px; }
/* A printed line longer than the column wraps instead of scrolling (code does not
   need it: the chapters' code is formatted to 79 columns). */
div.cell_output pre { white-space: pre-wrap; overflow-wrap: anywhere; }
/* Dark mode: Matplotlib draws black text on a transparent background; give figures and
   animations a light card so that they stay readable. */
html[data-theme="dark"] div.cell_output img,
html[data-theme="dark"] div.animation { background: #fff; border-radius: 4px; }
"""
