"""The hidden tests of chapter 5 accept right answers and reject plausible wrong ones."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from companion import exercises
from companion.divergence import exact_divergence


def check(name, fn):
    return exercises.check(name, fn, verbose=False)


# ------------------------------------------------------------------------------ pf_drift


def pf_right(sde, score_fn, x, t):
    return sde.probability_flow_drift(score_fn, x, t)


def pf_right_by_hand(sde, score_fn, x, t):
    g2 = sde.diffusion(t) ** 2
    return sde.drift(x, t) - g2[:, None] * score_fn(x, t) / 2


PF_WRONG = {
    "calls the companion (probability_flow_drift)": pf_right,
    "reverse-SDE drift (no 1/2)": lambda sde, s, x, t: sde.reverse_drift(s, x, t),
    "plus the score term": lambda sde, s, x, t: sde.drift(x, t) + 0.5 * sde.diffusion(t)[:, None] ** 2 * s(x, t),
    "g instead of g^2": lambda sde, s, x, t: sde.drift(x, t) - 0.5 * sde.diffusion(t)[:, None] * s(x, t),
    "no forward drift f": lambda sde, s, x, t: -0.5 * sde.diffusion(t)[:, None] ** 2 * s(x, t),
}


@pytest.mark.parametrize("fn", [pf_right_by_hand])
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
    "calls the companion (divergence.exact_divergence)": exact_divergence,
    "sum of all Jacobian entries": lambda fn, x: jax.vmap(
        lambda xi: jnp.sum(jax.jacfwd(lambda y: fn(y[None])[0])(xi)))(x),
    "trace of the whole-batch Jacobian, shared": lambda fn, x: jnp.full(
        x.shape[0], jnp.trace(jax.jacfwd(lambda y: fn(y).ravel())(x).reshape(x.size, x.size)) / x.shape[0]),
    "diagonal not summed": lambda fn, x: jax.vmap(
        lambda xi: jnp.diag(jax.jacfwd(lambda y: fn(y[None])[0])(xi)))(x),
    "sum of the outputs": lambda fn, x: jnp.sum(fn(x), axis=1),
}


@pytest.mark.parametrize("fn", [div_right_jvp])
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


def bpd_library(log_p, n_dims, n_levels, data_range):
    from companion import likelihood

    return likelihood.nats_to_bits_per_dim(log_p, n_dims, n_levels=n_levels, data_range=data_range)


BPD_WRONG = {
    "calls the companion (nats_to_bits_per_dim)": bpd_library,
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


# ------------------------------------------------------------------------ log_density_ode


def _per_sample_div(velocity, x, t):
    n, dims = x.shape[0], x.shape[1:]
    D = int(np.prod(dims))
    tb = jnp.broadcast_to(jnp.asarray(t), (n,))

    def one(xi, ti):
        f = lambda y: velocity(y.reshape((1,) + dims), ti[None]).reshape(D)  # noqa: E731
        return jnp.trace(jax.jacfwd(f)(xi.reshape(D)))

    return jax.vmap(one)(x, tb)


def aug_right(velocity, x, t):
    return velocity(x, t), -_per_sample_div(velocity, x, t)


def aug_right_jvp(velocity, x, t):  # one JVP per coordinate, on the flattened batch
    n, D = x.shape[0], int(np.prod(x.shape[1:]))
    flat = lambda y: velocity(y.reshape(x.shape), t).reshape(n, D)  # noqa: E731
    eye = jnp.eye(D, dtype=x.dtype)
    cols = [jax.jvp(flat, (x.reshape(n, D),), (jnp.broadcast_to(eye[j], (n, D)),))[1][:, j]
            for j in range(D)]
    return velocity(x, t), -sum(cols)


def aug_library(velocity, x, t):
    return velocity(x, t), -exact_divergence(lambda y: velocity(y, t), x)


def aug_whole_batch_trace(velocity, x, t):  # trace of the batch function's Jacobian
    flat = lambda y: velocity(y.reshape(x.shape), t).reshape(-1)  # noqa: E731
    return velocity(x, t), -jnp.trace(jax.jacfwd(flat)(x.reshape(-1)))


AUG_WRONG = {
    "calls the companion (divergence.exact_divergence)": aug_library,
    "plus the divergence (sign)": lambda v, x, t: (v(x, t), _per_sample_div(v, x, t)),
    "trace over the whole batch": aug_whole_batch_trace,
    "minus the sum of the velocity": lambda v, x, t: (
        v(x, t), -v(x, t).reshape(x.shape[0], -1).sum(1)),
    "first coordinate's derivative only (2-D thinking)": lambda v, x, t: (
        v(x, t), -_per_sample_div(v, x, t) * 0 - jax.vmap(
            lambda xi, ti: jax.grad(lambda y: v(y[None], ti[None]).reshape(-1)[0])(xi)
            .reshape(-1)[0])(x, jnp.broadcast_to(jnp.asarray(t), (x.shape[0],)))),
}


@pytest.mark.parametrize("fn", [aug_right, aug_right_jvp])
def test_log_density_ode_accepts_right_answers(fn):
    assert check("log_density_ode", fn)


@pytest.mark.parametrize("wrong", AUG_WRONG.values(), ids=AUG_WRONG.keys())
def test_log_density_ode_rejects_wrong_answers(wrong):
    assert not check("log_density_ode", wrong)


def test_log_density_ode_diagnoses(capsys):
    exercises.check("log_density_ode", AUG_WRONG["plus the divergence (sign)"])
    assert "wrong sign" in capsys.readouterr().out
    exercises.check("log_density_ode", aug_library)
    assert "write it yourself" in capsys.readouterr().out
