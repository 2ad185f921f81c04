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
    mine = ["class_probabilities", "conditional_weights", "replace_known", "guided_score"]
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


def class_right_shifted(sde, x, t, means, variances, weights):
    """Log densities, the largest subtracted before exp: log-sum-exp by hand."""
    mu, var = _perturbed(sde, t, means, variances)
    logs = jnp.log(weights) - 0.5 * jnp.sum((x[:, None, :] - mu[None]) ** 2, -1) / var
    logs = logs - 0.5 * x.shape[1] * jnp.log(2 * jnp.pi * var)
    e = jnp.exp(logs - logs.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def class_naive_exp(sde, x, t, means, variances, weights):
    """Densities, then normalise: 0/0 where every density underflows."""
    mu, var = _perturbed(sde, t, means, variances)
    d = x.shape[1]
    dens = weights * jnp.exp(-0.5 * jnp.sum((x[:, None, :] - mu[None]) ** 2, -1) / var) / (2 * jnp.pi * var) ** (d / 2)
    return dens / dens.sum(axis=1, keepdims=True)


def class_naive_exp_guarded(sde, x, t, means, variances, weights):
    """Densities, normalised with a guard against 0/0: rows of zeros far from the modes."""
    mu, var = _perturbed(sde, t, means, variances)
    d = x.shape[1]
    dens = weights * jnp.exp(-0.5 * jnp.sum((x[:, None, :] - mu[None]) ** 2, -1) / var) / (2 * jnp.pi * var) ** (d / 2)
    return dens / (dens.sum(axis=1, keepdims=True) + 1e-30)


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


# each known wrong answer, and the words its message must contain (None: no diagnosis)
CLASS_WRONG = {
    "the clean-data classifier (no kernel noise)": (
        _class_wrong(scale_mean=False, scale_var=False, noise=False), "clean data"),
    "means not scaled by a(t)": (_class_wrong(scale_mean=False), "means are not scaled"),
    "variances not scaled by a(t)^2": (_class_wrong(scale_var=False), "variances are not scaled"),
    "no normalising factor": (_class_wrong(drop_norm=True), "normalising factor"),
    "no weights": (_class_wrong(drop_weights=True), "weights pi_k are missing"),
    "not normalised over classes": (_class_wrong(no_softmax=True), "not normalised over k"),
    "normalised outside log space (naive exp)": (class_naive_exp, "log-sum-exp"),
    "naive exp with a guard against 0/0": (class_naive_exp_guarded, "log-sum-exp"),
    "calls the companion (GaussianMixture.perturbed.responsibilities)": (class_library, "write it yourself"),
}


@pytest.mark.parametrize("fn", [class_right, class_right_shifted])
def test_class_probabilities_accepts_right_answers(fn):
    assert check("class_probabilities", fn)


@pytest.mark.parametrize("name", CLASS_WRONG, ids=list(CLASS_WRONG))
def test_class_probabilities_rejects_and_names_wrong_answers(name, capsys):
    wrong, words = CLASS_WRONG[name]
    assert not exercises.check("class_probabilities", wrong)
    if words:
        assert words in capsys.readouterr().out


# ------------------------------------------------------------------------ conditional_weights


def _log_marginal(mean, cov, x_o, o):
    block = cov[np.ix_(o, o)]
    diff = x_o - mean[o]
    quad = jnp.sum(diff * jnp.linalg.solve(block, diff.T).T, axis=1)
    return -0.5 * quad - 0.5 * jnp.linalg.slogdet(2 * jnp.pi * block)[1]


def weights_right(means, covs, weights, x_o, observed):
    o = np.asarray(observed)
    logs = jnp.stack([jnp.log(w) + _log_marginal(m, c, x_o, o) for m, c, w in zip(means, covs, weights)], 1)
    return jax.nn.softmax(logs, axis=1)


def weights_right_by_logsumexp(means, covs, weights, x_o, observed):
    """jax.scipy's logpdf (allowed: a building block) and an explicit log-sum-exp."""
    from jax.scipy.special import logsumexp
    from jax.scipy.stats import multivariate_normal

    o = list(observed)
    logs = jnp.stack([jnp.log(weights[k]) + multivariate_normal.logpdf(x_o, means[k][jnp.array(o)],
                                                                         covs[k][jnp.ix_(jnp.array(o), jnp.array(o))])
                      for k in range(means.shape[0])], axis=1)
    return jnp.exp(logs - logsumexp(logs, axis=1, keepdims=True))


def _weights_wrong(kind):
    def fn(means, covs, weights, x_o, observed):
        o = np.asarray(observed)
        if kind == "sorted (a mask)":
            o = np.flatnonzero(np.isin(np.arange(means.shape[1]), o))
        logs = []
        for m, c, w in zip(means, covs, weights):
            if kind == "precision block":
                prec = jnp.linalg.inv(c)[np.ix_(o, o)]
                diff = x_o - m[o]
                val = -0.5 * jnp.sum(diff * (diff @ prec), 1) + 0.5 * jnp.linalg.slogdet(prec / (2 * jnp.pi))[1]
            elif kind == "no normalising factor":
                diff = x_o - m[o]
                val = -0.5 * jnp.sum(diff * jnp.linalg.solve(c[np.ix_(o, o)], diff.T).T, 1)
            elif kind in ("unobserved set to zero", "unobserved set to the mean"):
                full = (jnp.zeros((x_o.shape[0], m.shape[0])) if kind.endswith("zero")
                        else jnp.broadcast_to(m, (x_o.shape[0], m.shape[0])))
                full = full.at[:, o].set(x_o)
                val = _log_marginal(m, c, full, np.arange(m.shape[0]))
            else:
                val = _log_marginal(m, c, x_o, o)
            logs.append(val + (0.0 if kind == "no weights" else jnp.log(w)))
        logs = jnp.stack(logs, axis=1)
        if kind == "prior weights":
            return jnp.broadcast_to(weights, logs.shape)
        if kind == "naive exp":
            dens = jnp.exp(logs)
            return dens / dens.sum(axis=1, keepdims=True)
        return jax.nn.softmax(logs, axis=1)

    return fn


def weights_library(means, covs, weights, x_o, observed):
    mix = toy.GaussianMixture(means, covs, weights)
    return jnp.stack([mix.condition(x, observed).weights for x in x_o])


# each known wrong answer, and the words its message must contain (None: rejected, no diagnosis)
WEIGHTS_WRONG = {
    "sorted (a mask)": "order of `observed`",
    "precision block": "block of the inverse covariance",
    "no normalising factor": "normalising factor",
    "no weights": "weights pi_k are missing",
    "prior weights": "prior weights",
    "unobserved set to zero": "integrated out",
    "unobserved set to the mean": "integrated out",
    "naive exp": "log-sum-exp",
}


@pytest.mark.parametrize("fn", [weights_right, weights_right_by_logsumexp])
def test_conditional_weights_accepts_right_answers(fn):
    assert check("conditional_weights", fn)


@pytest.mark.parametrize("kind", WEIGHTS_WRONG, ids=list(WEIGHTS_WRONG))
def test_conditional_weights_rejects_and_names_wrong_answers(kind, capsys):
    assert not exercises.check("conditional_weights", _weights_wrong(kind))
    assert WEIGHTS_WRONG[kind] in capsys.readouterr().out


def test_conditional_weights_refuses_the_companion(capsys):
    assert not exercises.check("conditional_weights", weights_library)
    assert "write it yourself" in capsys.readouterr().out


# ------------------------------------------------------------------------------ replace_known


def replace_right(sde, x, x_o, observed, t, z):
    return x.at[:, jnp.asarray(observed)].set(sde.mean_coefficient(t) * x_o + sde.kernel_std(t) * z)


def replace_right_by_columns(sde, x, x_o, observed, t, z):
    mean, std = sde.marginal(x_o, t)
    cols = [x[:, i] for i in range(x.shape[1])]
    for j, i in enumerate(observed):
        cols[i] = mean[:, j] + std * z[:, j]
    return jnp.stack(cols, axis=1)


def _replace_wrong(values, sort=False):
    def fn(sde, x, x_o, observed, t, z):
        a, b = sde.mean_coefficient(t), sde.kernel_std(t)
        o = np.asarray(observed)
        if sort:  # a boolean mask: its True entries come in increasing order
            o = np.flatnonzero(np.isin(np.arange(x.shape[1]), o))
        return x.at[:, o].set(values(a, b, x_o, z))

    return fn


# each known wrong answer, and the words its message must contain (None: rejected, no diagnosis)
REPLACE_WRONG = {
    "mask order (sorted coordinates)": (_replace_wrong(lambda a, b, x_o, z: a * x_o + b * z, sort=True),
                                        "in increasing order"),
    "no noise": (_replace_wrong(lambda a, b, x_o, z: x_o), "put back as they are"),
    "mean not scaled": (_replace_wrong(lambda a, b, x_o, z: x_o + b * z), "mean coefficient a(t)"),
    "variance for std": (_replace_wrong(lambda a, b, x_o, z: a * x_o + b**2 * z), "variance b(t)^2"),
    "noise missing, mean scaled": (_replace_wrong(lambda a, b, x_o, z: a * x_o), "noise is missing"),
    "a and b swapped": (_replace_wrong(lambda a, b, x_o, z: b * x_o + a * z), "swapped"),
    "nothing replaced": (lambda sde, x, x_o, observed, t, z: x, "unchanged"),
    "the companion's own noise (sde.perturb)": (
        lambda sde, x, x_o, observed, t, z: x.at[:, jnp.asarray(observed)].set(
            sde.perturb(jax.random.key(0), x_o, t)[0]), None),
}


@pytest.mark.parametrize("fn", [replace_right, replace_right_by_columns])
def test_replace_known_accepts_right_answers(fn):
    assert check("replace_known", fn)


@pytest.mark.parametrize("name", REPLACE_WRONG, ids=list(REPLACE_WRONG))
def test_replace_known_rejects_and_names_wrong_answers(name, capsys):
    wrong, words = REPLACE_WRONG[name]
    assert not exercises.check("replace_known", wrong)
    if words:
        assert words in capsys.readouterr().out


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


# each known wrong answer, and the words its message must contain (None: no diagnosis)
GUIDED_WRONG = {
    "calls the companion (conditional.guided_score)": (guided_library, "write it yourself"),
    "raw logit, not log softmax": (lambda s, l, y, c: _guided(s, l, y, c, _raw_logit(l, y)),
                                   "not log probabilities"),
    "probability, not log probability": (lambda s, l, y, c: _guided(
        s, l, y, c, lambda x, t: jnp.exp(_logp_y(l, x, t, y))), "takes its logarithm"),
    "class 0 always (y ignored)": (lambda s, l, y, c: guided_right(s, l, 0, c), "towards class 0"),
    "scale on the whole score": (lambda s, l, y, c: (
        lambda x, t: c * guided_right(s, l, y, 1.0)(x, t)), "multiplies the unconditional score too"),
    "no unconditional score": (lambda s, l, y, c: (
        lambda x, t: guided_right(s, l, y, c)(x, t) - s(x, t)), "unconditional score is missing"),
}


@pytest.mark.parametrize("fn", [guided_right, guided_right_vmap])
def test_guided_score_accepts_right_answers(fn):
    assert check("guided_score", fn)


@pytest.mark.parametrize("name", GUIDED_WRONG, ids=list(GUIDED_WRONG))
def test_guided_score_rejects_and_names_wrong_answers(name, capsys):
    wrong, words = GUIDED_WRONG[name]
    assert not exercises.check("guided_score", wrong)
    if words:
        assert words in capsys.readouterr().out


def test_hints_name_equations_in_words():
    """A reader sees the hints: no raw MyST equation label like ``eq-guidance``."""
    import re

    for name in ("class_probabilities", "conditional_weights", "replace_known", "guided_score"):
        ex = exercises.get(name)
        for text in (ex.hint, ex.hint2):
            assert text and not re.search(r"\beq-[a-z]", text), (name, text)
