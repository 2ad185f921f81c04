"""The hidden tests of chapter 7 accept right answers and reject plausible wrong ones."""

import jax
import jax.numpy as jnp
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


DEQ_WRONG = {
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


@pytest.mark.parametrize("fn", [gauss_right, gauss_right_scipy])
def test_gaussian_log_prob_accepts_right_answers(fn):
    assert check("gaussian_log_prob", fn)


@pytest.mark.parametrize("wrong", GAUSS_WRONG.values(), ids=GAUSS_WRONG.keys())
def test_gaussian_log_prob_rejects_wrong_answers(wrong):
    assert not check("gaussian_log_prob", wrong)
