"""Execute every chapter once, in parallel, into the book's execution cache.

    .venv/bin/python .ci/execute_chapters.py [--jobs 2] [--if-stale] [--only NN ...]

``jupyter-book build`` (``execute_notebooks: cache`` in ``_config.yml``) takes each
chapter's outputs from jupyter-cache (``_build/.jupyter_cache``) when the cache holds a
notebook with the same code cells, and executes the chapter itself otherwise. This
script fills that cache the way myst-nb would, but ``--jobs`` chapters at a time:

* each chapter is read exactly as the build reads it: the course extension's
  ``source-read`` transform (:func:`course.book_source`: stub + solution cells), then
  myst-nb's MyST-notebook reader with the ``parse:`` settings of ``_config.yml``; so
  jupyter-cache's key (kernelspec + code cells and their metadata) is the build's key;
* executed like myst-nb's cache mode (``jupyter_cache.executors.utils.single_nb_execution``,
  working directory ``book/``, ``allow_errors=False``, the ``execute.timeout`` of
  ``_config.yml``): a cell that raises (a hidden assert) fails this script, names the
  chapter and prints the traceback;
* the cache is cleared first, then every chapter's executed notebook is stored; the
  *fingerprint* of what the outputs depend on (chapters, the course extension, the
  companion's files, ``_config.yml``, the interpreter and the versions of the installed
  packages) is written next to it. ``--if-stale`` does nothing when the stored
  fingerprint is the current one, so the build never shows outputs of older code.

Exit status: 0 when every chapter ran, 1 otherwise.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import importlib.metadata
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "_build" / ".jupyter_cache"
STAMP = CACHE / "course-fingerprint.txt"
sys.path.insert(0, str(ROOT / "book" / "_tools"))
sys.path.insert(0, str(ROOT / "book" / "_ext"))


def _config() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))


def chapters() -> list[Path]:
    import notebooks  # book/_tools/notebooks.py

    return list(notebooks.chapter_sources(ROOT))


def fingerprint() -> str:
    """SHA-256 of everything a chapter's outputs depend on."""
    h = hashlib.sha256()
    files = [ROOT / "_config.yml", ROOT / "_toc.yml"]
    for folder in ("book", "companion"):
        for path in sorted((ROOT / folder).rglob("*")):
            parts = path.relative_to(ROOT).parts
            transient = any(q == "__pycache__" or q.startswith(".") for q in parts)  # caches, checkpoints of editors
            if path.is_file() and not transient and parts[:2] != ("book", "colab"):
                files.append(path)
    for path in files:
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(sys.executable.encode())
    for dist in sorted(importlib.metadata.distributions(), key=lambda d: d.metadata["Name"].lower()):
        h.update(f"{dist.metadata['Name']}=={dist.version}\n".encode())
    return h.hexdigest()


def read_as_the_build_does(path: Path):
    """The notebook myst-nb builds from ``path`` (course transform, myst-nb reader)."""
    import course  # book/_tools/course.py
    from myst_nb.core.read import read_myst_markdown_notebook
    from myst_parser.config.main import MdParserConfig

    parse = _config().get("parse", {})
    md_config = MdParserConfig(
        enable_extensions=set(parse.get("myst_enable_extensions", [])),
        dmath_double_inline=parse.get("myst_dmath_double_inline", False),
    )
    text = course.book_source(path.read_text(encoding="utf-8"), name=str(path.relative_to(ROOT)))
    return read_myst_markdown_notebook(text, config=md_config, add_source_map=True, path=str(path))


def _execute(path_str: str, timeout: int):
    """Run in a worker process: execute one chapter, return (notebook, seconds, error)."""
    from jupyter_cache.executors.utils import single_nb_execution

    path = Path(path_str)
    nb = read_as_the_build_does(path)
    result = single_nb_execution(nb, cwd=str(path.parent), allow_errors=False, timeout=timeout, meta_override=True)
    error = None if result.err is None else (result.exc_string or repr(result.err))
    return nb, result.time, error


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jobs", type=int, default=int(os.environ.get("CHAPTER_JOBS", "2")))
    p.add_argument("--if-stale", action="store_true", help="do nothing if the cache is up to date")
    p.add_argument("--only", nargs="*", default=None, help="chapter prefixes (e.g. 01 05); default: all")
    p.add_argument("--cache", type=Path, default=CACHE, help=f"jupyter-cache folder (default {CACHE})")
    a = p.parse_args(argv)
    stamp = a.cache / STAMP.name

    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    paths = chapters()
    if a.only:
        paths = [q for q in paths if any(q.name.startswith(o) for o in a.only)]
    if not paths:
        print("error: no chapter to execute", file=sys.stderr)
        return 1
    current = fingerprint()
    cache = get_cache(str(a.cache))
    if a.if_stale and a.only is None and stamp.is_file() and stamp.read_text().strip() == current:
        missing = []
        for q in paths:
            try:
                cache.match_cache_notebook(read_as_the_build_does(q))
            except KeyError:
                missing.append(q.name)
        if not missing:
            print(f"execute_chapters: the cache holds every chapter for the current code ({a.cache})")
            return 0
    if a.only is None:
        cache.clear_cache()
        stamp.unlink(missing_ok=True)
    timeout = int(_config().get("execute", {}).get("timeout", 600))
    # largest chapters first, so that two workers finish together
    paths.sort(key=lambda q: q.stat().st_size, reverse=True)
    t0 = time.perf_counter()
    failed = []
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        futures = {pool.submit(_execute, str(q), timeout): q for q in paths}
        for future in concurrent.futures.as_completed(futures):
            q = futures[future]
            try:
                nb, seconds, error = future.result()
            except Exception as e:  # the worker itself failed (kernel died, ...)
                nb, seconds, error = None, float("nan"), repr(e)
            if error is not None:
                failed.append(q.name)
                print(f"FAILED {q.relative_to(ROOT)} ({seconds:.1f} s):\n{error}", file=sys.stderr, flush=True)
                continue
            cache.cache_notebook_bundle(
                CacheBundleIn(nb, str(q), data={"execution_seconds": seconds}), check_validity=False, overwrite=True)
            print(f"  {q.relative_to(ROOT)}  {seconds:6.1f} s", flush=True)
    print(f"execute_chapters: {len(paths) - len(failed)}/{len(paths)} chapters in "
          f"{time.perf_counter() - t0:.1f} s with {a.jobs} workers")
    if failed:
        print(f"error: chapters with a failing cell: {', '.join(failed)}", file=sys.stderr)
        return 1
    if a.only is None:
        stamp.write_text(current + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
