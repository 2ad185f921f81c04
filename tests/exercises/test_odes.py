"""The hidden tests of chapter 1 accept right answers and reject plausible wrong ones."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from companion import exercises


def check(name, fn):
    return exercises.check(name, fn, verbose=False)


# ------------------------------------------------------------------------------ euler_step


def euler_right(f, y, t, h):
    return y + h * f(y, t)


@jax.jit
def _jitted_euler_body(y, k, h):
    return y + h * k


def euler_right_other_style(f, y, t, h):  # a different but right way to write it
    return _jitted_euler_body(jnp.asarray(y), f(y, t), h)


EULER_WRONG = {
    "sign error": lambda f, y, t, h: y - h * f(y, t),
    "slope at the end time": lambda f, y, t, h: y + h * f(y, t + h),
    "returns the increment": lambda f, y, t, h: h * f(y, t),
    "half a step": lambda f, y, t, h: y + 0.5 * h * f(y, t),
    "slope at the predicted state": lambda f, y, t, h: y + h * f(y + h * f(y, t), t + h),
    "arguments in diffrax's order f(t, y)": lambda f, y, t, h: y + h * f(t, y),
}


@pytest.mark.parametrize("fn", [euler_right, euler_right_other_style])
def test_euler_step_accepts_right_answers(fn):
    assert check("euler_step", fn)


@pytest.mark.parametrize("wrong", EULER_WRONG.values(), ids=EULER_WRONG.keys())
def test_euler_step_rejects_wrong_answers(wrong):
    assert not check("euler_step", wrong)


EULER_DIAGNOSES = {
    "sign error": "against the slope",
    "slope at the end time": "wrong time",
    "returns the increment": "change of y",
    "half a step": "half as long",
    "slope at the predicted state": "predicted end of the step",
    # f(t, y) in diffrax's order: the linear case's matrix product fails on a scalar,
    # so it raises; the report names where
    "arguments in diffrax's order f(t, y)": "your function raised",
}


@pytest.mark.parametrize("name", EULER_DIAGNOSES)
def test_euler_step_names_each_mistake(name, capsys):
    exercises.check("euler_step", EULER_WRONG[name])
    assert EULER_DIAGNOSES[name] in capsys.readouterr().out


# ------------------------------------------------------------------------------- heun_step


def heun_right(f, y, t, h):
    k1 = f(y, t)
    k2 = f(y + h * k1, t + h)
    return y + h * (k1 + k2) / 2


def heun_wrong_time(f, y, t, h):
    k1 = f(y, t)
    return y + h / 2 * (k1 + f(y + h * k1, t))


def heun_no_half(f, y, t, h):
    k1 = f(y, t)
    return y + h * (k1 + f(y + h * k1, t + h))


def heun_midpoint(f, y, t, h):  # a different second-order method, not the one asked
    return y + h * f(y + h / 2 * f(y, t), t + h / 2)


def heun_increment(f, y, t, h):
    k1 = f(y, t)
    return h / 2 * (k1 + f(y + h * k1, t + h))


def heun_slope_at_start_state(f, y, t, h):
    return y + h / 2 * (f(y, t) + f(y, t + h))


def heun_lopsided(f, y, t, h):  # consistent weights, but only first order
    k1 = f(y, t)
    return y + h * (0.25 * k1 + 0.75 * f(y + h * k1, t + h))


def heun_weights_one_third(f, y, t, h):  # b1 = 1/3, b2 = 2/3: the h^2 term is missed
    k1 = f(y, t)
    return y + h * (k1 + 2 * f(y + h * k1, t + h)) / 3


# wrong answer -> words its diagnosis must contain
HEUN_WRONG = {
    "plain Euler": (euler_right, "plain Euler step"),
    "second slope at the start time": (heun_wrong_time, "taken at time t"),
    "missing factor 1/2": (heun_no_half, "do not add up to one"),
    "midpoint method": (heun_midpoint, "midpoint method"),
    "returns the increment": (heun_increment, "change of y"),
    "second slope at the start state": (heun_slope_at_start_state, "starting state"),
    "weights 1/4, 3/4": (heun_lopsided, "only first order"),
    "weights 1/3, 2/3": (heun_weights_one_third, "only first order"),
}


def test_heun_step_accepts_the_right_answer():
    assert check("heun_step", heun_right)


@pytest.mark.parametrize("wrong", HEUN_WRONG.values(), ids=HEUN_WRONG.keys())
def test_heun_step_rejects_wrong_answers_and_names_the_mistake(wrong, capsys):
    fn, words = wrong
    assert not exercises.check("heun_step", fn)
    assert words in capsys.readouterr().out


# ----------------------------------------------------------------------- convergence_order


def _sorted_logs(hs, errors):
    h, e = np.asarray(hs, float), np.asarray(errors, float)
    order = np.argsort(-h)
    return np.log(h[order]), np.log(e[order])


def order_right(hs, errors):  # the longest run of settled local orders, then a fit
    x, z = _sorted_logs(hs, errors)
    local = np.diff(z) / np.diff(x)
    runs = [(j - i, i) for i in range(len(local)) for j in range(i + 1, len(local) + 1)
            if local[i:j].min() > 0.5 and np.ptp(local[i:j]) <= 0.3]
    n, i = max(runs)
    return np.polyfit(x[i:i + n + 1], z[i:i + n + 1], 1)[0]


def order_right_settled(hs, errors):  # where the local orders settle, before the floor
    x, z = _sorted_logs(hs, errors)
    local = np.diff(z) / np.diff(x)
    drops = np.flatnonzero((local < 0.5) | (np.diff(local, prepend=local[0]) < -0.5))
    end = drops[0] if drops.size else len(local)
    steady = np.flatnonzero(np.abs(np.diff(local[:end])) < 0.15)
    start = steady[0] if steady.size else 0
    return float(np.median(local[start:end]))


def _all(hs, e):
    x, z = _sorted_logs(hs, e)
    return np.polyfit(x, z, 1)


def _drop_near_min(hs, e):  # a fragile rule: drop errors within a factor 100 of the smallest
    x, z = _sorted_logs(hs, e)
    keep = z > z.min() + np.log(100)
    return np.polyfit(x[keep], z[keep], 1)[0]


def _smallest_half(hs, e):
    x, z = _sorted_logs(hs, e)
    return np.polyfit(x[len(x) // 2:], z[len(x) // 2:], 1)[0]


def _mean_local(hs, e):
    x, z = _sorted_logs(hs, e)
    return float(np.mean(np.diff(z) / np.diff(x)))


# wrong answer -> words its diagnosis must contain
ORDER_WRONG = {
    "a fit through every point": (lambda hs, e: _all(hs, e)[0], "round-off floor"),
    "axes swapped": (lambda hs, e: np.polyfit(*_sorted_logs(hs, e)[::-1], 1)[0], "log h against log error"),
    "sign flipped": (lambda hs, e: -_all(hs, e)[0], "wrong sign"),
    "two-point slope": (lambda hs, e: np.diff(_sorted_logs(hs, e)[1][[0, -1]])[0]
                        / np.diff(_sorted_logs(hs, e)[0][[0, -1]])[0], "round-off floor"),
    "mean of the local orders": (_mean_local, "round-off floor"),
    "fit over the smallest half of the steps": (_smallest_half, "round-off floor"),
    "drop errors within a factor 100 of the smallest": (_drop_near_min, "not settled yet"),
    "returns both coefficients": (_all, "single number"),
}


@pytest.mark.parametrize("fn", [order_right, order_right_settled])
def test_convergence_order_accepts_right_answers(fn):
    assert check("convergence_order", fn)


@pytest.mark.parametrize("wrong", ORDER_WRONG.values(), ids=ORDER_WRONG.keys())
def test_convergence_order_rejects_wrong_answers_and_names_the_mistake(wrong, capsys):
    fn, words = wrong
    assert not exercises.check("convergence_order", fn)
    assert words in capsys.readouterr().out


# -------------------------------------------------------------- check survives bad functions


def _raises(*args):
    raise RuntimeError("boom")


def _stub(*args):
    raise NotImplementedError


BAD = {
    "raises": _raises,
    "returns None": lambda *args: None,
    "returns NaN (step)": lambda *args: jnp.full(jnp.shape(args[1]), jnp.nan),
    "returns a string": lambda *args: "seven",
    "returns a wrong shape": lambda *args: jnp.zeros((7, 7)),
    "stub": _stub,
}
ODE_EXERCISES = ["euler_step", "heun_step", "convergence_order", "measure_order"]


@pytest.mark.parametrize("name", ODE_EXERCISES)
@pytest.mark.parametrize("bad", BAD.values(), ids=BAD.keys())
def test_check_reports_bad_functions_without_raising(name, bad, capsys):
    assert exercises.check(name, bad) is False
    out = capsys.readouterr().out
    assert out.startswith(f"✗ {name}")


def test_check_reports_nan_scalar_for_the_order():
    assert not check("convergence_order", lambda hs, e: float("nan"))


def test_messages_do_not_give_the_answer(capsys):
    # A failing report names the case and how the estimate is wrong, never a number
    # close to the right order.
    exercises.check("convergence_order", ORDER_WRONG["a fit through every point"][0])
    out = capsys.readouterr().out
    assert "Hint:" in out
    assert not any(f"order {p}" in out or f"{p}.0" in out or f"{p}.9" in out for p in range(1, 6))


# -------------------------------------------------------------------------- measure_order


def _global_errors(step, ns, dtype=np.float64, T=1.0, f=None, exact=None):
    f = f or (lambda y, t: y * np.cos(t))  # noqa: E731
    exact = np.exp(np.sin(T)) if exact is None else exact
    errors = []
    for n in ns:
        h, y = T / n, np.asarray(1.0, dtype)
        for k in range(n):
            y = step(f, y, dtype(k * h), dtype(h))
        errors.append(abs(float(y) - exact))
    return np.asarray(errors)


def measure_right(step):  # a generic problem: f depends on t
    ns = 2 ** np.arange(4, 10)
    return np.polyfit(np.log(1.0 / ns), np.log(_global_errors(step, ns)), 1)[0]


def measure_right_nonlinear(step):  # y' = -y^2 cos t, y(0) = 1: y = 1 / (1 + sin t)
    ns = 2 ** np.arange(4, 10)
    errs = _global_errors(step, ns, f=lambda y, t: -(y**2) * np.cos(t), exact=1 / (1 + np.sin(1.0)))
    return np.polyfit(np.log(1.0 / ns), np.log(errs), 1)[0]


def measure_local_error(step):  # one step from t = 0: the error is O(h^(p+1))
    hs = 0.5 ** np.arange(3, 9)
    f = lambda y, t: y * np.cos(t)  # noqa: E731
    errs = [abs(step(f, 1.0, 0.0, h) - np.exp(np.sin(h))) for h in hs]
    return np.polyfit(np.log(hs), np.log(errs), 1)[0]


def measure_against_n(step):  # slope against the number of steps, not h
    ns = 2 ** np.arange(4, 10)
    return np.polyfit(np.log(ns), np.log(_global_errors(step, ns)), 1)[0]


def measure_float32_tiny_steps(step):  # RK4's error sinks below float32 round-off
    ns = 2 ** np.arange(6, 11)
    return np.polyfit(np.log(1.0 / ns), np.log(_global_errors(step, ns, np.float32)), 1)[0]


def measure_on_decay(step):  # the popular test problem y' = -y: autonomous and linear
    ns = 2 ** np.arange(4, 10)
    errs = _global_errors(step, ns, f=lambda y, t: -y, exact=np.exp(-1.0))
    return np.polyfit(np.log(1.0 / ns), np.log(errs), 1)[0]


def measure_large_steps(step):  # float64, but h = 1/2 ... 1/16: pre-asymptotic
    ns = 2 ** np.arange(1, 5)
    return np.polyfit(np.log(1.0 / ns), np.log(_global_errors(step, ns)), 1)[0]


def measure_quarter_to_64th(step):  # issue 27's design: float64, h = 1/4 ... 1/64
    ns = 2 ** np.arange(2, 7)
    return np.polyfit(np.log(1.0 / ns), np.log(_global_errors(step, ns)), 1)[0]


# wrong answer -> words its diagnosis must contain
MEASURE_WRONG = {
    "float64 but h = 1/4 ... 1/64 (pre-asymptotic)": (measure_quarter_to_64th, "pre-asymptotic"),
    "local error of one step": (measure_local_error, "one more than the order"),
    "slope against n instead of h": (measure_against_n, "wrong sign"),
    "float32 with tiny steps (round-off floor)": (measure_float32_tiny_steps, "float32"),
    "the test problem y' = -y": (measure_on_decay, "leading error term cancels"),
    "steps too large (pre-asymptotic)": (measure_large_steps, "pre-asymptotic"),
    "always 2 (counting stages)": (lambda step: 2.0, "one more than the order"),
    "returns the errors, not the order": (lambda step: _global_errors(step, [16, 32]), "single number"),
}


@pytest.mark.parametrize("fn", [measure_right, measure_right_nonlinear])
def test_measure_order_accepts_right_answers(fn):
    assert check("measure_order", fn)


@pytest.mark.parametrize("wrong", MEASURE_WRONG.values(), ids=MEASURE_WRONG.keys())
def test_measure_order_rejects_wrong_answers_and_names_the_mistake(wrong, capsys):
    fn, words = wrong
    assert not exercises.check("measure_order", fn)
    assert words in capsys.readouterr().out
