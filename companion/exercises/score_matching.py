"""Hidden tests of the exercises of chapter 4 (continuous-time score matching).

* ``dsm_loss(score_fn, sde, x0, t, z)``: the per-sample denoising score-matching loss
  with the weighting lambda(t) = s(t)^2, Eq. (eq-dsm), chapter 4.
* ``hutchinson_trace(fn, x, v)``: the Skilling-Hutchinson estimate of the trace of the
  Jacobian of a batch function, Eq. (eq-hutchinson), chapter 4.
* ``langevin_step(score_fn, x, z, step_size)``: one step of (unadjusted) Langevin
  dynamics, Eq. (eq-langevin), chapter 4.
* ``dsm_minimum(sde, t, data_var, d)`` (conceptual): the value the s^2-weighted DSM loss
  at time t cannot go below, for Gaussian data N(0, data_var I_d): the constant of
  Eq. (eq-dsm), as a number.

Inputs come from a fixed NumPy seed; answers are compared with the reference in float64
tolerances loose enough for float32 arithmetic. Messages name the case and say how the
answer is wrong, never what the right value is.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from companion import sde as sdes
from companion.exercises._calling import call_compiled_each
from companion.exercises._core import Mismatch, as_array, exercise, expect_close

__all__: list[str] = []  # importing the module registers its exercises; nothing to import

# ----------------------------------------------------------------------------- references


def _dsm_loss(score_fn, sde, x0, t, z):
    """Reference: s^2 / 2 || score(x_t, t) + z / s ||^2 with x_t = m x0 + s z, per sample."""
    m = sde.mean_coefficient(t)[:, None]
    s = sde.kernel_std(t)[:, None]
    xt = m * x0 + s * z
    return 0.5 * jnp.sum((s * score_fn(xt, t) + z) ** 2, axis=1)


def _hutchinson_trace(fn, x, v):
    """Reference: mean over probes p of v_p . (J v_p), per sample."""
    jv = jax.vmap(lambda vp: jax.jvp(fn, (x,), (vp,))[1])(v)
    return jnp.mean(jnp.sum(v * jv, axis=-1), axis=0)


def _langevin_step(score_fn, x, z, step_size):
    """Reference: x + e score(x) + sqrt(2 e) z."""
    return x + step_size * score_fn(x) + jnp.sqrt(2 * step_size) * z


# ----------------------------------------------------------------------------- helpers


def _rng():
    return np.random.default_rng(20210404)


def _f32(a):
    return jnp.asarray(a, dtype=jnp.float32)


def _linear_score(A, b):
    """A score that depends on x and t: -(A x + b) (1 + t)."""
    A, b = _f32(A), _f32(b)

    def score(x, t):
        return -(x @ A.T + b) * (1.0 + jnp.asarray(t)[:, None])

    return score


# ----------------------------------------------------------------------------- dsm_loss


@exercise(
    "dsm_loss",
    chapter=4,
    hint="Eq. (eq-dsm): the perturbed point comes from the kernel of chapter 2, and the target is the "
    "kernel's score at that point, written with z. One number per sample.",
    hint2="x_t = (mean coefficient) x0 + (kernel std) z, both from the SDE at the times t (one per "
    "sample). The kernel's score at x_t is a multiple of z. Weight by the kernel's variance, halve "
    "the squared error and sum it over each sample's coordinates.",
    blocked=("companion.losses:denoising_score_matching",),
    reference=_dsm_loss,
)
def _test_dsm_loss(fn):
    rng = _rng()
    cases = []
    for sde, d in ((sdes.VP(), 2), (sdes.VE(), 3), (sdes.SubVP(), 1)):
        n = 6
        A = rng.normal(size=(d, d))
        score = _linear_score(A @ A.T / d + np.eye(d), rng.normal(size=d))
        x0 = _f32(rng.normal(size=(n, d)) * 2)
        t = _f32(rng.uniform(0.05, 1.0, size=n))
        z = _f32(rng.normal(size=(n, d)))
        cases.append((type(sde).__name__, score, sde, x0, t, z))
    args = [case[1:] for case in cases]
    wants = call_compiled_each(_dsm_loss, args)
    for (label, *_), got, want in zip(cases, call_compiled_each(fn, args), wants):
        arr = as_array(got, f"dsm_loss ({label} SDE)")
        if arr.shape != want.shape:
            raise Mismatch(f"dsm_loss ({label} SDE): expected one loss per sample, shape {want.shape}, got {arr.shape}")
        expect_close(got, want, what=f"dsm_loss ({label} SDE)", rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- hutchinson_trace


@exercise(
    "hutchinson_trace",
    chapter=4,
    hint="Eq. (eq-hutchinson): for each probe, the quadratic form of the Jacobian in that probe, "
    "averaged over the probes; never build the Jacobian.",
    hint2="jax.jvp(fn, (x,), (v_p,)) gives the Jacobian times the probe v_p for the whole batch at "
    "once; dot it with v_p over each sample's coordinates (not over the batch), then average over p.",
    blocked=("companion.divergence:hutchinson_divergence",),
    reference=_hutchinson_trace,
)
def _test_hutchinson_trace(fn):
    rng = _rng()
    A = _f32(rng.normal(size=(3, 3)))

    def nonlinear(x):  # samples do not interact; the Jacobian is not symmetric
        return jnp.tanh(x @ A.T) + 0.5 * x**2

    def linear(x):
        return x @ A.T

    labels, args = [], []
    for label, f, P in (("a nonlinear function, 1 probe", nonlinear, 1),
                        ("a nonlinear function, 5 probes", nonlinear, 5),
                        ("a linear function, 4 probes", linear, 4)):
        x = _f32(rng.normal(size=(7, 3)))
        v = _f32(rng.choice([-1.0, 1.0], size=(P, 7, 3)))
        labels.append(label)
        args.append((f, x, v))
    # with many Gaussian probes the estimate must approach the exact trace
    x = _f32(rng.normal(size=(2, 3)))
    v = _f32(rng.normal(size=(4000, 2, 3)))
    gots = call_compiled_each(fn, args)
    for label, got, want in zip(labels, gots, call_compiled_each(_hutchinson_trace, args)):
        arr = as_array(got, f"hutchinson_trace ({label})")
        if arr.shape != want.shape:
            raise Mismatch(f"hutchinson_trace ({label}): expected one estimate per sample, shape {want.shape}, got {arr.shape}")
        expect_close(got, want, what=f"hutchinson_trace ({label})", rtol=1e-4, atol=1e-5)
    # called as it is: traced, a Python loop over the 4000 probes (a right answer) would
    # unroll into a program that takes minutes to compile
    got = as_array(fn(nonlinear, x, v), "hutchinson_trace (4000 Gaussian probes)")
    jacobians = jax.jit(jax.vmap(jax.jacfwd(lambda xi: nonlinear(xi[None])[0])))(x)
    exact = np.trace(np.asarray(jacobians, np.float64), axis1=1, axis2=2)
    if got.shape != exact.shape or np.max(np.abs(got - exact)) > 0.3:  # ~6 standard errors
        raise Mismatch("hutchinson_trace: with 4000 Gaussian probes the average is far from the trace "
                       "of the Jacobian (is it an unbiased estimator?)")


# ----------------------------------------------------------------------------- langevin_step


@exercise(
    "langevin_step",
    chapter=4,
    hint="Eq. (eq-langevin): a gradient-ascent move on log p plus noise; the noise's size is tied to "
    "the step size (how does a Brownian increment scale?).",
    hint2="The deterministic move is step_size times the score at x; the noise is z scaled so that "
    "its variance is twice the step size.",
    reference=_langevin_step,
)
def _test_langevin_step(fn):
    rng = _rng()
    mu = _f32([1.0, -2.0])

    def score(x):  # the score of N(mu, 0.5^2 I)
        return -(x - mu) / 0.25

    for step in (0.01, 0.1, 0.003):
        x = _f32(rng.normal(size=(8, 2)) * 2)
        z = _f32(rng.normal(size=(8, 2)))
        got = fn(score, x, z, step)
        expect_close(got, _langevin_step(score, x, z, step), what=f"langevin_step (step_size={step})",
                     rtol=1e-4, atol=1e-5)
    x = _f32(rng.normal(size=(4, 2)))
    if np.allclose(np.asarray(fn(score, x, jnp.zeros_like(x), 0.1), np.float64),
                   np.asarray(fn(score, x, jnp.ones_like(x), 0.1), np.float64)):
        raise Mismatch("langevin_step: the result does not depend on the noise z")


# ---------------------------------------------------------------------------- dsm_minimum


class _KernelOnlySDE:
    """An SDE that offers only its perturbation kernel, ``marginal(x0, t) -> (mean, std)``,
    from two functions m(t) and s(t) (one of the course's SDEs, or one made up)."""

    __slots__ = ("__m", "__s")

    def __init__(self, m, s):
        self.__m, self.__s = m, s

    def marginal(self, x0, t):
        x0, t = jnp.asarray(x0), jnp.asarray(t)
        m, s = self.__m(t), self.__s(t)
        if t.ndim == 1 and x0.ndim >= 1:
            m = m.reshape((-1,) + (1,) * (x0.ndim - 1))
        return m * x0, s

    def __repr__(self):
        return "an SDE with only marginal(x0, t) -> (mean, std)"


def _from(sde):
    return _KernelOnlySDE(sde.mean_coefficient, sde.kernel_std)


def _dsm_minimum(sde, t, data_var, d):
    """Reference: d/2 m^2 c / (m^2 c + s^2), c = data_var (the optimum score is that of
    p_t = N(0, (m^2 c + s^2) I); what remains is the noise the score cannot predict)."""
    mean, std = sde.marginal(jnp.ones(()), t)
    m2c = np.float64(mean) ** 2 * np.float64(data_var)
    return 0.5 * d * m2c / (m2c + np.float64(std) ** 2)


def _minimum_cases():
    vp, ve = sdes.VP(beta_min=0.1, beta_max=20.0), sdes.VE(sigma_min=0.01, sigma_max=50.0)
    sub = sdes.SubVP(beta_min=0.1, beta_max=20.0)
    made_up = _KernelOnlySDE(lambda t: jnp.cos(t), lambda t: 0.3 + jnp.sin(t))
    return [
        ("VP, t = 0.3, d = 1, data N(0, 1)", _from(vp), 0.3, 1.0, 1),
        ("VE, t = 0.5, d = 2, data N(0, 0.25 I)", _from(ve), 0.5, 0.25, 2),
        ("sub-VP, t = 0.05, d = 64, data N(0, 2 I)", _from(sub), 0.05, 2.0, 64),
        ("m(t) = cos t, s(t) = 0.3 + sin t, t = 0.7, d = 3, data N(0, 0.5 I)",
         made_up, 0.7, 0.5, 3),
        ("VP, t = 1e-4 given as float32, d = 5, data N(0, 4 I)", _from(vp),
         jnp.float32(1e-4), 4.0, 5),
        ("VE, t = 1.0, d = 784, data N(0, I)", _from(ve), 1.0, 1.0, 784),
    ]


# A closed form evaluated in float32 or float64: rtol 1e-4 covers float32 round-off and
# rejects a Monte Carlo estimate (even 10^6 samples leave ~1e-3 relative error) and every
# wrong answer below (off by factors, or by m(t)^2 where m(t) != 1). A right answer may
# also be written as d/2 minus the explained part, which cancels in float32: an absolute
# error of a few float32 roundings of d/2, hence atol = 2e-6 d.
_MIN_RTOL = 1e-4


def _test_dsm_minimum_impl(fn):
    for label, sde, t, c, d in _minimum_cases():
        want = _dsm_minimum(sde, t, c, d)
        what = f"case '{label}'"
        arr = as_array(fn(sde, t, c, d), what)
        if arr.shape != ():
            raise Mismatch(f"{what}: expected a single number (shape ()), got shape {arr.shape}")
        atol = 2e-6 * d
        if np.isfinite(arr) and not np.isclose(arr, want, rtol=_MIN_RTOL, atol=atol):
            got = float(arr)
            if got == 0.0:
                raise Mismatch(f"{what}: zero, but the loss cannot reach zero even with the "
                               "exact score")
            if np.isclose(got, 0.5 * d, rtol=_MIN_RTOL):
                raise Mismatch(f"{what}: this is the loss of the zero score function, not the "
                               "minimum over all score functions")
            ratio = got / want
            if np.isclose(ratio, 2.0, rtol=1e-3) or np.isclose(ratio, 0.5, rtol=1e-3):
                raise Mismatch(f"{what}: off by a factor close to {ratio:.2g}")
            if np.isclose(ratio, d, rtol=1e-3) or np.isclose(ratio, 1 / d, rtol=1e-3):
                raise Mismatch(f"{what}: off by a factor d (the dimension)")
            raise Mismatch(f"{what}: {ratio:.3g} times the right value")
        expect_close(arr, want, what=what, rtol=_MIN_RTOL, atol=atol)


@exercise(
    "dsm_minimum",
    chapter=4,
    hint=(
        "Which score function minimises the loss of Eq. (eq-dsm) at a fixed t? Put it in; "
        "what is left is the part of the target z / s that no function of x_t can "
        "predict. For Gaussian data p_t is Gaussian (chapter 2)."
    ),
    hint2=(
        "Expand the square: with the optimal score, the minimum is E||z||^2 / 2 minus "
        "s^2 E||score of p_t||^2 / 2. p_t is N(0, (m^2 data_var + s^2) I_d), and "
        "sde.marginal gives m and s at t. The answer depends on d."
    ),
    blocked=(
        "companion.losses:denoising_score_matching",
        "companion.losses:fisher_divergence",
    ),
    reference=_dsm_minimum,
)
def _test_dsm_minimum(fn):
    _test_dsm_minimum_impl(fn)
