"""Hidden tests of the exercises of chapter 7 (images).

* ``dequantize(levels, u, n_levels)``: integer levels and uniform noise to data in
  [-1, 1) (Eq. eq-digit-scale, chapter 7).
* ``gaussian_log_prob(x, mean, cov)``: log N(x; mean, cov) with a full covariance, per
  sample (the baseline of chapter 7, Eq. eq-gaussian-log-prob).

Inputs come from fixed seeds; messages say how an answer is wrong, never what is right.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from companion.exercises._core import Mismatch, as_array, exercise, expect_close


def _close(a, b, rtol, atol) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and bool(np.all(np.isfinite(a))) and bool(np.allclose(a, b, rtol=rtol, atol=atol))


# -------------------------------------------------------------------------------- dequantize


def _dequantize(levels, u, n_levels):
    """Reference: -1 + 2 (v + u) / L, Eq. (eq-digit-scale) (float64)."""
    return -1.0 + 2.0 * (np.asarray(levels, np.float64) + np.asarray(u, np.float64)) / n_levels


def _dequantize_cases():
    rng = np.random.default_rng(20210701)
    cases = []
    for shape, n_levels in [((4, 8, 8, 1), 17), ((3, 5), 256), ((2, 2, 2, 3), 4)]:
        levels = rng.integers(0, n_levels, shape)
        levels.flat[0], levels.flat[-1] = 0, n_levels - 1  # both ends of the range
        u = rng.uniform(0, 1, shape)
        cases.append((f"{n_levels} levels, shape {shape}", levels.astype(np.int32), u.astype(np.float32), n_levels))
    return cases


_DEQ_RTOL, _DEQ_ATOL = 1e-5, 1e-5


def _diagnose_dequantize(arr, levels, u, n_levels):
    v = np.asarray(levels, np.float64)
    u = np.asarray(u, np.float64)

    def near(w):
        return _close(arr, w, _DEQ_RTOL, _DEQ_ATOL)

    if near(-1 + 2 * v / n_levels):
        return "the uniform noise u is not added: every value sits on the edge of its bin"
    if near((v + u) / n_levels):
        return "the values lie in [0, 1); the models of chapter 7 work in [-1, 1)"
    if near(-1 + 2 * (v + u) / (n_levels - 1)):
        return "a bin has width 2 / n_levels: dividing by n_levels - 1 pushes the top bin past 1"
    if near(-1 + 2 * v / n_levels + u):
        return "the noise u must be scaled like the levels: it moves a value within its own bin of width 2 / n_levels"
    return None


@exercise(
    "dequantize",
    chapter=7,
    hint=(
        "Add the uniform noise to the integer level first, so that v + u lies in [v, v + 1), then map "
        "[0, n_levels) linearly onto [-1, 1): multiply by 2 / n_levels and subtract 1."
    ),
    reference=_dequantize,
)
def _test_dequantize(fn):
    for label, levels, u, n_levels in _dequantize_cases():
        want = np.asarray(_dequantize(levels, u, n_levels), np.float64)
        what = f"case '{label}'"
        arr = as_array(fn(jnp.asarray(levels), jnp.asarray(u), n_levels), what)
        if arr.shape == want.shape and np.all(np.isfinite(arr)) and not _close(arr, want, _DEQ_RTOL, _DEQ_ATOL):
            msg = _diagnose_dequantize(arr, levels, u, n_levels)
            if msg:
                raise Mismatch(f"{what}: {msg}")
        # a few float32 operations on values in [-1, 1)
        expect_close(arr, want, what=what, rtol=_DEQ_RTOL, atol=_DEQ_ATOL)


# -------------------------------------------------------------------------- gaussian_log_prob


def _gaussian_log_prob(x, mean, cov):
    """Reference: -0.5 (x - mu)^T S^{-1} (x - mu) - 0.5 log det(2 pi S), via a Cholesky factor."""
    x, mean, cov = (np.asarray(a, np.float64) for a in (x, mean, cov))
    chol = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol, (x - mean).T).T
    d = x.shape[1]
    return -0.5 * np.sum(z**2, axis=1) - np.sum(np.log(np.diag(chol))) - 0.5 * d * math.log(2 * math.pi)


def _gaussian_cases():
    rng = np.random.default_rng(20210702)
    cases = []
    for d in (1, 2, 5, 16):
        a = rng.normal(size=(d, d))
        cov = a @ a.T / d + 0.2 * np.eye(d) + np.diag(rng.uniform(0, 2, d))
        mean = rng.normal(0, 1, d)
        x = mean + rng.normal(0, 1.5, (6, d))
        cases.append((f"d = {d}, a full covariance", x, mean, cov))
    d = 3
    cases.append(("d = 3, a diagonal covariance", rng.normal(size=(4, d)), np.zeros(d), np.diag([0.1, 1.0, 4.0])))
    return cases


def _diagnose_gaussian(arr, x, mean, cov):
    x, mean, cov = (np.asarray(a, np.float64) for a in (x, mean, cov))
    d = x.shape[1]
    diff = x - mean
    quad = np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff)
    logdet = np.linalg.slogdet(cov)[1]
    c = 0.5 * d * math.log(2 * math.pi)

    def near(v):
        return _close(arr, v, 1e-3, 1e-3)

    if near(-0.5 * quad - logdet - c):
        return "the log-determinant enters with a factor 1/2: log det(S)^(1/2)"
    if near(-0.5 * quad - 0.5 * logdet):
        return "the constant -d/2 log(2 pi) is missing"
    if near(-quad - 0.5 * logdet - c):
        return "the quadratic form takes a factor 1/2"
    if near(-0.5 * np.einsum("ni,ij,nj->n", diff, cov, diff) - 0.5 * logdet - c):
        return "the quadratic form uses the covariance; it takes its inverse (solve with it)"
    if near(-0.5 * np.sum(diff**2 / np.diag(cov), axis=1) - 0.5 * np.sum(np.log(np.diag(cov))) - c):
        return "only the diagonal of the covariance is used: the correlations are part of the model"
    return None


@exercise(
    "gaussian_log_prob",
    chapter=7,
    hint=(
        "With the Cholesky factor L of the covariance (S = L L^T): solve L z = x - mean for z, then "
        "log N = -|z|^2 / 2 - sum(log diag L) - (d / 2) log(2 pi), per row of x."
    ),
    reference=_gaussian_log_prob,
)
def _test_gaussian_log_prob(fn):
    for label, x, mean, cov in _gaussian_cases():
        want = _gaussian_log_prob(x, mean, cov)
        what = f"case '{label}'"
        arr = as_array(fn(jnp.asarray(x, jnp.float32), jnp.asarray(mean, jnp.float32), jnp.asarray(cov, jnp.float32)),
                       what)
        # float32 solves with condition numbers < 1e3 on values of size ~10: rtol 1e-3, atol 1e-3
        if arr.shape == want.shape and np.all(np.isfinite(arr)) and not _close(arr, want, 1e-3, 1e-3):
            msg = _diagnose_gaussian(arr, x, mean, cov)
            if msg:
                raise Mismatch(f"{what}: {msg}")
        expect_close(arr, want, what=what, rtol=1e-3, atol=1e-3)
