"""The claims of book/intro.md. The introduction is a plain page without a kernel (a
notebook would give it an empty Colab notebook), so its checkable claims are tested here
instead of in a ``remove-cell``."""

from __future__ import annotations

import re
from collections import Counter

from book_tools import ROOT, notebooks

from companion import exercises

INTRO = (ROOT / "book" / "intro.md").read_text(encoding="utf-8")


def test_every_chapter_ends_with_two_to_four_exercises():
    # "Each chapter ends with two to four exercises."
    assert "Each chapter ends with two to four exercises" in INTRO
    per_chapter = Counter(exercises.get(name).chapter for name in exercises.names())
    n_chapters = len(notebooks.chapter_sources(ROOT))
    assert sorted(per_chapter) == list(range(1, n_chapters + 1))
    assert all(2 <= count <= 4 for count in per_chapter.values()), per_chapter


def test_the_map_of_the_course_links_every_chapter_in_book_order():
    section = INTRO[INTRO.index("## Map of the course"):]
    linked = re.findall(r"^\d+\. \{doc\}`([^`]+)`", section, flags=re.MULTILINE)
    chapters = [path.stem for path in notebooks.chapter_sources(ROOT)]
    assert linked == chapters
