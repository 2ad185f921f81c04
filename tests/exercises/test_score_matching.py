"""The hidden tests of chapter 4 accept right answers and reject plausible wrong ones."""

import jax
import jax.numpy as jnp
import pytest

from companion import exercises


def check(name, fn):
    return exercises.check(name, fn, verbose=False)


# ------------------------------------------------------------------------------ dsm_loss


def dsm_right(score_fn, sde, x0, t, z):
    mean, std = sde.marginal(x0, t)  # the same thing through the SDE's own kernel
    std = std[:, None]
    xt = mean + std * z
    return 0.5 * jnp.sum(std**2 * (score_fn(xt, t) + z / std) ** 2, axis=-1)


def _dsm(score_fn, sde, x0, t, z, *, sign=1.0, with_mean=True, weight=True, half=True, reduce="sum"):
    m = sde.mean_coefficient(t)[:, None] if with_mean else 1.0
    s = sde.kernel_std(t)[:, None]
    xt = m * x0 + s * z
    err = (score_fn(xt, t) + sign * z / s) ** 2 * (s**2 if weight else 1.0)
    out = jnp.sum(err, axis=1) if reduce == "sum" else jnp.mean(err, axis=1)
    return 0.5 * out if half else out


DSM_WRONG = {
    "target +z/s (sign)": lambda *a: _dsm(*a, sign=-1.0),
    "x_t without the mean coefficient": lambda *a: _dsm(*a, with_mean=False),
    "no s^2 weighting": lambda *a: _dsm(*a, weight=False),
    "no factor 1/2": lambda *a: _dsm(*a, half=False),
    "mean over coordinates": lambda *a: _dsm(*a, reduce="mean"),
    "batch mean instead of per sample": lambda *a: jnp.mean(_dsm(*a)),
}


def test_dsm_loss_accepts_right_answers():
    assert check("dsm_loss", dsm_right)
    assert check("dsm_loss", exercises.get("dsm_loss").reference)


@pytest.mark.parametrize("wrong", DSM_WRONG.values(), ids=DSM_WRONG.keys())
def test_dsm_loss_rejects_wrong_answers(wrong):
    assert not check("dsm_loss", wrong)


def test_dsm_loss_message_names_the_shape(capsys):
    exercises.check("dsm_loss", DSM_WRONG["batch mean instead of per sample"])
    assert "one loss per sample" in capsys.readouterr().out


# ------------------------------------------------------------------------------ hutchinson_trace


def hutchinson_right(fn, x, v):
    total = 0.0
    for p in range(v.shape[0]):  # a plain loop over probes is fine too
        _, jv = jax.jvp(fn, (x,), (v[p],))
        total = total + jnp.sum(v[p] * jv, axis=-1)
    return total / v.shape[0]


def _jv(fn, x, v):
    return jax.vmap(lambda vp: jax.jvp(fn, (x,), (vp,))[1])(v)


HUTCH_WRONG = {
    "v . f(x): no Jacobian": lambda fn, x, v: jnp.mean(jnp.sum(v * fn(x)[None], -1), 0),
    "sum over probes": lambda fn, x, v: jnp.sum(jnp.sum(v * _jv(fn, x, v), -1), 0),
    "|J v|^2": lambda fn, x, v: jnp.mean(jnp.sum(_jv(fn, x, v) ** 2, -1), 0),
    "first probe only": lambda fn, x, v: jnp.sum(v[0] * _jv(fn, x, v)[0], -1),
    "no sum over coordinates": lambda fn, x, v: jnp.mean(v * _jv(fn, x, v), 0),
}


def test_hutchinson_trace_accepts_right_answers():
    assert check("hutchinson_trace", hutchinson_right)
    assert check("hutchinson_trace", exercises.get("hutchinson_trace").reference)


@pytest.mark.parametrize("wrong", HUTCH_WRONG.values(), ids=HUTCH_WRONG.keys())
def test_hutchinson_trace_rejects_wrong_answers(wrong):
    assert not check("hutchinson_trace", wrong)


# ------------------------------------------------------------------------------ langevin_step


def langevin_right(score_fn, x, z, step_size):
    drift = score_fn(x)
    return x + step_size * drift + (2 * step_size) ** 0.5 * z


LANGEVIN_WRONG = {
    "noise sqrt(step) z": lambda s, x, z, e: x + e * s(x) + jnp.sqrt(e) * z,
    "minus the score": lambda s, x, z, e: x - e * s(x) + jnp.sqrt(2 * e) * z,
    "half the drift (other convention, same noise)": lambda s, x, z, e: x + e / 2 * s(x) + jnp.sqrt(2 * e) * z,
    "no noise": lambda s, x, z, e: x + e * s(x),
    "noise 2 e z": lambda s, x, z, e: x + e * s(x) + 2 * e * z,
}


def test_langevin_step_accepts_right_answers():
    assert check("langevin_step", langevin_right)


@pytest.mark.parametrize("wrong", LANGEVIN_WRONG.values(), ids=LANGEVIN_WRONG.keys())
def test_langevin_step_rejects_wrong_answers(wrong):
    assert not check("langevin_step", wrong)
