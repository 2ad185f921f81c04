"""The fast deterministic samplers of companion.sampling: heun, dpm_solver, euler_ode.

Quality against the two-sample floor is measured in tests/bench_samplers.py and chapter 5;
here: NFE counts, the time grids, and convergence orders against the exact solution of the
probability flow ODE for Gaussian data.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from companion import sampling, toy
from companion import sde as sdes

SDES = [sdes.VP(), sdes.VE(), sdes.SubVP()]
IDS = ["VP", "VE", "SubVP"]


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_time_of_noise_level_inverts_noise_level(sde):
    t = jnp.array([1e-3, 0.01, 0.2, 0.5, 0.9, 1.0])
    back = sampling.time_of_noise_level(sde, sampling.noise_level(sde, t))
    np.testing.assert_allclose(back, t, rtol=1e-4)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_ode_time_grids(sde):
    for spacing in ("logsnr", "karras", "time"):
        ts = sampling.ode_time_grid(sde, 12, eps=1e-3, spacing=spacing)
        assert ts.shape == (13,) and float(ts[0]) == 1.0 and float(ts[-1]) == np.float32(1e-3)
        assert np.all(np.diff(np.asarray(ts)) < 0)
    sig = np.asarray(sampling.noise_level(sde, sampling.ode_time_grid(sde, 12, spacing="logsnr")), np.float64)
    np.testing.assert_allclose(np.diff(np.log(sig)), np.full(12, np.log(sig[-1] / sig[0]) / 12), rtol=2e-3)
    sig = np.asarray(sampling.noise_level(sde, sampling.ode_time_grid(sde, 12, spacing="karras", rho=7.0)), np.float64)
    steps = np.diff(sig ** (1 / 7))
    np.testing.assert_allclose(steps, np.full(12, steps.mean()), rtol=2e-3)


def counting_score():
    """A score of N(0, I) data perturbed by the SDE that counts its calls at run time."""
    calls = []

    def score(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return -x / (SDE_FOR_COUNT.mean_coefficient(t)[:, None] ** 2 + SDE_FOR_COUNT.kernel_std(t)[:, None] ** 2)

    return score, calls


SDE_FOR_COUNT = sdes.VP()


@pytest.mark.parametrize(
    "sampler, kwargs, nfe",
    [
        (sampling.dpm_solver, dict(n_steps=7), 7),
        (sampling.dpm_solver, dict(n_steps=5, order=1), 5),
        (sampling.heun, dict(n_steps=6), 12),
        (sampling.euler_ode, dict(n_steps=9), 9),
    ],
)
def test_nfe_counts_every_score_evaluation(sampler, kwargs, nfe):
    score, calls = counting_score()
    x, reported = sampler(SDE_FOR_COUNT, score, jax.random.key(0), (4, 2), **kwargs)
    jax.block_until_ready(x)
    assert x.shape == (4, 2) and np.all(np.isfinite(x))
    assert reported == nfe == len(calls)


def gaussian_flow_end(sde, xT, mu, c, eps):
    """The exact probability flow from x_T at T to eps for data N(mu, c^2 I).

    In xhat = x / m and sigma = s / m the flow is xhat - mu = (xhat_T - mu) sqrt(c^2 + sigma^2) /
    sqrt(c^2 + sigma_T^2) (chapter 5).
    """
    m_T, m_e = sde.mean_coefficient(1.0), sde.mean_coefficient(eps)
    s_T, s_e = sampling.noise_level(sde, 1.0), sampling.noise_level(sde, eps)
    xhat = mu + (xT / m_T - mu) * jnp.sqrt(c**2 + s_e**2) / jnp.sqrt(c**2 + s_T**2)
    return m_e * xhat


@pytest.mark.parametrize("sde", [sdes.VP(), sdes.VE()], ids=["VP", "VE"])
@pytest.mark.parametrize(
    "sampler, kwargs, order",
    [
        (sampling.euler_ode, {}, 1),
        (sampling.heun, {}, 2),
        (sampling.dpm_solver, dict(order=1), 1),
        (sampling.dpm_solver, dict(order=2), 2),
        (sampling.dpm_solver, dict(order=3), 3),
    ],
    ids=["euler", "heun", "dpm1", "dpm2", "dpm3"],
)
def test_convergence_order_on_gaussian_data(sde, sampler, kwargs, order):
    mu, c = jnp.array([1.0, -0.5]), 0.3
    mix = toy.GaussianMixture([mu], [c**2 * jnp.eye(2)], [1.0])
    score = toy.exact_score(mix, sde)
    key = jax.random.key(1)
    xT = sde.prior_sample(key, (64, 2))  # the samplers draw x_T from the same key
    exact = gaussian_flow_end(sde, xT, mu, c, 1e-3)
    errs = []
    ns = (16, 32) if order < 3 else (8, 16)
    if sampler is sampling.euler_ode:
        ns = (64, 128)  # the uniform grid in t is coarse where sigma is small
    for n in ns:
        x, _ = sampler(sde, score, key, (64, 2), n_steps=n, **kwargs)
        errs.append(float(jnp.max(jnp.abs(x - exact))))
    observed = np.log2(errs[0] / errs[1])
    assert observed > order - 0.4, (errs, observed)


def test_dpm_solver_beats_adaptive_rk_on_the_mixture_at_30_evaluations():
    """A pathwise check of the claim measured in chapter 5: 30 evaluations get within ~0.03
    of the exact flow (RMS over samples, data spread ~2), where Tsit5 at 1e-5 uses > 100."""
    mix = toy.four_gaussians_2d()
    sde = sdes.VP()
    score = toy.exact_score(mix, sde)
    key = jax.random.key(2)
    ref, nfe_ref = sampling.probability_flow(sde, score, key, (1000, 2), rtol=1e-5, atol=1e-5)
    x, nfe = sampling.dpm_solver(sde, score, key, (1000, 2), n_steps=30)
    rms = float(jnp.sqrt(jnp.mean(jnp.sum((x - ref) ** 2, axis=1))))
    assert nfe == 30 and nfe_ref > 3 * nfe
    assert rms < 0.03, rms  # measured 0.014 (tests/bench_samplers.py)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda s: sampling.dpm_solver(sdes.VP(), s, jax.random.key(0), (2, 2), order=4), "order"),
        (lambda s: sampling.dpm_solver(sdes.VP(), s, jax.random.key(0), (2, 2), spacing="cosine"), "spacing"),
        (lambda s: sampling.heun(sdes.VP(), s, jax.random.key(0), (2, 2), n_steps=0), "n_steps"),
        (lambda s: sampling.heun(sdes.VP(), s, jax.random.key(0), (2, 2), rho=-1.0), "rho"),
        (lambda s: sampling.euler_ode(sdes.VP(), s, jax.random.key(0), (2, 2), eps=0.0), "eps"),
        (lambda s: sampling.dpm_solver(sdes.VP(), s, jax.random.key(0), 5), "shape"),
    ],
)
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call(lambda x, t: -x)
