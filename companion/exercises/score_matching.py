"""Hidden tests of the exercises of chapter 4 (continuous-time score matching).

* ``dsm_loss(score_fn, sde, x0, t, z)``: the per-sample denoising score-matching loss
  with the weighting lambda(t) = s(t)^2, Eq. (eq-dsm), chapter 4.
* ``hutchinson_trace(fn, x, v)``: the Skilling-Hutchinson estimate of the trace of the
  Jacobian of a batch function, Eq. (eq-hutchinson), chapter 4.
* ``langevin_step(score_fn, x, z, step_size)``: one step of (unadjusted) Langevin
  dynamics, Eq. (eq-langevin), chapter 4.

Inputs come from a fixed NumPy seed; answers are compared with the reference in float64
tolerances loose enough for float32 arithmetic. Messages name the case and say how the
answer is wrong, never what the right value is.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from companion import sde as sdes
from companion.exercises._core import Mismatch, as_array, exercise, expect_close

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
    hint="x_t comes from the perturbation kernel (sde.mean_coefficient, sde.kernel_std); write the "
    "kernel's score at x_t in terms of z; the weighting is s(t)^2, the squared error is halved and "
    "summed over the coordinates of each sample.",
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
    for label, score, sde, x0, t, z in cases:
        got = fn(score, sde, x0, t, z)
        want = _dsm_loss(score, sde, x0, t, z)
        arr = as_array(got, f"dsm_loss ({label} SDE)")
        if arr.shape != want.shape:
            raise Mismatch(f"dsm_loss ({label} SDE): expected one loss per sample, shape {want.shape}, got {arr.shape}")
        expect_close(got, want, what=f"dsm_loss ({label} SDE)", rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- hutchinson_trace


@exercise(
    "hutchinson_trace",
    chapter=4,
    hint="One Jacobian-vector product per probe: jax.jvp(fn, (x,), (v[p],)) returns (fn(x), J v_p). "
    "Take the dot product with v_p over the coordinates of each sample, then average over the probes.",
    reference=_hutchinson_trace,
)
def _test_hutchinson_trace(fn):
    rng = _rng()
    A = _f32(rng.normal(size=(3, 3)))

    def nonlinear(x):  # samples do not interact; the Jacobian is not symmetric
        return jnp.tanh(x @ A.T) + 0.5 * x**2

    def linear(x):
        return x @ A.T

    for label, f, P in (("a nonlinear function, 1 probe", nonlinear, 1),
                        ("a nonlinear function, 5 probes", nonlinear, 5),
                        ("a linear function, 4 probes", linear, 4)):
        x = _f32(rng.normal(size=(7, 3)))
        v = _f32(rng.choice([-1.0, 1.0], size=(P, 7, 3)))
        got = fn(f, x, v)
        want = _hutchinson_trace(f, x, v)
        arr = as_array(got, f"hutchinson_trace ({label})")
        if arr.shape != want.shape:
            raise Mismatch(f"hutchinson_trace ({label}): expected one estimate per sample, shape {want.shape}, got {arr.shape}")
        expect_close(got, want, what=f"hutchinson_trace ({label})", rtol=1e-4, atol=1e-5)
    # with many Gaussian probes the estimate must approach the exact trace
    x = _f32(rng.normal(size=(2, 3)))
    v = _f32(rng.normal(size=(4000, 2, 3)))
    got = as_array(fn(nonlinear, x, v), "hutchinson_trace (4000 Gaussian probes)")
    exact = np.array([np.trace(np.asarray(jax.jacfwd(lambda xi: nonlinear(xi[None])[0])(xi))) for xi in x])
    if got.shape != exact.shape or np.max(np.abs(got - exact)) > 0.3:  # ~6 standard errors
        raise Mismatch("hutchinson_trace: with 4000 Gaussian probes the average is far from the trace "
                       "of the Jacobian (is it an unbiased estimator?)")


# ----------------------------------------------------------------------------- langevin_step


@exercise(
    "langevin_step",
    chapter=4,
    hint="Move by step_size times the score, then add Gaussian noise scaled so that its variance is "
    "2 * step_size.",
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
