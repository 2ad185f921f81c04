"""Hidden tests of the order-of-convergence exercises of chapter 1 (ODEs).

* ``convergence_order(hs, errors)`` (decision): the order read off a *measured* error
  table, whose smallest steps may sit on the round-off floor and whose largest steps
  may be pre-asymptotic; the reader decides which points to trust.
* ``measure_order(step)`` (experiment): the order of convergence of a one-step method
  whose formula the reader does not see, measured on an ODE the reader chooses. One
  hidden method is first order but second order on every autonomous linear problem
  (y' = -y, say), so only a generic test problem gives the right answer.

The step exercises of the chapter (``euler_step``, ``heun_step``) are in
:mod:`companion.exercises.odes`; this module registers after it, so
``exercises.names()`` keeps the book's order.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from companion.exercises._core import Mismatch, as_array, exercise
from companion.exercises.odes import midpoint_step

__all__: list[str] = []  # importing the module registers its exercises; nothing to import

# ----------------------------------------------------------------------------- references

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
    hs, e = _error_table(midpoint_step, np.float64, 2 ** np.arange(0, 13))
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


def midpoint_step_stale_time(f, y, t, h):
    # the midpoint method with its second slope taken at the *start* time: on a problem
    # whose f does not depend on t it is the midpoint method (order 2); in general its
    # h^2 term misses (1/2) partial f / partial t, and it is first order
    return y + h * f(y + 0.5 * h * f(y, t), t)


# (label, method, order, the order it shows on every autonomous linear problem)
_HIDDEN_STEPPERS = [
    ("a hidden method of order 1", _stepper_euler, 1, 1),
    ("a hidden two-stage method of order 2", midpoint_step, 2, 2),
    ("a hidden two-stage method of order 1", _stepper_lopsided, 1, 1),
    ("a hidden method of order 3", _stepper_kutta3, 3, 3),
    ("a hidden method of order 4", _stepper_rk4, 4, 4),
    ("another hidden two-stage method", midpoint_step_stale_time, 1, 2),
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
