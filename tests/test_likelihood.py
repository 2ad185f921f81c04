"""companion.likelihood: log p against analytic mixture densities, bits per dim."""

import math

import diffrax
import jax
import jax.numpy as jnp
from jax.experimental import io_callback
import numpy as np
import pytest

from companion import likelihood, toy
from companion import sde as sdes

@pytest.mark.parametrize("sde", [sdes.VP(), sdes.SubVP()], ids=["VP", "SubVP"])
def test_log_prob_matches_the_analytic_mixture_density(sde):
    mix = toy.four_gaussians_2d()
    eps = 1e-3
    x = mix.sample(jax.random.key(4), 64)
    logp, stats = likelihood.log_prob(sde, toy.exact_score(mix, sde), x, eps=eps, return_stats=True)
    exact = mix.perturbed(sde, eps).log_prob(x)
    err = np.abs(np.asarray(logp - exact))
    # ODE solved to rtol = atol = 1e-5; float32 adds ~1e-5 per step; measured max 1e-3
    assert err.max() < 3e-3 and err.mean() < 5e-4, (err.max(), err.mean())
    assert stats["nfe"].shape == (64,) and np.all(stats["nfe"] > 20)


def test_log_prob_in_one_dimension_and_with_hutchinson():
    mix = toy.two_gaussians_1d()
    sde = sdes.VP()
    x = jnp.linspace(-4.0, 3.5, 16)[:, None]
    exact = mix.perturbed(sde, 1e-3).log_prob(x)
    score = toy.exact_score(mix, sde)
    p_T = mix.perturbed(sde, sde.T).log_prob
    # with the exact p_T at the end, only the ODE solve's error remains
    np.testing.assert_allclose(likelihood.log_prob(sde, score, x, eps=1e-3, prior_log_prob=p_T), exact, atol=1e-3)
    # in 1-D a Rademacher probe is exact: v^2 = 1
    np.testing.assert_allclose(
        likelihood.log_prob(sde, score, x, eps=1e-3, key=jax.random.key(0), prior_log_prob=p_T), exact, atol=1e-3)
    # with the N(0, 1) prior: p_T has mean m(T) E[x0] = 0.0066 * 0.8, an error ~ 0.005 |x_T| (docstring)
    err = np.abs(np.asarray(likelihood.log_prob(sde, score, x, eps=1e-3) - exact))
    assert 3e-3 < err.max() < 3e-2


def test_hutchinson_log_prob_is_unbiased_in_two_dimensions():
    mix = toy.four_gaussians_2d()
    sde = sdes.VP()
    x = jnp.tile(mix.sample(jax.random.key(5), 2), (200, 1))  # 2 points, 200 probes each
    est = likelihood.log_prob(sde, toy.exact_score(mix, sde), x, eps=1e-3, key=jax.random.key(1), probe="gaussian")
    est = np.asarray(est).reshape(200, 2)
    exact = np.asarray(mix.perturbed(sde, 1e-3).log_prob(x[:2]))
    se = est.std(axis=0) / np.sqrt(200)
    assert np.all(np.abs(est.mean(axis=0) - exact) < 4 * se + 2e-3)
    assert np.all(est.std(axis=0) > 1e-3)  # Gaussian probes do add noise


def test_bits_per_dim_of_dequantised_data():
    mix = toy.four_gaussians_2d()
    sde = sdes.VP()
    n_levels, lo, hi = 64, -4.0, 4.0
    x = mix.sample(jax.random.key(6), 32)
    xd = jnp.clip(jnp.floor((x - lo) / (hi - lo) * n_levels), 0, n_levels - 1).astype(jnp.int32)
    bpd = likelihood.bits_per_dim(sde, toy.exact_score(mix, sde), xd, n_levels=n_levels, data_range=(lo, hi),
                                  eps=1e-3, dequantize_key=jax.random.key(7))
    # the same dequantised points through the analytic density
    u = (xd + jax.random.uniform(jax.random.key(7), xd.shape)) / n_levels
    y = lo + (hi - lo) * u
    want = -(mix.perturbed(sde, 1e-3).log_prob(y) + 2 * math.log((hi - lo) / n_levels)) / (2 * math.log(2))
    np.testing.assert_allclose(bpd, want, atol=3e-3)
    assert 3.0 < float(jnp.mean(bpd)) < 5.0  # a density spread over ~ 2^4 of the 64 bins per axis


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(x_discrete=jnp.array([[0.5, 1.0]])), "x_discrete"),
        (dict(x_discrete=jnp.array([[0, 70]])), "x_discrete"),
        (dict(n_levels=1), "n_levels"),
        (dict(data_range=(1.0, -1.0)), "data_range"),
    ],
)
def test_bits_per_dim_checks_its_arguments(kwargs, match):
    args = dict(x_discrete=jnp.array([[0, 3]]), n_levels=64)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        likelihood.bits_per_dim(sdes.VP(), lambda x, t: -x, args.pop("x_discrete"), **args)


def test_log_prob_checks_its_arguments():
    with pytest.raises(ValueError, match="eps"):
        likelihood.log_prob(sdes.VP(), lambda x, t: -x, jnp.ones((2, 2)), eps=0.0)
    with pytest.raises(TypeError, match="sde"):
        likelihood.log_prob("VP", lambda x, t: -x, jnp.ones((2, 2)))
    with pytest.raises(ValueError, match="n_probes"):
        likelihood.log_prob(sdes.VP(), lambda x, t: -x, jnp.ones((2, 2)), key=jax.random.key(0), n_probes=0)


@pytest.mark.parametrize("solver", [diffrax.Tsit5(), diffrax.Bosh3(), diffrax.Heun(), diffrax.Euler()],
                         ids=lambda s: type(s).__name__)
def test_solver_nfe_counts_the_evaluations_of_the_solver_passed(solver):
    calls = [0]

    def bump(t):
        calls[0] += 1
        return np.zeros((), np.float32)

    def field(t, y, args):
        return -y * jnp.sin(5 * t) + io_callback(bump, jax.ShapeDtypeStruct((), jnp.float32), t, ordered=True)

    adaptive = not isinstance(solver, diffrax.Euler)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field), solver, 0.0, 3.0, None if adaptive else 0.01, jnp.ones(()),
        stepsize_controller=diffrax.PIDController(rtol=1e-4, atol=1e-4) if adaptive else diffrax.ConstantStepSize(),
        max_steps=4096)
    assert likelihood.solver_nfe(solver, int(sol.stats["num_steps"])) == calls[0]


def test_log_prob_reports_the_nfe_of_its_solver():
    mix, sde = toy.two_gaussians_1d(), sdes.VP()
    x = jnp.linspace(-3.0, 3.0, 4)[:, None]
    for solver in (diffrax.Tsit5(), diffrax.Bosh3()):
        _, stats = likelihood.log_prob(sde, toy.exact_score(mix, sde), x, eps=1e-3, solver=solver,
                                       rtol=1e-4, atol=1e-4, return_stats=True)
        np.testing.assert_array_equal(stats["nfe"], likelihood.solver_nfe(solver, stats["num_steps"]))
    with pytest.raises(TypeError, match="solver"):
        likelihood.solver_nfe(diffrax.ReversibleHeun(), 3)


def _gaussian_bound_and_truth(sde, eps, mu, sig, x):
    """-log p(x) of the reverse-SDE model with the exact score and exact prior of N(mu, sig^2) data,
    and the slack KL(q(x_eps | x) || p(x_eps | x)) of its bound (both in closed form)."""
    m, s = float(sde.mean_coefficient(eps)), float(sde.kernel_std(eps))
    var = sig**2 + 2 * s**2 / m**2  # p_eps pushed through the decoder N(x_eps / m, s^2 / m^2)
    nll = 0.5 * np.log(2 * np.pi * var) + 0.5 * (x - mu) ** 2 / var
    a, A = m * mu, m**2 * sig**2 + s**2  # p_eps = N(a, A); the decoder as a function of x_eps: N(m x, s^2)
    post_v = 1 / (1 / A + 1 / s**2)
    post_m = post_v * (a / A + m * x / s**2)
    kl = 0.5 * (np.log(post_v / s**2) + (s**2 + (m * x - post_m) ** 2) / post_v - 1)
    return nll, kl


@pytest.mark.parametrize("sde, eps", [(sdes.VE(), 0.3), (sdes.VP(), 0.05), (sdes.SubVP(), 1e-3)],
                         ids=["VE", "VP", "SubVP"])
def test_sde_bound_equals_the_exact_negative_elbo_of_a_gaussian(sde, eps):
    mu, sig = 0.5, 0.3
    mix = toy.GaussianMixture([[mu]], [[[sig**2]]], [1.0])
    x = np.linspace(-0.5, 1.5, 5)
    reps = 400
    b = likelihood.sde_bound(sde, toy.exact_score(mix, sde), jnp.repeat(jnp.asarray(x)[:, None], reps, 0),
                             jax.random.key(0), n_t=32, eps=eps, prior_log_prob=mix.perturbed(sde, sde.T).log_prob)
    b = np.asarray(b).reshape(5, reps)
    nll, kl = _gaussian_bound_and_truth(sde, eps, mu, sig, x)
    se = b.std(axis=1) / np.sqrt(reps)
    # the estimate is unbiased for nll + kl: 4 standard errors, plus float32 (~1e-4 relative)
    assert np.all(np.abs(b.mean(axis=1) - (nll + kl)) < 4 * se + 1e-3), (b.mean(axis=1), nll + kl, se)
    if sde != sdes.SubVP():  # at eps = 0.05 or 0.3 the slack is visible: nll alone is rejected
        assert np.all(kl[[0, 4]] > 5 * se[[0, 4]]), (kl, se)


def test_sde_bound_of_the_exact_mixture_score_bounds_and_nearly_equals_the_nll():
    mix, sde, eps = toy.four_gaussians_2d(), sdes.VP(), 1e-3
    x = mix.sample(jax.random.key(8), 2000)
    b = likelihood.sde_bound(sde, toy.exact_score(mix, sde), x, jax.random.key(9), n_t=16, eps=eps,
                             prior_log_prob=mix.perturbed(sde, sde.T).log_prob)
    m, s = float(sde.mean_coefficient(eps)), float(sde.kernel_std(eps))
    model = toy.GaussianMixture(mix.means, mix.covs + 2 * (s / m) ** 2 * jnp.eye(2), mix.weights)
    gap = np.asarray(b - (-model.log_prob(x)))
    se = gap.std() / np.sqrt(gap.size)
    # bound >= NLL on average (4 SE), and the slack is tiny at eps = 1e-3 (s(eps)/0.5 = 0.02)
    assert gap.mean() > -4 * se and abs(gap.mean()) < 4 * se + 0.01, (gap.mean(), se)
    # with the N(0, I) prior instead of p_T: same up to the prior mismatch (~0.01 nats, docstring of log_prob)
    b_pi = likelihood.sde_bound(sde, toy.exact_score(mix, sde), x, jax.random.key(9), n_t=16, eps=eps)
    assert abs(float(jnp.mean(b_pi - b))) < 0.02


def test_sde_bound_of_a_wrong_score_is_larger():
    mix, sde = toy.four_gaussians_2d(), sdes.VP()
    x = mix.sample(jax.random.key(10), 1000)
    exact = toy.exact_score(mix, sde)
    wide = toy.exact_score(toy.GaussianMixture(mix.means, 1.5 * mix.covs, mix.weights), sde)
    b0 = likelihood.sde_bound(sde, exact, x, jax.random.key(11), n_t=16, eps=1e-3)
    b1 = likelihood.sde_bound(sde, wide, x, jax.random.key(11), n_t=16, eps=1e-3)
    diff = np.asarray(b1 - b0)  # same keys: common random numbers
    # the bound of the widened model exceeds the exact one by about KL(p || wide) = 0.07 nats
    # (2 x 0.5 (1/1.5 - 1 + log 1.5) for one component); measured 0.097 +- 0.016
    assert diff.mean() > 4 * diff.std() / np.sqrt(diff.size), (diff.mean(), diff.std())


def test_sde_bound_checks_its_arguments():
    with pytest.raises(ValueError, match="eps"):
        likelihood.sde_bound(sdes.VP(), lambda x, t: -x, jnp.ones((2, 2)), jax.random.key(0), eps=0.0)
    with pytest.raises(ValueError, match="n_t"):
        likelihood.sde_bound(sdes.VP(), lambda x, t: -x, jnp.ones((2, 2)), jax.random.key(0), n_t=0)
    with pytest.raises(TypeError, match="score_fn"):
        likelihood.sde_bound(sdes.VP(), None, jnp.ones((2, 2)), jax.random.key(0))
