"""The machinery behind :func:`check`: a registry of exercises and their hidden tests.

An exercise is a name, the chapter it belongs to, a hint, a reference solution and a
*hidden test*: a function ``test(fn)`` that calls the reader's ``fn`` on inputs the
reader does not see and raises :class:`Mismatch` when an answer is wrong. The message
of a :class:`Mismatch` says *how* the answer is wrong (shape, NaN, size of the error,
which case) and never what the right value is.
"""

from __future__ import annotations

import dataclasses
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np


class Mismatch(AssertionError):
    """A hidden test found the reader's answer wrong; the message says how."""


@dataclasses.dataclass(frozen=True)
class Exercise:
    name: str
    chapter: int
    hint: str
    test: Callable[[Callable], None]
    reference: Callable


_REGISTRY: dict[str, Exercise] = {}


def exercise(name: str, *, chapter: int, hint: str, reference: Callable):
    """Register ``test`` (the decorated function) as the hidden test of exercise ``name``."""

    def register(test: Callable[[Callable], None]):
        if name in _REGISTRY:
            raise ValueError(f"exercise {name!r} is registered twice")
        _REGISTRY[name] = Exercise(name, chapter, hint, test, reference)
        return test

    return register


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
    for a bad answer, so a notebook keeps running.
    """
    ex = get(name)
    if not callable(fn):
        raise TypeError(f"fn must be a function, got {type(fn).__name__}")
    try:
        ex.test(fn)
    except NotImplementedError:
        return _report(verbose, f"✗ {name}: not attempted yet (the stub still raises NotImplementedError).")
    except Mismatch as m:
        return _report(verbose, f"✗ {name}: {m}\n  Hint: {ex.hint}")
    except Exception as e:  # the reader's code raised: show where, in their code only
        where = _last_frame_outside_companion(e)
        return _report(
            verbose,
            f"✗ {name}: your function raised {type(e).__name__}: {e}{where}\n  Hint: {ex.hint}",
        )
    return _report(verbose, f"✓ {name}: all hidden tests passed.", passed=True)


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


def expect_close(got: Any, want: Any, *, what: str, rtol: float, atol: float) -> None:
    """Compare the reader's ``got`` with the reference ``want`` (shape, finiteness, values).

    The message gives the shape expected (shapes are part of the question), the number
    of entries that differ and the size of the error, never the reference values.
    """
    arr = as_array(got, what)
    want = np.asarray(want, dtype=np.float64)
    if arr.shape != want.shape:
        raise Mismatch(f"{what}: expected shape {want.shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise Mismatch(f"{what}: the result contains NaN or inf")
    close = np.isclose(arr, want, rtol=rtol, atol=atol)
    if not np.all(close):
        err = np.max(np.abs(arr - want) / (atol + rtol * np.abs(want)))
        raise Mismatch(
            f"{what}: {np.size(close) - np.count_nonzero(close)} of {np.size(close)} values "
            f"differ from the reference (worst error {err:.3g} times the tolerance)"
        )
