"""Hidden tests of the exercises of chapter 7 (images); the first, ``gaussian_denoiser``,
is in :mod:`companion.exercises.denoisers`.

* ``histogram_bits(train_levels, test_levels, n_levels, alpha)`` (derivation): the
  per-pixel histogram baseline, fitted with add-alpha smoothing, in bits per dimension
  of each test image.
* ``denoised_digits(score_fn, sde, x_t, t)`` (derivation, on the image model): the
  network's estimate E[x_0 | x_t] of the clean digits behind noisy ones (chapter 4's
  denoiser, applied to the shipped U-Net, one time or one per image).

Inputs come from fixed seeds; messages say how an answer is wrong, never what is right.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from companion.exercises._core import Mismatch, as_array, exercise, expect_close, is_close

__all__: list[str] = []  # importing the module registers its exercises; nothing to import


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
