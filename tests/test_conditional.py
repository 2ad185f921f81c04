"""companion.conditional: classifier guidance, classifier-free mixing and imputation.

The exact references they are checked against (the class mixture, the Bayes classifier,
the conditional mixture) are tested in test_toy.py, the classifier and label-dropout
losses in test_losses.py."""

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
            cls = toy.exact_score(mix.component(y), sde)
            guided = C.guided_score(score, toy.exact_classifier(mix, sde), y, 1.0)
            scale = float(jnp.max(jnp.abs(cls(xt, t)))) + 1.0
            np.testing.assert_allclose(guided(xt, t), cls(xt, t), atol=2e-5 * scale)
            g3 = C.guided_score(score, toy.exact_classifier(mix, sde), y, 3.0)
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
    clf = toy.exact_classifier(mix, sde)
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
        guided = C.guided_score(toy.exact_score(mix, sde), toy.exact_classifier(mix, sde), y, 1.0)
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
    clf = toy.exact_classifier(mix, sde)
    rates = []
    for scale in (1.0, 4.0):
        x, _ = sampling.euler_maruyama(sde, C.guided_score(score, clf, 1, scale), jax.random.key(0), (500, 2),
                                       n_steps=100, eps=0.6)
        rates.append(float(jnp.mean(jax.nn.softmax(clf(x, 0.6))[:, 1])))
    assert rates[1] > rates[0] + 0.1


def test_guided_scores_are_pytrees_one_compiled_sampler_for_every_scale_label_and_model(mix, sde):
    """The guided scores are pytree callables with the scale, the labels and the models'
    weights as leaves (issue 14): sampling again with another scale, label or model of
    the same architecture compiles nothing new (the score is traced only once) and uses
    the new values, the same samples as a closure with them as constants."""
    from flax import nnx

    from companion import nets

    traces = []

    class Counting(nnx.Module):  # records every trace of the score inside the sampler
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, x, t):
            traces.append(1)
            return self.inner(x, t)

    def run(score):
        return sampling.euler_maruyama(sde, score, jax.random.key(0), (64, 2), n_steps=10)[0]

    clf = toy.exact_classifier(mix, sde)
    exact = Counting(toy.exact_score(mix, sde))  # a plain function inside: static, as before
    x1 = run(C.guided_score(exact, clf, 1, 1.0))
    n = len(traces)
    assert n > 0
    x4 = run(C.guided_score(exact, clf, 1, 4.0))
    x2 = run(C.guided_score(exact, clf, 2, 1.0))
    assert len(traces) == n, "a new guidance scale or label recompiled the sampler"
    cls1 = toy.exact_score(mix.component(1), sde)  # one function object: static, reused
    free = run(C.classifier_free(cls1, exact, 3.0))
    n = len(traces)
    free2 = run(C.classifier_free(cls1, exact, 2.0))
    assert len(traces) == n, "a new classifier-free scale recompiled the sampler"
    assert not np.allclose(x1, x4) and not np.allclose(x1, x2) and not np.allclose(free, free2)
    closure = lambda x, t: exact(x, t) + 4.0 * C.classifier_grad(clf, 1)(x, t)
    np.testing.assert_allclose(x4, run(closure), rtol=1e-5, atol=1e-5)
    # models: the weights are traced, so a second model and classifier reuse the program
    models = [Counting(nets.ScoreMLP(2, hidden=16, depth=2, sde=sde, rngs=nnx.Rngs(i))) for i in (1, 2)]
    clfs = [nets.TimeClassifier(2, 4, hidden=16, depth=2, rngs=nnx.Rngs(i)) for i in (3, 4)]
    y = jnp.repeat(jnp.arange(4), 16)
    a = run(C.guided_score(models[0], clfs[0], y, 1.0))
    n = len(traces)
    b = run(C.guided_score(models[1], clfs[1], y, 3.0))
    assert len(traces) == n, "a second model of the same architecture recompiled the sampler"
    assert not np.allclose(a, b)
    constants = lambda x, t: models[1](x, t) + 3.0 * C.classifier_grad(clfs[1], y)(x, t)
    np.testing.assert_allclose(b, run(constants), rtol=1e-4, atol=1e-4)


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
        cond = mix.condition(jnp.array([x1]), [0])
        w_up = float(cond.weights[np.asarray(cond.means[:, 0]) > 0].sum())
        se = np.sqrt(w_up * (1 - w_up) / n)  # binomial standard error of the fraction above 0
        assert abs(np.mean(x2 > 0) - w_up) < 4 * se
        for side in (x2[x2 > 0], -x2[x2 < 0]):
            assert abs(side.mean() - 2.0) < 4 * 0.5 / np.sqrt(side.size) + 0.02
            assert abs(side.std() - 0.5) < 0.05


def test_resampling_recovers_the_dependence_replacement_misses():
    """x_2 given x_1 for a Gaussian with correlation 0.95, exact score: the exact conditional
    has slope 0.95. Replacement (300 steps) under-uses x_1 whatever the step count (measured
    slope 0.73, residual sd 0.49 for the exact 0.31); resampling at the same 300 NFE
    (60 steps, 5 jumps) recovers it (measured 0.942, residual sd 0.309). With n = 4000 the
    slope's standard error is about 0.3 / sqrt(4000) = 0.005; the tolerance 0.03 allows
    that (4 SE) and the 60-step grid's discretisation bias (0.008 measured)."""
    rho, n = 0.95, 4000
    g = toy.GaussianMixture(jnp.zeros((1, 2)), jnp.array([[[1.0, rho], [rho, 1.0]]]), jnp.ones(1))
    vp = VP()
    x1 = jax.random.normal(jax.random.key(3), (n,))
    x_known = jnp.stack([x1, jnp.zeros(n)], axis=1)
    slope = {}
    for n_steps, jumps in ((300, 1), (60, 5)):
        x, nfe = C.impute(vp, toy.exact_score(g, vp), jax.random.key(0), x_known, jnp.array([True, False]),
                          n_steps=n_steps, jumps=jumps)
        assert nfe == 300
        np.testing.assert_array_equal(np.asarray(x[:, 0]), np.asarray(x1))  # the known part, exactly
        slope[jumps] = np.polyfit(np.asarray(x1), np.asarray(x[:, 1]), 1)[0]
    assert slope[1] < 0.8, slope  # replacement: far below 0.95 (40 standard errors)
    assert abs(slope[5] - rho) < 0.03, slope


def test_one_jump_is_replacement_draw_for_draw(mix, sde):
    """jumps = 1 runs the plain replacement sampler with the same keys: the same draws as
    the default call (one compiled sampler, the trip count traced)."""
    x_known = mix.sample(jax.random.key(1), 64)
    args = (sde, toy.exact_score(mix, sde), jax.random.key(0), x_known, jnp.array([True, False]))
    a, nfe_a = C.impute(*args, n_steps=30)
    b, nfe_b = C.impute(*args, n_steps=30, jumps=1)
    c, nfe_c = C.impute(*args, n_steps=30, jumps=2)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert (nfe_a, nfe_b, nfe_c) == (30, 30, 60)
    assert not np.allclose(np.asarray(a[:, 1]), np.asarray(c[:, 1]))


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
    ({"x_known": jnp.zeros(3)}, "x_known"), ({"jumps": 0}, "jumps"),
])
def test_impute_rejects_bad_arguments(mix, sde, kwargs, match):
    args = {"x_known": jnp.zeros((3, 2)), "mask": jnp.array([True, False])}
    args.update(kwargs)
    x_known, mask = args.pop("x_known"), args.pop("mask")
    with pytest.raises((ValueError, TypeError), match=match):
        C.impute(sde, toy.exact_score(mix, sde), jax.random.key(0), x_known, mask, **args)


def test_docstrings_name_equations_in_words():
    """The API page renders these docstrings: no raw MyST equation label like ``eq-guidance``."""
    import inspect
    import re

    texts = [C.__doc__] + [inspect.getdoc(getattr(C, name)) or "" for name in C.__all__]
    for text in texts:
        assert not re.search(r"\beq-[a-z]", text), text
