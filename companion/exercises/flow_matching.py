"""Hidden tests of the exercises of chapter 8 (flow matching).

* ``conditional_velocity(a, b, x0, z, t)``: a'(t) x0 + b'(t) z for a path given only by
  its coefficient functions, Eq. (eq-conditional-velocity), chapter 8.
* ``velocity_from_score(a, b, da, db, x, score)``: the marginal velocity from the score,
  Eq. (eq-velocity-score), chapter 8.
* ``fm_fisher_weight(a, b, da, db)`` (conceptual): the weight lambda(t) that makes the
  flow-matching loss a weighted Fisher divergence of the score the velocity model
  stands for (chapter 4's Eq. eq-weighted-fisher), a step chapter 8 prepares but does
  not print.

The checks hand the reader's function plain arrays and plain functions (no path object),
on paths other than the chapter's, in float32 and float64, with batches of one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from companion.exercises._calling import call_compiled_each
from companion.exercises._core import Mismatch, as_array, exercise, expect_close

__all__: list[str] = []  # importing the module registers its exercises; nothing to import

# ----------------------------------------------------------------------------- references


def _conditional_velocity(a, b, x0, z, t):
    """Reference: derivatives of a and b by autodiff, one time at a time."""
    da = jax.vmap(jax.grad(lambda s: a(s[None])[0]))(jnp.asarray(t))
    db = jax.vmap(jax.grad(lambda s: b(s[None])[0]))(jnp.asarray(t))
    return da[:, None] * x0 + db[:, None] * z


def _velocity_from_score(a, b, da, db, x, score):
    """Reference: (a'/a) x + (a' b^2 / a - b b') score."""
    return da / a * x + (da * b**2 / a - db * b) * score


def _fm_fisher_weight(a, b, da, db):
    """Reference: the square of the score's coefficient in the velocity."""
    return (da * b**2 / a - db * b) ** 2


def _rng():
    return np.random.default_rng(20230201)


# Paths that are neither the rectified one nor an SDE's: (name, a, b), jnp functions of t (n,)
_PATHS = [
    ("a trigonometric path", lambda t: jnp.cos(0.5 * jnp.pi * t), lambda t: jnp.sin(0.5 * jnp.pi * t)),
    ("a path with a(1) > 0", lambda t: 1.0 - 0.8 * t**2, lambda t: jnp.sqrt(t + 0.01) - 0.1),
    ("an exponential path", lambda t: jnp.exp(-2.0 * t), lambda t: 1.5 * t * (2.0 - t)),
]


# ----------------------------------------------------------------------------- conditional_velocity


@exercise(
    "conditional_velocity",
    chapter=8,
    hint="Hold x0 and z fixed and differentiate x_t = a(t) x0 + b(t) z with respect to t. Only a and b "
    "are given, not their derivatives: get those from the functions themselves.",
    hint2="jax.grad differentiates a scalar function: make one from a(.) for a single time, then vmap it "
    "over the n times; each sample's derivative multiplies its own row of x0 (and of z).",
    reference=_conditional_velocity,
    blocked=("companion.paths:GaussianPath.conditional_velocity",),
)
def _test_conditional_velocity(fn):
    rng = _rng()
    whats, cases = [], []
    for (label, a, b), (n, d), dtype in zip(_PATHS, [(5, 2), (1, 3), (4, 1)],
                                            [np.float32, np.float64, np.float32]):
        x0 = rng.normal(size=(n, d)).astype(dtype)
        z = rng.normal(size=(n, d)).astype(dtype)
        t = rng.uniform(0.05, 0.95, size=n).astype(dtype)
        whats.append(f"conditional_velocity ({label}, n = {n}, d = {d}, {np.dtype(dtype).name})")
        cases.append((a, b, x0, z, t))
    f32 = [(a, b, *(jnp.asarray(v, jnp.float32) for v in arrays)) for a, b, *arrays in cases]
    gots = call_compiled_each(fn, cases)  # all the cases as one compiled program
    for what, (a, b, x0, z, t), got, want in zip(whats, cases, gots,
                                                 call_compiled_each(_conditional_velocity, f32)):
        # float32 derivatives: autodiff is exact to rounding; 2e-3 also accepts a careful
        # central difference
        expect_close(got, want, what=what, rtol=2e-3, atol=2e-3)
        position = np.asarray(a(jnp.asarray(t)))[:, None] * x0 + np.asarray(b(jnp.asarray(t)))[:, None] * z
        if np.allclose(as_array(got, what), position, rtol=1e-3, atol=1e-3):
            raise Mismatch(f"{what}: this is the point x_t itself, not its velocity")


# ----------------------------------------------------------------------------- velocity_from_score


@exercise(
    "velocity_from_score",
    chapter=8,
    hint="Start from the conditional velocity, eliminate x0 with the path's equation, then replace the "
    "noise by its conditional mean given x_t (Tweedie, chapter 4: it is a multiple of the score).",
    hint2="After eliminating x0 the velocity is a multiple of x_t plus a multiple of z; the second "
    "multiple involves both derivatives. Then E[z | x_t] = -b times the score.",
    reference=_velocity_from_score,
    blocked=("companion.losses:velocity_from_score", "companion.sde:LinearSDE.probability_flow_drift"),
)
def _test_velocity_from_score(fn):
    rng = _rng()
    cases = [(6, 2, np.float32), (1, 3, np.float64), (3, 1, np.float64), (5, 2, np.float64)]
    for i, (n, d, dtype) in enumerate(cases):
        a, b = rng.uniform(0.2, 1.0), rng.uniform(0.1, 1.5)
        da, db = rng.uniform(-3.0, -0.2), rng.uniform(0.2, 3.0)
        if i == 3:  # a path whose data coefficient grows for a while (a' > 0)
            da = rng.uniform(0.3, 1.0)
        x = rng.normal(size=(n, d)).astype(dtype)
        score = rng.normal(size=(n, d)).astype(dtype)
        args = [dtype(v) if dtype is np.float64 else np.float32(v) for v in (a, b, da, db)]
        what = f"velocity_from_score (case {i + 1}: n = {n}, d = {d}, {np.dtype(dtype).name})"
        want = _velocity_from_score(*(float(v) for v in args), x.astype(np.float64), score.astype(np.float64))
        expect_close(fn(*args, x, score), want, what=what, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- fm_fisher_weight


@exercise(
    "fm_fisher_weight",
    chapter=8,
    hint="A velocity model stands for a score model through the velocity-score conversion, and so does "
    "the exact velocity. Write the velocity error v - u in terms of the score error: what multiplies it?",
    hint2="The term with x is the same in v and in u and cancels; what is left is one coefficient times "
    "(model score - true score). The squared norm of the velocity error is then that coefficient squared "
    "times the squared score error.",
    reference=_fm_fisher_weight,
)
def _test_fm_fisher_weight(fn):
    rng = _rng()
    for (label, a_fn, b_fn), n, dtype in zip(_PATHS, [7, 1, 4], [np.float32, np.float64, np.float64]):
        t = jnp.asarray(rng.uniform(0.05, 0.95, size=n), jnp.float32)
        a, b = a_fn(t), b_fn(t)
        da = jax.vmap(jax.grad(lambda s: a_fn(s[None])[0]))(t)
        db = jax.vmap(jax.grad(lambda s: b_fn(s[None])[0]))(t)
        args = [np.asarray(v, dtype) for v in (a, b, da, db)]
        what = f"fm_fisher_weight ({label}, n = {n}, {np.dtype(dtype).name})"
        want = _fm_fisher_weight(*(np.asarray(v, np.float64) for v in args))
        expect_close(fn(*args), want, what=what, rtol=1e-4, atol=1e-6)
