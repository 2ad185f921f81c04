"""book/_tools/plain_markdown.py: the Colab notebooks' markdown has no MyST left, and
reads as the rendered book does (citations, equation numbers, admonitions)."""

from __future__ import annotations

import sys

import nbformat
import pytest
from book_tools import ROOT, notebooks

sys.path.insert(0, str(ROOT / "book" / "_tools"))
import plain_markdown as pm  # noqa: E402

URL = "https://owner.github.io/repo/"
CHAPTERS = notebooks.chapter_sources(ROOT)


def context(**kw):
    ctx = pm.Context(book_url=URL, docname="book/03_x")
    ctx.citations = {"song2021score": "Song et al., 2021", "anderson1982reverse": "Anderson, 1982"}
    ctx.equations = {"eq-a": ("book/03_x", 1), "eq-b": ("book/03_x", 2), "eq-sde": ("book/02_y", 4)}
    ctx.titles = {"book/02_y": "2. Stochastic differential equations", "book/03_x": "3. Reverse"}
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def test_citations_become_author_year_links():
    out = pm.to_plain("as shown {cite}`song2021score,anderson1982reverse`.", context())
    refs = f"{URL}book/references.html"
    assert out == f"as shown ([Song et al., 2021]({refs}); [Anderson, 1982]({refs}))."
    assert pm.to_plain("{cite:t}`song2021score`", context()) == f"[Song et al. (2021)]({refs})"


def test_the_book_numbers_equations_through_all_its_pages(tmp_path):
    (tmp_path / "a.md").write_text("$$\nx\n$$ (eq-a1)\n\n$$\ny\n$$ (eq-a2)\n")
    (tmp_path / "b.md").write_text("$$\nz\n$$\n\n$$\nw\n$$ (eq-b1)\n")  # the first is unnumbered
    assert pm.book_equation_numbers(tmp_path, ["a", "b"]) == {"a": {"eq-a1": 1, "eq-a2": 2}, "b": {"eq-b1": 3}}


def test_equation_references_and_labels_carry_the_books_numbers():
    text = "$$\nx = 1\n$$ (eq-b)\n\nBy {eq}`eq-b` and {eq}`eq-sde`."
    out = pm.to_plain(text, context())
    assert "\\tag{2}\n$$" in out and "(eq-b)" not in out
    assert f"[Eq. (2)]({URL}book/03_x.html#equation-eq-b)" in out
    assert f"[Eq. (4) of chapter 2]({URL}book/02_y.html#equation-eq-sde)" in out


def test_indented_labelled_equation_in_a_list():
    text = "- item\n\n  $$\n  y = 2\n  $$ (eq-a)\n"
    out = pm.to_plain(text, context())
    assert "  \\tag{1}\n  $$" in out and not pm.leftover_myst(out)


def test_directives_become_plain_markdown():
    text = "\n".join([
        "(sec-target)=",
        "% a comment",
        ":::{note}",
        "See {doc}`02_y`.",
        ":::",
        "",
        "```{dropdown} Answer",
        ":open:",
        "It is $\\sigma^2$ {cite}`song2021score`.",
        "```",
        "",
        "````{admonition} Why?",
        "```{tip}",
        "nested",
        "```",
        "````",
    ])
    out = pm.to_plain(text, context())
    assert not pm.leftover_myst(out), pm.leftover_myst(out)
    assert "> **Note**" in out and f"> See [2. Stochastic differential equations]({URL}book/02_y.html)." in out
    assert "<details><summary>Answer</summary>" in out and "</details>" in out
    assert "It is $\\sigma^2$ ([Song et al., 2021](" in out
    assert "> **Why?**" in out and "> > **Tip**" in out
    assert "sec-target" not in out and "a comment" not in out


def test_math_is_left_alone():
    text = "$$\n\\{a\\}`b` % not a comment\n$$"
    assert pm.to_plain(text, context()) == text


def test_api_roles_link_to_the_api_page():
    out = pm.to_plain("{py:func}`~companion.sampling.euler_maruyama`", context())
    assert out == f"[`euler_maruyama`]({URL}book/api.html#companion.sampling.euler_maruyama)"


def test_bib_citations_parse_the_books_bibliography():
    cites = pm.bib_citations((ROOT / "references.bib").read_text(encoding="utf-8"))
    assert cites["song2021score"] == "Song et al., 2021"
    assert cites["anderson1982reverse"] == "Anderson, 1982"


@pytest.mark.parametrize("source", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_no_myst_survives_in_a_colab_notebook(source):
    nb = nbformat.read(ROOT / "book" / "colab" / f"{source.stem}.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            assert not pm.leftover_myst(cell.source), (source.stem, pm.leftover_myst(cell.source))
            assert "{cite}" not in cell.source and "{eq}" not in cell.source
    # every labelled equation of the chapter is tagged with its number in the book
    numbers = pm.book_equation_numbers(ROOT, notebooks.toc_files(ROOT))
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    docname = str(source.relative_to(ROOT).with_suffix(""))
    for label, n in numbers[docname].items():
        assert f"\\tag{{{n}}}" in text, (source.stem, label, n)
