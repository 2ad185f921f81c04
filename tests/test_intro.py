"""The claims of book/intro.md. The introduction is a plain page without a kernel (a
notebook would give it an empty Colab notebook), so its checkable claims are tested here
instead of in a ``remove-cell``."""

from __future__ import annotations

import re
from collections import Counter

from book_tools import ROOT, notebooks

from companion import exercises

INTRO = (ROOT / "book" / "intro.md").read_text(encoding="utf-8")


def test_every_chapter_ends_with_three_to_five_exercises():
    # "Each chapter ends with three to five exercises."
    assert "Each chapter ends with three to five exercises" in INTRO
    per_chapter = Counter(exercises.get(name).chapter for name in exercises.names())
    # a chapter may run over two pages (07_images, 07_inpainting): count chapter numbers
    n_chapters = len({path.stem[:2] for path in notebooks.chapter_sources(ROOT)})
    assert sorted(per_chapter) == list(range(1, n_chapters + 1))
    assert all(3 <= count <= 5 for count in per_chapter.values()), per_chapter


def test_the_map_of_the_course_links_every_chapter_in_book_order():
    section = INTRO[INTRO.index("## Map of the course"):]
    items = re.split(r"^\d+\. ", section, flags=re.MULTILINE)[1:]  # one per numbered item
    chapters = [path.stem for path in notebooks.chapter_sources(ROOT)]
    # each item names its chapter's pages (a chapter may have two: 07_images, 07_inpainting)
    named = [stem for item in items for stem in re.findall(r"\{doc\}`(\d\d_\w+)`", item)]
    assert named == chapters
    for number, item in enumerate(items[: len({c[:2] for c in chapters})], start=1):
        assert re.match(r"\{doc\}`%02d_" % number, item), item


def test_the_figures_of_the_introduction_exist_and_parse():
    from xml.dom import minidom

    figures = re.findall(r"^```\{figure\} (\S+)", INTRO, flags=re.MULTILINE)
    assert figures, "the pipeline picture"
    for figure in figures:
        path = ROOT / "book" / figure
        assert path.is_file(), figure
        if path.suffix == ".svg":
            minidom.parse(str(path))  # well-formed, so the browser draws it


def test_the_progress_file_is_where_the_introduction_says(monkeypatch):
    # "~/.local/share/score-sde-course/progress.json on Linux and Colab"
    import sys

    from companion.exercises import _progress

    assert "~/.local/share/score-sde-course/progress.json" in INTRO
    assert "COMPANION_PROGRESS_FILE" in INTRO and _progress.PROGRESS_ENV == "COMPANION_PROGRESS_FILE"
    monkeypatch.delenv(_progress.PROGRESS_ENV, raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    path = exercises.progress_path()
    assert str(path).replace(str(_progress.Path.home()), "~") == (
        "~/.local/share/score-sde-course/progress.json")


def test_every_exercise_section_shows_each_registered_exercise():
    # Each chapter's Exercises section (on its last page) defines and checks every exercise
    # registered for it.
    last_page = {int(path.stem[:2]): path for path in notebooks.chapter_sources(ROOT)}
    for chapter, path in last_page.items():
        text = path.read_text(encoding="utf-8")
        section = text[text.index("## Exercises"):]
        for name in [n for n in exercises.names() if exercises.get(n).chapter == chapter]:
            assert f"def {name}(" in section, (path.name, name)
            assert f'exercises.check("{name}", {name}' in section, (path.name, name)
