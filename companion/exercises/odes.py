"""Hidden tests of the exercises of chapter 1 (ODEs).

* ``euler_step(f, y, t, h)``: one explicit Euler step, Eq. (eq-euler), chapter 1.
* ``heun_step(f, y, t, h)``: one step of Heun's method, Eq. (eq-heun), chapter 1.
* ``convergence_order(hs, errors)``: the least-squares slope of log error against log h,
  Eq. (eq-order), chapter 1.
* ``measure_order(step)`` (conceptual): the order of convergence of a one-step method
  whose formula the reader does not see, measured on an ODE the reader chooses.

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

__all__: list[str] = []  # importing the module registers its exercises; nothing to import

# ----------------------------------------------------------------------------- references


def _euler_step(f, y, t, h):
    """Reference: y + h f(y, t)."""
    return y + h * f(y, t)


def _heun_step(f, y, t, h):
    """Reference: the explicit trapezoidal rule (Heun's method)."""
    k1 = f(y, t)
    k2 = f(y + h * k1, t + h)
    return y + 0.5 * h * (k1 + k2)


def _convergence_order(hs, errors):
    """Reference: least-squares slope of log(errors) against log(hs)."""
    x = np.log(np.asarray(hs, dtype=np.float64))
    z = np.log(np.asarray(errors, dtype=np.float64))
    xc = x - x.mean()
    return float(np.sum(xc * (z - z.mean())) / np.sum(xc**2))


# ------------------------------------------------------------------ cases for the steppers


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
    return None


@exercise(
    "euler_step",
    chapter=1,
    hint=(
        "Eq. (eq-euler): follow the tangent line of the solution for a time h. Return the "
        "new state, shaped like y; it must work for any shape of y and for h = 0."
    ),
    hint2=(
        "The tangent's slope is what the vector field says at the *start* of the step, "
        "at state y and time t; the new state is the old one plus (time elapsed) x "
        "(slope)."
    ),
    reference=_euler_step,
)
def _test_euler_step(fn):
    _check_step(fn, _euler_step, _diagnose_euler)


# ------------------------------------------------------------------------------- heun_step


def _diagnose_heun(arr, want, f, y, t, h):
    msg = _diagnose_common(arr, want, y)
    if msg:
        return msg
    if _close(arr, np.asarray(_euler_step(f, y, t, h), dtype=np.float64)):
        return "this is a plain Euler step: the second slope (at the end of the step) is missing"
    return None


@exercise(
    "heun_step",
    chapter=1,
    hint=(
        "Eq. (eq-heun): a trial Euler step predicts where the step ends; the slope there "
        "corrects the slope at the start."
    ),
    hint2=(
        "You need two evaluations of f: one at (y, t), one at the predicted end point and "
        "at the time t + h. Weigh them equally; the step is taken from y, not from the "
        "predicted point."
    ),
    reference=_heun_step,
)
def _test_heun_step(fn):
    _check_step(fn, _heun_step, _diagnose_heun)


# ----------------------------------------------------------------------- convergence_order


def _order_cases():
    """(label, hs, errors): exact and noisy power laws, drawn from a fixed seed.

    The noisy cases (errors = C h^p times a log-normal factor) tell a least-squares fit
    apart from a slope through two points, and from a fit of log h against log error,
    which agree with it only on an exact power law.
    """
    rng = np.random.default_rng(19930101)
    cases = []
    hs = 0.1 / 2.0 ** np.arange(6)
    cases.append(("exact power law of order 1, h halving", hs, 0.7 * hs))
    hs = np.geomspace(1e-3, 1e-1, 7)
    cases.append(("exact power law of order 5", hs, 0.02 * hs**5))
    hs = np.exp(rng.uniform(np.log(1e-3), np.log(0.3), size=9))  # unsorted
    errs = 3.0 * hs**2 * np.exp(0.3 * rng.normal(size=9))
    cases.append(("noisy order 2, h in no particular order", hs, errs))
    hs = np.geomspace(0.5, 0.01, 12)  # decreasing
    errs = 0.4 * hs**0.5 * np.exp(0.2 * rng.normal(size=12))
    cases.append(("noisy order 1/2, h decreasing, given as Python lists", list(hs), list(errs)))
    hs = np.geomspace(1e-2, 1e-4, 8)
    errs = 5.0 * hs**4 * np.exp(0.3 * rng.normal(size=8))
    cases.append(("noisy order 4, given as float32 JAX arrays", jnp.asarray(hs, jnp.float32),
                  jnp.asarray(errs, jnp.float32)))
    cases.append(("only two points", np.array([0.2, 0.05]), np.array([3e-2, 2e-3])))
    return cases


# The reference slope is computed in float64. A reader who works in float32 (jnp) loses
# ~1e-6 relative in each log (size <= ~40), which moves a slope by ~1e-5; rtol=1e-4 and
# atol=1e-6 leave a margin. The wrong answers these cases are built to catch (a two-point
# slope, swapped axes, a sign, a fit without logs) are off by more than 1e-2.
_ORDER_RTOL, _ORDER_ATOL = 1e-4, 1e-6


def _diagnose_order(p, want, hs, errors):
    def near(a, b):
        return bool(np.isclose(a, b, rtol=_ORDER_RTOL, atol=_ORDER_ATOL))

    if near(p, -want):
        return "the slope has the right size but the wrong sign"
    swapped = _convergence_order(errors, hs)
    if near(p, swapped) or near(p, 1.0 / swapped):
        return "this looks like a fit of log h against log error; the error is the quantity that depends on h"
    two = np.log(np.asarray(errors, float)[[0, -1]])
    two = float(np.diff(two)[0] / np.diff(np.log(np.asarray(hs, float)[[0, -1]]))[0])
    if near(p, two):
        return "this is the slope through two points only; a least-squares fit uses every point"
    return None


@exercise(
    "convergence_order",
    chapter=1,
    hint=(
        "Eq. (eq-order): take logarithms of error ≈ C h^p. Which quantity is then a "
        "straight-line function of which, and where does p appear?"
    ),
    hint2=(
        "Fit a straight line through every point (h, error) in log-log coordinates by "
        "least squares (np.polyfit does it) and return its slope, a single number; "
        "log(h) is the abscissa."
    ),
    reference=_convergence_order,
)
def _test_convergence_order(fn):
    for label, hs, errors in _order_cases():
        want = _convergence_order(hs, errors)
        got = fn(hs, errors)
        what = f"case '{label}'"
        arr = as_array(got, what)
        if arr.shape == () and np.isfinite(arr):
            if not np.isclose(arr, want, rtol=_ORDER_RTOL, atol=_ORDER_ATOL):
                msg = _diagnose_order(float(arr), want, hs, errors)
                if msg:
                    raise Mismatch(f"{what}: {msg}")
        elif arr.shape != ():
            raise Mismatch(f"{what}: expected a single number (shape ()), got shape {arr.shape}")
        expect_close(arr, want, what=what, rtol=_ORDER_RTOL, atol=_ORDER_ATOL)


# -------------------------------------------------------------------------- measure_order
#
# Hidden one-step methods of known order. They use only +, * and calls of f, so they
# keep the reader's dtype: NumPy float64 stays float64, JAX float32 stays float32.


def _stepper_euler(f, y, t, h):
    return y + h * f(y, t)


def _stepper_midpoint(f, y, t, h):
    return y + h * f(y + 0.5 * h * f(y, t), t + 0.5 * h)


def _stepper_lopsided(f, y, t, h):
    # two stages like Heun's, but weights 1/4, 3/4: consistent, yet only first order
    k1 = f(y, t)
    k2 = f(y + h * k1, t + h)
    return y + h * (0.25 * k1 + 0.75 * k2)


def _stepper_kutta3(f, y, t, h):
    k1 = f(y, t)
    k2 = f(y + 0.5 * h * k1, t + 0.5 * h)
    k3 = f(y - h * k1 + 2.0 * h * k2, t + h)
    return y + h * (k1 + 4.0 * k2 + k3) / 6.0


def _stepper_rk4(f, y, t, h):
    k1 = f(y, t)
    k2 = f(y + 0.5 * h * k1, t + 0.5 * h)
    k3 = f(y + 0.5 * h * k2, t + 0.5 * h)
    k4 = f(y + h * k3, t + h)
    return y + h * (k1 + 2.0 * k2 + 2.0 * k3 + k4) / 6.0


_HIDDEN_STEPPERS = [
    ("a hidden method of order 1", _stepper_euler, 1),
    ("a hidden two-stage method of order 2", _stepper_midpoint, 2),
    ("a hidden two-stage method of order 1", _stepper_lopsided, 1),
    ("a hidden method of order 3", _stepper_kutta3, 3),
    ("a hidden method of order 4", _stepper_rk4, 4),
]


def _measure_order(step):
    """Reference: global error at T = 1 of y' = y cos t, y(0) = 1 (exact exp(sin t)),
    in float64, for 16 ... 512 steps; the least-squares slope of log error on log h."""
    f = lambda y, t: y * np.cos(t)  # noqa: E731
    ns = 2 ** np.arange(4, 10)
    errors = []
    for n in ns:
        h, y = 1.0 / n, np.float64(1.0)
        for k in range(n):
            y = step(f, y, k * h, h)
        errors.append(abs(y - np.exp(np.sin(1.0))))
    return _convergence_order(1.0 / ns, errors)


# The answer is an integer measured with a few per cent of pre-asymptotic bias (the
# reference gets 1.02, 1.99, 1.03, 2.98, 3.98 on the hidden methods); 0.3 accepts any
# sensible test ODE and range of h, and rejects the off-by-one of a local error.
_MEASURE_TOL = 0.3


def _test_measure_order_impl(fn):
    for label, step, order in _HIDDEN_STEPPERS:
        got = fn(step)
        what = f"case '{label}'"
        arr = as_array(got, what)
        if arr.shape != ():
            raise Mismatch(f"{what}: expected a single number (shape ()), got shape {arr.shape}")
        p = float(arr)
        if not np.isfinite(p):
            raise Mismatch(f"{what}: your estimate is NaN or inf (an error of exactly 0?)")
        if abs(p - order) <= _MEASURE_TOL:
            continue
        if abs(p - (order + 1)) <= _MEASURE_TOL:
            raise Mismatch(f"{what}: your estimate is one more than the order, for this and "
                           "perhaps other methods")
        if abs(p + order) <= _MEASURE_TOL:
            raise Mismatch(f"{what}: your estimate has the right size but the wrong sign")
        if p < order:
            raise Mismatch(f"{what}: your estimate is too low by {order - p:.2g}")
        raise Mismatch(f"{what}: your estimate is too high by {p - order:.2g}")


@exercise(
    "measure_order",
    chapter=1,
    hint=(
        "The order p says how the error at a *fixed* final time shrinks with h "
        "(Eq. (eq-order)). One step alone makes an error of a higher power of h; and "
        "very small errors drown in round-off (float32 stops near 1e-7)."
    ),
    hint2=(
        "Pick an ODE whose solution you know in closed form, integrate it to a fixed time "
        "with several step sizes (n steps of size T / n), record the error at that time, "
        "and fit as in convergence_order. Work in float64 (NumPy) or keep the errors well "
        "above 1e-6."
    ),
    reference=_measure_order,
)
def _test_measure_order(fn):
    _test_measure_order_impl(fn)
