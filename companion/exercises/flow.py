"""Hidden tests of the exercises of chapter 5 (the probability flow ODE).

* ``pf_drift(sde, score_fn, x, t)``: the drift of the probability flow ODE,
  Eq. (eq-pf-ode), chapter 5.
* ``divergence(fn, x)``: the exact divergence (Jacobian trace) of a batch function, per
  sample, Eq. (eq-inst-cov), chapter 5.
* ``bits_per_dim(log_p, n_dims, n_levels, data_range)``: bits per dimension of discrete
  data from the log density of its rescaled, dequantised version,
  Eq. (eq-dequantisation), chapter 5.

Inputs come from a fixed NumPy seed; messages say how an answer is wrong, never what
the right value is.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from companion import sde as sdes
from companion.exercises._core import Mismatch, as_array, exercise, expect_close

# ----------------------------------------------------------------------------- references


def _pf_drift(sde, score_fn, x, t):
    """Reference: f(x, t) - g(t)^2 score(x, t) / 2."""
    g = sde.diffusion(t)[:, None]
    return sde.drift(x, t) - 0.5 * g**2 * score_fn(x, t)


def _divergence(fn, x):
    """Reference: the trace of the Jacobian of each sample's output w.r.t. its input."""
    jac = jax.vmap(jax.jacfwd(lambda xi: fn(xi[None])[0]))(x)  # (n, d, d)
    return jnp.trace(jac, axis1=1, axis2=2)


def _bits_per_dim(log_p, n_dims, n_levels, data_range):
    """Reference: -(log p + D log((hi - lo) / n_levels)) / (D log 2)."""
    lo, hi = data_range
    return -(log_p + n_dims * math.log((hi - lo) / n_levels)) / (n_dims * math.log(2))


def _rng():
    return np.random.default_rng(20210505)


def _f32(a):
    return jnp.asarray(a, dtype=jnp.float32)


# ----------------------------------------------------------------------------- pf_drift


@exercise(
    "pf_drift",
    chapter=5,
    hint="Compare with the reverse-time SDE of chapter 3: the same two ingredients, f and g^2 times "
    "the score, but the ODE carries only part of the score term. t has shape (n,): reshape g(t) so "
    "that it multiplies each sample.",
    reference=_pf_drift,
)
def _test_pf_drift(fn):
    rng = _rng()
    for sde in (sdes.VP(), sdes.VE(), sdes.SubVP()):
        d, n = 2, 5
        mu = _f32(rng.normal(size=d))

        def score(x, t, mu=mu):
            return -(x - mu) * (1.0 + jnp.asarray(t)[:, None])

        x = _f32(rng.normal(size=(n, d)) * 2)
        t = _f32(rng.uniform(0.05, 1.0, size=n))
        label = f"pf_drift ({type(sde).__name__} SDE)"
        got = fn(sde, score, x, t)
        expect_close(got, _pf_drift(sde, score, x, t), what=label, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- divergence


@exercise(
    "divergence",
    chapter=5,
    hint="For each sample you need the sum of the diagonal of its own d x d Jacobian: jax.jacfwd of "
    "a one-sample function, vmapped over the batch, or one jax.jvp per coordinate direction.",
    reference=_divergence,
)
def _test_divergence(fn):
    rng = _rng()
    A = _f32(rng.normal(size=(3, 3)))
    B = _f32(rng.normal(size=(2, 2)))
    cases = [
        ("a linear map x A^T, d = 3", lambda x: x @ A.T, 3),
        ("a nonlinear map, d = 3", lambda x: jnp.tanh(x @ A.T) * x[:, :1] + x**3, 3),
        ("a nonlinear map, d = 2", lambda x: jnp.sin(x @ B) + 0.1 * jnp.sum(x**2, 1, keepdims=True) * x, 2),
    ]
    for label, f, d in cases:
        x = _f32(rng.normal(size=(6, d)))
        got = fn(f, x)
        want = _divergence(f, x)
        arr = as_array(got, f"divergence ({label})")
        if arr.shape != want.shape:
            raise Mismatch(f"divergence ({label}): expected one value per sample, shape {want.shape}, got {arr.shape}")
        expect_close(got, want, what=f"divergence ({label})", rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- bits_per_dim


@exercise(
    "bits_per_dim",
    chapter=5,
    hint="A discrete value covers a bin of width (hi - lo) / n_levels in the rescaled space, in each of "
    "the n_dims coordinates; the probability of a bin is about the density times the bin's volume. "
    "Then convert nats to bits and divide by the number of dimensions.",
    reference=_bits_per_dim,
)
def _test_bits_per_dim(fn):
    rng = _rng()
    for n_dims, n_levels, data_range in ((2, 256, (-1.0, 1.0)), (64, 17, (0.0, 1.0)), (3, 32, (-4.0, 4.0))):
        log_p = rng.normal(size=5) * 3 + 2
        got = fn(jnp.asarray(log_p), n_dims, n_levels, data_range)
        expect_close(got, _bits_per_dim(log_p, n_dims, n_levels, data_range),
                     what=f"bits_per_dim (D={n_dims}, {n_levels} levels, range {data_range})",
                     rtol=1e-5, atol=1e-5)
