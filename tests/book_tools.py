"""The book's own tools, for the tests of the book: the solution transform and chapter
helpers ``book/_tools/course.py`` and the notebook tool ``book/_tools/notebooks.py`` are
scripts in the book's tree, not parts of the companion package. ``book/_tools`` is on the
tests' path (``pythonpath`` in ``pyproject.toml``); ``notebooks`` is loaded from its file
under another name. ``ROOT`` is the repository root."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import course  # noqa: F401  (book/_tools/course.py)

ROOT = Path(__file__).resolve().parents[1]


def _load_notebooks_tool():
    spec = importlib.util.spec_from_file_location("course_notebooks", ROOT / "book" / "_tools" / "notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


notebooks = _load_notebooks_tool()
