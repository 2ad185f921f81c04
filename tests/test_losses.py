"""companion.losses: hand-computed values, agreement in expectation, importance sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from companion import losses, toy
from companion import sde as sdes

VP = sdes.VP()


def vp_by_hand(t):
    """m(t), s(t), g(t)^2 of VP(0.1, 20) in NumPy, independent of companion.sde."""
    B = 0.1 * t + 0.5 * t**2 * 19.9
    return np.exp(-B / 2), np.sqrt(1 - np.exp(-B)), 0.1 + 19.9 * t


def draws(key, x0, eps, T=1.0):
    """The times and noise a loss draws from ``key`` (the documented key split)."""
    k_t, k_x, k_v = jax.random.split(key, 3)
    t = np.asarray(jax.random.uniform(k_t, (x0.shape[0],), x0.dtype, minval=eps, maxval=T), np.float64)
    z = np.asarray(jax.random.normal(k_x, x0.shape, x0.dtype), np.float64)
    return t, z, k_v


X0 = jnp.array([[0.5, -1.0], [2.0, 0.0], [-1.5, 1.0]])
A = np.array([[1.0, 0.3], [-0.2, 0.5]])


def linear_model(x, t):
    return -x @ jnp.asarray(A, x.dtype).T


@pytest.mark.parametrize("weighting", ["sigma2", "likelihood", "none"])
def test_dsm_matches_a_hand_computation(weighting):
    key = jax.random.key(7)
    loss = losses.denoising_score_matching(VP, weighting=weighting, eps=1e-3)
    got = np.asarray(loss.per_sample(linear_model, X0, key))
    t, z, _ = draws(key, X0, 1e-3)
    m, s, g2 = vp_by_hand(t)
    xt = m[:, None] * np.asarray(X0) + s[:, None] * z
    lam = {"sigma2": s**2, "likelihood": g2, "none": np.ones_like(t)}[weighting]
    want = lam * 0.5 * np.sum((-xt @ A.T + z / s[:, None]) ** 2, axis=1)
    np.testing.assert_allclose(got, want, rtol=2e-4)
    np.testing.assert_allclose(float(loss(linear_model, X0, key)), want.mean(), rtol=2e-4)


def test_ism_matches_a_hand_computation():
    key = jax.random.key(8)
    got = np.asarray(losses.implicit_score_matching(VP, weighting="likelihood", eps=1e-3).per_sample(linear_model, X0, key))
    t, z, _ = draws(key, X0, 1e-3)
    m, s, g2 = vp_by_hand(t)
    xt = m[:, None] * np.asarray(X0) + s[:, None] * z
    want = g2 * (np.trace(-A) + 0.5 * np.sum((xt @ A.T) ** 2, axis=1))  # tr of d(-A x)/dx = -tr A
    np.testing.assert_allclose(got, want, rtol=2e-4)


def test_ssm_matches_a_hand_computation():
    key = jax.random.key(9)
    loss = losses.sliced_score_matching(VP, eps=1e-3, n_projections=3)
    got = np.asarray(loss.per_sample(linear_model, X0, key))
    t, z, k_v = draws(key, X0, 1e-3)
    m, s, _ = vp_by_hand(t)
    xt = m[:, None] * np.asarray(X0) + s[:, None] * z
    v = np.asarray(jax.random.rademacher(k_v, (3,) + X0.shape, jnp.float32), np.float64)
    score = -xt @ A.T
    vjv = np.einsum("pni,ij,pnj->pn", v, -A, v)
    want = s**2 * np.mean(vjv + 0.5 * np.einsum("pni,ni->pn", v, score) ** 2, axis=0)
    np.testing.assert_allclose(got, want, rtol=2e-4)


def test_ssm_equals_ism_in_one_dimension():
    # a Rademacher projection in 1-D is +-1: v J v = J and (v s)^2 = s^2, exactly
    x0 = jnp.array([[0.3], [-1.0], [2.0], [0.0]])
    model = lambda x, t: jnp.sin(x) * (1 + t[:, None])
    key = jax.random.key(3)
    ism = losses.implicit_score_matching(VP).per_sample(model, x0, key)
    ssm = losses.sliced_score_matching(VP, n_projections=2).per_sample(model, x0, key)
    np.testing.assert_allclose(ssm, ism, rtol=1e-5, atol=1e-6)


MIX = toy.two_gaussians_1d()


@pytest.fixture(scope="module")
def batch():
    return jax.jit(lambda k: MIX.sample(k, 20_000))(jax.random.key(0))


@pytest.mark.parametrize("weighting", ["sigma2", "likelihood"])
def test_dsm_minus_its_value_at_the_true_score_is_the_fisher_divergence(batch, weighting):
    """DSM(model) - DSM(true score) = weighted Fisher divergence, in expectation (same draws)."""
    true = toy.exact_score(MIX, VP)
    model = lambda x, t: 0.8 * true(x, t) - 0.2 * x
    key = jax.random.key(11)
    dsm = losses.denoising_score_matching(VP, weighting=weighting, eps=1e-3)
    fisher = losses.fisher_divergence(VP, true, weighting=weighting, eps=1e-3)
    diff = jax.jit(lambda x: dsm.per_sample(model, x, key) - dsm.per_sample(true, x, key))(batch)
    fd = jax.jit(lambda x: fisher.per_sample(model, x, key))(batch)
    # same t and x_t in all three: the difference of the two has mean 0 (Vincent 2011)
    err = np.asarray(diff - fd)
    assert abs(err.mean()) < 4 * err.std() / np.sqrt(err.size)
    assert float(fd.mean()) > 0


def test_ism_and_dsm_gradients_agree_in_expectation(batch):
    """The two losses differ by a model-independent constant: their gradients agree on average."""

    def model_of(theta):
        return lambda x, t: -theta[0] * x - theta[1] + theta[2] * jnp.tanh(x) * t[:, None]

    theta = jnp.array([0.7, 0.2, 0.5])
    ism = losses.implicit_score_matching(VP, weighting="likelihood", eps=1e-2)
    dsm = losses.denoising_score_matching(VP, weighting="likelihood", eps=1e-2)
    # 100 minibatches of 200, each with its own key; ISM and DSM see the same t and x_t
    xs = batch.reshape(100, 200, 1)
    keys = jax.random.split(jax.random.key(12), 100)
    grads = lambda loss: np.asarray(jax.jit(jax.vmap(
        lambda x, k: jax.grad(lambda th: loss(model_of(th), x, k))(theta)))(xs, keys))
    g_ism, g_dsm = grads(ism), grads(dsm)
    diff = g_dsm - g_ism
    se = diff.std(axis=0) / np.sqrt(diff.shape[0])
    assert np.all(np.abs(diff.mean(axis=0)) < 4 * se), (diff.mean(axis=0), se)
    assert np.all(np.abs(g_ism.mean(axis=0)) > 4 * se)  # the gradients themselves are far from 0


def test_importance_sampling_keeps_the_mean_and_cuts_the_variance(batch):
    true = toy.exact_score(MIX, VP)
    model = lambda x, t: 0.9 * true(x, t)
    plain = losses.denoising_score_matching(VP, weighting="likelihood", eps=1e-4)
    imp = losses.denoising_score_matching(VP, weighting="likelihood", eps=1e-4, importance_sampling=True)
    a = np.asarray(jax.jit(lambda x: plain.per_sample(model, x, jax.random.key(1)))(batch))
    b = np.asarray(jax.jit(lambda x: imp.per_sample(model, x, jax.random.key(2)))(batch))
    se = np.sqrt(a.var() / a.size + b.var() / b.size)
    assert abs(a.mean() - b.mean()) < 4 * se
    assert a.std() > 4 * b.std()  # measured about 8x


def test_time_sampler_is_exactly_unbiased():
    rate = lambda t: VP.diffusion(t) ** 2 / VP.kernel_std(t) ** 2
    sampler = losses.TimeSampler(rate, 1e-4, 1.0)
    t, w = sampler.sample(jax.random.key(0), 200_000)
    t, w = np.asarray(t, np.float64), np.asarray(w, np.float64)
    assert t.min() >= 1e-4 and t.max() <= 1.0
    # E_r[w h(t)] = mean of h under U(eps, T), for any h
    for h in (lambda s: np.ones_like(s), lambda s: s, lambda s: np.sqrt(s)):
        est, se = np.mean(w * h(t)), np.std(w * h(t)) / np.sqrt(t.size)
        grid = np.linspace(1e-4, 1.0, 200_001)
        exact = np.trapezoid(h(grid), grid) / (1.0 - 1e-4)
        assert abs(est - exact) < 4 * se + 1e-6
    # the times crowd where lambda / s^2 is large (t -> 0)
    assert np.mean(t < 0.01) > 0.2


def test_sigma2_importance_sampling_is_uniform():
    sampler = losses.TimeSampler(lambda t: jnp.ones_like(t), 1e-3, 1.0)
    _, w = sampler.sample(jax.random.key(0), 1000)
    np.testing.assert_allclose(w, 1.0, rtol=1e-4)


def test_without_the_cut_off_the_likelihood_weighted_loss_blows_up(batch):
    """lambda / s^2 ~ 1/t near 0 and the noise-prediction error -> ||z||^2 / 2 (mean 1/2 in 1-D),
    so the expected loss grows like log(1 / eps) / 2: + log(100) / 2 = 2.30 per factor 100."""
    true = toy.exact_score(MIX, VP)
    model = lambda x, t: 0.9 * true(x, t)
    means, ses = [], []
    for eps in (1e-2, 1e-4, 1e-6):
        loss = losses.denoising_score_matching(VP, weighting="likelihood", eps=eps, importance_sampling=True)
        v = np.asarray(jax.jit(lambda x: loss.per_sample(model, x, jax.random.key(3)))(batch))
        means.append(v.mean())
        ses.append(v.std() / np.sqrt(v.size))
    for i in (0, 1):
        tol = 4 * np.hypot(ses[i], ses[i + 1]) + 0.05  # Monte Carlo + the O(s) part of the error
        assert abs(means[i + 1] - means[i] - np.log(100) / 2) < tol, (means, ses)


def test_losses_are_differentiable_scalars_under_jit():
    loss = losses.denoising_score_matching(VP, importance_sampling=True)
    f = jax.jit(jax.value_and_grad(lambda th: loss(lambda x, t: -th * x, X0, jax.random.key(0))))
    value, grad = f(1.0)
    assert value.shape == () and np.isfinite(value) and np.isfinite(grad)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: losses.denoising_score_matching(VP, weighting="kl"), "weighting"),
        (lambda: losses.denoising_score_matching(VP, eps=0.0), "eps"),
        (lambda: losses.denoising_score_matching(VP, eps=1.0), "eps"),
        (lambda: losses.implicit_score_matching(VP, eps=-1e-3), "eps"),
        (lambda: losses.sliced_score_matching(VP, n_projections=0), "n_projections"),
        (lambda: losses.sliced_score_matching(VP, projection="sphere"), "probe"),
    ],
)
def test_bad_options_raise_value_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_sde_must_be_an_sde():
    with pytest.raises(TypeError, match="sde"):
        losses.denoising_score_matching("VP")


# ------------------------------------------------------------------------------ flow matching (chapter 8)

from companion import paths  # noqa: E402


def test_flow_matching_per_sample_by_hand():
    """Rectified path: x_t = (1 - t) x0 + t z, target z - x0, with the documented key split."""
    model = lambda x, t: x * jnp.array([1.0, -0.5]) + t[:, None]
    key = jax.random.key(3)
    k_t, k_z = jax.random.split(key)
    t = np.asarray(jax.random.uniform(k_t, (3,), X0.dtype, minval=1e-5, maxval=1.0), np.float64)
    z = np.asarray(jax.random.normal(k_z, X0.shape, X0.dtype), np.float64)
    x0 = np.asarray(X0, np.float64)
    xt = (1 - t[:, None]) * x0 + t[:, None] * z
    pred = xt * np.array([1.0, -0.5]) + t[:, None]
    want = np.sum((pred - (z - x0)) ** 2, 1) / 2
    got = losses.flow_matching(paths.Rectified()).per_sample(model, X0, key)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_flow_matching_coupled_uses_the_given_noise():
    z = jnp.array([[1.0, 0.0], [0.0, -1.0], [2.0, 2.0]])
    pairs = jnp.stack([X0, z], axis=1)
    loss = losses.flow_matching(paths.Rectified(), coupled=True)
    exact = lambda x, t: z - X0  # the conditional velocity of these very pairs (x_t is unused)
    np.testing.assert_allclose(loss.per_sample(exact, pairs, jax.random.key(0)), 0.0, atol=1e-12)
    with pytest.raises(ValueError, match="x0"):
        loss.per_sample(exact, X0, jax.random.key(0))


@pytest.mark.parametrize("path", [paths.Rectified(), paths.from_sde(VP)], ids=["rectified", "vp"])
def test_flow_matching_is_minimised_by_the_exact_velocity(path):
    """E loss(u + delta) - E loss(u) = E |delta|^2 / 2: the cross term vanishes because u is the
    conditional mean of the target (the flow-matching identity). Checked for a constant shift and a
    shift that depends on x and t, with the same draws (common random numbers)."""
    mix = toy.four_gaussians_2d()
    x0 = mix.sample(jax.random.key(4), 200_000)
    u = toy.exact_velocity(mix, path)
    loss = losses.flow_matching(path, eps=1e-3)
    key = jax.random.key(5)
    base = loss.per_sample(u, x0, key)
    for delta in (lambda x, t: jnp.full_like(x, 0.3), lambda x, t: jnp.sin(x) * t[:, None]):
        shifted = loss.per_sample(lambda x, t: u(x, t) + delta(x, t), x0, key)
        diff = np.asarray(shifted - base, np.float64)
        # the part |delta|^2 / 2 has no target in it; the rest has mean 0
        k_t, k_z = jax.random.split(key)
        t = jax.random.uniform(k_t, (x0.shape[0],), x0.dtype, minval=1e-3, maxval=1.0)
        xt, _ = path.sample(k_z, x0, t)
        half_sq = np.asarray(jnp.sum(delta(xt, t) ** 2, 1) / 2, np.float64)
        cross = diff - half_sq
        se = cross.std() / np.sqrt(len(cross))
        assert abs(cross.mean()) < 4 * se + 1e-4, (cross.mean(), se)
        assert half_sq.mean() > 40 * se  # the test has power: a wrong minimiser would show


def test_velocity_from_score_is_the_probability_flow_drift(any_sde):
    s = any_sde
    mix = toy.four_gaussians_2d()
    x = mix.sample(jax.random.key(6), 32)
    t = jnp.linspace(0.01, 1.0, 32)
    score = toy.exact_score(mix, s)
    p = paths.from_sde(s)
    v = losses.velocity_from_score(p, score)(x, t)
    want = s.probability_flow_drift(score, x, t)
    np.testing.assert_allclose(v, want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))
    back = losses.score_from_velocity(p, lambda x, t: s.probability_flow_drift(score, x, t))(x, t)
    np.testing.assert_allclose(back, score(x, t), rtol=1e-4, atol=1e-4)


def test_velocity_score_conversion_on_the_rectified_path():
    """Against the exact velocity and the score of p_t = N(a mu, a^2 Sigma + b^2 I) built by hand."""
    mix = toy.four_gaussians_2d()
    x = mix.sample(jax.random.key(7), 16) * 0.8
    p = paths.Rectified()
    for t in (0.1, 0.5, 0.9):
        pt = toy.GaussianMixture((1 - t) * mix.means, (1 - t) ** 2 * mix.covs + t**2 * jnp.eye(2), mix.weights)
        score = lambda x, tt, pt=pt: pt.score(x)
        u = toy.exact_velocity(mix, p)
        tv = jnp.full((16,), t)
        np.testing.assert_allclose(losses.velocity_from_score(p, score)(x, tv), u(x, tv), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(losses.score_from_velocity(p, u)(x, tv), pt.score(x), rtol=1e-4, atol=1e-4)


def test_flow_matching_bad_options():
    with pytest.raises(TypeError, match="path"):
        losses.flow_matching(VP)
    with pytest.raises(ValueError, match="eps"):
        losses.flow_matching(paths.Rectified(), eps=0.0)
    with pytest.raises(TypeError, match="path"):
        losses.velocity_from_score(VP, lambda x, t: x)


# --------------------------------------------------------------------------- conditional generation (chapter 6)


def test_classifier_loss():
    """log K for a uniform classifier; the Bayes classifier of p_t does clearly better."""
    mix = toy.four_gaussians_2d()
    loss = losses.classifier_loss(VP)
    batch = mix.sample(jax.random.key(0), 2000, return_labels=True)
    uniform = lambda x, t: jnp.zeros((x.shape[0], 4))
    np.testing.assert_allclose(float(loss(uniform, batch, jax.random.key(1))), np.log(4), rtol=1e-6)
    # the Bayes classifier of p_t is the minimiser: it beats the uniform guess clearly
    bayes = float(loss(toy.exact_classifier(mix, VP), batch, jax.random.key(1)))
    assert 0.0 < bayes < np.log(4) - 0.3
    with pytest.raises(ValueError, match="eps"):
        losses.classifier_loss(VP, eps=0.0)
    with pytest.raises(TypeError, match="sde"):
        losses.classifier_loss("VP")


def test_classifier_loss_is_the_cross_entropy_at_the_documented_draws():
    """t ~ U(eps, T) and x_t from the kernel with k_t, k_x = split(key): the mean of
    -log softmax(logits)[y], by hand in NumPy for a linear classifier."""
    W = np.array([[1.0, -0.5, 0.2], [0.3, 0.8, -1.0]])
    x0, y = X0, jnp.array([0, 2, 1])
    key = jax.random.key(3)
    k_t, k_x = jax.random.split(key)
    t = jax.random.uniform(k_t, (3,), x0.dtype, minval=1e-3, maxval=1.0)
    xt = np.asarray(VP.perturb(k_x, x0, t)[0], np.float64)
    logits = xt @ W
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    want = -np.mean(log_p[np.arange(3), np.asarray(y)])
    got = float(losses.classifier_loss(VP)(lambda x, t: x @ jnp.asarray(W, x.dtype), (x0, y), key))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_label_dropout_loss_drops_labels_and_is_dsm():
    """A model that ignores y gets plain denoising score matching; a model that uses y is
    scored with each label replaced by the null label at rate p_uncond."""
    mix = toy.four_gaussians_2d()
    x0, y = mix.sample(jax.random.key(0), 4000, return_labels=True)
    exact = toy.exact_score(mix, VP)
    key = jax.random.key(1)
    k_drop, k_dsm = jax.random.split(key)
    dsm = losses.denoising_score_matching(VP)
    loss = losses.label_dropout_loss(VP, null_label=4, p_uncond=0.25)
    np.testing.assert_allclose(float(loss(lambda x, t, lab: exact(x, t), (x0, y), key)),
                               float(dsm(exact, x0, k_dsm)), rtol=1e-5)
    uses_y = lambda x, t, lab: exact(x, t) * (1.0 + 0.1 * lab[:, None])
    dropped = jnp.where(jax.random.bernoulli(k_drop, 0.25, y.shape), 4, y)
    assert abs(float(jnp.mean(dropped == 4)) - 0.25) < 4 * np.sqrt(0.25 * 0.75 / 4000)
    np.testing.assert_allclose(float(loss(uses_y, (x0, y), key)),
                               float(dsm(lambda x, t: uses_y(x, t, dropped), x0, k_dsm)), rtol=1e-5)
    # and not the loss with the labels kept: the dropout changes the value
    kept = float(dsm(lambda x, t: uses_y(x, t, y), x0, k_dsm))
    assert abs(float(loss(uses_y, (x0, y), key)) - kept) > 1e-3 * abs(kept)
    with pytest.raises(ValueError, match="p_uncond"):
        losses.label_dropout_loss(VP, 4, p_uncond=1.0)
