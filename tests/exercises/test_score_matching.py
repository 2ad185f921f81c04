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


def dsm_library(score_fn, sde, x0, t, z):  # the companion's loss draws its own noise
    from companion import losses

    model = lambda x, tt: score_fn(x, tt)  # noqa: E731
    return losses.denoising_score_matching(sde).per_sample(model, x0, jax.random.key(0))


def hutchinson_library(fn, x, v):
    from companion import divergence

    return divergence.hutchinson_divergence(fn, x, v)


def test_library_calls_are_refused_kindly(capsys):
    assert not check("dsm_loss", dsm_library)
    exercises.check("hutchinson_trace", hutchinson_library)
    assert "write it yourself" in capsys.readouterr().out


# ---------------------------------------------------------------------------- dsm_minimum


def minimum_right(sde, t, data_var, d):
    m, s = sde.marginal(1.0, t)
    return d / 2 * m**2 * data_var / (m**2 * data_var + s**2)


def minimum_right_by_expansion(sde, t, data_var, d):
    m, s = sde.marginal(jnp.ones(()), t)
    var_t = m**2 * data_var + s**2
    return d / 2 - s**2 * (d / var_t) / 2  # E||z||^2/2 - s^2 E||grad log p_t||^2 / 2


def minimum_monte_carlo(sde, t, data_var, d):  # estimated with the companion's loss
    from companion import losses

    class Stub:
        mean_coefficient = staticmethod(lambda tt: sde.marginal(1.0, tt)[0])
        kernel_std = staticmethod(lambda tt: sde.marginal(1.0, tt)[1])

    loss = losses.denoising_score_matching(Stub())
    x0 = jnp.sqrt(data_var) * jax.random.normal(jax.random.key(0), (100_000, d))
    return loss(lambda x, tt: -x, x0, jax.random.key(1))


MINIMUM_WRONG = {
    "zero (the loss can reach zero)": lambda sde, t, c, d: 0.0,
    "d/2 (the zero score's loss)": lambda sde, t, c, d: d / 2,
    "no factor 1/2": lambda sde, t, c, d: 2 * minimum_right(sde, t, c, d),
    "per coordinate (d forgotten)": lambda sde, t, c, d: minimum_right(sde, t, c, 1),
    "mean coefficient forgotten (right for VE only)":
        lambda sde, t, c, d: d / 2 * c / (c + sde.marginal(1.0, t)[1] ** 2),
    "the explained part instead of the rest":
        lambda sde, t, c, d: d / 2 - minimum_right(sde, t, c, d),
    "Monte Carlo with the companion's loss": minimum_monte_carlo,
}


@pytest.mark.parametrize("fn", [minimum_right, minimum_right_by_expansion])
def test_dsm_minimum_accepts_right_answers(fn):
    assert check("dsm_minimum", fn)


@pytest.mark.parametrize("wrong", MINIMUM_WRONG.values(), ids=MINIMUM_WRONG.keys())
def test_dsm_minimum_rejects_wrong_answers(wrong):
    assert not check("dsm_minimum", wrong)


def test_dsm_minimum_diagnoses(capsys):
    exercises.check("dsm_minimum", MINIMUM_WRONG["no factor 1/2"])
    assert "factor close to 2" in capsys.readouterr().out
    exercises.check("dsm_minimum", MINIMUM_WRONG["zero (the loss can reach zero)"])
    assert "cannot reach zero" in capsys.readouterr().out
