"""Hidden tests of the exercises of chapter 6 (mixtures and conditional generation).

* ``class_probabilities(sde, x, t, means, variances, weights)``: the Bayes classifier
  p_t(y | x) of a mixture of isotropic Gaussians under a linear SDE (Eq. eq-bayes-classifier).
* ``gaussian_conditional(mean, cov, x_observed, observed)``: mean and covariance of
  x_u given x_o for one Gaussian (Eq. eq-gaussian-conditional).
* ``replace_known(sde, x, x_known, mask, t, z)``: one replacement of the known coordinates
  by a draw of the forward kernel (Eq. eq-replacement).
* ``guided_score(score_fn, logits_fn, y, scale)`` (conceptual): the classifier-guided
  score from a time-dependent classifier that returns unnormalised logits (Eq. eq-guidance).

Inputs come from fixed seeds; messages say how an answer is wrong, never what is right.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from companion import sde as sde_lib, toy
from companion.exercises._calling import call_compiled_each
from companion.exercises._core import Mismatch, as_array, as_pair, exercise, expect_close, is_close

__all__: list[str] = []  # importing the module registers its exercises; nothing to import


_SDES = [
    ("VP(0.1, 20)", sde_lib.VP(beta_min=0.1, beta_max=20.0)),
    ("VE(0.01, 50)", sde_lib.VE(sigma_min=0.01, sigma_max=50.0)),
    ("sub-VP(0.1, 20)", sde_lib.SubVP(beta_min=0.1, beta_max=20.0)),
]

# ------------------------------------------------------------------------ class_probabilities


def _log_joint(m, s, x, means, variances, weights, *, scale_var=True, normalise=True):
    """log w_k N(x; m mu_k, (m^2 v_k + s^2) I), shape (n, K), in float64 (and mistaken variants)."""
    x, means = np.asarray(x, np.float64), np.asarray(means, np.float64)
    v, w = np.asarray(variances, np.float64), np.asarray(weights, np.float64)
    var = (m**2 if scale_var else 1.0) * v + s**2  # (K,)
    sq = np.sum((x[:, None, :] - m * means[None]) ** 2, axis=-1)  # (n, K)
    out = np.log(w) - 0.5 * sq / var
    return out - 0.5 * x.shape[1] * np.log(2 * np.pi * var) if normalise else out


def _softmax(a):
    a = a - a.max(axis=1, keepdims=True)
    e = np.exp(a)
    return e / e.sum(axis=1, keepdims=True)


def _class_probabilities(sde, x, t, means, variances, weights):
    """Reference: the softmax over k of log w_k + log N(x; m mu_k, (m^2 v_k + s^2) I) (float64)."""
    m, s = float(sde.mean_coefficient(t)), float(sde.kernel_std(t))
    return _softmax(_log_joint(m, s, x, means, variances, weights))


def _class_cases():
    """(label, sde, x (n, d), t, means (K, d), variances (K,), weights (K,))."""
    rng = np.random.default_rng(20210601)
    one_d, four = toy.two_gaussians_1d(), toy.four_gaussians_2d()
    mixtures = [
        ("the 1-D mixture of the chapter", np.asarray(one_d.means), np.array([1.0, 0.25]), np.array([0.3, 0.7])),
        ("the four Gaussians of the chapter", np.asarray(four.means), np.full(4, 0.25), np.full(4, 0.25)),
        ("three 3-D Gaussians of different widths", rng.normal(0, 2, (3, 3)), np.array([0.1, 1.0, 3.0]),
         np.array([0.5, 0.3, 0.2])),
    ]
    cases = []
    for mname, means, variances, weights in mixtures:
        for (sname, s), t in zip(_SDES, (0.05, float(rng.uniform(0.2, 0.6)), float(rng.uniform(0.2, 0.6)))):
            spread = float(np.sqrt(np.mean(means**2) * s.mean_coefficient(t) ** 2 + s.kernel_std(t) ** 2 + 1))
            x = jnp.asarray(spread * rng.normal(size=(7, means.shape[1])), jnp.float32)
            cases.append((f"{mname} under {sname}, t = {t:.2f}", s, x, t, means, variances, weights))
    return cases


# Probabilities in [0, 1] from float32 exponentials: atol 2e-4. The mistakes (no kernel
# noise s^2, means not scaled by m, the normalising factor of each Gaussian left out, the
# weights left out, not normalised) each change some probability by > 1e-2 on these cases.
_CLASS_RTOL, _CLASS_ATOL = 1e-3, 2e-4


def _diagnose_class(arr, sde, x, t, means, variances, weights):
    m, s = float(sde.mean_coefficient(t)), float(sde.kernel_std(t))
    lj = _log_joint(m, s, x, means, variances, weights)

    def near(v):
        return is_close(arr, v, _CLASS_RTOL, _CLASS_ATOL)

    if near(_softmax(_log_joint(1.0, 0.0, x, means, variances, weights))):
        return "these are the probabilities of the clean data p_0(y | x); at time t each component is blurred by the kernel"
    if near(_softmax(_log_joint(m, s, x, means, variances, weights, normalise=False))):
        return "the normalising factor (2 pi var_k)^(-d/2) of each component is missing: components of different widths need it"
    if near(_softmax(lj - np.log(np.asarray(weights, np.float64)))):
        return "the mixture weights w_k are missing"
    if near(np.exp(lj)):
        return "these are the joint densities w_k N_k(x), not normalised over k"
    if near(_softmax(_log_joint(m, s, x, np.asarray(means, np.float64) / m, variances, weights))):
        return "the component means are not scaled by the kernel's mean coefficient m(t)"
    if near(_softmax(_log_joint(m, s, x, means, variances, weights, scale_var=False))):
        return "the component variances are not scaled by m(t)^2"
    return None


@exercise(
    "class_probabilities",
    chapter=6,
    hint=(
        "Eq. (eq-bayes-classifier): Bayes' rule with the components of p_t, not of the "
        "data. How does the SDE move and widen each component by time t?"
    ),
    hint2=(
        "Component k of p_t is an isotropic Gaussian whose mean is the data mean times "
        "m(t) and whose variance adds m(t)^2 v_k and s(t)^2. Work with log weights plus "
        "log densities (the full normalising factor: variances differ between "
        "components) and normalise over k with a softmax."
    ),
    blocked=(
        "companion.toy:GaussianMixture.responsibilities",
        "companion.toy:GaussianMixture.perturbed",
        "companion.toy:GaussianMixture.log_prob",
        "companion.toy:exact_classifier",
    ),
    reference=_class_probabilities,
)
def _test_class_probabilities(fn):
    cases = _class_cases()  # the reader's function on every case: one compiled program (call_compiled_each)
    gots = call_compiled_each(fn, [(*c[1:4], *(jnp.asarray(a, jnp.float32) for a in c[4:])) for c in cases])
    for (label, s, x, t, means, variances, weights), got in zip(cases, gots):
        want = np.asarray(_class_probabilities(s, x, t, means, variances, weights), np.float64)
        what = f"case '{label}'"
        arr = as_array(got, what)
        expect_close(arr, want, what=what, rtol=_CLASS_RTOL, atol=_CLASS_ATOL,
                     diagnose=lambda arr: _diagnose_class(arr, s, x, t, means, variances, weights))


# ----------------------------------------------------------------------- gaussian_conditional


def _gaussian_conditional(mean, cov, x_observed, observed):
    """Reference: mu_u + S_uo S_oo^{-1} (x_o - mu_o) and S_uu - S_uo S_oo^{-1} S_ou (float64)."""
    mean, cov, x_o = (np.asarray(a, np.float64) for a in (mean, cov, x_observed))
    o = np.asarray(observed)
    u = np.setdiff1d(np.arange(mean.shape[0]), o)
    s_uo, s_oo = cov[np.ix_(u, o)], cov[np.ix_(o, o)]
    gain = np.linalg.solve(s_oo, s_uo.T).T
    return mean[u] + gain @ (x_o - mean[o]), cov[np.ix_(u, u)] - gain @ s_uo.T


def _conditional_cases():
    rng = np.random.default_rng(20210602)
    cases = []
    for d, observed in [(2, [0]), (2, [1]), (3, [0, 2]), (4, [1]), (5, [0, 3, 4])]:
        a = rng.normal(size=(d, d))
        cov = a @ a.T + 0.5 * np.eye(d)
        mean = rng.normal(0, 2, d)
        x_o = rng.normal(0, 2, len(observed))
        cases.append((f"d = {d}, observed coordinates {observed}", mean, cov, x_o, observed))
    return cases


# Solves with condition numbers < 1e3 in float32: rtol 1e-3, atol 1e-3. The mistakes change
# entries by O(1).
_COND_RTOL, _COND_ATOL = 1e-3, 1e-3


def _diagnose_conditional(mean_got, cov_got, mean, cov, x_o, observed):
    o = np.asarray(observed)
    u = np.setdiff1d(np.arange(len(mean)), o)
    s_uo, s_oo, s_uu = cov[np.ix_(u, o)], cov[np.ix_(o, o)], cov[np.ix_(u, u)]
    gain = np.linalg.solve(s_oo, s_uo.T).T

    def near(a, b):
        return is_close(a, b, _COND_RTOL, _COND_ATOL)

    if mean_got is not None:
        if near(mean_got, mean[u] + gain @ x_o):
            return "the conditional mean: the observed values must be centred, x_o - mu_o"
        if near(mean_got, mean[u] + s_uo @ (x_o - mean[o])):
            return "the conditional mean: the covariance S_oo of the observed block must be inverted (solved), not left out"
        if near(mean_got, mean[u]):
            return "the conditional mean does not depend on the observed values"
    if cov_got is not None:
        if near(cov_got, s_uu):
            return "the conditional covariance is the prior block S_uu: observing x_o must shrink it"
        if near(cov_got, s_uu + gain @ s_uo.T):
            return "the conditional covariance: S_uo S_oo^{-1} S_ou is subtracted, not added"
        if near(cov_got, s_uu - s_uo @ s_uo.T):
            return "the conditional covariance: S_oo must be inverted between S_uo and S_ou"
    return None


@exercise(
    "gaussian_conditional",
    chapter=6,
    hint=(
        "Eq. (eq-gaussian-conditional): split mean and covariance into observed and "
        "unobserved blocks; the observed values shift the mean and shrink the covariance."
    ),
    hint2=(
        "Keep the coordinates in increasing order in each block. The shift and the shrink "
        "both go through the observed block's covariance, applied with a linear solve "
        "(jnp.linalg.solve) rather than an explicit inverse (a Schur complement)."
    ),
    blocked=("companion.toy:GaussianMixture.condition",),
    reference=_gaussian_conditional,
)
def _test_gaussian_conditional(fn):
    cases = _conditional_cases()
    gots = call_compiled_each(fn, [(*(jnp.asarray(a, jnp.float32) for a in c[1:4]), list(c[4])) for c in cases])
    for (label, mean, cov, x_o, observed), got in zip(cases, gots):
        want_mean, want_cov = (np.asarray(a, np.float64) for a in _gaussian_conditional(mean, cov, x_o, observed))
        what = f"case '{label}'"
        m_got, c_got = as_pair(got, what, "the mean", "the covariance")
        for arr, want, name in ((m_got, want_mean, "mean"), (c_got, want_cov, "covariance")):
            expect_close(arr, want, what=f"{what}, the {name}", rtol=_COND_RTOL, atol=_COND_ATOL,
                         diagnose=lambda a, name=name: _diagnose_conditional(
                             a if name == "mean" else None, a if name == "covariance" else None,
                             mean, cov, x_o, observed))


# ------------------------------------------------------------------------------ replace_known


def _replace_known(sde, x, x_known, mask, t, z):
    """Reference: where(mask, m(t) x_known + s(t) z, x) (float64)."""
    m, s = float(sde.mean_coefficient(t)), float(sde.kernel_std(t))
    x, x_known, z = (np.asarray(a, np.float64) for a in (x, x_known, z))
    return np.where(np.asarray(mask), m * x_known + s * z, x)


def _replace_cases():
    rng = np.random.default_rng(20210603)
    cases = []
    for (name, s), shape, mask_shape in zip(_SDES, [(6, 2), (3, 4, 4, 1), (5, 3)], [(2,), (3, 4, 4, 1), (1, 3)]):
        t = float(rng.uniform(0.2, 0.8))
        x = jnp.asarray(rng.normal(0, 3, shape), jnp.float32)
        x_known = jnp.asarray(rng.normal(0, 1, shape), jnp.float32)
        z = jnp.asarray(rng.normal(size=shape), jnp.float32)
        mask = jnp.asarray(rng.uniform(size=mask_shape) < 0.5)
        mask = mask.at[(0,) * len(mask_shape)].set(True)
        if mask_shape != shape:
            mask = mask.at[(0,) * (len(mask_shape) - 1) + (-1,)].set(False)
        else:
            mask = mask.at[(0,) * (len(shape) - 1) + (1,)].set(False)
        cases.append((f"{name}, x of shape {shape}, mask of shape {mask_shape}, t = {t:.2f}", s, x, x_known, mask, t, z))
    return cases


# A few float32 operations: rtol 1e-5, atol 1e-5.
_REPL_RTOL, _REPL_ATOL = 1e-5, 1e-5


def _diagnose_replace(arr, sde, x, x_known, mask, t, z):
    m, s = float(sde.mean_coefficient(t)), float(sde.kernel_std(t))
    x, x_known, z = (np.asarray(a, np.float64) for a in (x, x_known, z))
    mask = np.broadcast_to(np.asarray(mask), x.shape)

    def near(v):
        return is_close(arr, v, _REPL_RTOL, _REPL_ATOL)

    if near(np.where(mask, x, m * x_known + s * z)):
        return "the unknown coordinates were replaced and the known ones kept: mask is True where a coordinate is known"
    if near(np.where(mask, x_known, x)):
        return "the known coordinates are put back as they are; at time t they must be a draw of the forward kernel"
    if near(np.where(mask, x_known + s * z, x)):
        return "the kernel's mean is m(t) x_known, not x_known"
    if near(np.where(mask, m * x_known + s**2 * z, x)):
        return "the noise is scaled by the kernel's variance; it takes the standard deviation s(t)"
    if near(m * x_known + s * z):
        return "every coordinate was replaced: the unknown ones must keep the sampler's values"
    return None


@exercise(
    "replace_known",
    chapter=6,
    hint=(
        "Eq. (eq-replacement): the known coordinates at time t must look like the known "
        "values after the forward process ran until t; the others stay as they are."
    ),
    hint2=(
        "A draw of the perturbation kernel of chapter 2 started at x_known, with the "
        "given z as its noise, where mask is True; x elsewhere. jnp.where broadcasts the "
        "mask; the mean coefficient and the kernel's std come from the SDE."
    ),
    blocked=("companion.conditional:impute",),
    reference=_replace_known,
)
def _test_replace_known(fn):
    cases = _replace_cases()
    for (label, s, x, x_known, mask, t, z), got in zip(cases, call_compiled_each(fn, [c[1:] for c in cases])):
        want = np.asarray(_replace_known(s, x, x_known, mask, t, z), np.float64)
        what = f"case '{label}'"
        arr = as_array(got, what)
        expect_close(arr, want, what=what, rtol=_REPL_RTOL, atol=_REPL_ATOL,
                     diagnose=lambda arr: _diagnose_replace(arr, s, x, x_known, mask, t, z))


# --------------------------------------------------------------------------- guided_score


def _guided_score(score_fn, logits_fn, y, scale):
    """Reference: score_fn(x, t) + scale * grad_x log softmax(logits_fn(x, t))[y],
    per sample (samples are independent, so one gradient of the batch sum serves all)."""

    def score(x, t):
        yy = jnp.broadcast_to(jnp.asarray(y), (x.shape[0],))

        def total(x):
            logp = jax.nn.log_softmax(logits_fn(x, t), axis=-1)
            return jnp.sum(jnp.take_along_axis(logp, yy[:, None], axis=1))

        return score_fn(x, t) + scale * jax.grad(total)(x)

    return score


def _guidance_cases():
    """(label, score_fn, logits_fn, y, scale, x, t)."""
    rng = np.random.default_rng(20210606)
    W = jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)
    b = jnp.asarray(rng.normal(size=3), jnp.float32)
    W4 = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)

    def col(t, x):
        t = jnp.asarray(t, x.dtype)
        return t[:, None] if t.ndim else t

    def logits3(x, t):  # nonlinear and time-dependent, unnormalised (an offset per x)
        return (x @ W.T) / (0.2 + col(t, x)) + b + jnp.sum(jnp.sin(x), axis=1, keepdims=True)

    def logits4(x, t):
        return jnp.tanh(x @ W4.T) * 3.0 * (1.0 - col(t, x)) + jnp.sum(x**2, 1, keepdims=True)

    def score2(x, t):
        return -x / (0.5 + col(t, x))

    def score3(x, t):
        return -(x - 1.0) * (1.0 + col(t, x))

    def draw(*shape):
        return jnp.asarray(rng.normal(size=shape), jnp.float32)

    return [
        ("3 classes in 2-D, y = 1 (an int), scale 1, t scalar", score2, logits3, 1, 1.0,
         draw(5, 2), 0.3),
        ("3 classes, y one per sample, scale 2.5, one t per sample", score2, logits3,
         jnp.array([0, 2, 1, 2, 0, 1]), 2.5, draw(6, 2),
         jnp.asarray(rng.uniform(0.05, 1.0, 6), jnp.float32)),
        ("4 classes in 3-D, y = 3, scale 0.5", score3, logits4, 3, 0.5, draw(4, 3), 0.6),
        ("4 classes, scale 0 (no guidance)", score3, logits4, 2, 0.0, draw(3, 3), 0.2),
        ("a batch of one, y given as an array of one", score2, logits3, jnp.array([2]), 1.5,
         draw(1, 2), 0.8),
    ]


# float32 gradients of smooth functions of size ~10: rtol 1e-4, atol 1e-4. The wrong
# answers (raw logits, probabilities instead of log probabilities, the class ignored)
# are off by O(1) on these cases.
_GUIDE_RTOL, _GUIDE_ATOL = 1e-4, 1e-4


def _diagnose_guided(arr, score_fn, logits_fn, y, scale, x, t):
    yy = jnp.broadcast_to(jnp.asarray(y), (x.shape[0],))
    raw = jax.grad(lambda x: jnp.sum(jnp.take_along_axis(logits_fn(x, t), yy[:, None], axis=1)))(x)
    if is_close(arr, np.asarray(score_fn(x, t)) + scale * np.asarray(raw), _GUIDE_RTOL, _GUIDE_ATOL):
        return ("you follow the gradient of the raw logit of class y; "
                "logits are not log probabilities (their normaliser depends on x)")
    return None


def _test_guided_score_impl(fn):
    cases, at = _guidance_cases(), lambda score, x, t: score(x, t)  # noqa: E731
    try:  # all the cases as one compiled program if fn gives functions; else one by one
        guided = [fn(*c[1:5]) for c in cases]
        gots = call_compiled_each(at, [(g, *c[5:]) for g, c in zip(guided, cases)]) if all(
            map(callable, guided)) else None
    except Exception:
        gots = None
    wants = call_compiled_each(at, [(_guided_score(*c[1:5]), *c[5:]) for c in cases])
    for (label, *case), want in zip(cases, wants):
        what = f"case '{label}'"
        if gots is None:
            guided = fn(*case[:4])
            if not callable(guided):
                raise Mismatch(f"{what}: expected a function score(x, t), got {type(guided).__name__}")
            got = guided(*case[4:])
        else:
            got = next(gots)
        expect_close(got, want, what=what, rtol=_GUIDE_RTOL, atol=_GUIDE_ATOL,
                     diagnose=lambda arr: _diagnose_guided(arr, *case))


@exercise(
    "guided_score",
    chapter=6,
    hint=(
        "Eq. (eq-guidance): Bayes' rule for the score, grad log p_t(x | y) = "
        "grad log p_t(x) + grad log p_t(y | x). What the classifier returns is not yet "
        "log p_t(y | x)."
    ),
    hint2=(
        "Turn the logits into log probabilities over the classes (jax.nn.log_softmax), pick "
        "each sample's class y, and differentiate with respect to x (jax.grad of the sum "
        "over the batch gives every sample's gradient, since samples do not interact). "
        "y may be an int or one class per sample; scale multiplies the classifier term only."
    ),
    blocked=(
        "companion.conditional:guided_score",
        "companion.conditional:classifier_grad",
        "companion.conditional:classifier_log_prob",
    ),
    reference=_guided_score,
)
def _test_guided_score(fn):
    _test_guided_score_impl(fn)
