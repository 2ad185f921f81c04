"""companion.toy: mixture density, score and perturbed marginals against closed forms and autodiff."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from companion import sde, toy

from course_sdes import SDES as _BY_NAME  # the course's three SDEs, shared by the test files

SDES = list(_BY_NAME.values())  # VE, VP, SubVP


def random_mixture(seed, K, d):
    """A random valid mixture: means in [-3, 3], SPD covariances, Dirichlet weights."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(K, d, d))
    covs = a @ np.swapaxes(a, -1, -2) / d + 0.2 * np.eye(d)
    return toy.GaussianMixture(rng.uniform(-3, 3, (K, d)), covs, rng.dirichlet(np.ones(K)))


def numpy_log_prob(mix, x):
    """log sum_k w_k N(x; mu_k, Sigma_k) in float64, by the textbook formula."""
    x = np.asarray(x, np.float64)
    out = []
    for mu, cov, w in zip(np.asarray(mix.means, np.float64), np.asarray(mix.covs, np.float64),
                          np.asarray(mix.weights, np.float64)):
        diff = x - mu
        quad = np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff)
        out.append(np.log(w) - 0.5 * (quad + np.log(np.linalg.det(cov)) + len(mu) * np.log(2 * np.pi)))
    out = np.stack(out, 1)
    top = out.max(1, keepdims=True)
    return (top + np.log(np.exp(out - top).sum(1, keepdims=True)))[:, 0]


@jax.jit
def _density_and_score(mix, x):
    """log p, score and autodiff of log p, compiled once per (K, d) (the mixture is a pytree)."""
    grad = jax.vmap(jax.grad(lambda xi: mix.log_prob(xi[None])[0]))(x)
    return mix.log_prob(x), mix.score(x), grad, mix.responsibilities(x)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), K=st.sampled_from([1, 2, 4]), d=st.sampled_from([1, 3]))
def test_log_prob_and_score_of_random_mixtures(seed, K, d):
    """Density against the textbook formula; score against autodiff of the log density."""
    mix = random_mixture(seed, K, d)
    x = jnp.asarray(np.random.default_rng(seed + 1).normal(scale=3, size=(6, d)), jnp.float32)
    log_p, score, grad, resp = _density_and_score(mix, x)
    np.testing.assert_allclose(log_p, numpy_log_prob(mix, x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(score, grad, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(resp.sum(1), 1.0, rtol=1e-5)


@jax.jit
def _perturbed_scores(mix, p, x, t):
    """exact_score of mix (eigendecomposition), p's score (Cholesky), autodiff of p's log density."""
    grad = jax.vmap(jax.grad(lambda xi: p.log_prob(xi[None])[0]))(x)
    return [toy.exact_score(mix, s)(x, t) for s in SDES], p.score(x), grad


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), K=st.sampled_from([1, 3]), d=st.sampled_from([1, 2]),
       which=st.integers(0, 2), t=st.floats(0.01, 1.0))
def test_perturbed_mixture_and_exact_score(seed, K, d, which, t):
    """Eq. (eq-perturbed-mixture): component k becomes N(m mu_k, m^2 Sigma_k + s^2 I); its
    score (Cholesky) equals exact_score (eigendecomposition) and autodiff of its log density."""
    mix, s = random_mixture(seed, K, d), SDES[which]
    p = mix.perturbed(s, t)
    m, std = float(s.mean_coefficient(t)), float(s.kernel_std(t))
    np.testing.assert_allclose(p.means, m * np.asarray(mix.means), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p.covs, m**2 * np.asarray(mix.covs) + std**2 * np.eye(d), rtol=1e-5, atol=1e-6)
    x = jnp.asarray(np.random.default_rng(seed + 2).normal(scale=3 * max(1, std), size=(5, d)), jnp.float32)
    exact, score, grad = _perturbed_scores(mix, p, x, jnp.float32(t))
    scale = 1 + float(jnp.max(jnp.abs(score)))
    np.testing.assert_allclose(exact[which], score, rtol=1e-3, atol=1e-4 * scale)
    np.testing.assert_allclose(score, grad, rtol=1e-3, atol=1e-4 * scale)


def test_exact_score_with_one_time_per_sample():
    mix, s = toy.four_gaussians_2d(), SDES[1]
    x = jax.random.normal(jax.random.key(0), (4, 2)) * 2
    t = jnp.array([0.05, 0.2, 0.6, 1.0])
    got = toy.exact_score(mix, s)(x, t)
    for i in range(4):
        np.testing.assert_allclose(got[i], mix.perturbed(s, t[i]).score(x[i : i + 1])[0], rtol=1e-4, atol=1e-5)


def test_exact_score_under_jit_and_in_float64():
    mix, s = toy.four_gaussians_2d(), SDES[0]
    score = toy.exact_score(mix, s)
    x = jax.random.normal(jax.random.key(1), (8, 2))
    np.testing.assert_allclose(jax.jit(score)(x, 0.3), score(x, 0.3), rtol=1e-5)
    with jax.enable_x64(True):
        x64 = jnp.asarray(np.asarray(x), jnp.float64)
        out = score(x64, jnp.float64(0.3))
        assert out.dtype == jnp.float64
        np.testing.assert_allclose(out, score(x, 0.3), rtol=1e-4)  # float32 agrees to ~1e-6


@pytest.mark.parametrize("far", [1e3, 1e5])
def test_no_nan_far_from_every_mode_in_float32(far):
    """Far away, every component's density underflows in float32; log-sum-exp keeps the
    score finite and pointing back to the data (about -(x - nearest mean) / variance)."""
    mix = toy.four_gaussians_2d()
    x = jnp.array([[far, far], [-far, 0.0], [0.0, far]], jnp.float32)
    assert jnp.all(jnp.isfinite(mix.log_prob(x)))
    sc = mix.score(x)
    assert jnp.all(jnp.isfinite(sc))
    assert jnp.all(jnp.sign(sc) == -jnp.sign(jnp.where(x == 0, 0.0, x)))
    for s in SDES:
        assert jnp.all(jnp.isfinite(toy.exact_score(mix, s)(x, 1e-3)))


def test_sample_moments_and_labels():
    mix = toy.four_gaussians_2d()
    n = 40_000
    x, labels = mix.sample(jax.random.key(2), n, return_labels=True)
    assert x.shape == (n, 2) and labels.shape == (n,)
    # the mixture mean is 0 and its covariance 4 I + 0.25 I; 5 standard errors
    assert jnp.all(jnp.abs(x.mean(0)) < 5 * math.sqrt(4.25 / n))
    np.testing.assert_allclose(jnp.cov(x.T), 4.25 * np.eye(2), atol=5 * 4.25 * math.sqrt(2 / n))
    freq = jnp.bincount(labels, length=4) / n
    assert jnp.all(jnp.abs(freq - 0.25) < 5 * math.sqrt(0.25 * 0.75 / n))
    # each point lies near the mean of the component that drew it
    assert float(jnp.mean(jnp.linalg.norm(x - mix.means[labels], axis=1))) < 0.7


def test_the_course_data_sets():
    one = toy.two_gaussians_1d()
    assert one.dim == 1 and one.n_components == 2
    np.testing.assert_allclose(one.weights, [0.3, 0.7])
    four = toy.four_gaussians_2d()
    assert four.dim == 2 and four.n_components == 4
    np.testing.assert_allclose(jnp.abs(four.means), 2.0)
    np.testing.assert_allclose(four.covs, np.tile(0.25 * np.eye(2), (4, 1, 1)))


def test_mixtures_are_pytrees():
    mix = toy.four_gaussians_2d()
    x = jnp.ones((3, 2))
    np.testing.assert_allclose(jax.jit(lambda m, x: m.score(x))(mix, x), mix.score(x), rtol=1e-6)
    leaves = jax.tree_util.tree_leaves(mix)
    assert len(leaves) == 3


@pytest.mark.parametrize(
    "means, covs, weights, arg",
    [
        ([0.0, 1.0], [[[1.0]], [[1.0]]], [0.5, 0.5], "means"),
        ([[0.0], [1.0]], [[[1.0]]], [0.5, 0.5], "covs"),
        ([[0.0], [1.0]], [[[1.0]], [[1.0]]], [1.0], "weights"),
        ([[0.0], [1.0]], [[[1.0]], [[1.0]]], [0.5, 0.6], "weights"),
        ([[0.0], [1.0]], [[[1.0]], [[1.0]]], [1.5, -0.5], "weights"),
        ([[0.0, 0.0]], [[[1.0, 0.5], [0.0, 1.0]]], [1.0], "covs"),
        ([[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]], [1.0], "covs"),
        ([[0.0, float("nan")]], [np.eye(2)], [1.0], "means"),
    ],
)
def test_bad_mixtures_raise_value_errors_naming_the_argument(means, covs, weights, arg):
    with pytest.raises(ValueError, match=arg):
        toy.GaussianMixture(means, covs, weights)


def test_bad_points_and_times_raise():
    mix = toy.four_gaussians_2d()
    with pytest.raises(ValueError, match="x"):
        mix.log_prob(jnp.ones((3, 3)))
    with pytest.raises(ValueError, match="x"):
        mix.score(jnp.ones(2))
    with pytest.raises(ValueError, match="t"):
        mix.perturbed(SDES[1], jnp.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="t"):
        mix.perturbed(SDES[1], 0.0)
    with pytest.raises(ValueError, match="t"):
        toy.exact_score(mix, SDES[1])(jnp.ones((2, 2)), 1.5)


# ------------------------------------------------------------------------------ exact references of chapter 6


def _random_mixture(key, K=3, d=3):
    k1, k2, k3 = jax.random.split(key, 3)
    a = jax.random.normal(k2, (K, d, d))
    covs = a @ jnp.swapaxes(a, -1, -2) + 0.3 * jnp.eye(d)
    weights = jax.nn.softmax(jax.random.normal(k3, (K,)))
    return toy.GaussianMixture(2 * jax.random.normal(k1, (K, d)), covs, weights / weights.sum())


@pytest.mark.parametrize("observed", [[1], [0, 2], np.array([True, False, False])])
def test_condition_is_the_joint_divided_by_the_marginal(observed):
    """log p(x) - log p(x_u | x_o) must not depend on x_u: it is log p(x_o)."""
    m = _random_mixture(jax.random.key(0))
    o = np.flatnonzero(observed) if np.asarray(observed).dtype == bool else np.asarray(observed)
    u = np.setdiff1d(np.arange(3), o)
    x_o = jnp.linspace(-0.5, 0.7, o.size)
    cond = m.condition(x_o, observed)
    assert cond.dim == u.size and cond.n_components == 3
    np.testing.assert_allclose(float(cond.weights.sum()), 1.0, rtol=1e-6)
    x_u = 1.5 * jax.random.normal(jax.random.key(1), (7, u.size))
    full = jnp.zeros((7, 3)).at[:, u].set(x_u).at[:, o].set(x_o)
    diff = np.asarray(m.log_prob(full) - cond.log_prob(x_u))
    np.testing.assert_allclose(diff, diff[0], atol=2e-5)
    # and that constant is log p(x_o): the marginal of o is a mixture of the o-blocks
    marg = toy.GaussianMixture(m.means[:, o], m.covs[:, o][:, :, o], m.weights)
    np.testing.assert_allclose(diff[0], float(marg.log_prob(x_o[None])[0]), atol=2e-5)


def test_condition_on_the_course_mixture():
    """Four equal corners: given x_1 = 2, x_2 is 0.5 N(-2, 0.25) + 0.5 N(2, 0.25)."""
    cond = toy.four_gaussians_2d().condition(jnp.array([2.0]), [0])
    keep = np.asarray(cond.weights) > 1e-6
    np.testing.assert_allclose(np.asarray(cond.weights)[keep], [0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(np.asarray(cond.means)[keep, 0], [-2.0, 2.0], atol=1e-6)
    np.testing.assert_allclose(np.asarray(cond.covs)[:, 0, 0], 0.25, atol=1e-6)


def test_condition_under_vmap_and_jit_matches_one_call_at_a_time():
    """Chapter 6 conditions on several observed values at once (vmap inside jit)."""
    m = _random_mixture(jax.random.key(2))
    x1 = jnp.array([-1.0, 0.3, 2.5])
    weights = jax.jit(jax.vmap(lambda v: m.condition(v[None], [0]).weights))(x1)
    for i, v in enumerate(x1):
        np.testing.assert_allclose(weights[i], m.condition(v[None], [0]).weights, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("observed, x_o, match", [
    ([], [], "observed"), ([0, 1], [1.0, 2.0], "observed"), ([0, 0], [1.0, 1.0], "distinct"),
    ([5], [1.0], "coordinates"), ([0], [1.0, 2.0], "x_observed"), ("a", [1.0], "observed"),
])
def test_condition_rejects_bad_input(observed, x_o, match):
    with pytest.raises((ValueError, TypeError), match=match):
        toy.four_gaussians_2d().condition(jnp.asarray(x_o), observed)


@pytest.mark.parametrize("s", SDES, ids=["VE", "VP", "SubVP"])
def test_exact_classifier_is_the_perturbed_responsibilities(s):
    mix = toy.four_gaussians_2d()
    x = mix.sample(jax.random.key(0), 50) * 1.3
    clf = toy.exact_classifier(mix, s)
    for t in (1e-3, 0.3, 1.0):
        np.testing.assert_allclose(jax.nn.softmax(clf(x, t)), mix.perturbed(s, t).responsibilities(x), atol=1e-6)
    # per-sample times: row i uses t_i
    ts = jnp.linspace(0.05, 1.0, 50)
    per = jax.nn.softmax(clf(x, ts))
    np.testing.assert_allclose(per[7], mix.perturbed(s, ts[7]).responsibilities(x[7:8])[0], atol=1e-6)
    with pytest.raises(ValueError, match="x"):
        clf(jnp.zeros((2, 3)), 0.5)
    with pytest.raises(ValueError, match="t"):
        clf(x, 1.5)


def test_component():
    mix = toy.four_gaussians_2d()
    c = mix.component(2)
    np.testing.assert_array_equal(c.means, mix.means[2:3])
    np.testing.assert_array_equal(c.covs, mix.covs[2:3])
    assert c.n_components == 1 and float(c.weights[0]) == 1.0
    assert mix.component(np.int64(3)).n_components == 1
    with pytest.raises(ValueError, match="k"):
        mix.component(4)
    with pytest.raises(TypeError, match="k"):
        mix.component(1.0)
    with pytest.raises(TypeError, match="k"):
        mix.component(True)


# ------------------------------------------------------------------------------ exact_velocity (chapter 8)

from companion import paths  # noqa: E402

VELOCITY_PATHS = [paths.Rectified(), paths.from_sde(sde.VP()), paths.from_sde(sde.VE()),
                  paths.from_sde(sde.SubVP())]
VELOCITY_IDS = ["rectified", "vp", "ve", "subvp"]


def test_exact_velocity_of_a_1d_gaussian_in_closed_form():
    """Data N(mu, sigma^2) on the rectified path: x_t = (1 - t) mu + std(t) xi with
    std(t) = sqrt((1 - t)^2 sigma^2 + t^2), so u_t(x) = -mu + std'(t)/std(t) (x - (1 - t) mu)."""
    mu, sigma = 1.5, 0.7
    mix = toy.GaussianMixture([[mu]], [[[sigma**2]]], [1.0])
    v = toy.exact_velocity(mix, paths.Rectified())
    x = np.linspace(-3, 4, 7)[:, None]
    for t in (0.0, 0.3, 0.8, 1.0):
        std = np.sqrt((1 - t) ** 2 * sigma**2 + t**2)
        dstd = (-(1 - t) * sigma**2 + t) / std
        want = -mu + dstd / std * (x - (1 - t) * mu)
        np.testing.assert_allclose(v(jnp.asarray(x, jnp.float32), t), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("s", SDES, ids=["ve", "vp", "subvp"])
def test_exact_velocity_of_an_sde_path_is_the_probability_flow_drift(s):
    mix = random_mixture(3, K=3, d=2)
    x = mix.sample(jax.random.key(1), 64) * 1.5
    t = jnp.linspace(0.01, 1.0, 64)
    got = toy.exact_velocity(mix, paths.from_sde(s))(x, t)
    want = s.probability_flow_drift(toy.exact_score(mix, s), x, t)
    scale = float(jnp.max(jnp.abs(want)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6 * scale)


def test_exact_velocity_is_finite_at_both_ends_with_known_values():
    mix = toy.four_gaussians_2d()
    x = jnp.array([[0.3, -4.0], [2.0, 2.0], [-10.0, 7.0]])
    rect = toy.exact_velocity(mix, paths.Rectified())
    np.testing.assert_allclose(rect(x, 0.0), -x, rtol=1e-6)  # E[z - x_0 | x_0 = x] = -x
    np.testing.assert_allclose(rect(x, 1.0), x, rtol=1e-6, atol=1e-6)  # E[z - x_0 | z = x] = x - E[x_0]
    vp = sde.VP()
    v0 = toy.exact_velocity(mix, paths.from_sde(vp))(x, 0.0)
    np.testing.assert_allclose(v0, -0.05 * x - 0.05 * np.asarray(mix.score(x)), rtol=1e-5)  # beta_min / 2
    for p in VELOCITY_PATHS:
        for t in (0.0, 1.0):
            assert np.all(np.isfinite(toy.exact_velocity(mix, p)(x, t)))


@pytest.mark.parametrize("path", VELOCITY_PATHS[:2], ids=VELOCITY_IDS[:2])
def test_exact_velocity_is_the_posterior_mean_of_the_conditional_velocity(path):
    """Monte Carlo: E[a' x_0 + b' z | x_t = x] with x_0 ~ p_data weighted by N(x; a x_0, b^2 I)."""
    mix = random_mixture(5, K=3, d=2)
    x0 = np.asarray(mix.sample(jax.random.key(2), 400_000), np.float64)
    x = np.array([[0.5, -0.5], [1.0, 1.0]])
    t = 0.6
    a, b, da, db = (float(c) for c in path.coefficients(t))
    got = np.asarray(toy.exact_velocity(mix, path)(jnp.asarray(x, jnp.float32), t))
    for xi, gi in zip(x, got):
        logw = -np.sum((xi - a * x0) ** 2, 1) / (2 * b**2)
        w = np.exp(logw - logw.max())
        w /= w.sum()
        z = (xi - a * x0) / b
        want = w @ (da * x0 + db * z)
        se = np.sqrt(w**2 @ np.sum((da * x0 + db * z - want) ** 2, 1))  # self-normalised IS error
        assert np.all(np.abs(gi - want) < 5 * se + 1e-3), (gi, want, se)


def test_exact_velocity_solves_the_continuity_equation():
    """d/dt log p_t + div u + u . grad log p_t = 0 for the rectified path (autodiff in t and x)."""
    mix = random_mixture(7, K=2, d=2)
    path = paths.Rectified()
    v = toy.exact_velocity(mix, path)

    def log_p(x, t):  # p_t of the rectified path, built by hand: N(a mu, a^2 Sigma + b^2 I)
        m = toy.GaussianMixture((1 - t) * mix.means, (1 - t) ** 2 * mix.covs + t**2 * jnp.eye(2), mix.weights)
        return m.log_prob(x[None])[0]

    x = jnp.array([[0.2, -0.4], [1.5, 0.5], [-1.0, 2.0]])
    for t in (0.2, 0.5, 0.9):
        dt = jax.vmap(jax.grad(log_p, argnums=1), (0, None))(x, t)
        grad = jax.vmap(jax.grad(log_p), (0, None))(x, t)
        div = jax.vmap(lambda xi: jnp.trace(jax.jacfwd(lambda y: v(y[None], t)[0])(xi)))(x)
        residual = dt + div + jnp.sum(v(x, t) * grad, 1)
        np.testing.assert_allclose(residual, 0.0, atol=2e-4)


def test_exact_velocity_bad_times_raise():
    v = toy.exact_velocity(toy.four_gaussians_2d(), paths.Rectified())
    with pytest.raises(ValueError, match="t"):
        v(jnp.zeros((2, 2)), 1.5)
    with pytest.raises(ValueError, match="x"):
        v(jnp.zeros((2, 3)), 0.5)
