"""The hidden tests of chapter 5 accept right answers and reject plausible wrong ones."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from companion import exercises
from companion.likelihood import exact_divergence


def check(name, fn):
    return exercises.check(name, fn, verbose=False)


# ------------------------------------------------------------------------------ pf_drift


def pf_right(sde, score_fn, x, t):
    return sde.probability_flow_drift(score_fn, x, t)


def pf_right_by_hand(sde, score_fn, x, t):
    g2 = sde.diffusion(t) ** 2
    return sde.drift(x, t) - g2[:, None] * score_fn(x, t) / 2


PF_WRONG = {
    "reverse-SDE drift (no 1/2)": lambda sde, s, x, t: sde.reverse_drift(s, x, t),
    "plus the score term": lambda sde, s, x, t: sde.drift(x, t) + 0.5 * sde.diffusion(t)[:, None] ** 2 * s(x, t),
    "g instead of g^2": lambda sde, s, x, t: sde.drift(x, t) - 0.5 * sde.diffusion(t)[:, None] * s(x, t),
    "no forward drift f": lambda sde, s, x, t: -0.5 * sde.diffusion(t)[:, None] ** 2 * s(x, t),
}


@pytest.mark.parametrize("fn", [pf_right, pf_right_by_hand])
def test_pf_drift_accepts_right_answers(fn):
    assert check("pf_drift", fn)


@pytest.mark.parametrize("wrong", PF_WRONG.values(), ids=PF_WRONG.keys())
def test_pf_drift_rejects_wrong_answers(wrong):
    assert not check("pf_drift", wrong)


# ------------------------------------------------------------------------------ divergence


def div_right_jvp(fn, x):
    d = x.shape[1]
    total = 0.0
    for j in range(d):
        e = jnp.zeros_like(x).at[:, j].set(1.0)
        total = total + jax.jvp(fn, (x,), (e,))[1][:, j]
    return total


DIV_WRONG = {
    "sum of all Jacobian entries": lambda fn, x: jax.vmap(
        lambda xi: jnp.sum(jax.jacfwd(lambda y: fn(y[None])[0])(xi)))(x),
    "trace of the whole-batch Jacobian, shared": lambda fn, x: jnp.full(
        x.shape[0], jnp.trace(jax.jacfwd(lambda y: fn(y).ravel())(x).reshape(x.size, x.size)) / x.shape[0]),
    "diagonal not summed": lambda fn, x: jax.vmap(
        lambda xi: jnp.diag(jax.jacfwd(lambda y: fn(y[None])[0])(xi)))(x),
    "sum of the outputs": lambda fn, x: jnp.sum(fn(x), axis=1),
}


@pytest.mark.parametrize("fn", [div_right_jvp, exact_divergence])
def test_divergence_accepts_right_answers(fn):
    assert check("divergence", fn)


@pytest.mark.parametrize("wrong", DIV_WRONG.values(), ids=DIV_WRONG.keys())
def test_divergence_rejects_wrong_answers(wrong):
    assert not check("divergence", wrong)


# ------------------------------------------------------------------------------ bits_per_dim


def bpd_right(log_p, n_dims, n_levels, data_range):
    lo, hi = data_range
    log_prob_bins = log_p + n_dims * np.log((hi - lo) / n_levels)
    return -log_prob_bins / n_dims / np.log(2.0)


def _bpd(log_p, D, K, r, *, jac_sign=1.0, base=math.log(2), per_dim=True):
    lo, hi = r
    out = -(log_p + jac_sign * D * math.log((hi - lo) / K)) / base
    return out / D if per_dim else out


BPD_WRONG = {
    "nats, not bits": lambda lp, D, K, r: _bpd(lp, D, K, r, base=1.0),
    "no bin-width term": lambda lp, D, K, r: -lp / (D * math.log(2)),
    "bin-width term with the wrong sign": lambda lp, D, K, r: _bpd(lp, D, K, r, jac_sign=-1.0),
    "not divided by the dimension": lambda lp, D, K, r: _bpd(lp, D, K, r, per_dim=False),
    "log10": lambda lp, D, K, r: _bpd(lp, D, K, r, base=math.log(10)),
}


def test_bits_per_dim_accepts_right_answers():
    assert check("bits_per_dim", bpd_right)


@pytest.mark.parametrize("wrong", BPD_WRONG.values(), ids=BPD_WRONG.keys())
def test_bits_per_dim_rejects_wrong_answers(wrong):
    assert not check("bits_per_dim", wrong)
