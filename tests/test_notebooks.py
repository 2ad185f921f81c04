"""The student notebooks of book/colab/ (book/_tools/notebooks.py) and the Colab path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest
from book_tools import ROOT, course, notebooks

CHAPTERS = notebooks.chapter_sources(ROOT)


def test_there_are_chapters_with_notebooks():
    assert CHAPTERS, "no chapter of _toc.yml is a jupytext .md with code cells"


def test_colab_notebooks_are_in_sync(capsys):
    rc = notebooks.main(["--check"])
    assert rc == 0, capsys.readouterr().err


def test_generation_is_stable():
    first, second = notebooks.expected(ROOT), notebooks.expected(ROOT)
    assert first == second
    for path, text in first.items():
        assert nbformat.reads(text, as_version=4).cells, path


def test_check_reports_an_out_of_date_notebook(tmp_path):
    for name in ("_config.yml", "_toc.yml", "references.bib", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "book", tmp_path / "book", ignore=shutil.ignore_patterns("__pycache__"))
    tool = [sys.executable, str(tmp_path / "book" / "_tools" / "notebooks.py")]
    assert subprocess.run([*tool, "--check"], capture_output=True).returncode == 0

    victim = tmp_path / "book" / "colab" / f"{CHAPTERS[0].stem}.ipynb"
    victim.write_text(victim.read_text().replace("NotImplementedError", "NotImplemented"))
    (tmp_path / "book" / "colab" / "99_orphan.ipynb").write_text("{}")
    result = subprocess.run([*tool, "--check"], capture_output=True, text=True)
    assert result.returncode == 1
    assert f"book/colab/{victim.name} is out of date" in result.stderr
    assert "99_orphan.ipynb belongs to no chapter" in result.stderr

    assert subprocess.run(tool, capture_output=True).returncode == 0  # regenerates
    assert subprocess.run([*tool, "--check"], capture_output=True).returncode == 0
    assert not (tmp_path / "book" / "colab" / "99_orphan.ipynb").exists()


@pytest.mark.parametrize("source", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_student_notebook_has_no_solution_and_no_removed_cell(source):
    chapter = course.read_myst(source.read_text(encoding="utf-8"))
    student = nbformat.read(ROOT / "book" / "colab" / f"{source.stem}.ipynb", as_version=4)
    nbformat.validate(student)
    text = "\n".join(c.source for c in student.cells)

    assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
    for cell in student.cells:
        assert "remove-cell" not in cell.metadata.get("tags", []), cell.source[:80]
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    for cell in chapter.cells:
        if "remove-cell" in cell.metadata.get("tags", []):
            assert cell.source.strip() not in text, f"a remove-cell cell leaked: {cell.source[:80]!r}"

    exercises = [c for c in chapter.cells if c.cell_type == "code" and course.has_markers(c.source)]
    stubs = [c for c in student.cells if course.STUB_STATEMENT in c.source]
    assert len(stubs) == len(exercises)
    for exercise in exercises:
        # Each marked region, as a block of lines, must be absent from the notebook.
        lines = exercise.source.split("\n")
        begins = [i for i, l in enumerate(lines) if l.strip() == course.BEGIN_MARKER]
        ends = [i for i, l in enumerate(lines) if l.strip() == course.END_MARKER]
        for b, e in zip(begins, ends):
            region = "\n".join(lines[b + 1 : e])
            if region.strip():
                assert region not in text, f"solution leaked into the student notebook: {region!r}"

    first = student.cells[0]
    assert first.cell_type == "code" and '"google.colab" in sys.modules' in first.source
    assert "score-sde-companion @ git+" in first.source and "COMPANION_SPEC" in first.source


def test_install_cell_does_nothing_outside_colab(monkeypatch):
    source = notebooks.INSTALL_CELL.format(default_specs='["score-sde-companion @ git+https://x/y"]')

    def forbidden(*args, **kwargs):
        raise AssertionError(f"the install cell ran a command outside Colab: {args}")

    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(subprocess, "run", forbidden)
    exec(compile(source, "install-cell", "exec"), {})


def test_the_version_and_the_repository_agree_everywhere():
    """One version (pyproject.toml) and one repository (_config.yml's repository.url):
    every student notebook installs that release, then that tag; the README names the
    published book and the package; the companion reports the version."""
    import companion

    version = notebooks.project_version(ROOT)
    url = notebooks.load_config(ROOT)["repository"]["url"]
    for source in CHAPTERS:
        first = nbformat.read(ROOT / "book" / "colab" / f"{source.stem}.ipynb", as_version=4).cells[0]
        assert f'"score-sde-companion=={version}"' in first.source, source.stem
        assert f'"score-sde-companion @ git+{url}@v{version}"' in first.source, source.stem
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert notebooks.book_url(ROOT) in readme
    assert "pip install score-sde-companion" in readme
    assert companion.__version__ == version


# ----------------------------------------------------------------------- the Colab path

DRIVER = textwrap.dedent(
    """
    import sys, nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(sys.argv[1], as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(
        "import sys, companion, google.colab\\n"
        "print('KERNEL', sys.executable)\\n"
        "print('COMPANION', companion.__file__)"
    ))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": "."}}).execute()
    nbformat.write(nb, sys.argv[2])
    """
)


def _run(cmd, **kwargs):
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.mark.slow
def test_chapter_1_runs_as_in_colab(tmp_path):
    """Wheel + fresh venv + a fake google.colab: the install cell installs the companion.

    The notebook runs top to bottom with its exercises still stubs, from a directory
    outside the repository, so only the installed wheel can provide ``companion``.
    """
    chapter = next((p for p in CHAPTERS if p.stem.startswith("01_")), None)
    assert chapter is not None, "chapter 1 (book/01_*.md) is missing from _toc.yml"
    notebook = ROOT / "book" / "colab" / f"{chapter.stem}.ipynb"
    constraints = ROOT / "constraints.txt"

    # 1. A wheel of the package, built from a copy (the build must not touch the tree).
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "companion", src / "companion", ignore=shutil.ignore_patterns("__pycache__"))
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"), str(src)])
    (wheel,) = (tmp_path / "dist").glob("score_sde_companion-*.whl")

    # 2. A fresh venv with a kernel, and a stand-in google.colab imported at start-up
    #    (Colab imports it in every kernel; `google` stays a namespace package).
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "JUPYTER"))}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        PIP_CONSTRAINT=str(constraints),  # `-c constraints.txt` for every pip call, the cell's too
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        COMPANION_SPEC=str(wheel),
    )
    env.pop("MPLBACKEND", None)
    _run([str(python), "-m", "pip", "install", "--quiet", "ipykernel", "nbclient"], env=env)
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    stub = site / "google" / "colab"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text('"""Stand-in for Colab\'s google.colab (tests only)."""\n')
    # jax imports google.colab.output at import time when google.colab is loaded.
    (stub / "output.py").write_text(
        "def _unavailable(*args, **kwargs):\n    raise RuntimeError('google.colab stand-in')\n\n"
        "register_callback = eval_js = clear = redirect_to_element = _unavailable\n"
    )
    (site / "zz_fake_colab.pth").write_text("import google.colab\n")
    check = _run([str(python), "-c", "import sys; print('google.colab' in sys.modules)"], env=env)
    assert check.stdout.strip() == "True"
    not_yet = subprocess.run([str(python), "-c", "import companion"], env=env, cwd=tmp_path, capture_output=True)
    assert not_yet.returncode != 0, "companion is importable before the install cell ran"

    # 3. Execute the student notebook with that venv's kernel, outside the repository.
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(notebook, work / notebook.name)
    (work / "driver.py").write_text(DRIVER)
    _run([str(python), "driver.py", notebook.name, "executed.ipynb"], env=env, cwd=work, timeout=1500)

    executed = nbformat.read(work / "executed.ipynb", as_version=4)
    printed = "".join(
        o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs
    )
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    kernel = next(line for line in printed.splitlines() if line.startswith("KERNEL "))
    where = next(line for line in printed.splitlines() if line.startswith("COMPANION "))
    assert kernel.split(" ", 1)[1].startswith(str(venv)), kernel
    assert where.split(" ", 1)[1].startswith(str(site)), f"companion not from the wheel: {where}"
    assert not Path(where.split(" ", 1)[1]).resolve().is_relative_to(ROOT)
    # The exercises are stubs in the student notebook: each check says so and moves on.
    n_exercises = sum(course.STUB_STATEMENT in c.source for c in executed.cells)
    assert printed.count("not attempted yet") >= n_exercises, printed[-3000:]
