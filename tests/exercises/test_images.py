"""The hidden tests of chapter 7 accept right answers and reject plausible wrong ones."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from companion import exercises


def check(name, fn):
    return exercises.check(name, fn, verbose=False)


def test_the_chapter_7_exercises_are_registered_in_order():
    mine = ["dequantize", "gaussian_log_prob"]
    assert [n for n in exercises.names() if n in mine] == mine
    assert exercises.names().index("replace_known") < exercises.names().index("dequantize")


# -------------------------------------------------------------------------------- dequantize


def deq_right(levels, u, n_levels):
    return -1.0 + 2.0 * (levels + u) / n_levels


def deq_right_two_steps(levels, u, n_levels):
    unit = (levels.astype(jnp.float32) + u) / n_levels  # in [0, 1)
    return 2 * unit - 1


def deq_library(levels, u, n_levels):  # bin centres from the companion, shifted by the noise
    from companion import data

    return data.scale(levels, n_levels) + 2.0 * (u - 0.5) / n_levels


DEQ_WRONG = {
    "calls the companion (data.scale)": deq_library,
    "no noise": lambda v, u, L: -1.0 + 2.0 * v / L,
    "range [0, 1)": lambda v, u, L: (v + u) / L,
    "divided by L - 1": lambda v, u, L: -1.0 + 2.0 * (v + u) / (L - 1),
    "noise not scaled": lambda v, u, L: -1.0 + 2.0 * v / L + u,
}


@pytest.mark.parametrize("fn", [deq_right, deq_right_two_steps])
def test_dequantize_accepts_right_answers(fn):
    assert check("dequantize", fn)


@pytest.mark.parametrize("wrong", DEQ_WRONG.values(), ids=DEQ_WRONG.keys())
def test_dequantize_rejects_wrong_answers(wrong):
    assert not check("dequantize", wrong)


# -------------------------------------------------------------------------- gaussian_log_prob


def gauss_right(x, mean, cov):
    chol = jnp.linalg.cholesky(cov)
    z = jax.scipy.linalg.solve_triangular(chol, (x - mean).T, lower=True).T
    return -0.5 * jnp.sum(z**2, 1) - jnp.sum(jnp.log(jnp.diag(chol))) - 0.5 * x.shape[1] * jnp.log(2 * jnp.pi)


def gauss_right_scipy(x, mean, cov):
    return jax.scipy.stats.multivariate_normal.logpdf(x, mean, cov)


def _gauss_wrong(kind):
    def fn(x, mean, cov):
        diff = x - mean
        quad = jnp.sum(diff * jnp.linalg.solve(cov, diff.T).T, axis=1)
        logdet = jnp.linalg.slogdet(cov)[1]
        c = 0.5 * x.shape[1] * jnp.log(2 * jnp.pi)
        if kind == "full log det":
            return -0.5 * quad - logdet - c
        if kind == "no 2 pi":
            return -0.5 * quad - 0.5 * logdet
        if kind == "no half on the quadratic form":
            return -quad - 0.5 * logdet - c
        if kind == "covariance, not its inverse":
            return -0.5 * jnp.sum(diff * (cov @ diff.T).T, axis=1) - 0.5 * logdet - c
        if kind == "diagonal only":
            v = jnp.diag(cov)
            return -0.5 * jnp.sum(diff**2 / v, 1) - 0.5 * jnp.sum(jnp.log(v)) - c
        raise AssertionError(kind)

    return fn


GAUSS_WRONG = {k: _gauss_wrong(k) for k in (
    "full log det", "no 2 pi", "no half on the quadratic form", "covariance, not its inverse", "diagonal only")}


def gauss_with_inverse(x, mean, cov):  # right value, but forms the inverse
    diff = x - mean
    quad = jnp.sum(diff * (jnp.linalg.inv(cov) @ diff.T).T, axis=1)
    return -0.5 * quad - 0.5 * jnp.linalg.slogdet(cov)[1] - 0.5 * x.shape[1] * jnp.log(2 * jnp.pi)


GAUSS_WRONG["jax.scipy's logpdf (a library call)"] = gauss_right_scipy
GAUSS_WRONG["explicit inverse covariance"] = gauss_with_inverse


@pytest.mark.parametrize("fn", [gauss_right])
def test_gaussian_log_prob_accepts_right_answers(fn):
    assert check("gaussian_log_prob", fn)


@pytest.mark.parametrize("wrong", GAUSS_WRONG.values(), ids=GAUSS_WRONG.keys())
def test_gaussian_log_prob_rejects_wrong_answers(wrong):
    assert not check("gaussian_log_prob", wrong)


def test_library_calls_are_refused_kindly(capsys):
    exercises.check("gaussian_log_prob", gauss_right_scipy)
    assert "write it yourself" in capsys.readouterr().out


# ------------------------------------------------------------------------- histogram_bits


def _probs(train, L, alpha, *, denom_levels=True):
    tr = np.asarray(train).reshape(len(train), -1)
    counts = np.stack([(tr == v).sum(0) for v in range(L)], -1)
    return (counts + alpha) / (len(tr) + (alpha * L if denom_levels else alpha))


def _bits(probs, test, *, base=np.log(2.0), per_dim=True):
    te = np.asarray(test).reshape(len(test), -1)
    with np.errstate(divide="ignore"):  # a wrong answer without smoothing has zeros: -inf bits
        logp = np.log(probs[np.arange(te.shape[1]), te]).sum(1)
    return -logp / base / (te.shape[1] if per_dim else 1)


def hist_right(train, test, L, alpha):
    return _bits(_probs(train, L, alpha), test)


def hist_right_jnp(train, test, L, alpha):  # one-hot counts in JAX, float32
    tr = jax.nn.one_hot(jnp.asarray(train).reshape(len(train), -1), L)
    probs = (tr.sum(0) + alpha) / (tr.shape[0] + alpha * L)
    te = jax.nn.one_hot(jnp.asarray(test).reshape(len(test), -1), L)
    return -jnp.sum(te * jnp.log2(probs), axis=(1, 2)) / te.shape[1]


def hist_library(train, test, L, alpha):
    from companion import data

    return data.categorical_mixture_bits(np.ones(1), data.pixel_histogram(train, L, alpha=alpha)[None],
                                         test, L)


def hist_shared(train, test, L, alpha):  # one histogram for all pixels
    tr = np.asarray(train).reshape(-1)
    p = (np.bincount(tr, minlength=L) + alpha) / (tr.size + alpha * L)
    te = np.asarray(test).reshape(len(test), -1)
    return -np.log2(p[te]).sum(1) / te.shape[1]


HIST_WRONG = {
    "calls the companion (data.pixel_histogram)": hist_library,
    "no smoothing": lambda tr, te, L, a: _bits(_probs(tr, L, 0.0), te),
    "nats, not bits": lambda tr, te, L, a: _bits(_probs(tr, L, a), te, base=1.0),
    "not divided by the number of pixels": lambda tr, te, L, a: _bits(_probs(tr, L, a), te,
                                                                      per_dim=False),
    "one histogram shared by all pixels": hist_shared,
    "smoothing not normalised (n + alpha)": lambda tr, te, L, a: _bits(
        _probs(tr, L, a, denom_levels=False), te),
}


@pytest.mark.parametrize("fn", [hist_right, hist_right_jnp])
def test_histogram_bits_accepts_right_answers(fn):
    assert check("histogram_bits", fn)


@pytest.mark.parametrize("wrong", HIST_WRONG.values(), ids=HIST_WRONG.keys())
def test_histogram_bits_rejects_wrong_answers(wrong):
    assert not check("histogram_bits", wrong)


def test_histogram_bits_diagnoses(capsys):
    exercises.check("histogram_bits", HIST_WRONG["nats, not bits"])
    assert "factor close to 0.693" in capsys.readouterr().out
    exercises.check("histogram_bits", HIST_WRONG["no smoothing"])
    assert "positive probability" in capsys.readouterr().out
