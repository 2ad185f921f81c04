"""Hidden tests of the exercises of chapter 1 (ODEs).

* ``euler_step(f, y, t, h)`` (warm-up): one explicit Euler step, Euler's method of
  chapter 1.
* ``heun_step(f, y, t, h)`` (derivation): the two-stage method built on a trial Euler
  step, with the weights of its two slopes chosen by the reader so that it is of
  second order (Heun's method; the chapter gives the structure, not the weights).
* ``convergence_order`` and ``measure_order``: in :mod:`companion.exercises.orders`.

Every test draws its inputs from a fixed NumPy seed, so a failure is reproducible, and
compares the reader's answer with the reference on several cases (linear and nonlinear
vector fields, time-dependent ones, scalar, vector and batched states, ``h = 0``, a
negative ``h``). Messages name the case and say how the answer is wrong, never what the
right value is.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from companion.exercises._core import Mismatch, as_array, exercise, expect_close

# Importing the module registers its exercises; midpoint_step is shared with
# companion.exercises.orders (a hidden method there, a diagnosis here).
__all__ = ["midpoint_step"]

# ----------------------------------------------------------------------------- references


def midpoint_step(f, y, t, h):
    """The explicit midpoint method: a trial *half* Euler step, then the slope there."""
    return y + h * f(y + 0.5 * h * f(y, t), t + 0.5 * h)


def _euler_step(f, y, t, h):
    """Reference: y + h f(y, t)."""
    return y + h * f(y, t)


def _heun_step(f, y, t, h):
    """Reference: the explicit trapezoidal rule (Heun's method)."""
    k1 = f(y, t)
    k2 = f(y + h * k1, t + h)
    return y + 0.5 * h * (k1 + k2)


def _step_cases():
    """(label, f, y, t, h) for the one-step methods, drawn from a fixed seed.

    States are float32 (what a reader's JAX code produces by default); t and h are
    Python floats. Every vector field depends on t, so using the slope at the wrong
    time changes the answer, and h is at least 0.1, so that change (of size h^2 df/dt)
    is far above float32 round-off.
    """
    rng = np.random.default_rng(20210101)
    A = jnp.asarray(rng.normal(size=(3, 3)), dtype=jnp.float32)

    def linear(y, t):  # y of shape (3,) or (n, 3)
        return y @ A.T + t

    def decay(y, t):  # scalar decay with a time-dependent rate
        return -(1.0 + 2.0 * t) * y

    def nonlinear(y, t):
        return jnp.sin(3.0 * y) * jnp.cos(t) + t**2

    def oscillator(y, t):  # damped, forced oscillator on a batch, y of shape (n, 2)
        pos, vel = y[..., 0], y[..., 1]
        return jnp.stack([vel, -pos - 0.3 * vel + jnp.sin(2.0 * t)], axis=-1)

    def draw(*shape):
        return jnp.asarray(rng.normal(size=shape), dtype=jnp.float32)

    def t_h():
        return float(rng.uniform(0.0, 2.0)), float(rng.uniform(0.1, 0.5))

    cases = [
        ("linear f(y, t) = A y + t, y of shape (3,)", linear, draw(3), *t_h()),
        ("scalar decay with a time-dependent rate, y of shape ()", decay, draw(), *t_h()),
        ("nonlinear f, y of shape (4,)", nonlinear, draw(4), *t_h()),
        ("a batch of 5 oscillators, y of shape (5, 2)", oscillator, draw(5, 2), *t_h()),
        ("linear f on a batch, y of shape (6, 3)", linear, draw(6, 3), *t_h()),
    ]
    t, h = t_h()
    cases.append(("a step backwards in time (h < 0), y of shape (4,)", nonlinear, draw(4), t, -h))
    cases.append(("h = 0 (a step of length zero), y of shape (5, 2)", oscillator, draw(5, 2), t, 0.0))
    return cases


# Tolerances for the steppers. The reader's answer and the reference apply the same
# few float32 operations to values of size at most ~10, so they agree to a few float32
# roundings (eps = 1.2e-7), i.e. ~1e-6 relative; rtol=1e-5, atol=1e-6 leaves a margin of
# ten. A wrong step (wrong time, wrong factor, a missing term) is off by at least
# ~h^2 |df/dt| >= 1e-3 on these cases, a thousand times the tolerance.
_STEP_RTOL, _STEP_ATOL = 1e-5, 1e-6


def _close(a, b) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=_STEP_RTOL, atol=_STEP_ATOL))


def _check_step(fn, reference, diagnose):
    for label, f, y, t, h in _step_cases():
        want = np.asarray(reference(f, y, t, h), dtype=np.float64)
        got = fn(f, y, t, h)
        what = f"case '{label}'"
        arr = as_array(got, what)
        if arr.shape == want.shape and np.all(np.isfinite(arr)) and not _close(arr, want):
            msg = diagnose(arr, want, f, y, t, h)
            if msg:
                raise Mismatch(f"{what}: {msg}")
        expect_close(arr, want, what=what, rtol=_STEP_RTOL, atol=_STEP_ATOL)


def _diagnose_common(arr, want, y):
    y = np.asarray(y, dtype=np.float64)
    if _close(arr, want - y):
        return "your result looks like the change of y over the step, not the new state"
    if _close(arr, y) and not _close(want, y):
        return "your result equals the starting state y: the step does not move"
    return None


# ------------------------------------------------------------------------------ euler_step


def _diagnose_euler(arr, want, f, y, t, h):
    msg = _diagnose_common(arr, want, y)
    if msg:
        return msg
    late = np.asarray(y + h * f(y, t + h), dtype=np.float64)
    if _close(arr, late):
        return "the slope is taken at the wrong time (explicit Euler uses the start of the step)"
    y64 = np.asarray(y, np.float64)
    slope = np.asarray(f(y64, t), np.float64)
    if h != 0 and _close(arr, y64 - h * slope):
        return "the step goes against the slope (a sign)"
    if h != 0 and _close(arr, y64 + 0.5 * h * slope):
        return "the step is half as long as it should be"
    if h != 0 and _close(arr, y64 + h * np.asarray(f(y64 + h * slope, t + h), np.float64)):
        return ("the slope is taken at a predicted end of the step; explicit Euler uses the slope "
                "at the start (state y, time t)")
    return None


@exercise(
    "euler_step",
    chapter=1,
    hint=(
        "Euler's method (chapter 1): follow the tangent line of the solution for a time h. "
        "Return the new state, shaped like y; it must work for any shape of y and for h = 0."
    ),
    hint2=(
        "The tangent's slope is what the vector field says at the *start* of the step, "
        "at state y and time t; the new state is the old one plus (time elapsed) x "
        "(slope)."
    ),
    blocked=("diffrax:Euler.step", "diffrax:diffeqsolve"),  # a solver's own step
    reference=_euler_step,
)
def _test_euler_step(fn):
    _check_step(fn, _euler_step, _diagnose_euler)


# ------------------------------------------------------------------------------- heun_step


def _heun_weights(arr, f, y, t, h):
    """The weights (b1, b2) with arr = y + h (b1 k1 + b2 k2), k1 = f(y, t),
    k2 = f(y + h k1, t + h), when the answer has that form (None otherwise)."""
    y = np.asarray(y, np.float64)
    if h == 0 or y.size < 2:
        return None
    k1 = np.asarray(f(y, t), np.float64)
    k2 = np.asarray(f(y + h * k1, t + h), np.float64)
    basis = np.stack([h * k1.ravel(), h * k2.ravel()], axis=1)
    if np.linalg.matrix_rank(basis, tol=1e-6 * np.abs(basis).max()) < 2:
        return None
    weights, *_ = np.linalg.lstsq(basis, (arr - y).ravel(), rcond=None)
    if not _close(arr, y + (basis @ weights).reshape(y.shape)):
        return None
    return weights


def _diagnose_heun(arr, want, f, y, t, h):
    msg = _diagnose_common(arr, want, y)
    if msg:
        return msg
    y64 = np.asarray(y, np.float64)
    if _close(arr, np.asarray(midpoint_step(f, y64, t, h), dtype=np.float64)):
        return ("this is the midpoint method (a trial *half* step): second order too, but "
                "the method asked for takes a whole trial Euler step and the slope where it lands")
    k1 = np.asarray(f(y64, t), np.float64)
    if _close(arr, y64 + 0.5 * h * (k1 + np.asarray(f(y64 + h * k1, t), np.float64))):
        return "the second slope is taken at time t; the trial step lands at time t + h"
    if _close(arr, y64 + 0.5 * h * (k1 + np.asarray(f(y64, t + h), np.float64))):
        return "the second slope is taken at the starting state y; it belongs where the trial step lands"
    weights = _heun_weights(arr, f, y, t, h)
    if weights is None:
        return None
    b1, b2 = weights
    if abs(b2) < 1e-3:
        return "this is a plain Euler step: the second slope (at the end of the trial step) has no weight"
    if abs(b1 + b2 - 1.0) > 1e-3:
        return ("your step has the form y + h (b1 k1 + b2 k2), but its weights do not add up "
                "to one: even with a constant f it would not follow the slope (the h terms "
                "of the Taylor expansion do not match)")
    return ("your step has the form y + h (b1 k1 + b2 k2) with weights that add up to one "
            "(the h terms match), but the h^2 terms of the Taylor expansion do not: this "
            "choice is only first order")


@exercise(
    "heun_step",
    chapter=1,
    hint=(
        "Expand both sides in powers of h. The exact solution: y(t + h) = y + h y' + h^2 y''/2 "
        "+ O(h^3), with y'' = df/dt along the solution. The method: expand k2 to first order "
        "in h. Which conditions on b1 and b2 make the two agree up to h^2?"
    ),
    hint2=(
        "Along the solution y'' = (partial f / partial t) + (partial f / partial y) f. And "
        "k2 = f(y + h k1, t + h) = k1 + h (partial f / partial t + (partial f / partial y) k1) "
        "+ O(h^2). Matching the h term gives one condition on the weights, the h^2 term a "
        "second one; together they fix both."
    ),
    blocked=("diffrax:Heun.step", "diffrax:diffeqsolve"),  # a solver's own step
    reference=_heun_step,
)
def _test_heun_step(fn):
    _check_step(fn, _heun_step, _diagnose_heun)


# ----------------------------------------------------------------------- convergence_order
