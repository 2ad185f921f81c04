"""Write the student notebooks ``book/colab/<stem>.ipynb`` that Colab opens.

    python book/_tools/notebooks.py           # (re)write book/colab/*.ipynb
    python book/_tools/notebooks.py --check   # exit 1 when one is missing or out of date
    python book/_tools/notebooks.py --list    # print the chapters (paths of their .md sources)

For every chapter of ``_toc.yml`` that is a jupytext MyST ``.md`` file with code cells,
the student notebook is the chapter with

- a first code cell that installs the companion package when it runs in Colab
  (``"google.colab" in sys.modules``) and does nothing anywhere else: it installs
  ``score-sde-companion==<version of pyproject.toml>`` from PyPI, or, failing that, the
  tag ``v<version>`` of ``repository.url`` of ``_config.yml``, or the environment
  variable ``COMPANION_SPEC`` when set (the tests install a local wheel this way); pip
  keeps a preinstalled JAX that the companion's ranges admit; the cell prints the
  device JAX runs on;
- every exercise solution replaced by its stub (``course.split_solution``, the very
  function the book uses; see ``book/_tools/course.py``);
- every ``remove-cell`` cell dropped (the hidden asserts), and no outputs;
- the markdown in plain Jupyter Markdown (``plain_markdown.to_plain``): citations,
  equation references and numbers, admonitions and dropdowns as the book shows them,
  linked to the published book (``book_url``), since Colab renders no MyST.

The output is stable: same sources, byte-identical notebooks (cell ids are derived from
the content, not drawn at random).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tomllib
from pathlib import Path

import nbformat
import yaml

# siblings in book/_tools: the folder is on the path when this file runs as a script,
# and on the tests' path (pyproject.toml)
import course  # the solution transform, shared with the book
import plain_markdown  # MyST -> plain Jupyter Markdown

ROOT = Path(__file__).resolve().parents[2]

COLAB_DIR = Path("book") / "colab"

INSTALL_CELL = '''\
# Setup for Colab: install the course's companion package, the release that goes with
# this book, keeping Colab's own JAX. Elsewhere this cell does nothing (locally, install
# it once with `pip install -e .` from a clone of the repository).
import importlib, os, subprocess, sys

if "google.colab" in sys.modules:
    specs = {default_specs}
    if "COMPANION_SPEC" in os.environ:  # e.g. a local wheel, for the tests
        specs = [os.environ["COMPANION_SPEC"]]
    for spec in specs:  # the release on PyPI first, its tag on GitHub if PyPI has none
        pip = [sys.executable, "-m", "pip", "install", "--quiet", spec]
        if subprocess.run(pip).returncode == 0:
            break
    else:
        raise RuntimeError(f"could not install the companion from any of {{specs}}")
    importlib.invalidate_caches()
    import jax

    print(f"companion installed; JAX {{jax.__version__}} runs on {{jax.devices()[0].platform}}")'''


def load_config(root: Path = ROOT) -> dict:
    return yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8"))


def project_version(root: Path = ROOT) -> str:
    """The one version of the course: ``project.version`` of ``pyproject.toml``."""
    return tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]


def companion_specs(root: Path = ROOT) -> list[str]:
    """What the install cell tries, in order: the release of this book's version on PyPI,
    then the same version's tag in ``repository.url``."""
    url = load_config(root)["repository"]["url"]
    course.github_owner_repo(url)  # validates the URL
    version = project_version(root)
    return [f"score-sde-companion=={version}", f"score-sde-companion @ git+{url}@v{version}"]


def book_url(root: Path = ROOT) -> str:
    """Where the rendered book is published: ``html.baseurl`` of ``_config.yml``, else
    the GitHub Pages site of ``repository.url`` (``https://<owner>.github.io/<repo>/``)."""
    config = load_config(root)
    base = (config.get("html") or {}).get("baseurl")
    if base:
        return base.rstrip("/") + "/"
    owner, repo = course.github_owner_repo(config["repository"]["url"])
    return f"https://{owner}.github.io/{repo}/"


def toc_files(root: Path = ROOT) -> list[str]:
    """Every ``file:`` of ``_toc.yml`` (root first), in book order, without suffix."""
    toc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8"))
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            for key in ("chapters", "sections", "parts"):
                walk(entry.get(key))

    walk([{k: v for k, v in toc.items() if k in ("chapters", "parts", "sections")}])
    return files


def chapter_sources(root: Path = ROOT) -> list[Path]:
    """The toc's chapters that get a student notebook: jupytext ``.md`` with code cells."""
    sources = []
    for file in toc_files(root):
        path = root / file
        path = path if path.suffix else path.with_suffix(".md")
        if path.suffix == ".md" and path.is_file():
            if course.is_notebook_chapter(path.read_text(encoding="utf-8")):
                sources.append(path)
    return sources


def _cell_id(index: int, cell) -> str:
    digest = hashlib.sha1(f"{cell.cell_type}\0{cell.source}".encode()).hexdigest()[:8]
    return f"c{index:03d}-{digest}"


def student_notebook_text(source: Path, specs: list[str]) -> str:
    """The student notebook for chapter ``source``, as the exact text to write."""
    nb = course.read_myst(source.read_text(encoding="utf-8"))
    name = str(source.relative_to(ROOT)) if source.is_relative_to(ROOT) else str(source)
    nb = course.student_notebook(nb, name=name)
    docname = str(Path(name).with_suffix(""))
    ctx = plain_markdown.book_context(ROOT, docname, book_url(ROOT), toc_files(ROOT))
    listed = "".join(f"\n        {json.dumps(spec)}," for spec in specs)
    install = nbformat.v4.new_code_cell(INSTALL_CELL.format(default_specs=f"[{listed}\n    ]"))
    install.metadata = {"tags": ["colab-setup"]}
    nb.cells.insert(0, install)

    out = nbformat.v4.new_notebook()
    out.metadata = {
        "kernelspec": nb.metadata.get(
            "kernelspec", {"display_name": "Python 3", "language": "python", "name": "python3"}
        ),
        "language_info": {"name": "python"},
        "colab": {"provenance": [], "toc_visible": True},
    }
    for index, cell in enumerate(nb.cells):
        metadata = {k: v for k, v in dict(cell.get("metadata", {})).items() if k != "jupytext"}
        if cell.cell_type == "code":
            new = nbformat.v4.new_code_cell(cell.source, metadata=metadata)
        elif cell.cell_type == "markdown":
            new = nbformat.v4.new_markdown_cell(plain_markdown.to_plain(cell.source, ctx), metadata=metadata)
        else:
            new = nbformat.v4.new_raw_cell(cell.source, metadata=metadata)
        new.id = _cell_id(index, new)
        out.cells.append(new)
    nbformat.validate(out)
    return nbformat.writes(out, version=4) + "\n"


def expected(root: Path = ROOT) -> dict[Path, str]:
    """``{notebook path: text}`` for every chapter with a student notebook."""
    specs = companion_specs(root)
    return {
        root / COLAB_DIR / f"{source.stem}.ipynb": student_notebook_text(source, specs)
        for source in chapter_sources(root)
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="check book/colab/ is up to date, write nothing")
    parser.add_argument("--list", action="store_true", help="print the chapters' sources, one a line")
    args = parser.parse_args(argv)
    if args.list:
        for source in chapter_sources(ROOT):
            print(source.relative_to(ROOT))
        return 0

    want = expected(ROOT)
    colab = ROOT / COLAB_DIR
    stale = sorted(set(colab.glob("*.ipynb")) - set(want))
    if args.check:
        problems = []
        for path, text in want.items():
            rel = path.relative_to(ROOT)
            if not path.is_file():
                problems.append(f"{rel} is missing")
            elif path.read_text(encoding="utf-8") != text:
                problems.append(f"{rel} is out of date with its chapter")
        problems += [f"{p.relative_to(ROOT)} belongs to no chapter of _toc.yml" for p in stale]
        if problems:
            print("The Colab notebooks are not in sync with the chapters:", file=sys.stderr)
            for problem in problems:
                print(f"  - {problem}", file=sys.stderr)
            print("Run `python book/_tools/notebooks.py` and commit book/colab/.", file=sys.stderr)
            return 1
        print(f"book/colab/: {len(want)} notebook(s) in sync with their chapters.")
        return 0

    colab.mkdir(parents=True, exist_ok=True)
    for path, text in want.items():
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    for path in stale:
        path.unlink()
        print(f"removed {path.relative_to(ROOT)} (no chapter in _toc.yml)")
    print(f"book/colab/: {len(want)} notebook(s) up to date.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
