"""Hidden tests of the exercises of chapter 1 (ODEs).

* ``euler_step(f, y, t, h)`` (warm-up): one explicit Euler step, Euler's method of
  chapter 1.
* ``heun_step(f, y, t, h)`` (derivation): the two-stage method built on a trial Euler
  step, with the weights of its two slopes chosen by the reader so that it is of
  second order (Heun's method; the chapter gives the structure, not the weights).
* ``convergence_order(hs, errors)`` (decision): the order read off a *measured* error
  table, whose smallest steps may sit on the round-off floor and whose largest steps
  may be pre-asymptotic; the reader decides which points to trust.
* ``measure_order(step)`` (experiment): the order of convergence of a one-step method
  whose formula the reader does not see, measured on an ODE the reader chooses. One
  hidden method is first order but second order on every autonomous linear problem
  (y' = -y, say), so only a generic test problem gives the right answer.

Every test draws its inputs from a fixed NumPy seed, so a failure is reproducible, and
compares the reader's answer with the reference on several cases (linear and nonlinear
vector fields, time-dependent ones, scalar, vector and batched states, ``h = 0``, a
negative ``h``). Messages name the case and say how the answer is wrong, never what the
right value is.
"""

from __future__ import annotations

import functools

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


def _lsq_slope(x, z):
    """Least-squares slope of z against x (float64)."""
    x, z = np.asarray(x, np.float64), np.asarray(z, np.float64)
    xc = x - x.mean()
    return float(np.sum(xc * (z - z.mean())) / np.sum(xc**2))


def _convergence_order(hs, errors):
    """Reference: sort by h, compute the local orders between neighbours, keep the longest
    run of neighbours whose local orders agree (spread <= 0.3) and show falling errors
    (each > 0.5), ties going to the smaller steps, and fit log error on log h over that
    run by least squares. Round-off floors (local orders near 0 or negative, scattered)
    and the pre-asymptotic start (local orders still moving) fall outside the run."""
    h = np.asarray(hs, np.float64).ravel()
    e = np.asarray(errors, np.float64).ravel()
    order = np.argsort(-h)
    x, z = np.log(h[order]), np.log(e[order])
    local = np.diff(z) / np.diff(x)
    best_len, best_start = 0, 0
    for i in range(len(local)):
        for j in range(i + 1, len(local) + 1):
            run = local[i:j]
            if run.min() > 0.5 and run.max() - run.min() <= 0.3 and j - i >= best_len:
                best_len, best_start = j - i, i
    if best_len == 0:
        return _lsq_slope(x, z)
    keep = slice(best_start, best_start + best_len + 1)
    return _lsq_slope(x[keep], z[keep])


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
    if _close(arr, np.asarray(_stepper_midpoint(f, y64, t, h), dtype=np.float64)):
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
    reference=_heun_step,
)
def _test_heun_step(fn):
    _check_step(fn, _heun_step, _diagnose_heun)


# ----------------------------------------------------------------------- convergence_order


def _error_table(step, dtype, ns, T=1.0):
    """Errors at time T of y' = y cos t, y(0) = 1 (exact exp(sin T)), for n steps of h = T / n,
    computed in ``dtype`` (NumPy scalars): a real experiment, round-off included."""
    f = lambda y, t: y * np.cos(t)  # noqa: E731
    exact = np.exp(np.sin(T))
    errors = []
    for n in ns:
        h, y = dtype(T / n), dtype(1.0)
        for k in range(n):
            y = step(f, y, dtype(k * (T / n)), h)
        errors.append(abs(float(y) - exact))
    return T / np.asarray(ns, np.float64), np.asarray(errors)


@functools.lru_cache(maxsize=1)
def _order_cases():
    """(label, hs, errors, order, floor, pre_asymptotic): error tables of hidden methods of
    known order, measured on a generic ODE (computed once, in ~0.5 s). ``floor``: the
    smallest steps sit on the round-off floor (errors that stop falling and scatter);
    ``pre_asymptotic``: at the largest steps the local orders are still far from p.

    The reference's estimate on them: 3.91, 1.96, 1.00, 3.05, 3.99, 2.00 (all within 0.1).
    The fragile readings are off by far more than the tolerance: a fit through every
    point gives 1.15, 1.79, 0.85, 1.09, 3.92; a line through the first and last points
    1.28, 1.71, 0.68, 1.08, 3.64; a fit after dropping the points within a factor 100 of
    the smallest error 3.87, 1.62, 1.01, 3.10, 3.98.
    """
    rng = np.random.default_rng(19930101)
    cases = []
    hs, e = _error_table(_stepper_rk4, np.float32, 2 ** np.arange(0, 11))
    perm = rng.permutation(len(hs))
    cases.append(("a four-stage method in float32, h = 1 ... 1/1024 in no particular order",
                  hs[perm], e[perm], 4, True, False))
    hs, e = _error_table(_stepper_midpoint, np.float64, 2 ** np.arange(0, 13))
    cases.append(("a two-stage method in float64, h = 1 ... 1/4096", hs, e, 2, False, True))
    hs, e = _error_table(_stepper_euler, np.float32, 2 ** np.arange(2, 17))
    cases.append(("a method in float32 with very small steps, h = 1/4 ... 1/65536, h decreasing, "
                  "given as Python lists", list(hs), list(e), 1, True, False))
    hs, e = _error_table(_stepper_kutta3, np.float32, 2 ** np.arange(1, 12))
    perm = rng.permutation(len(hs))
    cases.append(("a three-stage method in float32, h = 1/2 ... 1/2048 in no particular order",
                  hs[perm], e[perm], 3, True, False))
    hs, e = _error_table(_stepper_rk4, np.float64, 2 ** np.arange(0, 12))
    cases.append(("a method in float64, h = 1 ... 1/2048, given as float32 JAX arrays",
                  jnp.asarray(hs[::-1], jnp.float32), jnp.asarray(e[::-1], jnp.float32), 4,
                  True, False))
    hs = np.geomspace(1e-3, 1e-1, 7)
    cases.append(("an exact power law of order 2, h increasing", hs, 0.02 * hs**2, 2, False, False))
    return cases


# The order is an integer; the reference lands within 0.1 of it on every case (the
# local orders of these tables settle within +-0.1 of p before round-off sets in), so
# any reading of the asymptotic range passes with 0.2, while the readings fooled by the
# floor or by the pre-asymptotic steps are off by 0.38 or more (see _order_cases).
_ORDER_TOL = 0.2


def _diagnose_order(p, order, hs, errors, floor, pre_asymptotic):
    h = np.asarray(hs, np.float64)
    e = np.asarray(errors, np.float64)
    fit_all = _lsq_slope(np.log(h), np.log(e))
    if abs(p + order) <= _ORDER_TOL or np.isclose(p, -fit_all, rtol=1e-3):
        return ("your estimate has the wrong sign: errors shrink with h, so log error rises "
                "with log h")
    swapped = _lsq_slope(np.log(e), np.log(h))
    if np.isclose(p, swapped, rtol=1e-3) or (swapped and np.isclose(p, 1.0 / swapped, rtol=1e-3)):
        return "this looks like a fit of log h against log error; the error is the quantity that depends on h"
    if floor and p < order:
        return ("your estimate is pulled down by the smallest steps: there the errors have reached "
                "the round-off floor of the arithmetic (they stop falling, or scatter), and those "
                "points say nothing about the order")
    if pre_asymptotic and p < order:
        return ("your estimate leans on the largest steps of this table, where the local orders "
                "have not settled yet (terms beyond h^p still matter): the order is what they "
                "settle to as h shrinks")
    if p < 0:
        return ("your estimate is negative: errors shrink with h, so log error rises with "
                "log h (the wrong sign, or points that do not follow the power law)")
    if np.isclose(p, fit_all, rtol=1e-3):
        return "this is a fit through every point of the table; not every point follows the power law"
    return None


@exercise(
    "convergence_order",
    chapter=1,
    hint=(
        "Sort the table by h and compute the local orders between neighbours, "
        "log(error ratio) / log(h ratio), as the chapter printed them. Where do they settle, "
        "and which points do not follow the power law error = C h^p?"
    ),
    hint2=(
        "At the smallest steps round-off makes the errors stop falling (the local orders "
        "jump around zero); at the largest steps the local orders may still be moving. "
        "Trust the run of neighbours whose local orders agree, and fit log error against "
        "log h over that run only."
    ),
    reference=_convergence_order,
)
def _test_convergence_order(fn):
    for label, hs, errors, order, floor, pre_asymptotic in _order_cases():
        got = fn(hs, errors)
        what = f"case '{label}'"
        arr = as_array(got, what)
        if arr.shape != ():
            raise Mismatch(f"{what}: expected a single number (shape ()), got shape {arr.shape}")
        if not np.isfinite(arr):
            raise Mismatch(f"{what}: your estimate is NaN or inf")
        p = float(arr)
        if abs(p - order) <= _ORDER_TOL:
            continue
        msg = _diagnose_order(p, order, hs, errors, floor, pre_asymptotic)
        if msg:
            raise Mismatch(f"{what}: {msg}")
        raise Mismatch(f"{what}: your estimate is too {'low' if p < order else 'high'} "
                       f"(more than {_ORDER_TOL} from the method's order)")


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


def _stepper_midpoint_stale_time(f, y, t, h):
    # the midpoint method with its second slope taken at the *start* time: on a problem
    # whose f does not depend on t it is the midpoint method (order 2); in general its
    # h^2 term misses (1/2) partial f / partial t, and it is first order
    return y + h * f(y + 0.5 * h * f(y, t), t)


# (label, method, order, the order it shows on every autonomous linear problem)
_HIDDEN_STEPPERS = [
    ("a hidden method of order 1", _stepper_euler, 1, 1),
    ("a hidden two-stage method of order 2", _stepper_midpoint, 2, 2),
    ("a hidden two-stage method of order 1", _stepper_lopsided, 1, 1),
    ("a hidden method of order 3", _stepper_kutta3, 3, 3),
    ("a hidden method of order 4", _stepper_rk4, 4, 4),
    ("another hidden two-stage method", _stepper_midpoint_stale_time, 1, 2),
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
    return _lsq_slope(np.log(1.0 / ns), np.log(errors))


# The answer is an integer measured with a few per cent of pre-asymptotic bias (the
# reference gets 1.02, 1.99, 1.03, 2.98, 3.98, 1.01 on the hidden methods); 0.3 accepts
# any sensible generic test ODE and range of h, and rejects the off-by-one of a local
# error and of a test problem on which a leading error term cancels.
_MEASURE_TOL = 0.3


class _Recorder:
    """The hidden method, recording how the reader's experiment calls it: the step sizes,
    the dtype of the states, the reader's vector field and one state it was called at."""

    def __init__(self, step):
        self.step, self.hs, self.dtypes, self.f, self.y, self.t = step, [], set(), None, None, None

    def __call__(self, f, y, t, h):
        try:
            self.hs.append(abs(float(h)))
            self.dtypes.add(str(np.asarray(y).dtype))
            if self.f is None:
                self.f, self.y, self.t = f, y, t
        except (TypeError, ValueError):  # a traced h or y: nothing to record
            pass
        return self.step(f, y, t, h)

    def problem(self) -> tuple[bool, bool]:
        """(autonomous, linear) for the reader's f, probed at the first state it met;
        (False, False) when the probe fails."""
        try:
            f, y, t = self.f, np.asarray(self.y, np.float64) + 0.3, float(self.t)
            base = np.asarray(f(y, t), np.float64)
            later = np.asarray(f(y, t + 0.37), np.float64)
            double = np.asarray(f(2.0 * y, t), np.float64)
            zero = np.asarray(f(0.0 * y, t), np.float64)
        except Exception:  # noqa: BLE001 - the reader's f may not accept our probes
            return False, False
        autonomous = bool(np.allclose(base, later, rtol=1e-6, atol=1e-12))
        linear = bool(np.allclose(double, 2.0 * base, rtol=1e-6, atol=1e-12)
                      and np.allclose(zero, 0.0, atol=1e-12))
        return autonomous, linear


def _diagnose_measure(p, order, linear_order, rec):
    autonomous, linear = rec.problem()
    float32 = any("32" in d or "16" in d for d in rec.dtypes)
    hs = [h for h in rec.hs if h > 0]
    if linear_order != order and autonomous and abs(p - linear_order) <= _MEASURE_TOL:
        return ("your test problem's f does not depend on t"
                + (" and is linear in y" if linear else "")
                + ": on such a problem this method's leading error term cancels, so it looks one "
                "order better than it is. Choose a test problem whose f depends on t (and "
                "nonlinearly on y)")
    if abs(p - (order + 1)) <= _MEASURE_TOL:
        return "your estimate is one more than the order, for this and perhaps other methods"
    if abs(p + order) <= _MEASURE_TOL:
        return "your estimate has the right size but the wrong sign"
    if float32 and p < order:
        return ("your experiment runs in float32: the errors of the smaller steps sink to "
                "round-off (about 1e-7 relative) and flatten the curve; the check expects "
                "float64 (NumPy float64 numbers, or jax.enable_x64)")
    if hs and max(hs) >= 1 / 16:
        return (f"your estimate is off by more than {_MEASURE_TOL}, and your largest steps are "
                f"as large as h = 1/{round(1 / max(hs))}: there terms beyond h^p still matter "
                "(the pre-asymptotic range). Take smaller steps; in float64 round-off leaves "
                "plenty of room")
    return f"your estimate is too {'low' if p < order else 'high'} by more than {_MEASURE_TOL}"


def _test_measure_order_impl(fn):
    for label, step, order, linear_order in _HIDDEN_STEPPERS:
        rec = _Recorder(step)
        got = fn(rec)
        what = f"case '{label}'"
        arr = as_array(got, what)
        if arr.shape != ():
            raise Mismatch(f"{what}: expected a single number (shape ()), got shape {arr.shape}")
        p = float(arr)
        if not np.isfinite(p):
            raise Mismatch(f"{what}: your estimate is NaN or inf (an error of exactly 0?)")
        if abs(p - order) <= _MEASURE_TOL:
            continue
        raise Mismatch(f"{what}: {_diagnose_measure(p, order, linear_order, rec)}")


@exercise(
    "measure_order",
    chapter=1,
    hint=(
        "The order p says how the error at a *fixed* final time shrinks with h (the "
        "convergence-order section of chapter 1). One step alone makes an error of a higher "
        "power of h; very small errors drown in round-off; and on a too simple test problem "
        "some error terms vanish."
    ),
    hint2=(
        "Pick an ODE whose solution you know in closed form and whose f depends on t and "
        "nonlinearly on y; integrate it to a fixed time with several step sizes (n steps of "
        "size T / n, small enough to be in the asymptotic range), record the error at that "
        "time, and fit as in convergence_order. Work in float64."
    ),
    reference=_measure_order,
)
def _test_measure_order(fn):
    _test_measure_order_impl(fn)
