"""Divergences of batch vector fields: exact, and the Skilling-Hutchinson estimate.

The divergence div fn(x) = tr(d fn / dx) is what implicit and sliced score matching
put in their losses (chapter 4) and what the instantaneous change of variables
integrates along the probability flow (chapter 5).
Both chapters use this one module, so that chapter 4's losses do not depend on chapter
5's likelihoods.

* :func:`exact_divergence`: ``D = prod(dims)`` Jacobian-vector products (``D`` is the
  book's dimension d), one per basis vector; fine in low dimension (toy data, 8x8 images).
* :func:`hutchinson_divergence`: E_xi[xi^T (d fn/dx) xi] for probes xi (the argument
  ``v``) with E[xi xi^T] = I (:func:`probes`, Rademacher or Gaussian), one Jacobian-vector product
  per probe whatever the dimension (Skilling 1989; Hutchinson 1990; FFJORD, Grathwohl
  et al. 2019).

Divergences are taken of *batch* functions ``fn: (n, *dims) -> (n, *dims)`` whose samples
do not interact (every model of :mod:`companion.nets`, every exact score): a
Jacobian-vector product with the same tangent for every sample then returns the
per-sample products in one call.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from companion._common import check_x

__all__ = ["BatchFn", "exact_divergence", "hutchinson_divergence", "probes"]

BatchFn = Callable[[jax.Array], jax.Array]


def exact_divergence(fn: BatchFn, x: jax.Array) -> jax.Array:
    """div fn(x) = tr(d fn / dx) per sample, shape ``(n,)``, with ``D = prod(dims)`` JVPs.

    ``fn`` maps ``(n, *dims)`` to ``(n, *dims)`` without mixing samples. Fine for small
    ``D`` (toy data, 8x8 images); the cost grows like ``D`` network evaluations.
    """
    x = check_x(x)
    n, dims = x.shape[0], x.shape[1:]
    D = math.prod(dims)
    basis = jnp.broadcast_to(jnp.eye(D, dtype=x.dtype)[:, None, :], (D, n, D)).reshape((D, n) + dims)
    columns = jax.vmap(lambda v: jax.jvp(fn, (x,), (v,))[1])(basis)  # (D, n, *dims): J e_j
    columns = columns.reshape(D, n, D)
    return jnp.einsum("jnj->n", columns)


def hutchinson_divergence(fn: BatchFn, x: jax.Array, v: jax.Array) -> jax.Array:
    """Skilling-Hutchinson estimate of div fn(x): the mean over probes xi of xi^T (d fn/dx) xi.

    ``v`` holds the probes xi, shape ``(n, *dims)`` (one probe per sample) or
    ``(P, n, *dims)`` (``P`` probes, averaged). Unbiased when E[xi xi^T] = I (Rademacher
    or standard Gaussian entries). Returns shape ``(n,)``.
    """
    x = check_x(x)
    v = jnp.asarray(v, dtype=x.dtype)
    if v.shape == x.shape:
        v = v[None]
    if v.ndim != x.ndim + 1 or v.shape[1:] != x.shape:
        raise ValueError(f"v: expected shape {x.shape} or (P, *{x.shape}), got {v.shape}")
    jv = jax.vmap(lambda vi: jax.jvp(fn, (x,), (vi,))[1])(v)
    prod = (v * jv).reshape(v.shape[0], x.shape[0], -1).sum(-1)
    return prod.mean(0)


def probes(key: jax.Array, shape: tuple[int, ...], *, kind: str = "rademacher",
           dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """Random probe vectors xi with E[xi xi^T] = I: ``"rademacher"`` (+-1) or ``"gaussian"``."""
    if kind == "rademacher":
        return jax.random.rademacher(key, shape, dtype=dtype)
    if kind == "gaussian":
        return jax.random.normal(key, shape, dtype=dtype)
    raise ValueError(f"probe: expected 'rademacher' or 'gaussian', got {kind!r}")
