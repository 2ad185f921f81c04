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


def test_euler_step_diagnoses_common_mistakes(capsys):
    exercises.check("euler_step", EULER_WRONG["returns the increment"])
    assert "change of y" in capsys.readouterr().out
    exercises.check("euler_step", EULER_WRONG["slope at the end time"])
    assert "wrong time" in capsys.readouterr().out


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


def heun_midpoint(f, y, t, h):  # a different second-order method, not Heun's
    return y + h * f(y + h / 2 * f(y, t), t + h / 2)


def heun_increment(f, y, t, h):
    k1 = f(y, t)
    return h / 2 * (k1 + f(y + h * k1, t + h))


def heun_slope_at_start_state(f, y, t, h):
    return y + h / 2 * (f(y, t) + f(y, t + h))


HEUN_WRONG = {
    "plain Euler": euler_right,
    "second slope at the start time": heun_wrong_time,
    "missing factor 1/2": heun_no_half,
    "midpoint method": heun_midpoint,
    "returns the increment": heun_increment,
    "second slope at the start state": heun_slope_at_start_state,
}


def test_heun_step_accepts_the_right_answer():
    assert check("heun_step", heun_right)


@pytest.mark.parametrize("wrong", HEUN_WRONG.values(), ids=HEUN_WRONG.keys())
def test_heun_step_rejects_wrong_answers(wrong):
    assert not check("heun_step", wrong)


def test_heun_step_diagnoses_plain_euler(capsys):
    exercises.check("heun_step", euler_right)
    assert "plain Euler step" in capsys.readouterr().out


# ----------------------------------------------------------------------- convergence_order


def order_right(hs, errors):
    return np.polyfit(np.log(hs), np.log(errors), 1)[0]


def order_right_log10_jnp(hs, errors):  # any base of logarithm gives the same slope
    x, z = jnp.log10(jnp.asarray(hs)), jnp.log10(jnp.asarray(errors))
    xc = x - x.mean()
    return jnp.sum(xc * (z - z.mean())) / jnp.sum(xc**2)


ORDER_WRONG = {
    "axes swapped": lambda hs, e: np.polyfit(np.log(e), np.log(hs), 1)[0],
    "sign flipped": lambda hs, e: -np.polyfit(np.log(hs), np.log(e), 1)[0],
    "two-point slope": lambda hs, e: np.log(e[-1] / e[0]) / np.log(hs[-1] / hs[0]),
    "fit without logarithms": lambda hs, e: np.polyfit(hs, e, 1)[0],
    "log of the errors only": lambda hs, e: np.polyfit(hs, np.log(e), 1)[0],
    "returns the intercept": lambda hs, e: np.polyfit(np.log(hs), np.log(e), 1)[1],
    "returns both coefficients": lambda hs, e: np.polyfit(np.log(hs), np.log(e), 1),
    "returns a (1,) array": lambda hs, e: np.polyfit(np.log(hs), np.log(e), 1)[:1],
}


@pytest.mark.parametrize("fn", [order_right, order_right_log10_jnp])
def test_convergence_order_accepts_right_answers(fn):
    assert check("convergence_order", fn)


@pytest.mark.parametrize("wrong", ORDER_WRONG.values(), ids=ORDER_WRONG.keys())
def test_convergence_order_rejects_wrong_answers(wrong):
    assert not check("convergence_order", wrong)


def test_convergence_order_diagnoses_swapped_axes(capsys):
    exercises.check("convergence_order", ORDER_WRONG["axes swapped"])
    assert "log h against log error" in capsys.readouterr().out


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
    # A failing report names the case and the size of the error, never the right value.
    exercises.check("convergence_order", ORDER_WRONG["fit without logarithms"])
    out = capsys.readouterr().out
    assert "Hint:" in out
    from companion.exercises.odes import _convergence_order, _order_cases

    for label, hs, errors in _order_cases():
        if label.startswith("noisy"):  # slopes like 2.043..., not round numbers
            assert f"{_convergence_order(hs, errors):.3f}"[:-1] not in out


# -------------------------------------------------------------------------- measure_order


def _global_errors(step, ns, dtype=np.float64, T=1.0):
    f = lambda y, t: -y  # noqa: E731
    errors = []
    for n in ns:
        h, y = T / n, np.asarray(1.0, dtype)
        for k in range(n):
            y = step(f, y, dtype(k * h), dtype(h))
        errors.append(abs(float(y) - np.exp(-T)))
    return np.asarray(errors)


def measure_right(step):
    ns = 2 ** np.arange(4, 10)
    return np.polyfit(np.log(1.0 / ns), np.log(_global_errors(step, ns)), 1)[0]


def measure_local_error(step):  # one step from t = 0: the error is O(h^(p+1))
    hs = 0.5 ** np.arange(3, 9)
    errs = [abs(step(lambda y, t: -y, 1.0, 0.0, h) - np.exp(-h)) for h in hs]
    return np.polyfit(np.log(hs), np.log(errs), 1)[0]


def measure_against_n(step):  # slope against the number of steps, not h
    ns = 2 ** np.arange(4, 10)
    return np.polyfit(np.log(ns), np.log(_global_errors(step, ns)), 1)[0]


def measure_float32_tiny_steps(step):  # RK4's error sinks below float32 round-off
    ns = 2 ** np.arange(6, 11)
    return np.polyfit(np.log(1.0 / ns), np.log(_global_errors(step, ns, np.float32)), 1)[0]


MEASURE_WRONG = {
    "local error of one step": measure_local_error,
    "slope against n instead of h": measure_against_n,
    "float32 with tiny steps (round-off floor)": measure_float32_tiny_steps,
    "always 2 (counting stages)": lambda step: 2.0,
    "returns the errors, not the order": lambda step: _global_errors(step, [16, 32]),
}


@pytest.mark.parametrize("fn", [measure_right])
def test_measure_order_accepts_right_answers(fn):
    assert check("measure_order", fn)


@pytest.mark.parametrize("wrong", MEASURE_WRONG.values(), ids=MEASURE_WRONG.keys())
def test_measure_order_rejects_wrong_answers(wrong):
    assert not check("measure_order", wrong)


def test_measure_order_diagnoses_the_local_error(capsys):
    exercises.check("measure_order", measure_local_error)
    assert "one more than the order" in capsys.readouterr().out
