"""Hidden tests of the exercises of chapter 8 (flow matching).

* ``conditional_velocity(a, b, x0, z, t)`` (warm-up): a'(t) x0 + b'(t) z for a path
  given only by its coefficient functions (the conditional velocity of chapter 8), with
  the derivatives taken by ``jax.grad`` and ``jax.vmap`` as the chapter shows.
* ``velocity_from_score(a, b, da, db, x, score)`` (derivation): the marginal velocity
  from the score. Chapter 8's table of parametrisations gives each of them in terms of
  the noise prediction; the velocity in terms of the score is not printed.
* ``fm_fisher_weight(a, b, da, db)`` (derivation): the weight lambda(t) that makes the
  flow-matching loss a weighted Fisher divergence of the score the velocity model
  stands for (chapter 4's weighted Fisher divergence), a step chapter 8 prepares but
  does not print.

The checks hand the reader's function plain arrays and plain functions (no path object),
on paths other than the chapter's, in float32 and float64, with batches of one. Known
mistakes get a message that names them.
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


def _d(f, t):
    """f'(t) for a function f of an array of times, by autodiff one time at a time."""
    return jax.vmap(jax.grad(lambda s: f(s[None])[0]))(jnp.asarray(t, jnp.float32))


def _named(known, *, rtol, atol):
    """A diagnosis for expect_close: the message of the first known wrong formula that
    the answer matches (computed by the checker before the reader's function runs)."""
    def diagnose(arr):
        for value, message in known:
            if np.shape(value) == arr.shape and np.allclose(arr, value, rtol=rtol, atol=atol):
                return message
        return None

    return diagnose


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
    blocked=("companion.paths:*",),
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
        av, bv = (np.asarray(f(jnp.asarray(t)), np.float64)[:, None] for f in (a, b))
        wf = [np.asarray(w, np.float64) for w in (x0, z)]
        dav = np.asarray(_d(a, t), np.float64)[:, None]
        dbv = np.asarray(_d(b, t), np.float64)[:, None]
        known = [
            (av * wf[0] + bv * wf[1], "this is the point x_t itself, not its velocity"),
            (-(dav * wf[0] + dbv * wf[1]), "the sign is flipped: the velocity is the derivative in t, "
                                            "forward in time"),
            (dav * wf[1] + dbv * wf[0], "x0 and z are swapped: a multiplies the data, b the noise"),
            (dav * wf[0] + bv * wf[1], "b(t) multiplies z where its derivative b'(t) belongs"),
            (av * wf[0] + dbv * wf[1], "a(t) multiplies x0 where its derivative a'(t) belongs"),
        ]
        expect_close(got, want, what=what, rtol=2e-3, atol=2e-3, diagnose=_named(known, rtol=1e-3, atol=1e-3))


# ----------------------------------------------------------------------------- velocity_from_score


@exercise(
    "velocity_from_score",
    chapter=8,
    hint="The table of parametrisations in chapter 8 writes both the velocity and the score in terms of "
    "the noise prediction z-hat. Eliminate z-hat between the two rows.",
    hint2="From the score row, z-hat is a multiple of the score (mind the sign); put that into the velocity "
    "row. The term in x does not change; only the coefficient of the noise changes into a coefficient of "
    "the score.",
    reference=_velocity_from_score,
    blocked=("companion.losses:*", "companion.paths:*", "companion.sde:LinearSDE.probability_flow_drift"),
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
        a, b, da, db = (float(v) for v in args)
        xf, sf = x.astype(np.float64), score.astype(np.float64)
        want = _velocity_from_score(a, b, da, db, xf, sf)
        noise_coef = db - da * b / a  # the velocity's coefficient of z-hat
        known = [
            (da / a * xf + b * noise_coef * sf, "the score term has the wrong sign: z-hat = -b times the "
                                                "score (Tweedie), not +b times it"),
            (da / a * xf + noise_coef * sf, "the score was used as the noise prediction: z-hat is -b times "
                                            "the score"),
            (da / a * xf - db * b * sf, "the a'/a part of the noise's coefficient is missing: eliminating "
                                        "x0 moves a term a' b / a from the data onto the noise"),
            (da / a * xf + (da * b**2 / a - db) * sf, "b' multiplies the score where b times b' belongs "
                                                     "(z-hat = -b times the score)"),
            ((da * b**2 / a - db * b) * sf, "the term (a'/a) x is missing: the data coefficient's part of "
                                            "the velocity stays"),
            (da * xf + (da * b**2 / a - db * b) * sf, "the term in x is a' x; eliminating x0 = (x - b z) / a "
                                                      "divides it by a"),
        ]
        expect_close(fn(*args, x, score), want, what=what, rtol=1e-4, atol=1e-5,
                     diagnose=_named(known, rtol=1e-4, atol=1e-5))


# ----------------------------------------------------------------------------- fm_fisher_weight


@exercise(
    "fm_fisher_weight",
    chapter=8,
    hint="A velocity model stands for a score model through chapter 8's table of parametrisations, and so "
    "does the exact velocity. Write the velocity error u_theta - u_t in terms of the score error: what "
    "multiplies it?",
    hint2="The term with x is the same in u_theta and in u_t and cancels. Do it in two stages: the velocity "
    "error in terms of the noise-prediction error (chapter 8 writes that factor), then the noise-prediction "
    "error in terms of the score error. lambda is whatever then multiplies |s_theta - score|^2. A check "
    "of your own: on the VP path your lambda should depend on t through g(t) alone.",
    reference=_fm_fisher_weight,
)
def _test_fm_fisher_weight(fn):
    rng = _rng()
    for (label, a_fn, b_fn), n, dtype in zip(_PATHS, [7, 1, 4], [np.float32, np.float64, np.float64]):
        t = jnp.asarray(rng.uniform(0.05, 0.95, size=n), jnp.float32)
        a, b = a_fn(t), b_fn(t)
        da, db = _d(a_fn, t), _d(b_fn, t)
        args = [np.asarray(v, dtype) for v in (a, b, da, db)]
        what = f"fm_fisher_weight ({label}, n = {n}, {np.dtype(dtype).name})"
        a, b, da, db = (np.asarray(v, np.float64) for v in args)
        want = _fm_fisher_weight(a, b, da, db)
        coef = da * b**2 / a - db * b  # u_theta - u_t = coef (s_theta - score)
        no_square = ("this is the coefficient itself, not its square (no square): the loss compares squared "
                     "norms, so the factor in front of the score error appears squared")
        known = [
            (coef, no_square),
            (np.abs(coef), no_square),
            ((db - da * b / a) ** 2, "this is the weight on the noise-prediction error; the score error "
                                     "carries one more factor: z-hat = -b times the score"),
            ((da * b**2 / a - db) ** 2, "b' appears where b times b' belongs"),
            ((da * b / a - db * b) ** 2, "a factor b is missing in the a' term (a' b^2 / a)"),
            (1 / want, "this is the inverse: lambda multiplies the score error, |u_theta - u_t|^2 = "
                       "lambda |s_theta - score|^2"),
            (want / 2, "a factor 1/2 too small: both losses carry the same 1/2, so it cancels"),
        ]
        expect_close(fn(*args), want, what=what, rtol=1e-4, atol=1e-6,
                     diagnose=_named(known, rtol=1e-4, atol=1e-6))
