"""Hidden tests of the exercises of chapter 7 (images).

* ``gaussian_log_prob(x, mean, cov)`` (warm-up): log N(x; mean, cov) with a full
  covariance, per sample, without forming the inverse covariance (the Gaussian baseline of
  chapter 7, the Cholesky route the chapter shows).
* ``histogram_bits(train_levels, test_levels, n_levels, alpha)`` (derivation): the
  per-pixel histogram baseline, fitted with add-alpha smoothing, in bits per dimension
  of each test image.
* ``denoised_digits(score_fn, sde, x_t, t)`` (derivation, on the image model): the
  network's estimate E[x_0 | x_t] of the clean digits behind noisy ones (chapter 4's
  denoiser, applied to the shipped U-Net, one time or one per image).

Inputs come from fixed seeds; messages say how an answer is wrong, never what is right.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np

from companion.exercises._calling import call_compiled_each
from companion.exercises._core import Mismatch, WriteItYourself, as_array, exercise, expect_close, is_close

__all__: list[str] = []  # importing the module registers its exercises; nothing to import


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
    """Name a known mistake. Runs after the reader's function, outside the blocked-call
    watch, and computes with Cholesky solves only (no inverse: the checker never does what
    the reader is asked not to do)."""
    x, mean, cov = (np.asarray(a, np.float64) for a in (x, mean, cov))
    d = x.shape[1]
    diff = x - mean
    chol = np.linalg.cholesky(cov)
    white = np.linalg.solve(chol, diff.T).T  # L^{-1} (x - mu), a triangular system
    quad = np.sum(white**2, axis=1)
    logdet = 2 * np.sum(np.log(np.diag(chol)))
    c = 0.5 * d * math.log(2 * math.pi)

    def near(v):
        return is_close(arr, v, 1e-3, 1e-3)

    if near(-0.5 * quad - logdet - c):
        return "the log-determinant enters with a factor 1/2: log det(S)^(1/2)"
    if near(-0.5 * quad - 0.5 * logdet):
        return "the constant -d/2 log(2 pi) is missing"
    if near(-0.5 * quad - 0.5 * logdet - math.log(2 * math.pi)) and d != 2:
        return "the constant is -d/2 log(2 pi): one log(2 pi) per coordinate, halved"
    if near(-quad - 0.5 * logdet - c):
        return "the quadratic form takes a factor 1/2"
    if near(-0.5 * np.sqrt(quad) - 0.5 * logdet - c):
        return "the quadratic form is the squared length of the whitened vector, not its length"
    if near(-0.5 * np.einsum("ni,ij,nj->n", diff, cov, diff) - 0.5 * logdet - c):
        return "the quadratic form uses the covariance; it takes its inverse (solve with it)"
    if near(-0.5 * np.sum(diff**2 / np.diag(cov), axis=1) - 0.5 * np.sum(np.log(np.diag(cov))) - c):
        return "only the diagonal of the covariance is used: the correlations are part of the model"
    upper = np.linalg.solve(chol.T, diff.T).T  # solving with L^T instead of L
    if near(-0.5 * np.sum(upper**2, axis=1) - 0.5 * logdet - c):
        return ("the whitening solves with the transpose of the Cholesky factor: with S = L L^T, "
                "it is L that whitens (lower=True)")
    return None


# Solving against the identity forms the inverse as surely as inv does: these solvers are
# watched while the reader's function runs (eagerly, on concrete arrays) and refuse an
# identity right-hand side.
_SOLVERS = (
    "jax.numpy.linalg:solve", "numpy.linalg:solve", "scipy.linalg:solve",
    "jax.scipy.linalg:solve", "jax.scipy.linalg:solve_triangular", "scipy.linalg:solve_triangular",
    "jax.scipy.linalg:cho_solve", "scipy.linalg:cho_solve", "numpy.linalg:lstsq", "jax.numpy.linalg:lstsq",
)


def _is_identity(b):
    if isinstance(b, jax.core.Tracer):  # a traced value cannot be looked at
        return False
    b = np.asarray(b)
    return b.ndim == 2 and b.shape[0] == b.shape[1] > 1 and np.array_equal(b, np.eye(b.shape[0]))


@contextlib.contextmanager
def _no_identity_solves(fn):
    undo = []

    def watch(original, short):
        @functools.wraps(original)
        def solve(*args, **kwargs):
            rhs = kwargs.get("b", args[1] if len(args) > 1 else None)
            if rhs is not None and _is_identity(rhs):
                raise WriteItYourself(
                    f"your function calls {short} against the identity matrix, which forms the "
                    "inverse covariance. Solve against x - mean instead (the exercise asks for "
                    "no inverse, however it is computed).")
            return original(*args, **kwargs)

        return solve

    try:
        swapped = {}
        for path in _SOLVERS:
            module, _, attr = path.partition(":")
            owner = importlib.import_module(module)
            original = getattr(owner, attr)
            undo.append((owner.__dict__, attr, original))
            swapped[id(original)] = owner.__dict__[attr] = watch(original, path.replace(":", "."))
        namespace = getattr(fn, "__globals__", {})  # names the reader imported from those modules
        for key, value in [(k, v) for k, v in namespace.items() if id(v) in swapped]:
            undo.append((namespace, key, value))
            namespace[key] = swapped[id(value)]
        yield
    finally:
        for where, attr, original in reversed(undo):
            where[attr] = original


@exercise(
    "gaussian_log_prob",
    chapter=7,
    hint=(
        "The log-density of a Gaussian with a full covariance (chapter 7, 'Baselines that "
        "need no network'), without ever forming the inverse covariance: the Cholesky factor "
        "of the covariance gives both the quadratic form and the log-determinant."
    ),
    hint2=(
        "With the Cholesky factor L (covariance = L L^T), a triangular solve against "
        "x - mean whitens each sample, and the log-determinant comes from L's diagonal. "
        "Then count the factors 1/2 and the constant term of the density once more."
    ),
    blocked=(
        "jax.scipy.stats.multivariate_normal:logpdf",
        "jax.scipy.stats.multivariate_normal:pdf",
        "scipy.stats:multivariate_normal.logpdf",
        "scipy.stats:multivariate_normal.pdf",
        "scipy.stats._multivariate:multivariate_normal_gen.__call__",
        "scipy.stats._multivariate:multivariate_normal_frozen.logpdf",
        "scipy.stats._multivariate:multivariate_normal_frozen.pdf",
        "jax.numpy.linalg:inv",
        "jax.numpy.linalg:pinv",
        "numpy.linalg:inv",
        "numpy.linalg:pinv",
        "scipy.linalg:inv",
        "scipy.linalg:pinv",
        "jax.scipy.linalg:inv",
        "numpy.linalg:tensorinv",
        "jax.numpy.linalg:tensorinv",
    ),
    reference=_gaussian_log_prob,
)
def _test_gaussian_log_prob(fn):
    cases = _gaussian_cases()
    label, x, mean, cov = cases[2]
    # one eager call on concrete arrays: solving against the identity is visible there
    with _no_identity_solves(fn):
        fn(*(jnp.asarray(a, jnp.float32) for a in (x, mean, cov)))
    args = [tuple(jnp.asarray(a, jnp.float32) for a in (x, mean, cov)) for _, x, mean, cov in cases]
    # the cases as one compiled program (case by case if fn cannot be traced)
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
                raise Mismatch(f"{what}: off by a factor close to ln 2 (a unit?)")
            if abs(ratio - np.prod(test.shape[1:])) < 1e-2 * ratio:
                raise Mismatch(f"{what}: off by a factor equal to the number of pixels")
            side = "too many" if ratio > 1 else "too few"
            raise Mismatch(f"{what}: {side} bits for most images (not a constant factor such as a "
                           "unit or the number of pixels)")
        expect_close(arr, want, what=what, rtol=_HIST_RTOL, atol=_HIST_ATOL)


@exercise(
    "histogram_bits",
    chapter=7,
    hint=(
        "The histogram baseline models every pixel independently with its own categorical "
        "distribution over levels, estimated from the training images with alpha "
        "pseudo-counts per level. It is a discrete model: chapter 7's bits per dimension without "
        "any bin width."
    ),
    hint2=(
        "Count, for each pixel position and each level, how many training images have "
        "that level there; add alpha to every count and normalise over the levels (the "
        "denominator grows with n_levels too). A test image's probability is the product "
        "over its pixels; take -log2 and divide by the number of pixels."
    ),
    blocked=("companion.data:*", "companion.likelihood:*"),  # baselines and conversions
    reference=_histogram_bits,
)
def _test_histogram_bits(fn):
    _test_histogram_bits_impl(fn)


# -------------------------------------------------------------------------- denoised_digits


def _denoised(score_fn, sde, x_t, t):
    """Reference: E[x_0 | x_t] = (x_t + b(t)^2 score(x_t, t)) / a(t) (Tweedie, chapter 4)."""
    a, b, score = _coefficients(score_fn, sde, x_t, t)
    return (np.asarray(x_t, np.float64) + b**2 * score) / a


def _coefficients(score_fn, sde, x_t, t):
    """a(t), b(t) shaped to broadcast over x_t (float64), and the score at (x_t, t)."""
    t = jnp.asarray(t, jnp.float32)
    shape = (-1,) + (1,) * (x_t.ndim - 1) if t.ndim else ()
    a, b = (np.asarray(f(t), np.float64).reshape(shape) for f in (sde.mean_coefficient, sde.kernel_std))
    return a, b, np.asarray(score_fn(jnp.asarray(x_t), t), np.float64)


_UNET = []


def _unet():
    """The shipped U-Net as a compiled score function (one compilation per input shape)."""
    if not _UNET:
        from flax import nnx
        from companion import train_digits

        apply = nnx.jit(lambda net, x, t: net(x, t))
        net = train_digits.load()[0]

        def score(x, t):  # one time is given to the network as one per image: one compilation
            x = jnp.asarray(x)
            return apply(net, x, jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],)))

        _UNET.append(score)
    return _UNET[0]


_REFERENCES: dict[int, np.ndarray] = {}  # case index -> the reference answer (the U-Net is slow)


def _gaussian_score(mu, c, sde):
    """The exact score of x_t when x_0 ~ N(mu, c^2 I): -(x - a mu) / (a^2 c^2 + b^2)."""
    def score(x, t):
        t = jnp.asarray(t, x.dtype)
        shape = (-1,) + (1,) * (x.ndim - 1) if t.ndim else ()
        a, b = sde.mean_coefficient(t).reshape(shape), sde.kernel_std(t).reshape(shape)
        return -(x - a * mu) / (a**2 * c**2 + b**2)
    return score


def _denoise_cases():
    """(label, score_fn, sde, x_t, t)."""
    from companion import data, sde as sdes, train_digits

    vp = train_digits.SDE
    levels, _ = data.load_digits("test")
    rng = np.random.default_rng(20210708)
    x0 = np.asarray(data.scale(levels[[3, 17, 42, 99, 150, 201]]), np.float32)
    z = rng.normal(size=x0.shape).astype(np.float32)
    t_each = np.array([0.7, 0.05, 0.4, 0.9, 0.2, 0.02], np.float32)  # unsorted, one per digit

    def noisy(sde, x0, z, t):
        t = jnp.asarray(t)
        shape = (-1,) + (1,) * (x0.ndim - 1) if t.ndim else ()
        return np.asarray(sde.mean_coefficient(t).reshape(shape) * x0 + sde.kernel_std(t).reshape(shape) * z,
                          np.float32)

    sub = sdes.SubVP(beta_min=0.1, beta_max=20.0)
    ve = sdes.VE(sigma_min=0.01, sigma_max=10.0)
    mu, c = 0.3, 0.5
    g0 = (mu + c * rng.normal(size=(5, 4, 4, 2))).astype(np.float32)
    gz = rng.normal(size=g0.shape).astype(np.float32)
    g_t = np.array([0.5, 0.1, 0.8, 0.3, 0.6], np.float32)
    return [
        ("the shipped U-Net, one time t = 0.3 for 6 digits", _unet(), vp,
         noisy(vp, x0, z, 0.3), np.float32(0.3)),
        ("the shipped U-Net, one time per digit (unsorted)", _unet(), vp,
         noisy(vp, x0, z, t_each), t_each),
        ("a sub-VP SDE, an exact Gaussian score, shape (5, 4, 4, 2), one time per image",
         _gaussian_score(mu, c, sub), sub, noisy(sub, g0, gz, g_t), g_t),
        ("a VE SDE, an exact Gaussian score, one time t = 0.5", _gaussian_score(mu, c, ve), ve,
         noisy(ve, g0, gz, 0.5), np.float32(0.5)),
    ]


def _diagnose_denoised(arr, score_fn, sde, x_t, t):
    a, b, s = _coefficients(score_fn, sde, x_t, t)
    x = np.asarray(x_t, np.float64)

    def near(v):
        return is_close(arr, v, 1e-3, 1e-3)

    if near((x + b * s) / a):
        return "the score is multiplied by b(t), the kernel's standard deviation, where its square belongs"
    if near(x + b**2 * s) and not np.allclose(a, 1):
        return "the result is not divided by a(t): x_t is a(t) x_0 plus noise, so x_0 is on a smaller scale"
    if near((x + b**2 * s) * a) and not np.allclose(a, 1):
        return "the result is multiplied by a(t); x_t = a(t) x_0 + b(t) z is solved for x_0 by a division"
    if near((x - b**2 * s) / a):
        return "the score term has the wrong sign: the score points from x_t towards the data"
    if near(x / a + b**2 * s) and not np.allclose(a, 1):
        return "only x_t is divided by a(t); the score term must be divided by it too"
    if near(-b * s):
        return "this is the noise estimate (minus b(t) times the score), not the clean digit"
    if np.ndim(t):
        for one in (np.asarray(t)[0], np.asarray(t).mean()):
            a1, b1, s1 = _coefficients(score_fn, sde, x_t, np.full_like(np.asarray(t), one))
            if near((x + b1**2 * s1) / a1) or near((x + b1**2 * s) / a1):
                return ("one time is used for every image; t has one entry per image here, and a(t), "
                        "b(t) must be taken per image (shaped to broadcast over the pixels)")
    return None


@exercise(
    "denoised_digits",
    chapter=7,
    hint=(
        "Chapter 4's denoiser: the posterior mean of the clean data x_0 given the noisy x_t, "
        "written with the score and the perturbation kernel's coefficients a(t) and b(t) "
        "(sde.mean_coefficient, sde.kernel_std). t is one time or one per image."
    ),
    hint2=(
        "x_t = a(t) x_0 + b(t) z, and the score at x_t is the posterior mean of -z / b(t). "
        "Take the posterior mean of that equation and solve it for x_0. With one time per "
        "image, reshape a(t) and b(t) to (n, 1, 1, 1) so that they broadcast over the pixels."
    ),
    blocked=("companion.ode_sampling:*",),  # the denoiser
    reference=_denoised,
)
def _test_denoised_digits(fn):
    for i, (label, score_fn, sde, x_t, t) in enumerate(_denoise_cases()):
        what = f"case '{label}'"
        got = fn(score_fn, sde, jnp.asarray(x_t), jnp.asarray(t))
        if i not in _REFERENCES:
            _REFERENCES[i] = _denoised(score_fn, sde, x_t, t)
        want = _REFERENCES[i]
        # float32 network and coefficients; b(t)^2 / a(t) <= 10 at the times used: 1e-3
        expect_close(as_array(got, what), want, what=what, rtol=1e-3, atol=1e-3,
                     diagnose=lambda arr: _diagnose_denoised(arr, score_fn, sde, x_t, t))
