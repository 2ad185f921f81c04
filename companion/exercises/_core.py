"""The machinery behind :func:`check`: a registry of exercises and their hidden tests.

An exercise is a name, the chapter it belongs to, two hints (the first points to the
idea and is printed by :func:`check` on a failure; the second, more concrete, is what
:func:`hint` gives), a reference solution and a *hidden test*: a function ``test(fn)`` that calls the reader's ``fn`` on inputs the
reader does not see and raises :class:`Mismatch` when an answer is wrong. The message
of a :class:`Mismatch` says *how* the answer is wrong (shape, NaN, size of the error,
which case) and never what the right value is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import traceback
import types
import weakref
from pathlib import Path
from typing import Any, Callable

import numpy as np

from companion.exercises._cache import fingerprint, same
from companion.exercises._progress import progress_path, read_passed, record_pass
from companion.exercises._routes import WHY, expand
from companion.exercises._words import error_size

__all__ = [
    "Mismatch", "WriteItYourself", "Exercise", "exercise", "blocking", "Text", "hint", "names",
    "get", "check", "Progress", "progress", "as_array",
    "is_close", "as_pair",
    "expect_close", "error_size", "watched",
]


class Mismatch(AssertionError):
    """A hidden test found the reader's answer wrong; the message says how."""


class WriteItYourself(Mismatch):
    """The reader's function called the companion's own answer to the exercise."""


@dataclasses.dataclass(frozen=True)
class Exercise:
    name: str
    chapter: int
    hint: str
    test: Callable[[Callable], None]
    reference: Callable
    hint2: str = ""
    blocked: tuple[str, ...] = ()


_REGISTRY: dict[str, Exercise] = {}


def exercise(
    name: str,
    *,
    chapter: int,
    hint: str,
    reference: Callable,
    hint2: str = "",
    blocked: tuple[str, ...] = (),
):
    """Register ``test`` (the decorated function) as the hidden test of exercise ``name``.

    ``hint`` is printed by :func:`check` when an answer fails: it points to the idea
    (which equation, which quantity). ``hint2`` is the second, more concrete hint that
    :func:`hint` gives on request. Neither contains the answer's formula or code.
    ``blocked`` names the library functions that already compute the answer
    (``"module:attribute.path"``, e.g. ``"companion.sde:LinearSDE.reverse_drift"``, or a
    whole module ``"module:*"``, see :mod:`companion.exercises._routes`):
    while the hidden test runs, calling one of them fails with a kind
    "write it yourself" message.
    """
    blocked = expand(tuple(blocked))  # "module:*" and "module:Class.*" spelled out
    for path in blocked:
        _resolve(path)  # fail at import time on a typo

    def register(test: Callable[[Callable], None]):
        if name in _REGISTRY:
            raise ValueError(f"exercise {name!r} is registered twice")
        _REGISTRY[name] = Exercise(name, chapter, hint, test, reference, hint2, tuple(blocked))
        return test

    return register


def _resolve(path: str):
    """``"pkg.module:A.b"`` -> (owner of ``b``, ``"b"``, the object)."""
    module, _, attrs = path.partition(":")
    owner = importlib.import_module(module)
    *parents, last = attrs.split(".")
    for a in parents:
        owner = getattr(owner, a)
    return owner, last, getattr(owner, last)


_INHERITED = object()


@contextlib.contextmanager
def blocking(paths: tuple[str, ...], fn: Callable):
    """Replace the library functions ``paths`` by ones that raise :class:`WriteItYourself`
    (also where ``fn``'s module imported them by name), and put everything back after."""
    undo = []

    def stand_in(path, original):
        short = path.replace(":", ".")

        @functools.wraps(original)
        def refuse(*args, **kwargs):
            raise WriteItYourself(
                f"your function calls {short}, which {WHY.get(path, 'already computes the answer')}. "
                "The point of this exercise is to write it yourself (the chapter's "
                "equations are all you need); the check does not accept the library's "
                "version."
            )

        return refuse

    try:
        originals = {}
        for path in paths:
            owner, attr, original = _resolve(path)
            # an inherited method (not in the class's own dict) is deleted again afterwards
            raw = owner.__dict__.get(attr, _INHERITED) if isinstance(owner, type) else original
            replacement = stand_in(path, original)
            if isinstance(raw, (staticmethod, classmethod)):
                replacement = type(raw)(replacement)
            undo.append((owner, attr, raw))
            setattr(owner, attr, replacement)
            originals[id(original)] = replacement
        if id(fn) in originals or id(getattr(fn, "__func__", None)) in originals:
            originals[id(fn)](fn)  # the answer *is* the library's function: refuse kindly
        namespace = getattr(fn, "__globals__", None)
        if isinstance(namespace, dict):
            for key, value in list(namespace.items()):
                if id(value) in originals:
                    undo.append((namespace, key, value))
                    namespace[key] = originals[id(value)]
        # ... and where fn holds them itself: a default argument, a closure's variable
        defaults = getattr(fn, "__defaults__", None) or ()
        if any(id(v) in originals for v in defaults):
            undo.append((fn, "__defaults__", defaults))
            fn.__defaults__ = tuple(originals.get(id(v), v) for v in defaults)
        for cell in getattr(fn, "__closure__", None) or ():
            with contextlib.suppress(ValueError):  # an empty cell
                if id(cell.cell_contents) in originals:
                    undo.append((cell, "cell_contents", cell.cell_contents))
                    cell.cell_contents = originals[id(cell.cell_contents)]
        yield
    finally:
        for owner, attr, raw in reversed(undo):
            if isinstance(owner, dict):
                owner[attr] = raw
            elif raw is _INHERITED:
                delattr(owner, attr)
            else:
                setattr(owner, attr, raw)


def watched(fn: Callable, paths: tuple[str, ...]) -> Callable:
    """``fn`` with the blocked functions ``paths`` refused *only while it runs* (and while
    any function it returns runs): the hidden test's own computations, a diagnosis that
    calls ``numpy.linalg.inv`` say, are never taken for the reader's (issue 27)."""
    if not paths:
        return fn
    depth = [0]

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if depth[0]:  # already inside the reader's function: the watch is on
            return fn(*args, **kwargs)
        depth[0] += 1
        try:
            with blocking(paths, fn):
                out = fn(*args, **kwargs)
        finally:
            depth[0] -= 1
        return _watch_returned(out, paths)

    return call


def _watch_returned(out: Any, paths: tuple[str, ...]) -> Any:
    # A reader's function may return functions (a guided score, a sampler): they are the
    # reader's code too.
    if isinstance(out, (types.FunctionType, types.MethodType, functools.partial)):
        return watched(out, paths)
    if type(out) in (tuple, list) and any(isinstance(o, (types.FunctionType, functools.partial)) for o in out):
        return type(out)(_watch_returned(o, paths) for o in out)
    return out


class Text(str):
    """A string that a notebook displays as plain text (no quotes, no escapes)."""

    def __repr__(self) -> str:
        return str(self)


def hint(name: str) -> Text:
    """The second, more concrete hint of exercise ``name`` (never the answer).

    The first hint is printed by :func:`check` when an answer fails; this one says more
    about how to get there. Returned as text, so a notebook cell
    ``exercises.hint("euler_step")`` shows it.
    """
    ex = get(name)
    if ex.hint2:
        return Text(f"{name}: {ex.hint2}")
    return Text(f"{name}: {ex.hint}")


def names() -> list[str]:
    """Every exercise name, in book order (chapter, then order within the chapter)."""
    # sorted() is stable, so exercises of one chapter keep their registration order.
    return [e.name for e in sorted(_REGISTRY.values(), key=lambda e: e.chapter)]


def get(name: str) -> Exercise:
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    if name not in _REGISTRY:
        raise ValueError(f"name: unknown exercise {name!r}; the exercises are {names()}")
    return _REGISTRY[name]


def check(name: str, fn: Callable, *, verbose: bool = True) -> bool:
    """Run the hidden tests of exercise ``name`` on the reader's function ``fn``.

    Prints a short report (pass, or what went wrong and a hint) and returns ``True``
    when every hidden test passes. Whatever ``fn`` does (raise, return ``None``, NaN or
    an array of the wrong shape) is reported as a failure; ``check`` itself never raises
    for a bad answer, so a notebook keeps running. Checking the same function again,
    unchanged (same object, code, defaults, closure, and the globals it reads with the
    same contents), gives the same result without
    running the hidden tests a second time, and the report says so.
    """
    ex = get(name)
    if not callable(fn):
        raise TypeError(f"fn must be a function, got {type(fn).__name__}")
    now = fingerprint(fn)
    cached = _LAST.get(name)
    if cached is not None and now is not None:
        ref, seen, passed, text = cached
        if ref() is fn and same(seen, now):
            if passed:
                record_pass(name)  # the progress file may have moved since
            return _report(verbose, text + REPEATED, passed)
    passed, text = _run(ex, fn)
    if now is not None:
        _LAST[name] = (weakref.ref(fn), now, passed, text)
    if passed:
        record_pass(name)
    return _report(verbose, text, passed)


def _run(ex: Exercise, fn: Callable) -> tuple[bool, str]:
    """Run the hidden test of ``ex`` on ``fn``: (passed, the report's text)."""
    name = ex.name
    try:
        ex.test(watched(fn, ex.blocked))
    except NotImplementedError:
        return False, f"✗ {name}: not attempted yet (the stub still raises NotImplementedError)."
    except WriteItYourself as m:
        return False, f"✗ {name}: {m}"
    except Mismatch as m:
        return False, f"✗ {name}: {m}\n  Hint: {ex.hint}{_more(ex)}"
    except Exception as e:  # the reader's code raised: show where, in their code only
        where = _last_frame_outside_companion(e)
        return False, (
            f"✗ {name}: your function raised {type(e).__name__}: {e}{where}"
            f"\n  Hint: {ex.hint}{_more(ex)}"
        )
    return True, f"✓ {name}: all hidden tests passed."


# The last result of each exercise: (weak reference to the function, its fingerprint,
# passed, report). A chapter checks every answer twice, in the visible cell and in the
# hidden assert; the second check of the same, unchanged function gives the first one's
# result instead of running the hidden tests (and compiling their JAX code) again.
_LAST: dict[str, tuple] = {}
REPEATED = ("\n  (the same function as at your last check, reading the same values: "
            "this is that check's result)")


def _more(ex: Exercise) -> str:
    if not ex.hint2:
        return ""
    return f"\n  Stuck? exercises.hint({ex.name!r}) gives a second hint."


def _report(verbose: bool, text: str, passed: bool = False) -> bool:
    if verbose:
        print(text)
    return passed


def _last_frame_outside_companion(e: BaseException) -> str:
    # The reader's own frames: not this package, not an installed library.
    ours = str(Path(__file__).resolve().parents[1])
    frames = [
        f
        for f in traceback.extract_tb(e.__traceback__)
        if not f.filename.startswith(ours) and "site-packages" not in f.filename
    ]
    if not frames:
        return ""
    f = frames[-1]
    return f"\n  (raised at line {f.lineno}: {f.line})"


# ------------------------------------------------------------------------------ progress

class Progress(dict):
    """Every exercise of the course (book order) mapped to whether it has been passed.

    Displays as one line per chapter, ``✓`` for passed and ``·`` for not yet.
    """

    @property
    def passed(self) -> list[str]:
        return [n for n, ok in self.items() if ok]

    def __repr__(self) -> str:
        lines = [f"{len(self.passed)} of {len(self)} exercises passed "
                 f"(kept in {progress_path()})"]
        by_chapter: dict[int, list[str]] = {}
        for n, ok in self.items():
            by_chapter.setdefault(get(n).chapter, []).append(("✓ " if ok else "· ") + n)
        for ch, items in by_chapter.items():
            lines.append(f"  chapter {ch}: " + ", ".join(items))
        return "\n".join(lines)

    __str__ = __repr__


def progress() -> Progress:
    """Which exercises the reader has passed, kept across kernels in a small JSON file.

    Every :func:`check` that passes is recorded in :func:`progress_path` (set the
    environment variable ``COMPANION_PROGRESS_FILE`` to keep it elsewhere). A missing or
    corrupt file counts as no progress.
    """
    passed = read_passed()
    return Progress((n, n in passed) for n in names())


# --------------------------------------------------------------------------- comparisons


def as_array(got: Any, what: str) -> np.ndarray:
    """The reader's answer as a float64 NumPy array, or a :class:`Mismatch` saying why not."""
    if got is None:
        raise Mismatch(f"{what}: your function returned None (a missing `return`?)")
    try:
        arr = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        raise Mismatch(f"{what}: expected numbers, got {type(got).__name__}") from None
    return arr


def is_close(a: Any, b: Any, rtol: float, atol: float) -> bool:
    """Same shape, finite, and within ``rtol``/``atol``: a quiet test for diagnoses
    (:func:`expect_close` is the one that raises)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and bool(np.all(np.isfinite(a))) and bool(np.allclose(a, b, rtol=rtol, atol=atol))


def as_pair(got: Any, what: str, first: str, second: str) -> tuple[np.ndarray, np.ndarray]:
    """The reader's answer as two float64 arrays (``first``, ``second`` name them in the
    messages), or a :class:`Mismatch` saying why not."""
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise Mismatch(f"{what}: expected a pair ({first}, {second}), got {type(got).__name__}")
    return as_array(got[0], f"{what}, {first}"), as_array(got[1], f"{what}, {second}")


def expect_close(got: Any, want: Any, *, what: str, rtol: float, atol: float,
                 diagnose: Callable[[np.ndarray], str | None] | None = None) -> None:
    """Compare the reader's ``got`` with the reference ``want`` (shape, finiteness, values).

    The message gives the shape expected (shapes are part of the question), the number
    of entries that differ and the size of the error, never the reference values. When
    the shape is right, the values finite but not close, ``diagnose(arr)`` may name the
    mistake (a known wrong formula that matches); its message is raised instead.
    """
    arr = as_array(got, what)
    want = np.asarray(want, dtype=np.float64)
    if arr.shape != want.shape:
        raise Mismatch(f"{what}: expected shape {want.shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise Mismatch(f"{what}: the result contains NaN or inf")
    close = np.isclose(arr, want, rtol=rtol, atol=atol)
    if not np.all(close) and diagnose is not None:
        msg = diagnose(arr)
        if msg:
            raise Mismatch(f"{what}: {msg}")
    if not np.all(close):
        err = np.max(np.abs(arr - want) / (atol + rtol * np.abs(want)))
        raise Mismatch(
            f"{what}: {np.size(close) - np.count_nonzero(close)} of {np.size(close)} values "
            f"differ from the reference (the worst by {error_size(err)})"
        )


