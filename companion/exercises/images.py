"""Hidden tests of the exercises of chapter 7 (images).

* ``dequantize(levels, u, n_levels)``: integer levels and uniform noise to data in
  [-1, 1) (Eq. eq-digit-scale, chapter 7).
* ``gaussian_log_prob(x, mean, cov)``: log N(x; mean, cov) with a full covariance, per
  sample (the baseline of chapter 7, Eq. eq-gaussian-log-prob).
* ``histogram_bits(train_levels, test_levels, n_levels, alpha)`` (conceptual): the
  per-pixel histogram baseline, fitted with add-alpha smoothing, in bits per dimension
  of each test image (Eq. eq-bits-per-dim).

Inputs come from fixed seeds; messages say how an answer is wrong, never what is right.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from companion.exercises._calling import call_compiled_each
from companion.exercises._core import Mismatch, as_array, exercise, expect_close, is_close

__all__: list[str] = []  # importing the module registers its exercises; nothing to import


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
        return is_close(arr, w, _DEQ_RTOL, _DEQ_ATOL)

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
        "Eq. (eq-digit-scale): the noise fills each level's unit-wide bin before the bins "
        "are mapped onto the model's data range."
    ),
    hint2=(
        "Add u to the integer level first (so the value lies in [v, v + 1)), then map "
        "[0, n_levels) linearly onto [-1, 1): a scale and a shift, in that order."
    ),
    blocked=("companion.data:dequantize", "companion.data:scale"),
    reference=_dequantize,
)
def _test_dequantize(fn):
    cases = _dequantize_cases()
    args = [(jnp.asarray(levels), jnp.asarray(u), n_levels) for _, levels, u, n_levels in cases]
    # the three cases as one compiled program (case by case if fn cannot be traced)
    for (label, levels, u, n_levels), got in zip(cases, call_compiled_each(fn, args)):
        want = np.asarray(_dequantize(levels, u, n_levels), np.float64)
        what = f"case '{label}'"
        arr = as_array(got, what)
        # a few float32 operations on values in [-1, 1)
        expect_close(arr, want, what=what, rtol=_DEQ_RTOL, atol=_DEQ_ATOL,
                     diagnose=lambda arr: _diagnose_dequantize(arr, levels, u, n_levels))


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
        return is_close(arr, v, 1e-3, 1e-3)

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
        "Eq. (eq-gaussian-log-prob) without ever forming the inverse covariance: a "
        "triangular factor of the covariance gives both the quadratic form and the log "
        "determinant."
    ),
    hint2=(
        "With the Cholesky factor L (covariance = L L^T), a triangular solve against "
        "x - mean whitens each sample; the log determinant is twice the sum of the logs "
        "of L's diagonal. Remember the (d / 2) log(2 pi) and the factor 1/2."
    ),
    blocked=(
        "jax.scipy.stats.multivariate_normal:logpdf",
        "scipy.stats:multivariate_normal.logpdf",
        "jax.numpy.linalg:inv",
        "jax.numpy.linalg:pinv",
        "numpy.linalg:inv",
        "numpy.linalg:pinv",
    ),
    reference=_gaussian_log_prob,
)
def _test_gaussian_log_prob(fn):
    cases = _gaussian_cases()
    args = [tuple(jnp.asarray(a, jnp.float32) for a in (x, mean, cov)) for _, x, mean, cov in cases]
    # the five cases as one compiled program (case by case if fn cannot be traced)
    for (label, x, mean, cov), got in zip(cases, call_compiled_each(fn, args)):
        want = _gaussian_log_prob(x, mean, cov)
        what = f"case '{label}'"
        arr = as_array(got, what)
        # float32 solves with condition numbers < 1e3 on values of size ~10: rtol 1e-3, atol 1e-3
        expect_close(arr, want, what=what, rtol=1e-3, atol=1e-3,
                     diagnose=lambda arr: _diagnose_gaussian(arr, x, mean, cov))


# ------------------------------------------------------------------------- histogram_bits


def _histogram_bits(train_levels, test_levels, n_levels, alpha):
    """Reference: probs[i, v] = (count of v at pixel i + alpha) / (n + alpha L); bits/dim
    of each test image = -sum_i log2 probs[i, v_i] / D, in float64."""
    tr = np.asarray(train_levels).reshape(len(train_levels), -1)
    te = np.asarray(test_levels).reshape(len(test_levels), -1)
    counts = (tr[:, :, None] == np.arange(n_levels)).sum(0)  # (D, L)
    probs = (counts + alpha) / (len(tr) + alpha * n_levels)
    logp = np.log(probs[np.arange(te.shape[1]), te])  # (n_test, D)
    return -logp.sum(1) / (te.shape[1] * np.log(2.0))


def _histogram_cases():
    """(label, train (n, *dims) ints, test (m, *dims) ints, n_levels, alpha). Training
    images leave some levels unseen at some pixels, and the test images use them."""
    rng = np.random.default_rng(20210707)

    def images(n, shape, L, skew):
        p = np.exp(-skew * np.arange(L))
        return rng.choice(L, size=(n,) + shape, p=p / p.sum())

    return [
        ("8x8 images, 17 levels, alpha = 1", images(40, (8, 8), 17, 0.4),
         images(7, (8, 8), 17, 0.2), 17, 1.0),
        ("flat vectors of 10 pixels, 4 levels, alpha = 0.5", images(25, (10,), 4, 1.0),
         images(5, (10,), 4, 0.0), 4, 0.5),
        ("binary 3x5 images, alpha = 2, a test batch of one", images(12, (3, 5), 2, 1.5),
         images(1, (3, 5), 2, 0.0), 2, 2.0),
        ("8x8 images, 17 levels, alpha = 0.01 (almost no smoothing)",
         images(60, (8, 8), 17, 0.3), images(4, (8, 8), 17, 0.3), 17, 0.01),
    ]


# float64 (or float32) sums of 64 logs of size ~5: rtol 1e-5 covers float32; the wrong answers
# below are off by 10 % or more.
_HIST_RTOL, _HIST_ATOL = 1e-5, 1e-6


def _test_histogram_bits_impl(fn):
    for label, train, test, L, alpha in _histogram_cases():
        want = _histogram_bits(train, test, L, alpha)
        what = f"case '{label}'"
        arr = as_array(fn(train, test, L, alpha), what)
        if arr.shape == want.shape and not np.all(np.isfinite(arr)):
            raise Mismatch(f"{what}: infinite or NaN bits: a level never seen at some pixel in "
                           "training must keep a positive probability")
        if arr.shape == want.shape and not is_close(arr, want, _HIST_RTOL, _HIST_ATOL):
            ratio = float(np.median(arr / want))
            if abs(ratio - 1 / math.log2(math.e)) < 1e-3:
                raise Mismatch(f"{what}: off by a factor close to {ratio:.3f} (a unit?)")
            if abs(ratio - np.prod(test.shape[1:])) < 1e-2 * ratio:
                raise Mismatch(f"{what}: off by a factor equal to the number of pixels")
            raise Mismatch(f"{what}: {ratio:.3g} times the right value (median over images)")
        expect_close(arr, want, what=what, rtol=_HIST_RTOL, atol=_HIST_ATOL)


@exercise(
    "histogram_bits",
    chapter=7,
    hint=(
        "The histogram baseline models every pixel independently with its own categorical "
        "distribution over levels, estimated from the training images with alpha "
        "pseudo-counts per level. It is a discrete model: Eq. (eq-bits-per-dim) without "
        "any bin width."
    ),
    hint2=(
        "Count, for each pixel position and each level, how many training images have "
        "that level there; add alpha to every count and normalise over the levels (the "
        "denominator grows with n_levels too). A test image's probability is the product "
        "over its pixels; take -log2 and divide by the number of pixels."
    ),
    blocked=(
        "companion.data:pixel_histogram",
        "companion.data:categorical_mixture_bits",
        "companion.data:fit_categorical_mixture",
    ),
    reference=_histogram_bits,
)
def _test_histogram_bits(fn):
    _test_histogram_bits_impl(fn)
