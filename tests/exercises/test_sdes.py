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


def test_euler_maruyama_step_diagnoses(capsys):
    exercises.check("euler_maruyama_step", EM_WRONG["noise scaled by h"])
    assert "sqrt(h)" in capsys.readouterr().out
    exercises.check("euler_maruyama_step", EM_WRONG["g at the end of the step"])
    assert "end of the step" in capsys.readouterr().out


# ---------------------------------------------------------------------------- ve_diffusion


def ve_right(t, sigma_min, sigma_max):
    return sde.VE(sigma_min=sigma_min, sigma_max=sigma_max).diffusion(jnp.asarray(t))


def ve_right_by_hand(t, sigma_min, sigma_max):
    r = sigma_max / sigma_min
    return jnp.sqrt(2 * jnp.log(r) * sigma_min**2 * r ** (2 * jnp.asarray(t)))


VE_WRONG = {
    "sigma(t) itself": lambda t, lo, hi: lo * (hi / lo) ** jnp.asarray(t),
    "g squared": lambda t, lo, hi: 2 * jnp.log(hi / lo) * (lo * (hi / lo) ** jnp.asarray(t)) ** 2,
    "missing the 2": lambda t, lo, hi: lo * (hi / lo) ** jnp.asarray(t) * jnp.sqrt(jnp.log(hi / lo)),
    "log10": lambda t, lo, hi: lo * (hi / lo) ** jnp.asarray(t) * jnp.sqrt(2 * jnp.log10(hi / lo)),
    "linear sigma": lambda t, lo, hi: (lo + (hi - lo) * jnp.asarray(t)) * jnp.sqrt(2 * jnp.log(hi / lo)),
}


@pytest.mark.parametrize("fn", [ve_right, ve_right_by_hand])
def test_ve_diffusion_accepts_right_answers(fn):
    assert check("ve_diffusion", fn)


@pytest.mark.parametrize("wrong", VE_WRONG.values(), ids=VE_WRONG.keys())
def test_ve_diffusion_rejects_wrong_answers(wrong):
    assert not check("ve_diffusion", wrong)


def test_ve_diffusion_diagnoses(capsys):
    exercises.check("ve_diffusion", VE_WRONG["sigma(t) itself"])
    assert "sigma(t)" in capsys.readouterr().out
    exercises.check("ve_diffusion", VE_WRONG["missing the 2"])
    assert "sqrt(2)" in capsys.readouterr().out


# ------------------------------------------------------------------------------- vp_kernel


def vp_right(x0, t, beta_min, beta_max):
    mean, std = sde.VP(beta_min=beta_min, beta_max=beta_max).marginal(x0, jnp.asarray(t))
    return mean, std


def vp_right_by_hand(x0, t, beta_min, beta_max):
    t = jnp.asarray(t)
    big_b = beta_min * t + 0.5 * t**2 * (beta_max - beta_min)
    return jnp.exp(-0.5 * big_b).reshape(-1, *[1] * (x0.ndim - 1)) * x0 if t.ndim else jnp.exp(-0.5 * big_b) * x0, \
        jnp.sqrt(1 - jnp.exp(-big_b))


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
    "the mean factor as std": lambda x0, t, lo, hi: (_mean(x0, t, jnp.exp(-0.5 * _b(t, lo, hi))),
                                                     jnp.exp(-0.5 * _b(t, lo, hi))),
    "mean not multiplied by x0": lambda x0, t, lo, hi: (jnp.broadcast_to(
        _mean(jnp.ones_like(x0), t, jnp.exp(-0.5 * _b(t, lo, hi))), x0.shape), jnp.sqrt(-jnp.expm1(-_b(t, lo, hi)))),
    "returns only the mean": lambda x0, t, lo, hi: _mean(x0, t, jnp.exp(-0.5 * _b(t, lo, hi))),
}


@pytest.mark.parametrize("fn", [vp_right, vp_right_by_hand])
def test_vp_kernel_accepts_right_answers(fn):
    assert check("vp_kernel", fn)


@pytest.mark.parametrize("wrong", VP_WRONG.values(), ids=VP_WRONG.keys())
def test_vp_kernel_rejects_wrong_answers(wrong):
    assert not check("vp_kernel", wrong)


def test_vp_kernel_diagnoses(capsys):
    exercises.check("vp_kernel", VP_WRONG["mean without the 1/2"])
    assert "exp(-B/2)" in capsys.readouterr().out
    exercises.check("vp_kernel", VP_WRONG["returns only the mean"])
    assert "pair" in capsys.readouterr().out
