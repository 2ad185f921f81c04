"""companion.sampling: every reverse-SDE sampler recovers the data with the exact score;
NFE counted exactly; the public steps are what the samplers run; arguments validated;
one compilation serves every number of steps. (The ODE samplers: test_ode_sampling.py.)"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback

from companion import metrics, ode_sampling, sampling, sde, toy

MIX = toy.four_gaussians_2d()
from course_sdes import SDES  # the course's three SDEs, shared by the test files
SCORES = {name: toy.exact_score(MIX, s) for name, s in SDES.items()}  # one object each: jit cache hits
N = 2000
DATA = MIX.sample(jax.random.key(123), N)


@pytest.fixture(scope="module")
def floor():
    return metrics.two_sample_floor(jax.random.key(7), MIX.sample, N, n_repeats=10)


SAMPLERS = {
    "euler_maruyama": lambda s, f, k: sampling.euler_maruyama(s, f, k, (N, 2), n_steps=100),
    "reverse_diffusion": lambda s, f, k: sampling.reverse_diffusion(s, f, k, (N, 2), n_steps=100),
    "predictor_corrector": lambda s, f, k: sampling.predictor_corrector(s, f, k, (N, 2), n_steps=50),
}


@pytest.mark.parametrize("sde_name", SDES)
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_recovers_the_mixture(sampler, sde_name, floor):
    """With the exact score and about 100 score evaluations, every sampler lands within a
    factor 2 of the two-sample floor at n = 2000 (measured: 0.9 to 1.4 times the floor,
    whose own spread over pairs of data samples is about 25-35%)."""
    x, nfe = SAMPLERS[sampler](SDES[sde_name], SCORES[sde_name], jax.random.key(0))
    assert x.shape == (N, 2) and x.dtype == jnp.float32
    assert jnp.all(jnp.isfinite(x))
    assert nfe <= 200
    d = metrics.sliced_wasserstein(jax.random.key(1), x, DATA)
    assert d < 2 * floor.mean, (sampler, sde_name, d, floor)


def test_too_few_steps_are_measurably_worse(floor):
    x, _ = sampling.euler_maruyama(SDES["VP"], SCORES["VP"], jax.random.key(0), (N, 2), n_steps=5)
    assert metrics.sliced_wasserstein(jax.random.key(1), x, DATA) > 2 * floor.mean


def test_float64():
    with jax.enable_x64(True):
        s = SDES["VP"]
        score = toy.exact_score(MIX, s)
        x, nfe = sampling.reverse_diffusion(s, score, jax.random.key(0), (N, 2), n_steps=50)
        assert x.dtype == jnp.float64 and jnp.all(jnp.isfinite(x))
    assert metrics.sliced_wasserstein(jax.random.key(1), x, DATA) < 0.14  # 2 x the floor at n = 2000


def counting(score_fn):
    """A score function that counts its evaluations on the host (once per call, even in loops)."""
    calls = []

    def tick(x):
        calls.append(1)
        return np.zeros((), np.float32)

    def counted(x, t):
        z = io_callback(tick, jax.ShapeDtypeStruct((), jnp.float32), x[0, 0], ordered=True)
        return score_fn(x, t) + z

    return counted, calls


@pytest.mark.parametrize(
    "call, want",
    [
        (lambda s, f: sampling.euler_maruyama(s, f, jax.random.key(0), (10, 2), n_steps=7), 7),
        (lambda s, f: sampling.reverse_diffusion(s, f, jax.random.key(0), (10, 2), n_steps=7), 7),
        (lambda s, f: sampling.predictor_corrector(s, f, jax.random.key(0), (10, 2), n_steps=7, n_corrector=2), 21),
        (lambda s, f: sampling.predictor_corrector(s, f, jax.random.key(0), (10, 2), n_steps=7, n_corrector=0), 7),
    ],
)
def test_nfe_is_the_exact_number_of_score_evaluations(call, want):
    counted, calls = counting(SCORES["VP"])
    _, nfe = call(SDES["VP"], counted)
    jax.effects_barrier()
    assert nfe == len(calls) == want


def test_the_last_step_adds_no_noise():
    """With one step, Euler-Maruyama returns x_T - reverse drift * (T - eps) exactly."""
    s, score, key, eps = SDES["VP"], SCORES["VP"], jax.random.key(3), 0.2
    x, _ = sampling.euler_maruyama(s, score, key, (N, 2), n_steps=1, eps=eps)  # (N, 2): compiled already
    k_prior, _ = jax.random.split(key)
    x_T = s.prior_sample(k_prior, (N, 2))
    want = x_T - s.reverse_drift(score, x_T, jnp.full((N,), s.T)) * (s.T - eps)
    np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-6)


def test_uniform_grid():
    ts = sampling.uniform_grid(SDES["VE"], 4, 0.2)
    np.testing.assert_allclose(ts, [1.0, 0.8, 0.6, 0.4, 0.2], rtol=1e-6)
    assert float(sampling.uniform_time(SDES["VE"], 4, 4, 0.2)) == pytest.approx(0.2)
    np.testing.assert_array_equal(ts, sampling.uniform_time(SDES["VE"], jnp.arange(5.0), 4, 0.2))


def test_langevin_step_size():
    score = jnp.array([[1.0, 0.0], [0.0, 3.0], [0.0, 0.0]])
    z = jnp.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    per = sampling.langevin_step_size(score, z, 0.1, alpha=0.5, per_sample=True)
    np.testing.assert_allclose(per, [2 * 0.5 * (0.1 * 2 / 1) ** 2, 2 * 0.5 * (0.1 / 3) ** 2, 0.0], rtol=1e-6)
    batch = sampling.langevin_step_size(score, z, 0.1, alpha=0.5)
    np.testing.assert_allclose(batch, np.full(3, 2 * 0.5 * (0.1 * (4 / 3) / (4 / 3)) ** 2), rtol=1e-6)


def test_per_sample_norms_are_finite_but_worse_in_two_dimensions(floor):
    x, _ = sampling.predictor_corrector(SDES["VP"], SCORES["VP"], jax.random.key(0), (N, 2), n_steps=50,
                                        per_sample_norms=True)
    assert jnp.all(jnp.isfinite(x))
    assert metrics.sliced_wasserstein(jax.random.key(1), x, DATA) > 3 * floor.mean


def test_gaussian_data_moments():
    """Reverse diffusion with the exact score of N(1, 0.5^2) data: mean and std within 5
    standard errors of a 20 000-sample estimate plus 1% for the 200-step discretisation."""
    s = SDES["SubVP"]
    gauss = toy.GaussianMixture([[1.0]], [[[0.25]]], [1.0])
    x, _ = sampling.reverse_diffusion(s, toy.exact_score(gauss, s), jax.random.key(4), (20_000, 1), n_steps=200)
    assert abs(float(x.mean()) - 1.0) < 5 * 0.5 / np.sqrt(20_000) + 0.005
    assert abs(float(x.std()) - 0.5) < 5 * 0.5 / np.sqrt(40_000) + 0.005


def test_same_key_same_samples_and_one_compilation_for_every_n_steps():
    s, score = SDES["VE"], SCORES["VE"]
    a, _ = sampling.euler_maruyama(s, score, jax.random.key(0), (N, 2), n_steps=5)
    size = sampling._sample_reverse_sde._cache_size()
    b, _ = sampling.euler_maruyama(s, score, jax.random.key(0), (N, 2), n_steps=5)
    c, _ = sampling.euler_maruyama(s, score, jax.random.key(0), (N, 2), n_steps=9, eps=0.01)
    d, _ = sampling.euler_maruyama(s, score, jax.random.key(1), (N, 2), n_steps=5)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, d)
    assert sampling._sample_reverse_sde._cache_size() == size


def _mlp(seed):
    from flax import nnx

    from companion import nets

    return nets.ScoreMLP(2, hidden=16, depth=2, sde=SDES["VP"], rngs=nnx.Rngs(seed))


def test_two_models_of_one_architecture_compile_once():
    """A model is traced state (weights are arguments, not constants): a second model of
    the same architecture reuses the compiled sampler, and gives its own samples, equal
    to float32 rounding to those of the same model behind a plain (static) function."""

    def run(f):
        return sampling.euler_maruyama(SDES["VP"], f, jax.random.key(0), (64, 2), n_steps=20)[0]

    m1, m2 = _mlp(1), _mlp(2)
    x1 = run(m1)
    size = sampling._sample_reverse_sde._cache_size()
    x2 = run(m2)
    assert sampling._sample_reverse_sde._cache_size() == size  # no new compilation for the second model
    assert not np.allclose(x1, x2)  # ... and its own weights were used
    x2_static = run(lambda x, t: m2(x, t))  # weights as compile-time constants
    np.testing.assert_allclose(x2, x2_static, rtol=1e-4, atol=1e-4)  # float32 rounding (constant folding)


def test_unhashable_score_functions_work():
    class Score:  # defines __eq__ without __hash__: unhashable
        def __eq__(self, other):
            return self is other

        def __call__(self, x, t):
            return -x

    x, nfe = sampling.euler_maruyama(SDES["VP"], Score(), jax.random.key(0), (4, 3), n_steps=3)
    assert x.shape == (4, 3) and nfe == 3


def test_image_shaped_samples():
    x, _ = sampling.predictor_corrector(SDES["VP"], lambda x, t: -x, jax.random.key(0), (3, 1, 4, 4), n_steps=4)
    assert x.shape == (3, 1, 4, 4) and jnp.all(jnp.isfinite(x))


BAD = [
    (dict(shape=[0, 2]), "shape"),
    (dict(shape=(2.0, 2)), "shape"),
    (dict(shape=5), "shape"),
    (dict(shape=()), "shape"),
    (dict(n_steps=0), "n_steps"),
    (dict(n_steps=2.5), "n_steps"),
    (dict(n_steps=True), "n_steps"),
    (dict(eps=0.0), "eps"),
    (dict(eps=1.0), "eps"),
    (dict(eps=-1e-3), "eps"),
    (dict(snr=0.0), "snr"),
    (dict(snr=-0.1), "snr"),
    (dict(n_corrector=-1), "n_corrector"),
    (dict(predictor="heun"), "predictor"),
    (dict(corrector="hmc"), "corrector"),
]


@pytest.mark.parametrize("kwargs, arg", BAD, ids=[f"{a}={list(k.values())[0]!r}" for k, a in BAD])
def test_bad_arguments_raise_value_errors_naming_them(kwargs, arg):
    call = dict(shape=(4, 2), n_steps=3)
    call.update(kwargs)
    shape = call.pop("shape")
    with pytest.raises(ValueError, match=arg):
        sampling.predictor_corrector(SDES["VP"], SCORES["VP"], jax.random.key(0), shape, **call)


def test_wrong_types_raise_type_errors():
    with pytest.raises(TypeError, match="sde"):
        sampling.euler_maruyama("VP", SCORES["VP"], jax.random.key(0), (4, 2))
    with pytest.raises(TypeError, match="score_fn"):
        sampling.reverse_diffusion(SDES["VP"], None, jax.random.key(0), (4, 2))


# ------------------------------------------------------------------ trajectories


@pytest.mark.parametrize("stochastic, sampler", [(True, sampling.euler_maruyama), (False, ode_sampling.euler_ode)])
def test_trajectory_ends_where_its_sampler_ends(stochastic, sampler):
    """Same steps, same random streams: the last frame is the sampler's output exactly,
    the first a prior sample, and the times run from T down to eps."""
    vp = sde.VP()
    mix = toy.four_gaussians_2d()
    score = toy.exact_score(mix, vp)
    key = jax.random.key(3)
    ts, frames = sampling.trajectory(vp, score, key, (500, 2), n_steps=60, n_frames=7, stochastic=stochastic)
    x, _ = sampler(vp, score, key, (500, 2), n_steps=60)
    assert frames.shape == (7, 500, 2) and ts.shape == (7,)
    assert jnp.array_equal(frames[-1], x)
    assert float(ts[0]) == pytest.approx(vp.T) and float(ts[-1]) == pytest.approx(sampling.DEFAULT_EPS)
    assert float(jnp.std(frames[0])) == pytest.approx(1.0, abs=0.1)  # the VP prior N(0, I)


@pytest.mark.parametrize("kw, match", [({"n_frames": 1}, "n_frames"), ({"n_steps": 61, "n_frames": 7}, "n_steps"),
                                       ({"stochastic": 1}, "stochastic")])
def test_trajectory_rejects_bad_arguments(kw, match):
    vp = sde.VP()
    with pytest.raises(ValueError, match=match):
        sampling.trajectory(vp, toy.exact_score(toy.four_gaussians_2d(), vp), jax.random.key(0), (10, 2), **kw)


# ------------------------------------------------------------------ the step contract


def test_the_registries_hold_the_public_steps():
    assert sampling.PREDICTORS == {"euler_maruyama": sampling.euler_maruyama_step,
                                   "reverse_diffusion": sampling.reverse_diffusion_step}
    assert sampling.CORRECTORS == {"langevin": sampling.langevin_step}


@pytest.mark.parametrize("name", sampling.PREDICTORS)
def test_a_predictor_step_is_its_mean_plus_its_noise(name):
    """x_next - mean is the step's Gaussian noise, drawn from the step's key: its std is
    g sqrt(h) (Euler-Maruyama) or q (reverse diffusion)."""
    s, score, key = SDES["VP"], SCORES["VP"], jax.random.key(4)
    x = DATA[:500]
    t, t_next = jnp.float32(0.5), jnp.float32(0.45)
    x_next, mean = sampling.PREDICTORS[name](s, score, x, t, t_next, key)
    assert x_next.shape == mean.shape == x.shape
    if name == "euler_maruyama":
        scale = s.diffusion(t) * jnp.sqrt(t - t_next)
    else:
        scale = s.transition(t_next, t)[1]
    np.testing.assert_allclose((x_next - mean) / scale, jax.random.normal(key, x.shape), rtol=1e-3, atol=1e-3)


def test_the_langevin_step_moves_the_mean_along_the_score():
    s, score, key = SDES["VE"], SCORES["VE"], jax.random.key(5)
    x, t, t_next, snr = DATA[:500], jnp.float32(0.3), jnp.float32(0.29), 0.16
    x_next, mean = sampling.langevin_step(s, score, x, t, t_next, key, snr)
    g = score(x, jnp.full((500,), t))
    e = sampling.langevin_step_size(g, jax.random.normal(key, x.shape), snr)[:, None]  # VE: alpha = 1
    np.testing.assert_allclose(mean, x + e * g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x_next - mean, jnp.sqrt(2 * e) * jax.random.normal(key, x.shape), rtol=1e-4, atol=1e-6)


def test_predictor_corrector_is_the_public_steps_in_reverse_loop():
    """The sampler is nothing but the registered steps in reverse_loop, with the keys split
    as documented: written out by hand, the same samples, bit for bit."""
    s, score, shape = SDES["VE"], SCORES["VE"], (50, 2)
    want, _ = sampling.predictor_corrector(s, score, jax.random.key(2), shape, n_steps=9, n_corrector=2,
                                           snr=0.2, predictor="euler_maruyama")

    @functools.partial(jax.jit, static_argnums=0)
    def by_hand(n_corrector, key, n_steps, eps, snr, per_sample):
        k_prior, k_loop = jax.random.split(key)
        x = s.prior_sample(k_prior, shape)

        def step(x, t, t_next, k):
            keys = jax.random.split(k, n_corrector + 1)
            for j in range(n_corrector):
                x, _ = sampling.CORRECTORS["langevin"](s, score, x, t, t_next, keys[j], snr, per_sample)
            return sampling.PREDICTORS["euler_maruyama"](s, score, x, t, t_next, keys[-1])

        return sampling.reverse_loop(step, s, x, k_loop, n_steps, eps)

    np.testing.assert_array_equal(want, by_hand(2, jax.random.key(2), 9, sampling.DEFAULT_EPS, 0.2, False))


def test_probability_flow_is_still_importable_from_sampling():
    """COURSE.md's contract names sampling.probability_flow; it lives in ode_sampling."""
    from companion.sampling import probability_flow

    assert probability_flow is sampling.probability_flow is ode_sampling.probability_flow
    with pytest.raises(AttributeError):
        sampling.no_such_sampler  # noqa: B018


@pytest.mark.parametrize("sampler", [sampling.euler_maruyama, sampling.predictor_corrector, sampling.reverse_diffusion])
def test_samplers_pass_one_scalar_time_per_step(sampler):
    """The score is called with a 0-d time (the contract allows a scalar), so a network
    embeds the time once per call instead of once per sample (nets._check_xt)."""
    shapes = set()

    def score(x, t):
        shapes.add(jnp.shape(t))  # recorded while tracing
        return -x

    sampler(SDES["VP"], score, jax.random.key(0), (8, 2), n_steps=4)
    assert shapes == {()}
