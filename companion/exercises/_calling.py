"""How a hidden test calls the reader's function: traced and compiled as one program.

Run op by op, a reader's function compiles every operation separately for every new shape
(a hidden test's small inputs are all new shapes): hundreds of tiny compilations, seconds
on a CPU. Traced by ``jax.jit``, a case (or all the cases of a test) is one compilation.
A function that cannot be traced is called as it is, so a check accepts and reports
exactly what it would without this.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import numpy as np

__all__ = ["call_compiled", "call_compiled_each"]


def call_compiled(fn: Callable, *args: Any) -> Any:
    """``fn(*args)``, traced and compiled by ``jax.jit`` as one program: the array
    arguments traced, every other argument (functions, SDEs, Python numbers) fixed.

    Run op by op, a reader's function compiles every operation separately for every new
    shape (a hidden test's small inputs are all new shapes): hundreds of tiny
    compilations, seconds on a CPU, where one program per case costs a fraction. A
    function that cannot be traced (Python control flow on array values, NumPy
    conversions), or that raises, is called again as it is, so a check accepts and
    reports exactly what it would without this.
    """
    import jax  # the framework itself does not need JAX; only the tests that use this

    traced = [i for i, a in enumerate(args) if isinstance(a, (jax.Array, np.ndarray))]

    def with_arrays(*arrays):
        full = list(args)
        for i, a in zip(traced, arrays):
            full[i] = a
        return fn(*full)

    try:
        return jax.jit(with_arrays)(*(args[i] for i in traced))
    except Exception:
        return fn(*args)


def call_compiled_each(fn: Callable, cases: Iterable[tuple]) -> Iterator[Any]:
    """``fn(*args)`` for each ``args`` of ``cases``, in order, all traced and compiled by
    ``jax.jit`` as *one* program (array arguments traced, the rest fixed): one
    compilation for a hidden test's cases instead of one per case.

    When ``fn`` cannot be traced that way, or raises, each case goes through
    :func:`call_compiled` instead, computed when the iteration reaches it: a test that
    compares the cases in turn reports the same first failure as it would without this.
    """
    import jax

    cases = [tuple(args) for args in cases]
    slots = [[i for i, a in enumerate(args) if isinstance(a, (jax.Array, np.ndarray))] for args in cases]

    def every_case(arrays):
        out = []
        for args, traced, values in zip(cases, slots, arrays):
            full = list(args)
            for i, a in zip(traced, values):
                full[i] = a
            out.append(fn(*full))
        return out

    try:
        results = jax.jit(every_case)([[args[i] for i in traced] for args, traced in zip(cases, slots)])
    except Exception:
        return (call_compiled(fn, *args) for args in cases)
    return iter(results)
