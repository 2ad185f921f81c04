"""Argument checks and jit helpers shared by the companion's modules (internal).

One home for what several modules need and no reader calls: the checks that turn bad
input into a ``ValueError`` / ``TypeError`` naming the argument (the course contract),
and the wrappers that let a score function or a model be an argument of ``jax.jit``.
The names are public so that modules import them under ordinary names
(``from companion._common import check_int, traceable``, as diffrax does with its
internal modules); the module itself is not part of the course's API.

It imports nothing of the companion, at module level or inside a function, so every
module, :mod:`companion.sde` included, can use it (``tests/test_layout.py`` checks that
the companion's imports have no cycle).
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "DEFAULT_EPS",
    "uniform_time",
    "check_shape",
    "check_int",
    "check_positive",
    "check_score_fn",
    "static",
    "traceable",
    "shared_time",
    "norms",
    "check_x",
    "check_positive_int",
    "sq_norms",
]


# The cut-off time t = eps at which samplers stop (chapter 3); the uniform time grid lives
# here, below both sampling and ode_sampling, so that neither imports the other's grid.
DEFAULT_EPS = 1e-3


def uniform_time(sde: Any, k: Any, n_steps: Any, eps: Any) -> jax.Array:
    """One time of the uniform grid, t_k = T + (eps - T) k / n_steps: T at k = 0, eps at
    k = ``n_steps``. ``k`` (an int or an array of ints) and ``n_steps`` may be traced;
    shaped like ``k``."""
    return sde.T + (eps - sde.T) * (k / n_steps)


# --------------------------------------------------------------------------- argument checks


def check_shape(shape: Any) -> tuple[int, ...]:
    """A sample shape ``(n, *dims)``: a non-empty tuple (or list) of positive ints."""
    ok = isinstance(shape, (tuple, list)) and len(shape) >= 1
    ok = ok and all(isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 1 for n in shape)
    if not ok:
        raise ValueError(f"shape: expected a non-empty tuple of positive ints (n, *dims), got {shape!r}")
    return tuple(int(n) for n in shape)


def check_int(name: str, value: Any, low: int) -> int:
    """An int (not a bool) at least ``low``; the error names ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    return int(value)


def check_positive(name: str, value: Any) -> float:
    """A finite real number > 0 (not a bool), as a float; the error names ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0 < value < math.inf):
        raise ValueError(f"{name}: expected a finite positive number, got {value!r}")
    return float(value)


def check_score_fn(score_fn: Any) -> None:
    """Raise ``TypeError`` unless ``score_fn`` is callable (``score_fn(x, t)``)."""
    if not callable(score_fn):
        raise TypeError(f"score_fn: expected a callable score_fn(x, t), got {type(score_fn).__name__}")


# --------------------------------------------------------------------------- jit helpers


class _ById:
    """Wraps an unhashable callable so that it can be a static argument of ``jax.jit``."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)

    def __hash__(self):
        return id(self.fn)

    def __eq__(self, other):
        return isinstance(other, _ById) and other.fn is self.fn


def static(fn: Callable) -> Callable:
    """``fn`` itself if it is hashable, else ``fn`` wrapped to hash and compare by identity:
    either way a valid static argument of ``jax.jit`` (keep one object to reuse the
    compiled code)."""
    try:
        hash(fn)
    except TypeError:
        return _ById(fn)
    return fn


def _unwrap(leaf):
    return leaf.fn if isinstance(leaf, _ById) else leaf


@jax.tree_util.register_pytree_node_class
class _Traced:
    """A score function as a ``jax.jit`` argument: its arrays traced, the rest static.

    ``score_fn`` is flattened as a pytree: an ``nnx.Module`` (or any pytree callable, e.g.
    a ``jax.tree_util.Partial`` over models) gives its weights as array leaves, which jit
    traces, and a hashable rest (the graph structure, functions, Python numbers), which
    is part of jit's cache key. So one compiled sampler serves every model of one
    architecture, no weight is baked into the program as a constant, and the jit cache
    does not keep the model alive. A plain function has no array leaf: it is static (by
    identity), as before.
    """

    def __init__(self, aux, arrays):
        self.aux, self.arrays = aux, tuple(arrays)
        treedef, is_array, statics = aux
        arrays_it, statics_it = iter(self.arrays), iter(statics)
        leaves = [next(arrays_it) if a else _unwrap(next(statics_it)) for a in is_array]
        self.fn = jax.tree.unflatten(treedef, leaves)

    def __call__(self, *args):
        # a jitted call, cached on (structure, argument shapes): a solver that traces its
        # vector field several times (diffrax: initial step, stages, error estimate) traces
        # the network once; XLA inlines the call, so the program is the same
        return _call_traced(self.aux, self.arrays, *args)

    def tree_flatten(self):
        return self.arrays, self.aux

    @classmethod
    def tree_unflatten(cls, aux, arrays):
        return cls(aux, arrays)


@functools.partial(jax.jit, static_argnums=0)
def _call_traced(aux, arrays, *args):
    return _Traced(aux, arrays).fn(*args)


def traceable(fn: Callable) -> Callable:
    """A score function (or any callable pytree) ready to be a ``jax.jit`` argument: its
    arrays traced, the rest static and hashable, so that one compiled program serves every
    model of one architecture. The samplers, ``likelihood`` and ``conditional`` pass their
    score functions through it."""
    leaves, treedef = jax.tree.flatten(fn)
    is_array = tuple(isinstance(leaf, (jax.Array, np.ndarray)) for leaf in leaves)
    statics = tuple(static(leaf) for leaf, a in zip(leaves, is_array) if not a)
    aux = (treedef, is_array, statics)
    try:
        hash(aux)
    except TypeError:  # an unhashable static part: the whole function, by identity
        return _Traced((jax.tree.structure(0), (False,), (_ById(fn),)), ())
    return _Traced(aux, [leaf for leaf, a in zip(leaves, is_array) if a])


# --------------------------------------------------------------------------- array helpers


def shared_time(x: jax.Array, t: Any) -> jax.Array:
    """The scalar time ``t`` of a whole batch ``x`` ``(n, *dims)``, as a 0-d array in the
    dtype of ``x``: what the samplers pass to ``score_fn(x, t)`` (the contract allows a
    scalar). A network then computes its time embedding once per call instead of once
    per sample (the course's networks keep a scalar ``t`` scalar)."""
    return jnp.asarray(t, dtype=x.dtype)


def norms(v: jax.Array) -> jax.Array:
    """Per-sample Euclidean norms over every non-batch axis of ``v`` ``(n, *dims)``, shape ``(n,)``."""
    return jnp.sqrt(sq_norms(v))


def sq_norms(v: jax.Array) -> jax.Array:
    """Per-sample squared Euclidean norms over every non-batch axis of ``v`` ``(n, *dims)``,
    shape ``(n,)``: the ``|| . ||^2`` of the losses, the likelihood bound and straightness."""
    return jnp.sum(v.reshape(v.shape[0], -1) ** 2, axis=1)


# --------------------------------------------------------------------------- checks of data and sizes


def check_x(x: Any, name: str = "x") -> jax.Array:
    """A batch ``(n, *dims)`` of floating-point values as an array; ``ValueError`` for a
    scalar, ``TypeError`` for another dtype, naming ``name``."""
    x = jnp.asarray(x)
    if x.ndim < 1:
        raise ValueError(f"{name}: expected shape (n, *dims), got a scalar")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name}: expected a floating-point array, got dtype {x.dtype}")
    return x


def check_positive_int(name: str, value: Any) -> int:
    """A size (layers, widths, steps, batch size): ``TypeError`` unless an int (not a bool),
    ``ValueError`` unless at least 1, naming ``name``. (:func:`check_int` raises
    ``ValueError`` for both, the samplers' convention for their step counts.)"""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value}")
    return int(value)
