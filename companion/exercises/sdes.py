"""Hidden tests of the exercises of chapter 2 (SDEs).

* ``euler_maruyama_step(f, g, x, t, h, z)`` (warm-up): one Euler-Maruyama step with a
  given normal draw.
* ``ve_diffusion(t, sigma_min, sigma_max)`` (derivation): g(t) of the VE SDE in closed
  form, from g(t)^2 = d[sigma(t)^2]/dt and the geometric sigma(t) (the chapter prints
  the definition, not the closed form).
* ``vp_kernel(x0, t, beta_min, beta_max)`` (decision): mean and std of the VP
  perturbation kernel, with B(t) worked out, one time per sample allowed, and times so
  small (t = 1e-4 in float32) that the reader must decide how to compute 1 - exp(-B)
  without losing the digits asked for to cancellation.
* ``linear_kernel(A, g, t)`` (decision): the mean coefficient a(t) and the std b(t) of
  the perturbation kernel N(a(t) x0, b(t)^2 I) of *any* linear SDE
  dx = A(t) x dt + g(t) dw, from the moment ODEs of chapter 2; the reader chooses how
  to integrate them to the accuracy asked.

Inputs come from a fixed NumPy seed; references are computed in float64. Messages name
the case and say how the answer is wrong, never what the right value is.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from companion.exercises._core import Mismatch, as_array, as_pair, exercise, expect_close, is_close
from companion.exercises._words import factor_words

__all__: list[str] = []  # importing the module registers its exercises; nothing to import

# ----------------------------------------------------------------------------- references


def _euler_maruyama_step(f, g, x, t, h, z):
    """Reference: x + f(x, t) h + g(t) sqrt(h) z."""
    return x + f(x, t) * h + g(t) * jnp.sqrt(h) * z


def _ve_diffusion(t, sigma_min, sigma_max):
    """Reference: the square root of d[sigma(t)^2]/dt, sigma(t) = sigma_min r^t, r = sigma_max / sigma_min."""
    t = np.asarray(t, dtype=np.float64)
    sigma = sigma_min * (sigma_max / sigma_min) ** t
    return sigma * np.sqrt(2 * np.log(sigma_max / sigma_min))


def _vp_kernel(x0, t, beta_min, beta_max):
    """Reference: mean exp(-B/2) x0, std sqrt(1 - exp(-B)), B(t) = beta_min t + t^2 (beta_max - beta_min)/2."""
    x0 = np.asarray(x0, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    big_b = beta_min * t + 0.5 * t**2 * (beta_max - beta_min)
    coef = np.exp(-0.5 * big_b)
    mean = (coef[:, None] if coef.ndim == 1 else coef) * x0
    return mean, np.sqrt(-np.expm1(-big_b))


# --------------------------------------------------------------------- euler_maruyama_step


def _em_cases():
    """(label, f, g, x, t, h, z): float32 states, drifts and diffusions that depend on t.

    h is between 0.01 and 0.2, so sqrt(h) and h differ by a factor 1.4 to 10, and g(t)
    and g(t + h) differ by at least ~1%: the mistakes below move the answer far more
    than the tolerance.
    """
    rng = np.random.default_rng(20210202)

    def draw(*shape):
        return jnp.asarray(rng.normal(size=shape), dtype=jnp.float32)

    def ou(x, t):
        return -2.0 * x

    def forced(x, t):
        return -3.0 * (x - jnp.cos(2 * jnp.pi * t))

    def nonlinear(x, t):
        return jnp.sin(x) - 0.5 * x * t

    g_const = lambda t: 1.0
    g_growing = lambda t: 0.5 + 2.0 * t
    g_vp = lambda t: jnp.sqrt(0.1 + 19.9 * t)

    def t_h():
        return float(rng.uniform(0.1, 1.0)), float(rng.uniform(0.01, 0.2))

    cases = []
    for label, f, g, shape in [
        ("Ornstein-Uhlenbeck drift, g constant, x of shape ()", ou, g_growing, ()),
        ("forced drift, g growing with t, x of shape (5,)", forced, g_growing, (5,)),
        ("nonlinear drift, g of the VP SDE, a batch x of shape (6, 2)", nonlinear, g_vp, (6, 2)),
        ("no drift to speak of (g constant), x of shape (4,)", lambda x, t: 0.0 * x, g_const, (4,)),
    ]:
        cases.append((label, f, g, draw(*shape), *t_h(), draw(*shape)))
    return cases


# float32 arithmetic on values of size <= ~10: agreement to ~1e-6; wrong answers are off
# by at least ~1e-2 (a factor sqrt(h) vs h on noise of size ~1, a missing drift term).
_EM_RTOL, _EM_ATOL = 1e-5, 1e-5


def _diagnose_em(arr, f, g, x, t, h, z):
    def near(v):
        return is_close(arr, v, _EM_RTOL, _EM_ATOL)

    x, z = np.asarray(x, np.float64), np.asarray(z, np.float64)
    fx, gt = np.asarray(f(x, t), np.float64), float(g(t))
    if near(x + fx * h + gt * h * z):
        return "the noise is scaled by h; a Brownian increment over a step h has standard deviation sqrt(h)"
    if near(x + fx * h + gt * z):
        return "the noise is not scaled by the step at all"
    if near(x + fx * h + gt**2 * np.sqrt(h) * z):
        return "the noise is multiplied by g(t)^2; the SDE multiplies dw by g(t)"
    if near(x + fx + gt * np.sqrt(h) * z):
        return "the drift is not multiplied by the step h"
    if near(x + fx * h):
        return "there is no noise term"
    if near(fx * h + gt * np.sqrt(h) * z):
        return "this is the change of x over the step, not the new state"
    return None


@exercise(
    "euler_maruyama_step",
    chapter=2,
    hint=(
        "The Euler-Maruyama step of chapter 2: chapter 1's Euler step for the drift, plus "
        "the noise. How does the size of a Brownian increment scale with the step h?"
    ),
    hint2=(
        "Both f and g are evaluated at the start of the step. z is a standard normal "
        "draw; the Brownian increment over a time h has variance h, not h^2. Return the "
        "new state, shaped like x."
    ),
    blocked=("diffrax:Euler.step", "diffrax:diffeqsolve"),  # a solver's own step
    reference=_euler_maruyama_step,
)
def _test_euler_maruyama_step(fn):
    for label, f, g, x, t, h, z in _em_cases():
        want = np.asarray(_euler_maruyama_step(f, g, x, t, h, z), dtype=np.float64)
        what = f"case '{label}'"
        arr = as_array(fn(f, g, x, t, h, z), what)
        if arr.shape == want.shape and np.all(np.isfinite(arr)) and not is_close(arr, want, _EM_RTOL, _EM_ATOL):
            late_g = np.asarray(x + f(x, t) * h + g(t + h) * np.sqrt(h) * z, np.float64)
            if float(g(t + h)) != float(g(t)) and is_close(arr, late_g, _EM_RTOL, _EM_ATOL):
                raise Mismatch(f"{what}: g is evaluated at the end of the step; Euler-Maruyama uses the start")
            msg = _diagnose_em(arr, f, g, x, t, h, z)
            if msg:
                raise Mismatch(f"{what}: {msg}")
        expect_close(arr, want, what=what, rtol=_EM_RTOL, atol=_EM_ATOL)


# ---------------------------------------------------------------------------- ve_diffusion


def _ve_cases():
    rng = np.random.default_rng(20210203)
    return [
        ("t = 0.5, sigma in [0.01, 50] (the course's VE)", 0.5, 0.01, 50.0),
        ("t = 1, sigma in [0.01, 50]", 1.0, 0.01, 50.0),
        ("a vector of 7 times, sigma in [0.01, 50]", rng.uniform(0.0, 1.0, size=7), 0.01, 50.0),
        ("a vector of 5 times as float32, sigma in [0.1, 5]",
         jnp.asarray(rng.uniform(0.0, 1.0, size=5), jnp.float32), 0.1, 5.0),
        ("t = 0, sigma in [0.002, 80]", 0.0, 0.002, 80.0),
    ]


# g is computed with exp and log of moderate numbers (log r <= 11): float32 gives ~1e-6
# relative; the mistakes (a factor sqrt(2), log10, sigma(t) alone, g^2) are >= 40% off.
_VE_RTOL, _VE_ATOL = 1e-5, 1e-8


@exercise(
    "ve_diffusion",
    chapter=2,
    hint=(
        "The VE SDE of chapter 2: without drift, the kernel's variance grows at the rate "
        "g(t)^2 (the variance ODE of chapter 2 with A = 0), and it must follow sigma(t)^2. "
        "Differentiate."
    ),
    hint2=(
        "Write sigma(t)^2 as an exponential in t with the natural logarithm of "
        "sigma_max / sigma_min in the exponent; its derivative brings that exponent's "
        "factor down. Take the square root at the end. t may be an array."
    ),
    blocked=("companion.sde:*",),  # VE.diffusion, and VE.sigma one level below
    reference=_ve_diffusion,
)
def _test_ve_diffusion(fn):
    for label, t, lo, hi in _ve_cases():
        want = _ve_diffusion(t, lo, hi)
        what = f"case '{label}'"
        arr = as_array(fn(t, lo, hi), what)
        if arr.shape == want.shape and np.all(np.isfinite(arr)) and not is_close(arr, want, _VE_RTOL, _VE_ATOL):
            sigma = lo * (hi / lo) ** np.asarray(t, np.float64)
            if is_close(arr, sigma, _VE_RTOL, _VE_ATOL):
                raise Mismatch(f"{what}: this is sigma(t), the noise level; g(t) is the rate at which its square grows")
            if is_close(arr, want**2, _VE_RTOL, _VE_ATOL):
                raise Mismatch(f"{what}: this looks like g(t)^2; take the square root")
            if is_close(arr, want / np.sqrt(2), _VE_RTOL, _VE_ATOL):
                raise Mismatch(f"{what}: off by a factor sqrt(2): d/dt of r^(2t) brings down 2 log r")
            if is_close(arr, want * np.sqrt(1 / np.log(10)), _VE_RTOL, _VE_ATOL):
                raise Mismatch(f"{what}: off by a constant factor, as with a base-10 logarithm: "
                               "the derivative of r^(2t) brings down a natural logarithm")
            linear = lo + (hi - lo) * np.asarray(t, np.float64)
            if is_close(arr / want, linear / sigma, 1e-4, 1e-8):
                raise Mismatch(f"{what}: your g grows linearly in t where sigma(t) grows "
                               "geometrically (sigma_min (sigma_max / sigma_min)^t)")
        expect_close(arr, want, what=what, rtol=_VE_RTOL, atol=_VE_ATOL)


# ------------------------------------------------------------------------------- vp_kernel


def _vp_cases():
    rng = np.random.default_rng(20210204)

    def draw(*shape):
        return jnp.asarray(rng.normal(size=shape), dtype=jnp.float32)

    times = jnp.asarray(rng.uniform(0.05, 1.0, size=6), jnp.float32)
    return [
        ("x0 of shape (4, 2), t = 0.3, beta in [0.1, 20]", draw(4, 2), 0.3, 0.1, 20.0),
        ("x0 of shape (3, 5), t = 1, beta in [0.1, 20]", draw(3, 5), 1.0, 0.1, 20.0),
        ("x0 of shape (6, 2), one time per sample, beta in [0.1, 20]", draw(6, 2), times, 0.1, 20.0),
        ("x0 of shape (5, 3), t = 0.7, beta in [1, 5]", draw(5, 3), 0.7, 1.0, 5.0),
        ("x0 of shape (2, 1), t = 0.05, constant beta = 2", draw(2, 1), 0.05, 2.0, 2.0),
        ("x0 of shape (3, 2), a tiny time t = 1e-4 as float32, beta in [0.1, 20]", draw(3, 2),
         np.float32(1e-4), 0.1, 20.0),
        ("x0 of shape (3, 4), small times per sample as float32, beta in [0.1, 20]", draw(3, 4),
         jnp.asarray([3e-4, 1e-3, 2e-4], jnp.float32), 0.1, 20.0),
    ]


# exp/sqrt of B in [1e-5, 10] in float32: computed without cancellation (expm1), the std
# is good to ~1e-7 relative; computed as 1 - exp(-B) in float32 it loses 3e-4 (B = 1e-4)
# to 1.3e-3 (B = 1e-5) relative, which rtol = 1e-4 rejects. The other mistakes (sub-VP
# std, exp(-B) without the 1/2, B = beta(t) t, the variance instead of the std) are >= 5%
# off on these cases.
_VP_RTOL, _VP_ATOL = 1e-4, 1e-6


@exercise(
    "vp_kernel",
    chapter=2,
    hint=(
        "The VP kernel of chapter 2 (the moment equations' solution with A = -beta/2, "
        "g^2 = beta): everything depends on B(t), the integral of beta from 0 to t. "
        "Return the mean (shaped like x0) and the standard deviation (not the variance)."
    ),
    hint2=(
        "beta is linear in t, so its integral is a quadratic in t. With one time per "
        "sample, the mean coefficient must broadcast along the first axis of x0. For tiny "
        "B, exp(-B) rounds to a float32 number near 1 and the difference 1 - exp(-B) keeps "
        "only a few digits: NumPy and JAX have a function for exp(x) - 1 that avoids it."
    ),
    blocked=("companion.sde:*",),  # the kernel, and VP.integrated_beta one level below
    reference=_vp_kernel,
)
def _test_vp_kernel(fn):
    for label, x0, t, lo, hi in _vp_cases():
        want_mean, want_std = _vp_kernel(x0, t, lo, hi)
        what = f"case '{label}'"
        got = fn(x0, t, lo, hi)
        mean, std = as_pair(got, what, "mean", "std")
        t64 = np.asarray(t, np.float64)
        big_b = lo * t64 + 0.5 * t64**2 * (hi - lo)
        if std.shape == want_std.shape and not is_close(std, want_std, _VP_RTOL, _VP_ATOL):
            if is_close(std, want_std**2, _VP_RTOL, _VP_ATOL):
                raise Mismatch(f"{what}, std: this looks like the variance; return its square root")
            if is_close(std, 1 - np.exp(-big_b), _VP_RTOL, _VP_ATOL):
                raise Mismatch(f"{what}, std: this is the sub-VP kernel's std, not the VP one's")
            if is_close(std, np.exp(-0.5 * big_b), _VP_RTOL, _VP_ATOL):
                raise Mismatch(f"{what}, std: this is the mean coefficient a(t), not the std b(t)")
            naive = np.sqrt(1 - np.exp(-np.asarray(big_b, np.float32)))  # float32 cancellation
            if np.asarray(t).dtype == np.float32 and is_close(std, naive, 1e-6, 1e-9):
                raise Mismatch(f"{what}, std: digits lost to cancellation: for tiny B, "
                               "1 - exp(-B) in float32 subtracts two nearly equal numbers; "
                               "compute it without the subtraction")
            late = (lo + t64 * (hi - lo)) * t64  # beta(t) t: the rate at the end, times t
            if is_close(std, np.sqrt(-np.expm1(-late)), _VP_RTOL, _VP_ATOL):
                raise Mismatch(f"{what}, std: B(t) is taken as beta(t) t; beta grows with t, "
                               "so its integral is not its final value times t")
        if mean.shape == want_mean.shape and not is_close(mean, want_mean, _VP_RTOL, _VP_ATOL):
            coef = np.exp(-big_b)
            if is_close(mean, (coef[:, None] if coef.ndim == 1 else coef) * np.asarray(x0), _VP_RTOL, _VP_ATOL):
                raise Mismatch(f"{what}, mean: the mean decays too fast: your mean coefficient a(t) is the square of the right one")
            half = np.exp(-0.5 * big_b)
            if is_close(mean, np.broadcast_to(half[:, None] if half.ndim == 1 else half, mean.shape),
                        _VP_RTOL, _VP_ATOL):
                raise Mismatch(f"{what}, mean: this is the mean coefficient a(t) alone; the mean "
                               "is a(t) x0")
        expect_close(mean, want_mean, what=what + ", mean", rtol=_VP_RTOL, atol=_VP_ATOL)
        expect_close(std, want_std, what=what + ", std", rtol=_VP_RTOL, atol=_VP_ATOL)


# -------------------------------------------------------------------------- linear_kernel


def _linear_kernel(A, g, t, *, exponent=2.0, drift_in_variance=True):
    """Reference: a(t) = exp(int_0^t A), b(t) = a(t) sqrt(int_0^t g(u)^2 / a(u)^2 du), the
    moment equations of chapter 2 solved by variation of constants, by the trapezoidal
    rule on 20 001 points in float64 (A and g evaluated once on the whole grid); its
    error, ~1e-9 relative, is far below the tolerance. ``exponent`` and
    ``drift_in_variance`` build two known mistakes (v' = A v + g^2; v' = g^2) for the
    diagnoses."""
    t = float(t)
    if t == 0.0:
        return np.float64(1.0), np.float64(0.0)
    u = np.linspace(0.0, t, 20001)
    av = np.broadcast_to(np.asarray(A(u), np.float64), u.shape)
    gv = np.broadcast_to(np.asarray(g(u), np.float64), u.shape)
    du = np.diff(u)
    int_a = np.concatenate([[0.0], np.cumsum(0.5 * (av[1:] + av[:-1]) * du)])
    k = exponent if drift_in_variance else 0.0
    w = gv**2 * np.exp(k * (int_a[-1] - int_a))
    var = np.sum(0.5 * (w[1:] + w[:-1]) * du)
    return np.float64(np.exp(int_a[-1])), np.float64(np.sqrt(var))


def _kernel_cases():
    """(label, A, g, t): the course's three SDEs and linear SDEs the chapter never met.
    A and g are written with jnp, so they accept Python floats, NumPy and JAX scalars and
    tracers (diffrax), and return a scalar."""
    bmin, bmax = 0.1, 20.0
    beta = lambda u: bmin + u * (bmax - bmin)  # noqa: E731
    big_b = lambda u: bmin * u + 0.5 * u**2 * (bmax - bmin)  # noqa: E731
    smin, smax = 0.01, 50.0
    log_r = np.log(smax / smin)
    return [
        ("VE (A = 0), t = 0.7", lambda u: 0.0 * u,
         lambda u: smin * jnp.exp(log_r * u) * np.sqrt(2 * log_r), 0.7),
        ("VP, t = 0.3", lambda u: -0.5 * beta(u), lambda u: jnp.sqrt(beta(u)), 0.3),
        ("sub-VP, t = 0.2", lambda u: -0.5 * beta(u),
         lambda u: jnp.sqrt(beta(u) * (1 - jnp.exp(-2 * big_b(u)))), 0.2),
        ("A(t) = sin(3t), g(t) = 1 + t^2, t = 1.3", lambda u: jnp.sin(3.0 * u),
         lambda u: 1.0 + u**2, 1.3),
        ("a growing process A = 0.8, g = 0.3, t = 2.0", lambda u: 0.8 + 0.0 * u,
         lambda u: 0.3 + 0.0 * u, 2.0),
        ("A(t) = -2 - cos(5t), g(t) = exp(-t), t = 0.05 given as float32",
         lambda u: -2.0 - jnp.cos(5.0 * u), lambda u: jnp.exp(-u), np.float32(0.05)),
        ("any SDE at t = 0", lambda u: -1.0 + 0.0 * u, lambda u: 2.0 + 0.0 * u, 0.0),
    ]


# The reference is exact to ~1e-10. A reader who integrates the moment ODEs numerically in
# float32 (diffrax, rtol 1e-6) is within ~1e-5; rtol = 1e-3 leaves room for that and
# for a fixed-step solver with a few hundred steps, and rejects every wrong answer below,
# which is off by 5 % or more (most by factors).
_KERNEL_RTOL, _KERNEL_ATOL = 1e-3, 1e-6
_STD_FACTORS = (2.0, 0.5, 2**0.5, 2**-0.5)  # std off by a factor: a variance off by 4, 1/4, 2, 1/2


def _test_linear_kernel_impl(fn):
    for label, A, g, t in _kernel_cases():
        want_a, want_b = _linear_kernel(A, g, t)
        what = f"case '{label}'"
        got = fn(A, g, t)
        a, b = as_pair(got, what, "mean coefficient a(t)", "std b(t)")
        close = lambda u, v: bool(  # noqa: E731
            u.shape == () and np.isclose(u, v, rtol=_KERNEL_RTOL, atol=_KERNEL_ATOL))
        if a.shape == () and not close(a, want_a):
            if close(a, 1.0 / want_a):
                raise Mismatch(f"{what}: the mean coefficient is the reciprocal of the right one "
                               "(a sign in the exponent)")
        if b.shape == () and not close(b, want_b) and t > 0:
            big_b = 0.1 * float(t) + 0.5 * float(t) ** 2 * (20.0 - 0.1)
            if close(a, np.exp(-0.5 * big_b)) and close(b, np.sqrt(-np.expm1(-big_b))):
                raise Mismatch(f"{what}: these are the VP SDE's coefficients (beta from 0.1 to "
                               "20), whatever A and g are; the check uses other linear SDEs too")
            if close(b, want_b**2):
                raise Mismatch(f"{what}: your std looks like the variance")
            if close(b, np.sqrt(max(1.0 - want_a**2, 0.0))):
                raise Mismatch(f"{what}: your std follows a relation between mean coefficient and "
                               "std that holds for some SDEs only (the VP SDE)")
            if close(b, _linear_kernel(A, g, t, exponent=1.0)[1]):
                raise Mismatch(f"{what}: your variance grows as if v' = A v + g^2; the variance "
                               "ODE has a factor 2 (the variance of (1 + A h) x is (1 + A h)^2 v)")
            if close(b, _linear_kernel(A, g, t, drift_in_variance=False)[1]):
                raise Mismatch(f"{what}: your variance only accumulates g^2 (true for the VE SDE "
                               "only); the drift also shrinks or stretches the variance")
            ratio = float(b) / want_b if want_b else np.inf
            raise Mismatch(f"{what}: the std is {factor_words(ratio, 'the right one', factors=_STD_FACTORS)}")
        expect_close(a, want_a, what=what + ", mean coefficient a(t)", rtol=_KERNEL_RTOL,
                     atol=_KERNEL_ATOL)
        expect_close(b, want_b, what=what + ", std b(t)", rtol=_KERNEL_RTOL, atol=_KERNEL_ATOL)


@exercise(
    "linear_kernel",
    chapter=2,
    hint=(
        "The kernel started at x0 is Gaussian; its mean and variance follow the two moment "
        "ODEs of chapter 2 (the section 'Linear SDEs and their moments') from m(0) = x0 "
        "and v(0) = 0. Nothing in the check is VE, VP or sub-VP only."
    ),
    hint2=(
        "Either integrate the ODEs numerically (chapter 1: diffrax with a tight rtol, or a "
        "few hundred fixed steps), or evaluate the variation-of-constants solution of "
        "chapter 2 with numerical integrals. Remember which of the two ODEs has the factor "
        "2, and return the std."
    ),
    reference=_linear_kernel,
)
def _test_linear_kernel(fn):
    _test_linear_kernel_impl(fn)
