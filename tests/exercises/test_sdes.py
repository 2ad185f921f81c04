"""The hidden tests of chapter 2 accept right answers and reject plausible wrong ones."""

import jax.numpy as jnp
import numpy as np
import pytest

from companion import exercises, sde


def check(name, fn):
    return exercises.check(name, fn, verbose=False)


# --------------------------------------------------------------------- euler_maruyama_step


def em_right(f, g, x, t, h, z):
    return x + f(x, t) * h + g(t) * jnp.sqrt(h) * z


def em_right_numpy(f, g, x, t, h, z):  # NumPy arithmetic in float64 is right too
    x, z = np.asarray(x, np.float64), np.asarray(z, np.float64)
    return x + np.asarray(f(x, t)) * h + float(g(t)) * np.sqrt(h) * z


EM_WRONG = {
    "noise scaled by h": lambda f, g, x, t, h, z: x + f(x, t) * h + g(t) * h * z,
    "noise not scaled": lambda f, g, x, t, h, z: x + f(x, t) * h + g(t) * z,
    "g squared": lambda f, g, x, t, h, z: x + f(x, t) * h + g(t) ** 2 * jnp.sqrt(h) * z,
    "drift without h": lambda f, g, x, t, h, z: x + f(x, t) + g(t) * jnp.sqrt(h) * z,
    "no noise": lambda f, g, x, t, h, z: x + f(x, t) * h,
    "g at the end of the step": lambda f, g, x, t, h, z: x + f(x, t) * h + g(t + h) * jnp.sqrt(h) * z,
    "returns the increment": lambda f, g, x, t, h, z: f(x, t) * h + g(t) * jnp.sqrt(h) * z,
}


@pytest.mark.parametrize("fn", [em_right, em_right_numpy])
def test_euler_maruyama_step_accepts_right_answers(fn):
    assert check("euler_maruyama_step", fn)


@pytest.mark.parametrize("wrong", EM_WRONG.values(), ids=EM_WRONG.keys())
def test_euler_maruyama_step_rejects_wrong_answers(wrong):
    assert not check("euler_maruyama_step", wrong)


EM_DIAGNOSES = {
    "noise scaled by h": "sqrt(h)",
    "noise not scaled": "not scaled by the step",
    "g squared": "g(t)^2",
    "drift without h": "drift is not multiplied",
    "no noise": "no noise term",
    "g at the end of the step": "end of the step",
    "returns the increment": "change of x",
}


@pytest.mark.parametrize("name", EM_DIAGNOSES)
def test_euler_maruyama_step_names_each_mistake(name, capsys):
    exercises.check("euler_maruyama_step", EM_WRONG[name])
    assert EM_DIAGNOSES[name] in capsys.readouterr().out


# ---------------------------------------------------------------------------- ve_diffusion


def ve_right(t, sigma_min, sigma_max):
    return sde.VE(sigma_min=sigma_min, sigma_max=sigma_max).diffusion(jnp.asarray(t))


def ve_right_by_hand(t, sigma_min, sigma_max):
    r = sigma_max / sigma_min
    return jnp.sqrt(2 * jnp.log(r) * sigma_min**2 * r ** (2 * jnp.asarray(t)))


VE_WRONG = {
    "calls the companion (sde.VE.diffusion)": ve_right,
    "sigma(t) itself": lambda t, lo, hi: lo * (hi / lo) ** jnp.asarray(t),
    "g squared": lambda t, lo, hi: 2 * jnp.log(hi / lo) * (lo * (hi / lo) ** jnp.asarray(t)) ** 2,
    "missing the 2": lambda t, lo, hi: lo * (hi / lo) ** jnp.asarray(t) * jnp.sqrt(jnp.log(hi / lo)),
    "log10": lambda t, lo, hi: lo * (hi / lo) ** jnp.asarray(t) * jnp.sqrt(2 * jnp.log10(hi / lo)),
    "linear sigma": lambda t, lo, hi: (lo + (hi - lo) * jnp.asarray(t)) * jnp.sqrt(2 * jnp.log(hi / lo)),
}


@pytest.mark.parametrize("fn", [ve_right_by_hand])
def test_ve_diffusion_accepts_right_answers(fn):
    assert check("ve_diffusion", fn)


@pytest.mark.parametrize("wrong", VE_WRONG.values(), ids=VE_WRONG.keys())
def test_ve_diffusion_rejects_wrong_answers(wrong):
    assert not check("ve_diffusion", wrong)


VE_DIAGNOSES = {
    "calls the companion (sde.VE.diffusion)": "write it yourself",
    "sigma(t) itself": "this is sigma(t)",
    "g squared": "looks like g(t)^2",
    "missing the 2": "sqrt(2)",
    "log10": "base-10 logarithm",
    "linear sigma": "grows linearly",
}


@pytest.mark.parametrize("name", VE_DIAGNOSES)
def test_ve_diffusion_names_each_mistake(name, capsys):
    exercises.check("ve_diffusion", VE_WRONG[name])
    assert VE_DIAGNOSES[name] in capsys.readouterr().out


# ------------------------------------------------------------------------------- vp_kernel


def vp_right(x0, t, beta_min, beta_max):
    mean, std = sde.VP(beta_min=beta_min, beta_max=beta_max).marginal(x0, jnp.asarray(t))
    return mean, std


def vp_right_by_hand(x0, t, beta_min, beta_max):
    t = jnp.asarray(t)
    big_b = beta_min * t + 0.5 * t**2 * (beta_max - beta_min)
    return jnp.exp(-0.5 * big_b).reshape(-1, *[1] * (x0.ndim - 1)) * x0 if t.ndim else jnp.exp(-0.5 * big_b) * x0, \
        jnp.sqrt(-jnp.expm1(-big_b))


def vp_naive_float32(x0, t, beta_min, beta_max):  # right formula, cancellation at tiny B
    t = jnp.asarray(t)
    big_b = beta_min * t + 0.5 * t**2 * (beta_max - beta_min)
    return _mean(x0, t, jnp.exp(-0.5 * big_b)), jnp.sqrt(1 - jnp.exp(-big_b))


def _b(t, lo, hi):
    t = jnp.asarray(t)
    return lo * t + 0.5 * t**2 * (hi - lo)


def _mean(x0, t, coef):
    return (coef[:, None] if jnp.ndim(t) else coef) * x0


VP_WRONG = {
    # the sub-VP std, 1 - exp(-B), is also the VP variance: the check names the latter
    "variance, not std (= sub-VP std)": lambda x0, t, lo, hi: (_mean(x0, t, jnp.exp(-0.5 * _b(t, lo, hi))),
                                                              -jnp.expm1(-_b(t, lo, hi))),
    "mean without the 1/2": lambda x0, t, lo, hi: (_mean(x0, t, jnp.exp(-_b(t, lo, hi))),
                                                   jnp.sqrt(1 - jnp.exp(-_b(t, lo, hi)))),
    "B = beta(t) t": lambda x0, t, lo, hi: (
        _mean(x0, t, jnp.exp(-0.5 * (lo + (hi - lo) * jnp.asarray(t)) * jnp.asarray(t))),
        jnp.sqrt(1 - jnp.exp(-(lo + (hi - lo) * jnp.asarray(t)) * jnp.asarray(t)))),
    "the mean coefficient as std": lambda x0, t, lo, hi: (_mean(x0, t, jnp.exp(-0.5 * _b(t, lo, hi))),
                                                     jnp.exp(-0.5 * _b(t, lo, hi))),
    "mean not multiplied by x0": lambda x0, t, lo, hi: (jnp.broadcast_to(
        _mean(jnp.ones_like(x0), t, jnp.exp(-0.5 * _b(t, lo, hi))), x0.shape), jnp.sqrt(-jnp.expm1(-_b(t, lo, hi)))),
    "returns only the mean": lambda x0, t, lo, hi: _mean(x0, t, jnp.exp(-0.5 * _b(t, lo, hi))),
}


VP_WRONG["calls the companion (sde.VP.marginal)"] = vp_right
VP_WRONG["1 - exp(-B) in float32"] = vp_naive_float32


@pytest.mark.parametrize("fn", [vp_right_by_hand])
def test_vp_kernel_accepts_right_answers(fn):
    assert check("vp_kernel", fn)


@pytest.mark.parametrize("wrong", VP_WRONG.values(), ids=VP_WRONG.keys())
def test_vp_kernel_rejects_wrong_answers(wrong):
    assert not check("vp_kernel", wrong)


VP_DIAGNOSES = {
    "variance, not std (= sub-VP std)": "variance",
    "mean without the 1/2": "square of the right one",
    "B = beta(t) t": "beta(t) t",
    "the mean coefficient as std": "mean coefficient a(t), not the std",
    "mean not multiplied by x0": "the mean is a(t) x0",
    "returns only the mean": "pair",
    "calls the companion (sde.VP.marginal)": "write it yourself",
    "1 - exp(-B) in float32": "cancellation",
}


@pytest.mark.parametrize("name", VP_DIAGNOSES)
def test_vp_kernel_names_each_mistake(name, capsys):
    exercises.check("vp_kernel", VP_WRONG[name])
    assert VP_DIAGNOSES[name] in capsys.readouterr().out


def test_library_calls_are_refused_kindly(capsys):
    exercises.check("vp_kernel", vp_right)
    assert "write it yourself" in capsys.readouterr().out


# -------------------------------------------------------------------------- linear_kernel


def _rk4_moments(A, g, t, n=400, exponent=2.0):
    """log a and v by RK4 on (log a)' = A, v' = exponent A v + g^2 (exponent 2 is right)."""
    t = float(t)
    h, log_a, v = t / n, 0.0, 0.0
    rhs = lambda u, v: (float(A(u)), exponent * float(A(u)) * v + float(g(u)) ** 2)  # noqa: E731
    for k in range(n):
        u = k * h
        k1 = rhs(u, v)
        k2 = rhs(u + h / 2, v + h / 2 * k1[1])
        k3 = rhs(u + h / 2, v + h / 2 * k2[1])
        k4 = rhs(u + h, v + h * k3[1])
        log_a += h * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0]) / 6
        v += h * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1]) / 6
    return log_a, v


def kernel_right_rk4(A, g, t):
    log_a, v = _rk4_moments(A, g, t)
    return np.exp(log_a), np.sqrt(v)


def kernel_right_grid(A, g, t):  # variation of constants, trapezoid on a jnp grid
    u = jnp.linspace(0.0, t, 4001)
    int_a = jnp.concatenate([jnp.zeros(1), jnp.cumsum(
        0.5 * (A(u)[1:] + A(u)[:-1]) * jnp.diff(u))])
    w = g(u) ** 2 * jnp.exp(-2 * int_a)
    return jnp.exp(int_a[-1]), jnp.exp(int_a[-1]) * jnp.sqrt(
        jnp.sum(0.5 * (w[1:] + w[:-1]) * jnp.diff(u)))


def kernel_no_factor_two(A, g, t):
    log_a, v = _rk4_moments(A, g, t, exponent=1.0)
    return np.exp(log_a), np.sqrt(v)


def kernel_variance(A, g, t):
    a, b = kernel_right_rk4(A, g, t)
    return a, b**2


def kernel_vp_identity(A, g, t):  # b = sqrt(1 - a^2): true for VP only
    a, _ = kernel_right_rk4(A, g, t)
    return a, np.sqrt(max(1 - a**2, 0.0))


def kernel_drift_ignored(A, g, t):  # the VE formula: the variance just accumulates g^2
    log_a, _ = _rk4_moments(A, g, t)
    _, v = _rk4_moments(lambda u: 0.0, g, t)
    return np.exp(log_a), np.sqrt(v)


def kernel_library_vp(A, g, t):  # "all SDEs are VP": the companion's VP kernel
    mean, std = sde.VP(beta_min=0.1, beta_max=20.0).marginal(jnp.ones((1, 1)), jnp.asarray(t))
    return mean[0, 0], std


KERNEL_WRONG = {
    "v' = A v + g^2 (factor 2 missing)": kernel_no_factor_two,
    "returns the variance": kernel_variance,
    "b = sqrt(1 - a^2) (VP only)": kernel_vp_identity,
    "drift ignored in the variance (VE only)": kernel_drift_ignored,
    "the companion's VP kernel": kernel_library_vp,
    "mean coefficient exp(-int A)": lambda A, g, t: (1 / kernel_right_rk4(A, g, t)[0],
                                                    kernel_right_rk4(A, g, t)[1]),
}


@pytest.mark.parametrize("fn", [kernel_right_rk4, kernel_right_grid])
def test_linear_kernel_accepts_right_answers(fn):
    assert check("linear_kernel", fn)


@pytest.mark.parametrize("wrong", KERNEL_WRONG.values(), ids=KERNEL_WRONG.keys())
def test_linear_kernel_rejects_wrong_answers(wrong):
    assert not check("linear_kernel", wrong)


KERNEL_DIAGNOSES = {
    "v' = A v + g^2 (factor 2 missing)": "factor 2",
    "returns the variance": "looks like the variance",
    "b = sqrt(1 - a^2) (VP only)": "some SDEs only",
    "drift ignored in the variance (VE only)": "only accumulates g^2",
    "the companion's VP kernel": "VP SDE's coefficients",
    "mean coefficient exp(-int A)": "reciprocal",
}


@pytest.mark.parametrize("name", KERNEL_DIAGNOSES)
def test_linear_kernel_names_each_mistake(name, capsys):
    exercises.check("linear_kernel", KERNEL_WRONG[name])
    assert KERNEL_DIAGNOSES[name] in capsys.readouterr().out


def test_linear_kernel_never_prints_a_fine_ratio(capsys):
    # a std 0.3 % off: the tolerance is 0.1 %, so a printed "0.997 times" would let a
    # reader divide their way to the answer; the message must stay coarse
    def slightly_off(A, g, t):
        a, b = kernel_right_rk4(A, g, t)
        return a, b * 1.003

    exercises.check("linear_kernel", slightly_off)
    out = capsys.readouterr().out
    assert "close to 1" in out and "1.003" not in out and "0.997" not in out
