"""The book's own tools, for the tests of the book: the Sphinx extension
``book/_ext/course.py`` and the notebook tool ``book/_tools/notebooks.py`` are scripts in
the book's tree, not parts of the companion package, so they are loaded from their files.
``ROOT`` is the repository root."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))

import course  # noqa: E402,F401


def _load_notebooks_tool():
    spec = importlib.util.spec_from_file_location("course_notebooks", ROOT / "book" / "_tools" / "notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


notebooks = _load_notebooks_tool()
