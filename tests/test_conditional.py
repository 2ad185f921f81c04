"""companion.conditional: guidance, classifier-free mixing, the classifier loss, imputation
and the exact references for Gaussian mixtures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from companion import conditional as C
from companion import sampling, toy
from companion.sde import VE, VP


@pytest.fixture(scope="module")
def sde():
    return VP()


@pytest.fixture(scope="module")
def mix():
    return toy.four_gaussians_2d()


def _random_mixture(key, K=3, d=3):
    k1, k2, k3 = jax.random.split(key, 3)
    a = jax.random.normal(k2, (K, d, d))
    covs = a @ jnp.swapaxes(a, -1, -2) + 0.3 * jnp.eye(d)
    weights = jax.nn.softmax(jax.random.normal(k3, (K,)))
    return toy.GaussianMixture(2 * jax.random.normal(k1, (K, d)), covs, weights / weights.sum())


# --------------------------------------------------------------------------- exact references


@pytest.mark.parametrize("observed", [[1], [0, 2], np.array([True, False, False])])
def test_mixture_conditional_is_the_joint_divided_by_the_marginal(observed):
    """log p(x) - log p(x_u | x_o) must not depend on x_u: it is log p(x_o)."""
    m = _random_mixture(jax.random.key(0))
    o = np.flatnonzero(observed) if np.asarray(observed).dtype == bool else np.asarray(observed)
    u = np.setdiff1d(np.arange(3), o)
    x_o = jnp.linspace(-0.5, 0.7, o.size)
    cond = C.mixture_conditional(m, x_o, observed)
    assert cond.dim == u.size and cond.n_components == 3
    np.testing.assert_allclose(float(cond.weights.sum()), 1.0, rtol=1e-6)
    x_u = 1.5 * jax.random.normal(jax.random.key(1), (7, u.size))
    full = jnp.zeros((7, 3)).at[:, u].set(x_u).at[:, o].set(x_o)
    diff = np.asarray(m.log_prob(full) - cond.log_prob(x_u))
    np.testing.assert_allclose(diff, diff[0], atol=2e-5)
    # and that constant is log p(x_o): the marginal of o is a mixture of the o-blocks
    marg = toy.GaussianMixture(m.means[:, o], m.covs[:, o][:, :, o], m.weights)
    np.testing.assert_allclose(diff[0], float(marg.log_prob(x_o[None])[0]), atol=2e-5)


def test_mixture_conditional_of_the_course_mixture(mix):
    """Four equal corners: given x_1 = 2, x_2 is 0.5 N(-2, 0.25) + 0.5 N(2, 0.25)."""
    cond = C.mixture_conditional(mix, jnp.array([2.0]), [0])
    keep = np.asarray(cond.weights) > 1e-6
    np.testing.assert_allclose(np.asarray(cond.weights)[keep], [0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(np.asarray(cond.means)[keep, 0], [-2.0, 2.0], atol=1e-6)
    np.testing.assert_allclose(np.asarray(cond.covs)[:, 0, 0], 0.25, atol=1e-6)


@pytest.mark.parametrize("observed, x_o, match", [
    ([], [], "observed"), ([0, 1], [1.0, 2.0], "observed"), ([0, 0], [1.0, 1.0], "distinct"),
    ([5], [1.0], "coordinates"), ([0], [1.0, 2.0], "x_observed"), ("a", [1.0], "observed"),
])
def test_mixture_conditional_rejects_bad_input(mix, observed, x_o, match):
    with pytest.raises((ValueError, TypeError), match=match):
        C.mixture_conditional(mix, jnp.asarray(x_o), observed)


def test_exact_classifier_is_the_perturbed_responsibilities(mix, sde):
    x = mix.sample(jax.random.key(0), 50) * 1.3
    clf = C.exact_classifier(mix, sde)
    for t in (1e-3, 0.3, 1.0):
        np.testing.assert_allclose(jax.nn.softmax(clf(x, t)), mix.perturbed(sde, t).responsibilities(x), atol=1e-6)
    # per-sample times: row i uses t_i
    ts = jnp.linspace(0.05, 1.0, 50)
    per = jax.nn.softmax(clf(x, ts))
    np.testing.assert_allclose(per[7], mix.perturbed(sde, ts[7]).responsibilities(x[7:8])[0], atol=1e-6)


def test_class_mixture(mix):
    c = C.class_mixture(mix, 2)
    np.testing.assert_array_equal(c.means, mix.means[2:3])
    assert float(c.weights[0]) == 1.0
    with pytest.raises(ValueError, match="y"):
        C.class_mixture(mix, 4)
    with pytest.raises(TypeError, match="y"):
        C.class_mixture(mix, 1.0)


# --------------------------------------------------------------------------- guidance


@pytest.mark.parametrize("make_sde", [VP, VE])
def test_guidance_with_the_bayes_classifier_is_the_class_score(mix, make_sde):
    """Eq. (eq-cond-score): score + grad log p_t(y | x) = grad log p_t(x | y), and classifier-free
    guidance with the exact scores equals classifier guidance with the Bayes classifier."""
    sde = make_sde()
    score = toy.exact_score(mix, sde)
    x = mix.sample(jax.random.key(1), 64)
    for t in (0.05, 0.5):
        xt = sde.perturb(jax.random.key(2), x, jnp.full(64, t))[0]
        for y in (0, 3):
            cls = toy.exact_score(C.class_mixture(mix, y), sde)
            guided = C.guided_score(score, C.exact_classifier(mix, sde), y, 1.0)
            scale = float(jnp.max(jnp.abs(cls(xt, t)))) + 1.0
            np.testing.assert_allclose(guided(xt, t), cls(xt, t), atol=2e-5 * scale)
            g3 = C.guided_score(score, C.exact_classifier(mix, sde), y, 3.0)
            np.testing.assert_allclose(g3(xt, t), C.classifier_free(cls, score, 3.0)(xt, t), atol=5e-5 * scale)


def test_classifier_grad_of_a_linear_classifier():
    """logits = x W: grad_x log softmax_y = W[:, y] - W p(x)."""
    W = jax.random.normal(jax.random.key(0), (3, 4))
    x = jax.random.normal(jax.random.key(1), (5, 3))
    y = jnp.array([0, 1, 2, 3, 0])
    got = C.classifier_grad(lambda x, t: x @ W, y)(x, 0.5)
    p = jax.nn.softmax(x @ W)
    want = W[:, y].T - p @ W.T
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(C.classifier_log_prob(lambda x, t: x @ W, 2)(x, 0.5), jnp.log(p[:, 2]), atol=1e-5)


def test_guidance_rejects_bad_arguments(mix, sde):
    score = toy.exact_score(mix, sde)
    clf = C.exact_classifier(mix, sde)
    with pytest.raises(ValueError, match="scale"):
        C.guided_score(score, clf, 0, -1.0)
    with pytest.raises(TypeError, match="score_fn"):
        C.guided_score(None, clf, 0)
    with pytest.raises(TypeError, match="classifier"):
        C.guided_score(score, 3, 0)
    with pytest.raises(TypeError, match="y"):
        C.guided_score(score, clf, 0.5)(jnp.zeros((2, 2)), 0.5)
    with pytest.raises(ValueError, match="y"):
        C.guided_score(score, clf, jnp.array([0, 1, 2]))(jnp.zeros((2, 2)), 0.5)
    with pytest.raises(TypeError, match="cond_score_fn"):
        C.classifier_free("no", score, 1.0)


def test_guided_samples_fall_in_their_class(mix, sde):
    """Sampling the reverse SDE with the exact score and Bayes classifier (scale 1) draws from
    p(x | y): the exact classifier at t = eps puts at most a few in 1 000 in another class
    (the Bayes error of the corners is 3e-5; the sampler's discretisation adds a little)."""
    n = 1000
    for y in (0, 2):
        guided = C.guided_score(toy.exact_score(mix, sde), C.exact_classifier(mix, sde), y, 1.0)
        x, nfe = sampling.euler_maruyama(sde, guided, jax.random.key(y), (n, 2), n_steps=200)
        assert nfe == 200
        labels = np.argmax(np.asarray(mix.responsibilities(x)), axis=1)
        assert np.mean(labels == y) >= 0.995
        # the class is N(mu_y, 0.25 I): sample mean within 4 standard errors (0.5 / sqrt(n))
        np.testing.assert_allclose(np.asarray(x).mean(0), np.asarray(mix.means[y]), atol=4 * 0.5 / np.sqrt(n) + 0.02)


def test_guidance_scale_sharpens_the_classifier(mix, sde):
    """A larger scale puts more mass where p_t(y | x) is high: at t = 0.6, where the classes
    overlap, guided samples from scale 4 are classified as y by the Bayes classifier more
    often than those of scale 1."""
    score = toy.exact_score(mix, sde)
    clf = C.exact_classifier(mix, sde)
    rates = []
    for scale in (1.0, 4.0):
        x, _ = sampling.euler_maruyama(sde, C.guided_score(score, clf, 1, scale), jax.random.key(0), (500, 2),
                                       n_steps=100, eps=0.6)
        rates.append(float(jnp.mean(jax.nn.softmax(clf(x, 0.6))[:, 1])))
    assert rates[1] > rates[0] + 0.1


# --------------------------------------------------------------------------- the classifier loss


def test_classifier_loss(mix, sde):
    loss = C.classifier_loss(sde)
    batch = mix.sample(jax.random.key(0), 2000, return_labels=True)
    uniform = lambda x, t: jnp.zeros((x.shape[0], 4))
    np.testing.assert_allclose(float(loss(uniform, batch, jax.random.key(1))), np.log(4), rtol=1e-6)
    # the Bayes classifier of p_t is the minimiser: it beats the uniform guess clearly
    bayes = float(loss(C.exact_classifier(mix, sde), batch, jax.random.key(1)))
    assert 0.0 < bayes < np.log(4) - 0.3
    with pytest.raises(ValueError, match="eps"):
        C.classifier_loss(sde, eps=0.0)


# --------------------------------------------------------------------------- imputation


def test_imputation_matches_the_exact_conditional(mix, sde):
    """Given x_1 = 2 (and, off the modes, x_1 = 0.5), the replacement method with the exact
    score samples x_2 from the exact conditional 0.5 N(-2, 0.25) + 0.5 N(2, 0.25):
    the coordinates of the four corners are independent, so it is exact here."""
    n = 2000
    for x1 in (2.0, 0.5):
        x_known = jnp.zeros((n, 2)).at[:, 0].set(x1)
        x, nfe = C.impute(sde, toy.exact_score(mix, sde), jax.random.key(0), x_known, jnp.array([True, False]),
                          n_steps=200)
        assert nfe == 200
        np.testing.assert_array_equal(np.asarray(x[:, 0]), x1)  # known part returned exactly
        x2 = np.asarray(x[:, 1])
        cond = C.mixture_conditional(mix, jnp.array([x1]), [0])
        w_up = float(cond.weights[np.asarray(cond.means[:, 0]) > 0].sum())
        se = np.sqrt(w_up * (1 - w_up) / n)  # binomial standard error of the fraction above 0
        assert abs(np.mean(x2 > 0) - w_up) < 4 * se
        for side in (x2[x2 > 0], -x2[x2 < 0]):
            assert abs(side.mean() - 2.0) < 4 * 0.5 / np.sqrt(side.size) + 0.02
            assert abs(side.std() - 0.5) < 0.05


def test_impute_with_a_corrector_and_image_shaped_data(sde):
    """Shapes (n, h, w, c) with a per-sample mask; the known pixels come back unchanged."""
    g = toy.GaussianMixture(jnp.zeros((1, 4)), jnp.eye(4)[None], jnp.ones(1))
    score4 = toy.exact_score(g, sde)
    score = lambda x, t: score4(x.reshape(x.shape[0], 4), t).reshape(x.shape)
    x_known = jnp.arange(8.0).reshape(2, 2, 2, 1)
    mask = jnp.array([[[[True], [False]], [[False], [True]]], [[[False], [False]], [[True], [True]]]])
    x, nfe = C.impute(sde, score, jax.random.key(0), x_known, mask, n_steps=20, n_corrector=1,
                      predictor="reverse_diffusion")
    assert x.shape == (2, 2, 2, 1) and nfe == 40
    np.testing.assert_array_equal(np.asarray(x)[np.asarray(mask)], np.asarray(x_known)[np.asarray(mask)])
    assert np.all(np.isfinite(np.asarray(x)))


@pytest.mark.parametrize("kwargs, match", [
    ({"mask": jnp.array([1, 0])}, "mask"), ({"mask": jnp.array([True, False, True])}, "mask"),
    ({"n_steps": 0}, "n_steps"), ({"predictor": "heun"}, "predictor"), ({"eps": 2.0}, "eps"),
    ({"x_known": jnp.zeros(3)}, "x_known"),
])
def test_impute_rejects_bad_arguments(mix, sde, kwargs, match):
    args = {"x_known": jnp.zeros((3, 2)), "mask": jnp.array([True, False])}
    args.update(kwargs)
    x_known, mask = args.pop("x_known"), args.pop("mask")
    with pytest.raises((ValueError, TypeError), match=match):
        C.impute(sde, toy.exact_score(mix, sde), jax.random.key(0), x_known, mask, **args)


# --------------------------------------------------------------------------- classifier-free training


def test_label_dropout_loss_drops_labels_and_is_dsm(mix, sde):
    """A model that ignores y gets plain denoising score matching; a model that uses y is
    scored with each label replaced by the null label at rate p_uncond."""
    from companion import losses

    x0, y = mix.sample(jax.random.key(0), 4000, return_labels=True)
    exact = toy.exact_score(mix, sde)
    key = jax.random.key(1)
    k_drop, k_dsm = jax.random.split(key)
    dsm = losses.denoising_score_matching(sde)
    loss = C.label_dropout_loss(sde, null_label=4, p_uncond=0.25)
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
        C.label_dropout_loss(sde, 4, p_uncond=1.0)
