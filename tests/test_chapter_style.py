"""The chapters keep the house style (book/_tools/style.py): code cells within 79
columns, so that nothing scrolls sideways in the book, and companion names in the prose
linked to the API reference."""

from __future__ import annotations

import importlib.util

import pytest
from book_tools import ROOT

spec = importlib.util.spec_from_file_location("course_style", ROOT / "book" / "_tools" / "style.py")
style = importlib.util.module_from_spec(spec)
spec.loader.exec_module(style)

CHAPTERS = style.chapters()


@pytest.mark.parametrize("source", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_keeps_the_house_style(source):
    found = style.problems(source)
    assert not found, "run `python book/_tools/style.py`, then fix by hand what is left:\n" + "\n".join(found)


def test_fix_comments_moves_and_wraps_only_what_overflows():
    code = "x = 1  # short\ny = compute(a, b)  # " + "a long comment " * 6 + "\n# " + "word " * 20 + "\n"
    out = style.fix_comments(code)
    assert all(len(line) <= 79 for line in out.splitlines())
    assert out.startswith("x = 1  # short\n# a long comment")
    assert "y = compute(a, b)\n#" in out  # the code follows its moved comment


def test_api_names_in_prose_are_linked():
    text = "Call `sampling.euler_maruyama` or `toy.nothing_here`, not `x.y`.\n"
    out = style.link_api(text)
    assert "{py:obj}`sampling.euler_maruyama <companion.sampling.euler_maruyama>`" in out
    assert "`toy.nothing_here`" in out and "`x.y`" in out
