"""The hidden tests of chapter 6 accept right answers and reject plausible wrong ones."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from companion import exercises, toy


def check(name, fn):
    return exercises.check(name, fn, verbose=False)


def test_the_chapter_6_exercises_are_registered_in_order():
    names = exercises.names()
    mine = ["class_probabilities", "gaussian_conditional", "replace_known"]
    assert [n for n in names if n in mine] == mine
    assert all(exercises.get(n).chapter == 6 for n in mine)


# ------------------------------------------------------------------------ class_probabilities


def _perturbed(sde, t, means, variances, scale_mean=True, scale_var=True, noise=True):
    m, s = sde.mean_coefficient(t), sde.kernel_std(t)
    mu = (m if scale_mean else 1.0) * means
    var = (m**2 if scale_var else 1.0) * variances + (s**2 if noise else 0.0)
    return mu, var


def class_right(sde, x, t, means, variances, weights):
    mu, var = _perturbed(sde, t, means, variances)
    sq = jnp.sum((x[:, None, :] - mu[None]) ** 2, axis=-1)
    logits = jnp.log(weights) - 0.5 * sq / var - 0.5 * x.shape[1] * jnp.log(2 * jnp.pi * var)
    return jax.nn.softmax(logits, axis=1)


def class_right_by_densities(sde, x, t, means, variances, weights):
    """Densities, then normalise (fine in float32 on these inputs)."""
    mu, var = _perturbed(sde, t, means, variances)
    d = x.shape[1]
    dens = weights * jnp.exp(-0.5 * jnp.sum((x[:, None, :] - mu[None]) ** 2, -1) / var) / (2 * jnp.pi * var) ** (d / 2)
    return dens / dens.sum(axis=1, keepdims=True)


def _class_wrong(**kw):
    drop_norm = kw.pop("drop_norm", False)
    drop_weights = kw.pop("drop_weights", False)
    no_softmax = kw.pop("no_softmax", False)

    def fn(sde, x, t, means, variances, weights):
        mu, var = _perturbed(sde, t, means, variances, **kw)
        logits = -0.5 * jnp.sum((x[:, None, :] - mu[None]) ** 2, -1) / var
        if not drop_norm:
            logits = logits - 0.5 * x.shape[1] * jnp.log(2 * jnp.pi * var)
        if not drop_weights:
            logits = logits + jnp.log(weights)
        return jnp.exp(logits) if no_softmax else jax.nn.softmax(logits, axis=1)

    return fn


def class_library(sde, x, t, means, variances, weights):
    covs = variances[:, None, None] * jnp.eye(x.shape[1])
    mix = toy.GaussianMixture(means, covs, weights)
    return mix.perturbed(sde, t).responsibilities(x)


CLASS_WRONG = {
    "calls the companion (GaussianMixture.perturbed.responsibilities)": class_library,
    "the clean-data classifier (no kernel noise)": _class_wrong(scale_mean=False, scale_var=False, noise=False),
    "means not scaled by m(t)": _class_wrong(scale_mean=False),
    "variances not scaled by m(t)^2": _class_wrong(scale_var=False),
    "no normalising factor": _class_wrong(drop_norm=True),
    "no weights": _class_wrong(drop_weights=True),
    "not normalised over classes": _class_wrong(no_softmax=True),
}


@pytest.mark.parametrize("fn", [class_right, class_right_by_densities])
def test_class_probabilities_accepts_right_answers(fn):
    assert check("class_probabilities", fn)


@pytest.mark.parametrize("wrong", CLASS_WRONG.values(), ids=CLASS_WRONG.keys())
def test_class_probabilities_rejects_wrong_answers(wrong):
    assert not check("class_probabilities", wrong)


def test_class_probabilities_message_names_the_mistake(capsys):
    exercises.check("class_probabilities", CLASS_WRONG["no normalising factor"])
    assert "normalising factor" in capsys.readouterr().out


# ----------------------------------------------------------------------- gaussian_conditional


def _split(mean, cov, observed):
    o = np.asarray(observed)
    u = np.setdiff1d(np.arange(mean.shape[0]), o)
    return o, u, cov[np.ix_(u, o)], cov[np.ix_(o, o)], cov[np.ix_(u, u)]


def cond_right(mean, cov, x_o, observed):
    o, u, s_uo, s_oo, s_uu = _split(mean, cov, observed)
    gain = s_uo @ jnp.linalg.inv(s_oo)
    return mean[u] + gain @ (x_o - mean[o]), s_uu - gain @ s_uo.T


def cond_right_by_precision(mean, cov, x_o, observed):
    """Through the precision matrix: Lambda_uu^{-1} is the conditional covariance."""
    o, u, *_ = _split(mean, cov, observed)
    prec = jnp.linalg.inv(cov)
    c = jnp.linalg.inv(prec[np.ix_(u, u)])
    return mean[u] - c @ prec[np.ix_(u, o)] @ (x_o - mean[o]), c


def _cond_wrong(kind):
    def fn(mean, cov, x_o, observed):
        o, u, s_uo, s_oo, s_uu = _split(mean, cov, observed)
        gain = s_uo @ jnp.linalg.inv(s_oo)
        m, c = mean[u] + gain @ (x_o - mean[o]), s_uu - gain @ s_uo.T
        if kind == "uncentred":
            m = mean[u] + gain @ x_o
        elif kind == "no inverse":
            m, c = mean[u] + s_uo @ (x_o - mean[o]), s_uu - s_uo @ s_uo.T
        elif kind == "plus":
            c = s_uu + gain @ s_uo.T
        elif kind == "prior block":
            c = s_uu
        return m, c

    return fn


COND_WRONG = {k: _cond_wrong(k) for k in ("uncentred", "no inverse", "plus", "prior block")}


def cond_library(mean, cov, x_o, observed):
    mix = toy.GaussianMixture(mean[None], cov[None], jnp.ones(1))
    c = mix.condition(x_o, observed)
    return c.means[0], c.covs[0]


COND_WRONG["calls the companion (GaussianMixture.condition)"] = cond_library


@pytest.mark.parametrize("fn", [cond_right, cond_right_by_precision])
def test_gaussian_conditional_accepts_right_answers(fn):
    assert check("gaussian_conditional", fn)


@pytest.mark.parametrize("wrong", COND_WRONG.values(), ids=COND_WRONG.keys())
def test_gaussian_conditional_rejects_wrong_answers(wrong):
    assert not check("gaussian_conditional", wrong)


def test_gaussian_conditional_rejects_a_single_array():
    assert not check("gaussian_conditional", lambda mean, cov, x_o, observed: cond_right(mean, cov, x_o, observed)[0])


# ------------------------------------------------------------------------------ replace_known


def replace_right(sde, x, x_known, mask, t, z):
    return jnp.where(mask, sde.mean_coefficient(t) * x_known + sde.kernel_std(t) * z, x)


def replace_right_arithmetic(sde, x, x_known, mask, t, z):
    keep = jnp.broadcast_to(mask, x.shape).astype(x.dtype)
    mean, std = sde.marginal(x_known, t)
    return keep * (mean + std * z) + (1 - keep) * x


REPLACE_WRONG = {
    "the companion's own noise (sde.perturb)": lambda sde, x, xk, mask, t, z: jnp.where(
        mask, sde.perturb(jax.random.key(0), xk, t), x),
    "mask inverted": lambda sde, x, xk, mask, t, z: jnp.where(
        mask, x, sde.mean_coefficient(t) * xk + sde.kernel_std(t) * z),
    "no noise": lambda sde, x, xk, mask, t, z: jnp.where(mask, xk, x),
    "variance for std": lambda sde, x, xk, mask, t, z: jnp.where(
        mask, sde.mean_coefficient(t) * xk + sde.kernel_std(t) ** 2 * z, x),
    "mean not scaled": lambda sde, x, xk, mask, t, z: jnp.where(mask, xk + sde.kernel_std(t) * z, x),
    "everything replaced": lambda sde, x, xk, mask, t, z: sde.mean_coefficient(t) * xk + sde.kernel_std(t) * z,
}


@pytest.mark.parametrize("fn", [replace_right, replace_right_arithmetic])
def test_replace_known_accepts_right_answers(fn):
    assert check("replace_known", fn)


@pytest.mark.parametrize("wrong", REPLACE_WRONG.values(), ids=REPLACE_WRONG.keys())
def test_replace_known_rejects_wrong_answers(wrong):
    assert not check("replace_known", wrong)



def test_library_calls_are_refused_kindly(capsys):
    exercises.check("class_probabilities", class_library)
    assert "write it yourself" in capsys.readouterr().out
    assert not check("gaussian_conditional", cond_library)


# --------------------------------------------------------------------------- guided_score


def _logp_y(logits_fn, x, t, y):
    yy = jnp.broadcast_to(jnp.asarray(y), (x.shape[0],))
    return jnp.take_along_axis(jax.nn.log_softmax(logits_fn(x, t), -1), yy[:, None], 1)[:, 0]


def guided_right(score_fn, logits_fn, y, scale):
    def score(x, t):
        grad = jax.grad(lambda x: _logp_y(logits_fn, x, t, y).sum())(x)
        return score_fn(x, t) + scale * grad

    return score


def guided_right_vmap(score_fn, logits_fn, y, scale):  # one sample at a time
    def score(x, t):
        n = x.shape[0]
        yy = jnp.broadcast_to(jnp.asarray(y), (n,))
        tt = jnp.broadcast_to(jnp.asarray(t, x.dtype), (n,))

        def one(xi, ti, yi):
            lp = lambda v: jax.nn.log_softmax(logits_fn(v[None], ti[None])[0])[yi]  # noqa: E731
            return jax.grad(lp)(xi)

        return score_fn(x, t) + scale * jax.vmap(one)(x, tt, yy)

    return score


def _guided(score_fn, logits_fn, y, scale, fn):
    def score(x, t):
        return score_fn(x, t) + scale * jax.grad(lambda x: fn(x, t).sum())(x)

    return score


def guided_library(score_fn, logits_fn, y, scale):
    from companion import conditional

    return conditional.guided_score(score_fn, logits_fn, y, scale)


def _raw_logit(logits_fn, y):
    def f(x, t):
        yy = jnp.broadcast_to(jnp.asarray(y), (x.shape[0],))
        return jnp.take_along_axis(logits_fn(x, t), yy[:, None], 1)[:, 0]

    return f


GUIDED_WRONG = {
    "calls the companion (conditional.guided_score)": guided_library,
    "raw logit, not log softmax": lambda s, l, y, c: _guided(s, l, y, c, _raw_logit(l, y)),
    "probability, not log probability": lambda s, l, y, c: _guided(
        s, l, y, c, lambda x, t: jnp.exp(_logp_y(l, x, t, y))),
    "class 0 always (y ignored)": lambda s, l, y, c: guided_right(s, l, 0, c),
    "scale on the whole score": lambda s, l, y, c: (
        lambda x, t: c * guided_right(s, l, y, 1.0)(x, t)),
    "no unconditional score": lambda s, l, y, c: (
        lambda x, t: guided_right(s, l, y, c)(x, t) - s(x, t)),
}


@pytest.mark.parametrize("fn", [guided_right, guided_right_vmap])
def test_guided_score_accepts_right_answers(fn):
    assert check("guided_score", fn)


@pytest.mark.parametrize("wrong", GUIDED_WRONG.values(), ids=GUIDED_WRONG.keys())
def test_guided_score_rejects_wrong_answers(wrong):
    assert not check("guided_score", wrong)


def test_guided_score_diagnoses_raw_logits(capsys):
    exercises.check("guided_score", GUIDED_WRONG["raw logit, not log softmax"])
    assert "not log probabilities" in capsys.readouterr().out
