"""The hidden tests of chapter 9 accept right answers and reject plausible wrong ones,
naming the mistake where one is known."""

import io
from contextlib import redirect_stdout

import jax.numpy as jnp
import numpy as np
import pytest

from companion import consistency, exercises
from companion.exercises import few_steps  # noqa: F401  registers chapter 9's exercises
from companion.sde import VP


def check(name, fn):
    return exercises.check(name, fn, verbose=False)


def report(name, fn):
    out = io.StringIO()
    with redirect_stdout(out):
        passed = exercises.check(name, fn)
    return passed, out.getvalue()


# ------------------------------------------------------------------------------ consistency_coefficients


def cc_right(nu, sigma_data):
    c_skip = sigma_data**2 / (sigma_data**2 + nu**2)
    return c_skip, nu * sigma_data / jnp.sqrt(sigma_data**2 + nu**2)


def cc_right_from_variance(nu, sigma_data):
    c_skip = 1 / (1 + (nu / sigma_data) ** 2)
    var = (1 - c_skip) ** 2 * sigma_data**2 + c_skip**2 * nu**2
    return c_skip, np.sqrt(var)


CC_WRONG = {
    "swapped": (lambda nu, sd: (nu**2 / (sd**2 + nu**2), nu * sd / np.sqrt(sd**2 + nu**2)), "swapped"),
    "variance not std": (lambda nu, sd: (sd**2 / (sd**2 + nu**2), nu**2 * sd**2 / (sd**2 + nu**2)), "square root"),
    "sigma_data = 1": (lambda nu, sd: (1 / (1 + nu**2), nu / np.sqrt(1 + nu**2)), "sigma_data = 1"),
    "c_skip = 1": (lambda nu, sd: (1 + 0 * nu, nu), "c_skip = 1"),
    "c_out = nu": (lambda nu, sd: (sd**2 / (sd**2 + nu**2), nu + 0 * sd), "noise scale alone"),
    "the companion (shifted, eps = 0)": (lambda nu, sd: consistency.coefficients(nu, 0.0, sd)[:2], "yourself"),
    "Song's shifted version at nu_eps = 0.01": (lambda nu, sd: consistency.coefficients(nu, 0.01, sd)[:2], None),
}


@pytest.mark.parametrize("fn", [cc_right, cc_right_from_variance])
def test_consistency_coefficients_accepts_right_answers(fn):
    assert check("consistency_coefficients", fn)


@pytest.mark.parametrize("wrong", CC_WRONG.values(), ids=CC_WRONG.keys())
def test_consistency_coefficients_rejects_wrong_answers(wrong):
    fn, words = wrong
    passed, text = report("consistency_coefficients", fn)
    assert not passed
    if words:
        assert words in text, text


# ------------------------------------------------------------------------------ euler_target_bias


def _col(v, x):
    return np.reshape(np.asarray(v, np.float64), (-1,) + (1,) * (np.ndim(x) - 1))


def eb_right(xhat, nu, nu_next, sigma_data):
    nu, nu_next = _col(nu, xhat), _col(nu_next, xhat)
    slope = nu * xhat / (sigma_data**2 + nu**2)  # (xhat - D) / nu
    exact = xhat * np.sqrt((sigma_data**2 + nu_next**2) / (sigma_data**2 + nu**2))
    return xhat + (nu_next - nu) * slope - exact


def eb_right_jnp(xhat, nu, nu_next, sigma_data):
    nu = jnp.reshape(jnp.asarray(nu), (-1,) + (1,) * (xhat.ndim - 1))
    nu_next = jnp.reshape(jnp.asarray(nu_next), (-1,) + (1,) * (xhat.ndim - 1))
    var, var_next = sigma_data**2 + nu**2, sigma_data**2 + nu_next**2
    return xhat * (1 + (nu_next - nu) * nu / var - jnp.sqrt(var_next / var))


def _wrong_bias(kind):
    def fn(xhat, nu, nu_next, sd):
        nu, nn = _col(nu, xhat), _col(nu_next, xhat)
        v, h = sd**2 + nu**2, nn - nu
        exact = xhat * np.sqrt((sd**2 + nn**2) / v)
        euler = xhat * (1 + h * nu / v)
        return {"sign": exact - euler, "variance": euler - xhat * (sd**2 + nn**2) / v,
                "end slope": xhat * (1 + h * nn / (sd**2 + nn**2)) - exact, "no nu": xhat * (1 + h / v) - exact,
                "point": euler, "backwards": xhat * (1 - h * nu / v) - exact,
                "heun": xhat * (1 + h * (nu / v + nn / (sd**2 + nn**2) * (1 + h * nu / v)) / 2) - exact}[kind]
    return fn


def eb_companion(xhat, nu, nu_next, sd):
    score = lambda x, t: -x / (sd**2 + 1.0)  # noqa: E731
    x = consistency.teacher_step(VP(), score, jnp.asarray(xhat), 0.5, 0.4, "euler")
    return np.asarray(x) - xhat


EB_WRONG = {
    "sign": (_wrong_bias("sign"), "the sign"),
    "variance ratio": (_wrong_bias("variance"), "variances"),
    "slope at the end": (_wrong_bias("end slope"), "end of the step"),
    "slope without nu": (_wrong_bias("no nu"), "without the factor nu"),
    "Euler's point": (_wrong_bias("point"), "Euler's point itself"),
    "the wrong direction": (_wrong_bias("backwards"), "wrong way"),
    "a Heun teacher's bias": (_wrong_bias("heun"), None),
    "the companion's teacher step": (eb_companion, "yourself"),
}


@pytest.mark.parametrize("fn", [eb_right, eb_right_jnp])
def test_euler_target_bias_accepts_right_answers(fn):
    assert check("euler_target_bias", fn)


@pytest.mark.parametrize("wrong", EB_WRONG.values(), ids=EB_WRONG.keys())
def test_euler_target_bias_rejects_wrong_answers(wrong):
    fn, words = wrong
    passed, text = report("euler_target_bias", fn)
    assert not passed
    if words:
        assert words in text, text


# ------------------------------------------------------------------------------ multistep_consistency


def ms_right(f, x_T, times, noises, a, b, eps):
    x = f(x_T, times[0])
    for k in range(1, len(times)):
        r = a(times[k]) / a(eps)
        q = np.sqrt(b(times[k]) ** 2 - r**2 * b(eps) ** 2)
        x = f(r * x + q * noises[k - 1], times[k])
    return x


def _ms(renoise, last=True, same=False):
    def fn(f, x_T, times, noises, a, b, eps):
        x = f(x_T, times[0])
        for k in range(1, len(times)):
            y = renoise(x, times[k], noises[0] if same else noises[k - 1], a, b, eps)
            x = f(y, times[k]) if (last or k < len(times) - 1) else y
        return x
    return fn


def _right_renoise(x, t, z, a, b, eps):
    r = a(t) / a(eps)
    return r * x + np.sqrt(b(t) ** 2 - r**2 * b(eps) ** 2) * z


def ms_companion(f, x_T, times, noises, a, b, eps):
    x = f(x_T, times[0])
    for k in range(1, len(times)):
        r, q = VP().transition(float(eps), float(times[k]))
        x = f(float(r) * x + float(q) * noises[k - 1], times[k])
    return x


MS_WRONG = {
    "kernel from 0": (_ms(lambda x, t, z, a, b, eps: a(t) * x + b(t) * z), "kernel from 0"),
    "no re-noising": (_ms(lambda x, t, z, a, b, eps: x), "no re-noising"),
    "one noise reused": (_ms(_right_renoise, same=True), "reused"),
    "last point not denoised": (_ms(_right_renoise, last=False), "last noisy point"),
    "noise b(t) z": (_ms(lambda x, t, z, a, b, eps: a(t) / a(eps) * x + b(t) * z), "counted twice"),
    "noise scaled by nu": (_ms(lambda x, t, z, a, b, eps: a(t) / a(eps) * x + b(t) / a(t) * z), "noise-to-signal"),
    "the companion's transition": (ms_companion, "yourself"),
}


def test_multistep_consistency_accepts_the_right_answer():
    assert check("multistep_consistency", ms_right)


@pytest.mark.parametrize("wrong", MS_WRONG.values(), ids=MS_WRONG.keys())
def test_multistep_consistency_rejects_wrong_answers(wrong):
    fn, words = wrong
    passed, text = report("multistep_consistency", fn)
    assert not passed
    if words:
        assert words in text, text
