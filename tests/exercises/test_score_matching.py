"""The hidden tests of chapter 4 accept right answers, reject plausible wrong ones and name
the predictable mistakes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from companion import exercises


def check(name, fn):
    return exercises.check(name, fn, verbose=False)


def message(name, fn, capsys):
    capsys.readouterr()
    assert not exercises.check(name, fn)
    return capsys.readouterr().out


# ------------------------------------------------------------------------------ hutchinson_trace


def hutchinson_right(fn, x, xi):
    total = 0.0
    for p in range(xi.shape[0]):  # a plain loop over probes is fine too
        _, jv = jax.jvp(fn, (x,), (xi[p],))
        total = total + jnp.sum(xi[p] * jv, axis=-1)
    return total / xi.shape[0]


def _jv(fn, x, xi):
    return jax.vmap(lambda p: jax.jvp(fn, (x,), (p,))[1])(xi)


HUTCH_WRONG = {
    "xi . f(x): no Jacobian": lambda fn, x, xi: jnp.mean(jnp.sum(xi * fn(x)[None], -1), 0),
    "sum over probes": lambda fn, x, xi: jnp.sum(jnp.sum(xi * _jv(fn, x, xi), -1), 0),
    "|J xi|^2": lambda fn, x, xi: jnp.mean(jnp.sum(_jv(fn, x, xi) ** 2, -1), 0),
    "first probe only": lambda fn, x, xi: jnp.sum(xi[0] * _jv(fn, x, xi)[0], -1),
    "no sum over coordinates": lambda fn, x, xi: jnp.mean(xi * _jv(fn, x, xi), 0),
    "sum over the batch, not the coordinates": lambda fn, x, xi: jnp.mean(
        jnp.sum(xi * _jv(fn, x, xi), 1), 0),
}


def hutchinson_library(fn, x, xi):
    from companion import divergence

    return divergence.hutchinson_divergence(fn, x, xi)


def hutchinson_exact_library(fn, x, xi):  # the exact divergence: one level beside
    from companion import divergence

    return divergence.exact_divergence(fn, x)


def test_hutchinson_trace_accepts_right_answers():
    assert check("hutchinson_trace", hutchinson_right)
    assert check("hutchinson_trace", exercises.get("hutchinson_trace").reference)


@pytest.mark.parametrize("wrong", HUTCH_WRONG.values(), ids=HUTCH_WRONG.keys())
def test_hutchinson_trace_rejects_wrong_answers(wrong):
    assert not check("hutchinson_trace", wrong)


@pytest.mark.parametrize("wrong, words", [
    ("sum over probes", "sum over the probes instead of their mean"),
    ("first probe only", "only the first probe"),
    ("xi . f(x): no Jacobian", "needs the Jacobian"),
    ("|J xi|^2", "squared norm of J xi"),
])
def test_hutchinson_trace_names_the_mistake(wrong, words, capsys):
    assert words in message("hutchinson_trace", HUTCH_WRONG[wrong], capsys)


# ------------------------------------------------------------------------------ denoiser_loss


def _col(v, x):
    return v.reshape((-1,) + (1,) * (x.ndim - 1))


def den_right(denoiser, sde, weight, x0, t, z):
    mean, std = sde.marginal(x0, t)  # the kernel through the SDE; Tweedie's score, unsimplified
    xt = mean + _col(std, x0) * z
    a = _col(sde.mean_coefficient(t), x0)
    score = (a * denoiser(xt, t) - xt) / _col(std, x0) ** 2
    sq = (_col(std, x0) * score + z) ** 2
    return weight(t) * 0.5 * sq.reshape(len(t), -1).sum(1)


def den_simplified(denoiser, sde, weight, x0, t, z):
    a, b = sde.mean_coefficient(t), sde.kernel_std(t)
    xt = _col(a, x0) * x0 + _col(b, x0) * z
    err = (denoiser(xt, t) - x0).reshape(len(t), -1)
    return weight(t) * (a / b) ** 2 * 0.5 * jnp.sum(err**2, axis=1)


def _den(denoiser, sde, weight, x0, t, z, *, a_power=2, b_power=2, half=True, reduce="sum",
         with_mean=True, target="x0"):
    a, b = sde.mean_coefficient(t), sde.kernel_std(t)
    xt = (_col(a, x0) if with_mean else 1.0) * x0 + _col(b, x0) * z
    sq = ((denoiser(xt, t) - (x0 if target == "x0" else z)) ** 2).reshape(len(t), -1)
    out = sq.sum(1) if reduce == "sum" else sq.mean(1)
    out = weight(t) * a**a_power / b**b_power * out
    return 0.5 * out if half else out


def den_tweedie_over_b(denoiser, sde, weight, x0, t, z):  # score (a D - x_t) / b
    a, b = (_col(v, x0) for v in (sde.mean_coefficient(t), sde.kernel_std(t)))
    xt = a * x0 + b * z
    score = (a * denoiser(xt, t) - xt) / b
    return weight(t) * 0.5 * ((b * score + z) ** 2).reshape(len(t), -1).sum(1)


def den_sign(denoiser, sde, weight, x0, t, z):  # score (x_t - a D) / b^2
    a, b = (_col(v, x0) for v in (sde.mean_coefficient(t), sde.kernel_std(t)))
    xt = a * x0 + b * z
    score = (xt - a * denoiser(xt, t)) / b**2
    return weight(t) * 0.5 * ((b * score + z) ** 2).reshape(len(t), -1).sum(1)


DEN_WRONG = {
    "no a^2 in the weight": lambda *a: _den(*a, a_power=0),
    "no division by b^2": lambda *a: _den(*a, b_power=0),
    "a / b, not squared": lambda *a: _den(*a, a_power=1, b_power=1),
    "mean over coordinates": lambda *a: _den(*a, reduce="mean"),
    "no factor 1/2": lambda *a: _den(*a, half=False),
    "the noise predictor's loss, printed": lambda *a: _den(*a, a_power=0, target="z"),
    "x_t without the mean coefficient": lambda *a: _den(*a, with_mean=False),
    "Tweedie over b, not b^2": den_tweedie_over_b,
    "Tweedie with the wrong sign": den_sign,
    "batch mean instead of per sample": lambda *a: jnp.mean(_den(*a)),
}


@pytest.mark.parametrize("fn", [den_right, den_simplified])
def test_denoiser_loss_accepts_right_answers(fn):
    assert check("denoiser_loss", fn)


@pytest.mark.parametrize("wrong", DEN_WRONG.values(), ids=DEN_WRONG.keys())
def test_denoiser_loss_rejects_wrong_answers(wrong):
    assert not check("denoiser_loss", wrong)


@pytest.mark.parametrize("wrong, words", [
    ("no a^2 in the weight", "misses a(t)^2"),
    ("no division by b^2", "not divided by b(t)^2"),
    ("a / b, not squared", "gives a square"),
    ("mean over coordinates", "a mean over each sample's coordinates"),
    ("no factor 1/2", "factor 1/2 is missing"),
    ("the noise predictor's loss, printed", "not the noise z"),
    ("Tweedie over b, not b^2", "not / b(t)^2"),
    ("batch mean instead of per sample", "one loss per sample"),
])
def test_denoiser_loss_names_the_mistake(wrong, words, capsys):
    assert words in message("denoiser_loss", DEN_WRONG[wrong], capsys)


def den_library(denoiser, sde, weight, x0, t, z):  # the companion's loss draws its own noise
    from companion import losses

    def model(x, tt):
        a, b = (_col(v, x) for v in (sde.mean_coefficient(tt), sde.kernel_std(tt)))
        return (a * denoiser(x, tt) - x) / b**2

    return losses.denoising_score_matching(sde).per_sample(model, x0, jax.random.key(0))


def test_library_calls_are_refused_kindly(capsys):
    for name, fn in (("denoiser_loss", den_library), ("hutchinson_trace", hutchinson_library),
                     ("hutchinson_trace", hutchinson_exact_library)):
        assert "write it yourself" in message(name, fn, capsys)


# ------------------------------------------------------------------------------ preconditioned_langevin


def langevin_right(score_fn, x, z, step_size, M):
    L = jnp.linalg.cholesky(M)
    return x + step_size * score_fn(x) @ M + jnp.sqrt(2 * step_size) * z @ L.T


def langevin_right_symmetric_root(score_fn, x, z, step_size, M):  # another square root
    w, U = jnp.linalg.eigh(M)
    root = U @ jnp.diag(jnp.sqrt(w)) @ U.T
    return x + step_size * jnp.einsum("ij,nj->ni", M, score_fn(x)) + (2 * step_size) ** 0.5 * z @ root


def _step(score_fn, x, z, d, M, *, drift="M", noise="L", scale=2.0, sign=1.0):
    Mn = np.asarray(M, np.float64)
    Dm = {"M": M, "I": jnp.eye(M.shape[0]), "Minv": jnp.linalg.inv(M)}[drift]
    root = {"L": jnp.linalg.cholesky(M), "M": M, "I": jnp.eye(M.shape[0]),
            "Linv": jnp.linalg.cholesky(jnp.asarray(np.linalg.inv(Mn), M.dtype))}[noise]
    return x + sign * d * score_fn(x) @ Dm.T + jnp.sqrt(scale * d) * z @ root.T


LANGEVIN_WRONG = {
    "noise sqrt(step)": lambda *a: _step(*a, scale=1.0),
    "noise scaled by M, not its square root": lambda *a: _step(*a, noise="M"),
    "noise not preconditioned": lambda *a: _step(*a, noise="I"),
    "noise with M^-1": lambda *a: _step(*a, noise="Linv"),
    "drift not preconditioned": lambda *a: _step(*a, drift="I"),
    "drift with M^-1": lambda *a: _step(*a, drift="Minv"),
    "minus the score": lambda *a: _step(*a, sign=-1.0),
    "noise drawn inside the step": lambda s, x, z, d, M: _step(
        s, x, jax.random.normal(jax.random.key(0), x.shape), d, M),
    "noise z L (the transpose of a Cholesky factor)": lambda s, x, z, d, M: (
        x + d * s(x) @ M + jnp.sqrt(2 * d) * z @ jnp.linalg.cholesky(M)),
}


@pytest.mark.parametrize("fn", [langevin_right, langevin_right_symmetric_root])
def test_preconditioned_langevin_accepts_right_answers(fn):
    assert check("preconditioned_langevin", fn)


@pytest.mark.parametrize("wrong", LANGEVIN_WRONG.values(), ids=LANGEVIN_WRONG.keys())
def test_preconditioned_langevin_rejects_wrong_answers(wrong):
    assert not check("preconditioned_langevin", wrong)


@pytest.mark.parametrize("wrong, words", [
    ("noise sqrt(step)", "sqrt(step) instead of sqrt(2 step)"),
    ("noise scaled by M, not its square root", "not by a square root of M"),
    ("noise not preconditioned", "noise is not preconditioned"),
    ("noise with M^-1", "M^-1 where the drift uses M"),
    ("drift not preconditioned", "drift is not preconditioned"),
    ("drift with M^-1", "drift uses M^-1"),
    ("minus the score", "wrong sign"),
])
def test_preconditioned_langevin_names_the_mistake(wrong, words, capsys):
    assert words in message("preconditioned_langevin", LANGEVIN_WRONG[wrong], capsys)


# ---------------------------------------------------------------------------- dsm_minimum


def minimum_right(sde, t, data_var, d):
    a, b = sde.marginal(1.0, t)
    return d / 2 * a**2 * data_var / (a**2 * data_var + b**2)


def minimum_right_by_expansion(sde, t, data_var, d):
    a, b = sde.marginal(jnp.ones(()), t)
    var_t = a**2 * data_var + b**2
    return d / 2 - b**2 * (d / var_t) / 2  # E||z||^2/2 - b^2 E||grad log p_t||^2 / 2


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


@pytest.mark.parametrize("wrong, words", [
    ("no factor 1/2", "about twice"),
    ("zero (the loss can reach zero)", "cannot reach zero"),
    ("d/2 (the zero score's loss)", "zero score function"),
    ("per coordinate (d forgotten)", "factor d"),
    ("the explained part instead of the rest", "not what remains"),
])
def test_dsm_minimum_diagnoses(wrong, words, capsys):
    assert words in message("dsm_minimum", MINIMUM_WRONG[wrong], capsys)


def test_no_report_prints_a_ratio_finer_than_its_tolerance(capsys):
    """A wrong answer never learns a factor to more than words (issue 26, near-leaks)."""
    import re

    for ratio in (1.37, 0.93, 2.0004):
        out = message("dsm_minimum", lambda sde, t, c, d, r=ratio: r * minimum_right(sde, t, c, d),
                      capsys)
        assert not re.search(r"\d\.\d\d", out.split("Hint:")[0]), out
