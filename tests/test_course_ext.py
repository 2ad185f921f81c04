"""Unit tests of the solution transform and helpers of book/_tools/course.py."""

from __future__ import annotations

import textwrap

import nbformat
import pytest

from book_tools import course

STUB = course.STUB_STATEMENT


def code(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


EULER = code(
    '''
    def euler_step(f, y, t, h):
        """One explicit Euler step."""
        # BEGIN SOLUTION
        return y + h * f(y, t)
        # END SOLUTION
    '''
)


def test_stub_replaces_the_region_at_the_marker_indentation():
    stub, solution = course.split_solution(EULER)
    assert stub == code(
        f'''
        def euler_step(f, y, t, h):
            """One explicit Euler step."""
            {STUB}
        '''
    )
    assert solution == code(
        '''
        def euler_step(f, y, t, h):
            """One explicit Euler step."""
            return y + h * f(y, t)
        '''
    )


def test_stub_and_solution_both_execute_and_differ():
    stub, solution = course.split_solution(EULER)
    ns: dict = {}
    exec(stub, ns)  # defining the stub must not raise
    with pytest.raises(NotImplementedError, match="write your solution here"):
        ns["euler_step"](lambda y, t: -y, 1.0, 0.0, 0.1)
    exec(solution, ns)
    assert ns["euler_step"](lambda y, t: -y, 1.0, 0.0, 0.1) == pytest.approx(0.9)


def test_nested_indentation_and_several_regions_in_one_cell():
    src = code(
        """
        class Stepper:
            def step(self, y, h):
                # BEGIN SOLUTION
                return y - h * y
                # END SOLUTION

            def run(self, y, h, n):
                for _ in range(n):
                    # BEGIN SOLUTION
                    y = self.step(y, h)
                    # END SOLUTION
                return y
        """
    )
    stub, solution = course.split_solution(src)
    assert stub.splitlines() == [
        "class Stepper:",
        "    def step(self, y, h):",
        "        " + STUB,
        "",
        "    def run(self, y, h, n):",
        "        for _ in range(n):",
        "            " + STUB,
        "        return y",
    ]
    assert "BEGIN" not in solution and "END SOLUTION" not in solution
    assert "            y = self.step(y, h)" in solution.splitlines()
    ns: dict = {}
    exec(solution, ns)
    assert ns["Stepper"]().run(1.0, 0.5, 2) == pytest.approx(0.25)
    exec(stub, ns)  # still valid Python


def test_tabs_and_sloppy_spacing_of_a_marker_are_accepted():
    src = "def f(x):\n\t#BEGIN SOLUTION   \n\treturn x\n\t#   END SOLUTION\n"
    stub, solution = course.split_solution(src)
    assert stub == f"def f(x):\n\t{STUB}\n"
    assert solution == "def f(x):\n\treturn x\n"


def test_code_without_markers_is_untouched():
    src = "import numpy as np\nx = np.ones(3)  # a comment about a SOLUTION\n"
    assert not course.has_markers(src)
    assert course.split_solution(src) == (src, src)


@pytest.mark.parametrize(
    "src, message",
    [
        ("def f():\n    # BEGIN SOLUTION\n    return 1\n", "never closed"),
        ("def f():\n    return 1\n    # END SOLUTION\n", "without a '# BEGIN SOLUTION'"),
        (
            "def f():\n    # BEGIN SOLUTION\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION\n",
            "do not nest",
        ),
        ("def f():\n    # BEGIN SOLUTION\n    return 1\n  # END SOLUTION\n", "indented differently"),
        ("def f():\n    # BEGIN SOLUTION:\n    return 1\n    # END SOLUTION\n", "alone on its line"),
        ("def f():\n    return 1  # END SOLUTION\n", "alone on its line"),
        ("# BEGIN SOLUTION\nx = 1\n# END SOLUTION\n", "top level"),
    ],
)
def test_malformed_markers_raise_a_clear_error(src, message):
    with pytest.raises(course.SolutionMarkerError, match=message) as info:
        course.split_solution(src, where="book/01_odes.md, cell 7")
    assert "book/01_odes.md, cell 7, line " in str(info.value)


def _notebook(*cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    return nb


CHAPTER = code(
    """
    ---
    jupytext:
      text_representation:
        extension: .md
        format_name: myst
        format_version: 0.13
    kernelspec:
      display_name: Python 3
      language: python
      name: python3
    ---

    # Chapter

    Prose with $x$.

    ```{code-cell} ipython3
    :tags: [remove-cell]
    assert True
    ```

    ````markdown
    ```{code-cell} ipython3
    def shown_as_an_example():
        # BEGIN SOLUTION
        pass
        # END SOLUTION
    ```
    ````

    ```{code-cell} ipython3
    ---
    tags: [exercise]
    ---
    def f(x):
        \"\"\"Doc.\"\"\"
        # BEGIN SOLUTION
        return 2 * x
        # END SOLUTION
    ```

    ```{code-cell} ipython3
    def g(x):
        # BEGIN SOLUTION
        return x + 1
        # END SOLUTION
    ```

    ```{code-cell} ipython3
    print(f(1), g(1))
    ```
    """
)


def test_book_source_splits_exercise_cells_and_leaves_the_rest():
    out = course.book_source(CHAPTER)
    before = CHAPTER[: CHAPTER.index("tags: [exercise]")]
    assert out.startswith(before)  # untouched (line numbers kept) up to the first exercise
    assert "def shown_as_an_example():\n    # BEGIN SOLUTION" in out  # other fences as they were

    nb = course.read_myst(out)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.source.split("\n")[0] for c in cells] == [
        "assert True", "def f(x):", "def f(x):", "def g(x):", "def g(x):", "print(f(1), g(1))"
    ]
    stub_f, sol_f, stub_g, sol_g = cells[1:5]
    assert stub_f.source == f'def f(x):\n    """Doc."""\n    {STUB}'
    assert stub_f.metadata == {"tags": ["exercise"]}
    assert sol_f.source == 'def f(x):\n    """Doc."""\n    return 2 * x'
    assert sol_f.metadata["tags"] == ["exercise", "hide-input"]
    assert sol_f.metadata["mystnb"] == {"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"}
    assert stub_g.source == f"def g(x):\n    {STUB}" and "tags" not in stub_g.metadata
    assert sol_g.metadata["tags"] == ["hide-input"]
    assert cells[0].metadata == {"tags": ["remove-cell"]}

    ns: dict = {}
    for cell in cells[1:]:  # the book executes all of them, in order
        exec(cell.source, ns)
    assert ns["f"](1) == 2 and ns["g"](1) == 2


def test_book_source_reports_the_file_line_of_a_bad_marker():
    text = CHAPTER.replace("    return x + 1\n    # END SOLUTION\n", "    return x + 1\n")
    assert text != CHAPTER
    bad_line = text.split("\n").index("    # BEGIN SOLUTION", text.split("\n").index("def g(x):")) + 1
    with pytest.raises(course.SolutionMarkerError, match=rf"book/02_sdes.md, line {bad_line}: .* never closed"):
        course.book_source(text, name="book/02_sdes.md")


def test_book_source_of_a_chapter_without_exercises_is_identical():
    text = CHAPTER.split("````markdown")[0]
    assert course.book_source(text) == text


def test_student_notebook_has_stubs_only_and_no_removed_cells():
    nb = _notebook(
        nbformat.v4.new_markdown_cell("# Title"),
        nbformat.v4.new_code_cell(EULER),
        nbformat.v4.new_code_cell("assert True", metadata={"tags": ["remove-cell"]}),
        nbformat.v4.new_code_cell("print(1)", metadata={"tags": ["hide-input"]}),
    )
    out = course.student_notebook(nb)
    assert [c.source for c in out.cells] == ["# Title", course.split_solution(EULER)[0], "print(1)"]


def test_student_errors_name_the_notebook_and_cell():
    nb = _notebook(nbformat.v4.new_markdown_cell("# T"), nbformat.v4.new_code_cell("def f():\n    # BEGIN SOLUTION\n"))
    with pytest.raises(course.SolutionMarkerError, match=r"book/02_sdes, cell 2, line 2"):
        course.student_notebook(nb, name="book/02_sdes")


def test_is_notebook_chapter():
    assert course.is_jupytext_myst(CHAPTER) and course.is_notebook_chapter(CHAPTER)
    assert not course.is_jupytext_myst("# Just markdown\n\n$x$\n")
    no_code = CHAPTER.split("```{code-cell}")[0]
    assert course.is_jupytext_myst(no_code) and not course.is_notebook_chapter(no_code)


def test_colab_badge_is_a_local_styled_link():
    badge = course.colab_badge("https://colab.research.google.com/github/a/b/blob/main/book/colab/x.ipynb")
    assert 'id="colab-link"' in badge and 'class="colab-link' in badge and "<img" not in badge


def test_colab_url():
    url = course.colab_url("https://github.com/score-sde-course/score-sde-course", "01_odes")
    assert url == (
        "https://colab.research.google.com/github/score-sde-course/score-sde-course"
        "/blob/main/book/colab/01_odes.ipynb"
    )
    assert course.github_owner_repo("https://github.com/a/b.git") == ("a", "b")
    with pytest.raises(ValueError, match="repository url"):
        course.colab_url("https://gitlab.com/a/b", "01_odes")


def test_mathjax_ships_with_the_environment():
    assert (course.mathjax_es5_dir() / "tex-chtml.js").stat().st_size > 100_000


def test_the_transform_imports_no_sphinx_and_the_extension_wires_it():
    """book/_tools/course.py (the transform, used by the tools and the tests) imports
    nothing of Sphinx or docutils; book/_ext/course_ext.py, the extension registered in
    _config.yml, connects its handlers to the build."""
    import ast
    import importlib.util

    import yaml
    from book_tools import ROOT

    tree = ast.parse((ROOT / "book" / "_tools" / "course.py").read_text(encoding="utf-8"))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"sphinx", "docutils", "myst_nb", "myst_parser"}, imported
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    assert config["sphinx"]["local_extensions"] == {"course_ext": "book/_ext"}
    spec = importlib.util.spec_from_file_location("course_ext", ROOT / "book" / "_ext" / "course_ext.py")
    ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ext)
    assert ext.book_source is course.book_source  # the one transform

    class App:
        connected, css = [], []

        def connect(self, event, handler):
            self.connected.append(event)

        def add_css_file(self, name):
            self.css.append(name)

    app = App()
    meta = ext.setup(app)
    assert {"config-inited", "source-read", "doctree-read", "build-finished"} <= set(app.connected)
    assert app.css == ["course.css"] and meta["parallel_read_safe"]
