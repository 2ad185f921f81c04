"""companion.ode_sampling: the probability flow samplers (adaptive, Euler, Heun,
DPM-Solver), their grids and steps, and the encoder and decoder.

Quality against the two-sample floor is measured in tests/bench_samplers.py and chapter 5;
here: every sampler recovers the mixture with the exact score, NFE counts, the time grids,
convergence orders against the exact solution of the probability flow ODE for Gaussian
data, one compilation per architecture, and the argument checks.
"""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from companion import likelihood, metrics, ode_sampling, sampling, toy
from companion import sde as sdes

from course_sdes import SDES as _BY_NAME  # the course's three SDEs, shared by the test files

SDES = [_BY_NAME[name] for name in ("VP", "VE", "SubVP")]
IDS = ["VP", "VE", "SubVP"]


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_time_of_noise_level_inverts_noise_level(sde):
    t = jnp.array([1e-3, 0.01, 0.2, 0.5, 0.9, 1.0])
    back = ode_sampling.time_of_noise_level(sde, ode_sampling.noise_level(sde, t))
    np.testing.assert_allclose(back, t, rtol=1e-4)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_noise_level_grids(sde):
    for spacing in ("logsnr", "karras", "time"):
        ts = ode_sampling.noise_level_grid(sde, 12, eps=1e-3, spacing=spacing)
        assert ts.shape == (13,) and float(ts[0]) == 1.0 and float(ts[-1]) == np.float32(1e-3)
        assert np.all(np.diff(np.asarray(ts)) < 0)
    sig = np.asarray(ode_sampling.noise_level(sde, ode_sampling.noise_level_grid(sde, 12, spacing="logsnr")), np.float64)
    np.testing.assert_allclose(np.diff(np.log(sig)), np.full(12, np.log(sig[-1] / sig[0]) / 12), rtol=2e-3)
    sig = np.asarray(ode_sampling.noise_level(sde, ode_sampling.noise_level_grid(sde, 12, spacing="karras", rho=7.0)), np.float64)
    steps = np.diff(sig ** (1 / 7))
    np.testing.assert_allclose(steps, np.full(12, steps.mean()), rtol=2e-3)


def counting_score():
    """A score of N(0, I) data perturbed by the SDE that counts its calls at run time."""
    calls = []

    def score(x, t):
        jax.debug.callback(lambda: calls.append(1))
        var = SDE_FOR_COUNT.mean_coefficient(t) ** 2 + SDE_FOR_COUNT.kernel_std(t) ** 2
        return -x / sdes.batch_broadcast(var, x)  # t: a scalar (samplers) or (n,)

    return score, calls


SDE_FOR_COUNT = sdes.VP()


@pytest.mark.parametrize(
    "sampler, kwargs, nfe",
    [
        (ode_sampling.dpm_solver, dict(n_steps=7), 7),
        (ode_sampling.dpm_solver, dict(n_steps=5, order=1), 5),
        (ode_sampling.heun, dict(n_steps=6), 12),
        (ode_sampling.euler_ode, dict(n_steps=9), 9),
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
    s_T, s_e = ode_sampling.noise_level(sde, 1.0), ode_sampling.noise_level(sde, eps)
    xhat = mu + (xT / m_T - mu) * jnp.sqrt(c**2 + s_e**2) / jnp.sqrt(c**2 + s_T**2)
    return m_e * xhat


@pytest.mark.parametrize("sde", [sdes.VP(), sdes.VE()], ids=["VP", "VE"])
@pytest.mark.parametrize(
    "sampler, kwargs, order",
    [
        (ode_sampling.euler_ode, {}, 1),
        (ode_sampling.heun, {}, 2),
        (ode_sampling.dpm_solver, dict(order=1), 1),
        (ode_sampling.dpm_solver, dict(order=2), 2),
        (ode_sampling.dpm_solver, dict(order=3), 3),
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
    if sampler is ode_sampling.euler_ode:
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
    ref, nfe_ref = ode_sampling.probability_flow(sde, score, key, (1000, 2), rtol=1e-5, atol=1e-5)
    x, nfe = ode_sampling.dpm_solver(sde, score, key, (1000, 2), n_steps=30)
    rms = float(jnp.sqrt(jnp.mean(jnp.sum((x - ref) ** 2, axis=1))))
    assert nfe == 30 and nfe_ref > 3 * nfe
    assert rms < 0.03, rms  # measured 0.014 (tests/bench_samplers.py)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda s: ode_sampling.dpm_solver(sdes.VP(), s, jax.random.key(0), (2, 2), order=4), "order"),
        (lambda s: ode_sampling.dpm_solver(sdes.VP(), s, jax.random.key(0), (2, 2), spacing="cosine"), "spacing"),
        (lambda s: ode_sampling.heun(sdes.VP(), s, jax.random.key(0), (2, 2), n_steps=0), "n_steps"),
        (lambda s: ode_sampling.heun(sdes.VP(), s, jax.random.key(0), (2, 2), rho=-1.0), "rho"),
        (lambda s: ode_sampling.euler_ode(sdes.VP(), s, jax.random.key(0), (2, 2), eps=0.0), "eps"),
        (lambda s: ode_sampling.dpm_solver(sdes.VP(), s, jax.random.key(0), 5), "shape"),
    ],
)
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call(lambda x, t: -x)


# ------------------------------------------------------------------ adaptive: probability_flow

MIX = toy.four_gaussians_2d()
N = 2000
DATA = MIX.sample(jax.random.key(123), N)

SCORES = {name: toy.exact_score(MIX, s) for name, s in _BY_NAME.items()}  # one object each: jit cache hits


@pytest.mark.parametrize("sde_name", _BY_NAME)
def test_probability_flow_recovers_the_mixture(sde_name):
    """With the exact score, within a factor 2 of the two-sample floor at n = 2000."""
    floor = metrics.two_sample_floor(jax.random.key(7), MIX.sample, N, n_repeats=10)
    x, nfe = ode_sampling.probability_flow(_BY_NAME[sde_name], SCORES[sde_name], jax.random.key(0), (N, 2),
                                           rtol=1e-4, atol=1e-4)
    assert x.shape == (N, 2) and x.dtype == jnp.float32 and jnp.all(jnp.isfinite(x))
    assert nfe <= 200
    assert metrics.sliced_wasserstein(jax.random.key(1), x, DATA) < 2 * floor.mean


@pytest.mark.parametrize("solver", [diffrax.Tsit5(), diffrax.Heun()], ids=["tsit5", "heun"])
def test_probability_flow_nfe_is_the_exact_number_of_score_evaluations(solver):
    score, calls = counting_score()
    x, nfe = ode_sampling.probability_flow(SDE_FOR_COUNT, score, jax.random.key(0), (10, 2), solver=solver,
                                           rtol=1e-3, atol=1e-3)
    jax.block_until_ready(x)
    jax.effects_barrier()
    assert nfe == len(calls) > 0


@pytest.mark.parametrize("kwargs, arg", [(dict(rtol=0.0), "rtol"), (dict(atol=-1.0), "atol"), (dict(eps=2.0), "eps"),
                                         (dict(shape=(0, 2)), "shape"), (dict(solver=diffrax.Euler()), "solver")])
def test_bad_probability_flow_arguments(kwargs, arg):
    call = dict(shape=(4, 2))
    call.update(kwargs)
    shape = call.pop("shape")
    with pytest.raises(ValueError, match=arg):
        ode_sampling.probability_flow(_BY_NAME["VP"], SCORES["VP"], jax.random.key(0), shape, **call)


# ------------------------------------------------------------------ encode and decode


def test_decode_inverts_encode_and_codes_are_gaussian():
    """The flow maps p_eps onto ~N(0, I) (VP) and back, each sample on its own."""
    vp, score = _BY_NAME["VP"], SCORES["VP"]
    x = MIX.perturbed(vp, 1e-3).sample(jax.random.key(3), 400)
    z = ode_sampling.encode(vp, score, x, rtol=1e-6, atol=1e-6)
    back = ode_sampling.decode(vp, score, z, rtol=1e-6, atol=1e-6)
    assert z.shape == x.shape and float(jnp.max(jnp.abs(back - x))) < 1e-3
    assert abs(float(jnp.std(z)) - 1.0) < 0.1 and abs(float(jnp.mean(z))) < 0.15
    # a code does not depend on the rest of the batch
    np.testing.assert_allclose(ode_sampling.encode(vp, score, x[:7], rtol=1e-6, atol=1e-6), z[:7], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("call, match", [
    (lambda f: ode_sampling.encode(_BY_NAME["VP"], f, jnp.zeros(3)), "x"),
    (lambda f: ode_sampling.decode(_BY_NAME["VP"], f, jnp.zeros((3, 2)), eps=0.0), "eps"),
    (lambda f: ode_sampling.encode(_BY_NAME["VP"], f, jnp.zeros((3, 2)), rtol=-1.0), "rtol"),
])
def test_bad_encode_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call(SCORES["VP"])


# ------------------------------------------------------------------ the fixed-grid steps


def test_the_fixed_grid_samplers_are_their_steps_on_the_grid():
    """dpm_solver and heun are their public steps on noise_level_grid, from xhat = x / m(T)
    to x = m(eps) xhat; euler_ode is euler_step on the uniform grid in x."""
    s, score, key, shape = _BY_NAME["VP"], SCORES["VP"], jax.random.key(6), (300, 2)
    x_T = s.prior_sample(key, shape)
    m_T, m_eps = s.mean_coefficient(1.0), s.mean_coefficient(1e-3)
    for order in (1, 2, 3):
        ts = ode_sampling.noise_level_grid(s, 8, spacing="logsnr")
        state = ode_sampling.MultistepState.start(x_T / m_T, order)
        for t, t_next in zip(ts[:-1], ts[1:]):
            state = ode_sampling.multistep_step(s, score, state, t, t_next)
        x, _ = ode_sampling.dpm_solver(s, score, key, shape, n_steps=8, order=order)
        np.testing.assert_allclose(x, m_eps * state.xhat, rtol=1e-4, atol=1e-5)
    ts = ode_sampling.noise_level_grid(s, 5, spacing="karras")
    xhat = x_T / m_T
    for t, t_next in zip(ts[:-1], ts[1:]):
        xhat = ode_sampling.heun_step(s, score, xhat, t, t_next)
    np.testing.assert_allclose(ode_sampling.heun(s, score, key, shape, n_steps=5)[0], m_eps * xhat, rtol=1e-4, atol=1e-5)
    ts = sampling.uniform_grid(s, 6)
    x = x_T
    for t, t_next in zip(ts[:-1], ts[1:]):
        x = ode_sampling.euler_step(s, score, x, t, t_next)
    np.testing.assert_allclose(ode_sampling.euler_ode(s, score, key, shape, n_steps=6)[0], x, rtol=1e-4, atol=1e-5)


def test_the_denoiser_is_the_posterior_mean_for_gaussian_data():
    """Data N(mu, c^2 I): E[x0 | xhat] = mu + c^2 (xhat - mu) / (c^2 + sigma^2)."""
    s, mu, c = _BY_NAME["VP"], jnp.array([1.0, -0.5]), 0.3
    score = toy.exact_score(toy.GaussianMixture([mu], [c**2 * jnp.eye(2)], [1.0]), s)
    xhat, t = jax.random.normal(jax.random.key(0), (10, 2)), jnp.float32(0.4)
    sig2 = ode_sampling.noise_level(s, t) ** 2
    want = mu + c**2 * (xhat - mu) / (c**2 + sig2)
    np.testing.assert_allclose(ode_sampling.denoiser(s, score, xhat, t), want, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ one compilation per architecture


def _mlp(seed):
    from flax import nnx

    from companion import nets

    return nets.ScoreMLP(2, hidden=16, depth=2, sde=_BY_NAME["VP"], rngs=nnx.Rngs(seed))


@pytest.mark.parametrize("name", ["probability_flow", "dpm_solver", "heun", "euler_ode", "log_prob", "sde_bound"])
def test_two_models_of_one_architecture_compile_once(name):
    """A model is traced state (weights are arguments, not constants): a second model of
    the same architecture reuses the compiled sampler, and gives its own samples, equal
    to float32 rounding to those of the same model behind a plain (static) function.
    (log_prob and sde_bound of companion.likelihood solve the same flow.)"""
    vp = _BY_NAME["VP"]
    call = {
        "probability_flow": (lambda f: ode_sampling.probability_flow(vp, f, jax.random.key(0), (64, 2),
                                                                     rtol=1e-3, atol=1e-3), ode_sampling._solve_flow),
        "dpm_solver": (lambda f: ode_sampling.dpm_solver(vp, f, jax.random.key(0), (64, 2), n_steps=10),
                       ode_sampling._solve_fixed),
        "heun": (lambda f: ode_sampling.heun(vp, f, jax.random.key(0), (64, 2), n_steps=10), ode_sampling._solve_fixed),
        "euler_ode": (lambda f: ode_sampling.euler_ode(vp, f, jax.random.key(0), (64, 2), n_steps=10),
                      ode_sampling._solve_fixed),
        "log_prob": (lambda f: (likelihood.log_prob(vp, f, DATA[:8], eps=1e-3, rtol=1e-3, atol=1e-3), 0),
                     likelihood._solve_log_prob),
        "sde_bound": (lambda f: (likelihood.sde_bound(vp, f, DATA[:64], jax.random.key(1), n_t=8), 0),
                      likelihood._sde_bound),
    }
    run, jitted = call[name]
    m1, m2 = _mlp(1), _mlp(2)
    x1, _ = run(m1)
    size = jitted._cache_size()
    x2, _ = run(m2)
    assert jitted._cache_size() == size  # no new compilation for the second model
    assert not np.allclose(x1, x2)  # ... and its own weights were used
    x2_static, _ = run(lambda x, t: m2(x, t))  # weights as compile-time constants
    # fixed grids: float32 rounding (constant folding differs); the adaptive solver at
    # rtol 1e-3: a rounding difference can move an accepted step, so to a few times rtol
    rtol = 3e-3 if name in ("probability_flow", "log_prob") else 1e-4
    np.testing.assert_allclose(x2, x2_static, rtol=rtol, atol=1e-4)


def test_one_compilation_serves_every_number_of_steps_and_order():
    s, score = _BY_NAME["VE"], SCORES["VE"]
    ode_sampling.dpm_solver(s, score, jax.random.key(0), (32, 2), n_steps=4)
    size = ode_sampling._solve_fixed._cache_size()
    for n, order in ((7, 3), (5, 1), (9, 2)):
        ode_sampling.dpm_solver(s, score, jax.random.key(0), (32, 2), n_steps=n, order=order)
    assert ode_sampling._solve_fixed._cache_size() == size


@pytest.mark.parametrize("sampler", [ode_sampling.euler_ode, ode_sampling.heun, ode_sampling.dpm_solver,
                                     ode_sampling.probability_flow])
def test_samplers_pass_one_scalar_time_per_evaluation(sampler):
    """As the reverse-SDE samplers: a 0-d time, one per score evaluation."""
    shapes = set()

    def score(x, t):
        shapes.add(jnp.shape(t))  # recorded while tracing
        return -x

    kw = {} if sampler is ode_sampling.probability_flow else {"n_steps": 4}
    sampler(_BY_NAME["VP"], score, jax.random.key(0), (8, 2), **kw)
    assert shapes == {()}


# --------------------------------------------------------------------------- flow_map (chapter 9)


def _gaussian_flow(sde, mu, cov, x, t, t_to):
    """The exact flow map of Gaussian data N(mu, cov): the marginal at t is
    N(a mu, a^2 cov + b^2 I), whose covariances share cov's eigenvectors U, and the flow
    is affine, Phi(x) = a' mu + U diag(sqrt((a'^2 l + b'^2) / (a^2 l + b^2))) U^T (x - a mu)."""
    lam, U = np.linalg.eigh(np.asarray(cov, np.float64))
    t = np.broadcast_to(np.asarray(t, np.float64), x.shape[:1])
    a, b = (np.asarray(f(t), np.float64)[:, None] for f in (sde.mean_coefficient, sde.kernel_std))
    a2, b2 = (np.asarray(f(jnp.asarray(t_to)), np.float64) for f in (sde.mean_coefficient, sde.kernel_std))
    ratio = np.sqrt((a2**2 * lam + b2**2) / (a**2 * lam + b**2))  # (n, d)
    return a2 * mu + ((np.asarray(x, np.float64) - a * mu) @ U * ratio) @ U.T


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_flow_map_is_the_exact_transport_of_a_gaussian(sde):
    mu = np.array([1.0, -0.5])
    chol = np.array([[0.8, 0.0], [0.3, 0.4]])
    cov = chol @ chol.T
    score = toy.exact_score(toy.GaussianMixture(mu[None], cov[None], [1.0]), sde)
    x = 2.0 * jax.random.normal(jax.random.key(1), (6, 2))
    t = jnp.array([0.9, 0.5, 0.2, 0.05, 0.7, 1e-3])  # per sample, the last at the target
    for t_to in (1e-3, 0.3):  # backwards (and forwards for the early ones)
        got = ode_sampling.flow_map(sde, score, x, t, t_to, rtol=1e-6, atol=1e-6)
        want = _gaussian_flow(sde, mu, cov, x, t, t_to)
        # float32 solve at tolerance 1e-6, points of size ~ 2 (VE: ~50 at T)
        scale = np.abs(want).max(axis=1, keepdims=True) + 1.0
        np.testing.assert_array_less(np.abs(np.asarray(got) - want) / scale, 2e-4)
    # t == t_to is the identity
    np.testing.assert_allclose(ode_sampling.flow_map(sde, score, x, 0.4, 0.4), x, atol=1e-6)


def test_flow_map_inverts_encode_and_goes_both_ways():
    vp, mix = _BY_NAME["VP"], toy.four_gaussians_2d()
    score = toy.exact_score(mix, vp)
    x = mix.sample(jax.random.key(2), 16)
    codes = ode_sampling.encode(vp, score, x, eps=1e-3)
    np.testing.assert_allclose(ode_sampling.flow_map(vp, score, x, 1e-3, 1.0), codes, atol=1e-5)
    back = ode_sampling.flow_map(vp, score, codes, 1.0, 1e-3)
    np.testing.assert_allclose(back, x, atol=2e-3)  # a round trip at tolerance 1e-5 (chapter 5)
    # per-sample times; a wrong-direction map (forwards twice) is far from the identity
    t = jnp.linspace(0.05, 0.95, 16)
    xt = ode_sampling.flow_map(vp, score, x, 1e-3, t)
    np.testing.assert_allclose(ode_sampling.flow_map(vp, score, xt, t, 1e-3), x, atol=2e-3)
    assert np.abs(np.asarray(ode_sampling.flow_map(vp, score, xt, t, 1.0)) - np.asarray(x)).max() > 0.5


def test_flow_map_under_jit_and_bad_input():
    vp = _BY_NAME["VP"]
    score = lambda x, t: -x  # noqa: E731
    x = jnp.ones((3, 2))
    f = jax.jit(lambda x, t: ode_sampling.flow_map(vp, score, x, t, 0.1))
    np.testing.assert_allclose(f(x, jnp.full((3,), 0.5)), ode_sampling.flow_map(vp, score, x, 0.5, 0.1), rtol=1e-6)
    with pytest.raises(ValueError, match="t_to"):
        ode_sampling.flow_map(vp, score, x, 0.5, 1.5)
    with pytest.raises(ValueError, match="^t:"):
        ode_sampling.flow_map(vp, score, x, jnp.zeros(3), 0.5)
    with pytest.raises(ValueError, match="^t:"):
        ode_sampling.flow_map(vp, score, x, jnp.full((4,), 0.5), 0.5)
    with pytest.raises(ValueError, match="x"):
        ode_sampling.flow_map(vp, score, jnp.ones(3), 0.5, 0.1)
