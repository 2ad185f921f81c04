"""Conditional generation (chapters 6 and 7): guidance, classifier-free mixing, imputation.

**Class-conditional scores.** By Bayes' rule p_t(x | y) = p_t(y | x) p_t(x) / p(y), so

    grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x),           (eq-cond-score)

and the reverse SDE of p_t(x | y) is the unconditional one with this score (Song et al.
2021, Appendix I). A *time-dependent classifier* p_t(y | x), trained on noisy inputs
x(t) ~ p_0t(. | x_0), gives the second term by automatic differentiation
(:func:`classifier_grad`). A *guidance scale* gamma weights it,

    s_gamma(x, t) = s(x, t) + gamma grad log p_t(y | x),                   (eq-guidance)

gamma = 1 being the conditional score and gamma > 1 sharpening p_t(y | x)^gamma
(Dhariwal & Nichol 2021). Classifier-free guidance (Ho & Salimans 2022) replaces the
classifier by a conditional score model: s + gamma (s(. | y) - s) is Eq. (eq-guidance)
with the implicit classifier grad log p_t(y | x) = s(. | y) - s (:func:`classifier_free`).

**Imputation by replacement** (Song et al. 2021, Appendix I.2): to sample the unknown
coordinates of x given the known ones, run a reverse-time sampler on the whole vector and,
after every step to time t, overwrite the known coordinates by a fresh draw from the
forward kernel p_0t(x_t | x_0) of the known values (:func:`impute`).

**Exact references** for Gaussian mixtures, whose components are the classes:
:func:`class_mixture` (p(x | y), one component), :func:`exact_classifier` (the Bayes
classifier of p_t, as logits) and :func:`mixture_conditional` (p(x_u | x_o), again a
Gaussian mixture).
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from companion import losses, sampling
from companion.sde import LinearSDE, ScoreFn, check_time
from companion.toy import GaussianMixture, _component_terms

__all__ = [
    "classifier_log_prob",
    "classifier_grad",
    "guided_score",
    "classifier_free",
    "class_mixture",
    "exact_classifier",
    "impute",
    "mixture_conditional",
    "classifier_loss",
    "label_dropout_loss",
]


# --------------------------------------------------------------------------- guidance


def _labels(y, n: int) -> jax.Array:
    """Labels ``y`` (an int or shape ``(n,)``) as an int array of shape ``(n,)``."""
    y = jnp.asarray(y)
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(f"y: expected integer class labels, got dtype {y.dtype}")
    if y.ndim == 0:
        return jnp.broadcast_to(y, (n,))
    if y.shape != (n,):
        raise ValueError(f"y: expected an int or shape ({n},) to match x, got shape {y.shape}")
    return y


def classifier_log_prob(classifier, y):
    """``fn(x, t) -> log p_t(y | x)``, shape ``(n,)``, from ``classifier(x, t) -> logits (n, K)``."""
    if not callable(classifier):
        raise TypeError(f"classifier: expected a callable classifier(x, t) -> logits, got {type(classifier).__name__}")

    def log_prob(x, t):
        logits = classifier(x, t)
        labels = _labels(y, x.shape[0])
        return jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), labels[:, None], axis=-1)[:, 0]

    return log_prob


def classifier_grad(classifier, y):
    """``fn(x, t) -> grad_x log p_t(y | x)``, shaped like ``x`` (the last term of Eq. eq-cond-score).

    One reverse-mode pass for the whole batch: samples do not interact in the classifier,
    so the gradient of the *sum* of the per-sample log-probabilities is the per-sample
    gradient.
    """
    log_prob = classifier_log_prob(classifier, y)

    def grad(x, t):
        return jax.grad(lambda z: jnp.sum(log_prob(z, t)))(x)

    return grad


def guided_score(score_fn: ScoreFn, classifier, y, scale: float = 1.0) -> ScoreFn:
    """Classifier guidance, Eq. (eq-guidance): ``score_fn(x, t) + scale * grad log p_t(y | x)``.

    Args:
        score_fn: the unconditional score ``score_fn(x, t)``.
        classifier: ``classifier(x, t) -> logits (n, K)`` of the noisy input at time ``t``.
        y: the class, an int or one per sample ``(n,)``.
        scale: the guidance scale gamma >= 0 (1: the conditional score).
    """
    if not callable(score_fn):
        raise TypeError(f"score_fn: expected a callable score_fn(x, t), got {type(score_fn).__name__}")
    scale = _non_negative("scale", scale)
    grad = classifier_grad(classifier, y)

    def score(x, t):
        return score_fn(x, t) + scale * grad(x, t)

    return score


def classifier_free(cond_score_fn: ScoreFn, uncond_score_fn: ScoreFn, scale: float) -> ScoreFn:
    """Classifier-free guidance: ``s(x, t) + scale * (s(x, t | y) - s(x, t))``.

    ``cond_score_fn`` is the score of p_t(x | y) for the wanted class, ``uncond_score_fn``
    that of p_t(x). ``scale = 1`` returns the conditional score; Ho & Salimans' weight w
    is ``scale - 1``.
    """
    for name, fn in (("cond_score_fn", cond_score_fn), ("uncond_score_fn", uncond_score_fn)):
        if not callable(fn):
            raise TypeError(f"{name}: expected a callable score_fn(x, t), got {type(fn).__name__}")
    scale = _non_negative("scale", scale)

    def score(x, t):
        uncond = uncond_score_fn(x, t)
        return uncond + scale * (cond_score_fn(x, t) - uncond)

    return score


def _non_negative(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < np.inf:
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return float(value)


def classifier_loss(sde: LinearSDE, *, eps: float = sampling.DEFAULT_EPS):
    """Cross-entropy of a time-dependent classifier on noisy inputs: ``loss(model, (x0, y), key)``.

    Per sample: ``t ~ U(eps, T)``, ``x_t ~ p_0t(. | x_0)`` (the forward kernel) and
    ``-log softmax(model(x_t, t))[y]``; the mean over the batch. Minimising it over all
    t fits p_t(y | x) at every noise level at once. The batch is a pair ``(x0, y)``, so
    :func:`companion.training.fit` trains a classifier when its ``data`` is a function
    ``sample(key, n) -> (x0, y)``.
    """
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"sde: expected a companion.sde SDE, got {type(sde).__name__}")
    eps = sampling._check_eps(eps, sde)

    def loss(model, batch, key):
        x0, y = batch
        k_t, k_x = jax.random.split(key)
        t = jax.random.uniform(k_t, x0.shape[:1], x0.dtype, minval=eps, maxval=sde.T)
        x_t, _ = sde.perturb(k_x, x0, t)
        return -jnp.mean(classifier_log_prob(model, y)(x_t, t))

    return loss


# --------------------------------------------------------------------------- exact references


def _check_class(mix: GaussianMixture, y) -> int:
    if isinstance(y, bool) or not isinstance(y, (numbers.Integral, np.integer)):
        raise TypeError(f"y: expected an int class label, got {type(y).__name__}")
    if not 0 <= y < mix.n_components:
        raise ValueError(f"y: expected a class in 0..{mix.n_components - 1}, got {y}")
    return int(y)


def class_mixture(mix: GaussianMixture, y: int) -> GaussianMixture:
    """p(x | y): component ``y`` of ``mix`` alone, a one-component mixture.

    Its exact score under an SDE is ``toy.exact_score(class_mixture(mix, y), sde)``, the
    reference for class-conditional sampling.
    """
    y = _check_class(mix, y)
    return GaussianMixture(mix.means[y : y + 1], mix.covs[y : y + 1], jnp.ones((1,), mix.weights.dtype))


def exact_classifier(mix: GaussianMixture, sde: LinearSDE):
    """The Bayes classifier of p_t as ``classifier(x, t) -> logits (n, K)``.

    The logits are log w_k + log N(x; m(t) mu_k, m(t)^2 Sigma_k + s(t)^2 I), so their
    softmax is ``mix.perturbed(sde, t).responsibilities(x)``; ``t`` is a scalar or ``(n,)``.
    """
    eye = jnp.eye(mix.dim, dtype=mix.covs.dtype)
    log_w = jnp.log(mix.weights)

    def one(xi, ti):
        m, s = sde.mean_coefficient(ti), sde.kernel_std(ti)
        chol = jnp.linalg.cholesky(m**2 * mix.covs + s**2 * eye)
        return _component_terms(xi, m * mix.means, chol, log_w)[0]

    def classifier(x, t):
        x = mix._check_points(x)
        check_time(t, sde.T, allow_zero=False)
        t = jnp.broadcast_to(jnp.asarray(t, dtype=x.dtype), (x.shape[0],))
        return jax.vmap(one)(x, t).astype(x.dtype)

    return classifier


def _observed_index(observed, d: int) -> np.ndarray:
    observed = np.asarray(observed)
    if observed.dtype == bool:
        if observed.shape != (d,):
            raise ValueError(f"observed: a boolean mask must have shape ({d},), got {observed.shape}")
        idx = np.flatnonzero(observed)
    elif np.issubdtype(observed.dtype, np.integer) and observed.ndim == 1:
        idx = observed
        if np.any(idx < 0) or np.any(idx >= d) or len(set(idx.tolist())) != idx.size:
            raise ValueError(f"observed: expected distinct coordinates in 0..{d - 1}, got {idx.tolist()}")
    else:
        raise TypeError(f"observed: expected a boolean mask ({d},) or a list of coordinates, got {observed!r}")
    if not 0 < idx.size < d:
        raise ValueError(f"observed: expected between 1 and {d - 1} observed coordinates, got {idx.size}")
    return np.sort(idx)


def mixture_conditional(mix: GaussianMixture, x_observed, observed) -> GaussianMixture:
    """p(x_u | x_o = ``x_observed``) of a Gaussian mixture: a mixture over the other coordinates.

    Component k keeps the Gaussian conditional (Schur complement),
    mean mu_u + S_uo S_oo^{-1} (x_o - mu_o), covariance S_uu - S_uo S_oo^{-1} S_ou, and
    its weight becomes w_k N(x_o; mu_o, S_oo) / sum_j w_j N(x_o; mu_j,o, S_j,oo).

    Args:
        observed: the observed coordinates, a boolean mask of shape ``(d,)`` or a list of
            indices; the result is over the others, in increasing order.
        x_observed: their values, shape ``(d_o,)`` in increasing coordinate order.
    """
    o = _observed_index(observed, mix.dim)
    u = np.setdiff1d(np.arange(mix.dim), o)
    x_o = jnp.asarray(x_observed, dtype=mix.means.dtype)
    if x_o.shape != (o.size,):
        raise ValueError(f"x_observed: expected shape ({o.size},) for {o.size} observed coordinates, got {x_o.shape}")
    mu_o, mu_u = mix.means[:, o], mix.means[:, u]
    s_oo = mix.covs[:, o][:, :, o]
    s_uo = mix.covs[:, u][:, :, o]
    s_uu = mix.covs[:, u][:, :, u]
    chol = jnp.linalg.cholesky(s_oo)
    # log w_k N(x_o; mu_k,o, S_k,oo) for every k: the responsibilities of the observed part
    log_joint, _ = _component_terms(x_o, mu_o, chol, jnp.log(mix.weights))
    weights = jnp.exp(log_joint - logsumexp(log_joint))
    gain = jnp.swapaxes(jnp.linalg.solve(s_oo, jnp.swapaxes(s_uo, -1, -2)), -1, -2)  # S_uo S_oo^{-1}
    means = mu_u + jnp.einsum("kij,kj->ki", gain, x_o - mu_o)
    covs = s_uu - jnp.einsum("kij,kjl->kil", gain, jnp.swapaxes(s_uo, -1, -2))
    covs = 0.5 * (covs + jnp.swapaxes(covs, -1, -2))
    return GaussianMixture(means, covs, weights / jnp.sum(weights))


# --------------------------------------------------------------------------- imputation


@functools.partial(jax.jit, static_argnames=("sde", "predictor", "n_corrector"))  # score_fn: traced state
def _impute(sde, score_fn, key, x_known, mask, n_steps, eps, predictor, n_corrector, snr):
    k_prior, k_known, k_loop = jax.random.split(key, 3)
    x = sde.prior_sample(k_prior, x_known.shape).astype(x_known.dtype)
    predict = sampling._PREDICTORS[predictor]

    def replace(x, t, k):
        """Overwrite the known coordinates by a draw of p_0t(x_t | x_0 = x_known)."""
        x_t, _ = sde.perturb(k, x_known, jnp.full(x.shape[:1], t, x.dtype))
        return jnp.where(mask, x_t, x)

    def step(x, t, t_next, k):
        keys = jax.random.split(k, 2 * n_corrector + 2)
        for j in range(n_corrector):  # correct at t, keeping the known part a draw at t
            x = sampling._langevin_corrector(sde, score_fn, x, t, t_next, keys[2 * j], snr)
            x = replace(x, t, keys[2 * j + 1])
        x, mean = predict(sde, score_fn, x, t, t_next, keys[-2])
        # the sample goes on with fresh known values; the last mean ends on x_known exactly
        return replace(x, t_next, keys[-1]), jnp.where(mask, x_known, mean)

    x = replace(x, sde.T, k_known)
    return sampling.reverse_loop(step, sde, x, k_loop, n_steps, eps)


def impute(sde, score_fn, key, x_known, mask, *, n_steps=sampling.DEFAULT_N_STEPS, eps=sampling.DEFAULT_EPS,
           predictor="euler_maruyama", n_corrector=0, snr=0.16):
    """Sample the unknown coordinates of ``x_known`` by the replacement method.

    The reverse-time sampler of :func:`companion.sampling.predictor_corrector` (``predictor``
    "euler_maruyama" or "reverse_diffusion", ``n_corrector`` Langevin steps at ``snr``) runs
    on the whole array; after each step to time t (and each corrector step) the known
    coordinates are replaced by a fresh draw x_t ~ p_0t(. | x_known) (Song et al. 2021,
    Appendix I.2). The last step returns the mean, with the known coordinates equal to
    ``x_known``.

    Args:
        x_known: ``(n, *dims)``; its values where ``mask`` is False are ignored.
        mask: booleans broadcastable to ``x_known.shape``, True where a coordinate is known
            (``(d,)`` or ``(1, d)`` for one mask for every sample, ``(n, *dims)`` for one each).

    Returns ``(x, nfe)`` with ``nfe = n_steps * (1 + n_corrector)``.
    """
    sampling._check_sde(sde)
    sampling._check_score_fn(score_fn)
    x_known = jnp.asarray(x_known)
    if x_known.ndim < 2 or not jnp.issubdtype(x_known.dtype, jnp.floating):
        raise ValueError(f"x_known: expected a floating-point array of shape (n, *dims), got {x_known.dtype}{x_known.shape}")
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
        raise TypeError(f"mask: expected booleans (True where known), got dtype {mask.dtype}")
    try:
        mask = jnp.broadcast_to(mask, x_known.shape)
    except ValueError:
        raise ValueError(f"mask: shape {mask.shape} does not broadcast to x_known's {x_known.shape}") from None
    n_steps = sampling._check_int("n_steps", n_steps, 1)
    n_corrector = sampling._check_int("n_corrector", n_corrector, 0)
    eps = sampling._check_eps(eps, sde)
    snr = sampling._check_positive("snr", snr)
    if predictor not in sampling._PREDICTORS:
        raise ValueError(f"predictor: expected one of {sorted(sampling._PREDICTORS)}, got {predictor!r}")
    x = _impute(sde, sampling.traceable(score_fn), key, x_known, mask, n_steps, eps, predictor, n_corrector, snr)
    return x, n_steps * (1 + n_corrector)


# --------------------------------------------------------------------------- classifier-free training


def label_dropout_loss(sde: LinearSDE, null_label: int, *, p_uncond: float = 0.2, weighting: str = "sigma2",
                       eps: float = 1e-5):
    """Denoising score matching of a class-conditional model with label dropout: ``loss(model, (x0, y), key)``.

    ``model(x, t, y)`` (e.g. :class:`companion.nets.ClassConditionalMLP`). Each sample's
    label is replaced by ``null_label`` with probability ``p_uncond``, and the loss is
    :func:`companion.losses.denoising_score_matching` of ``model(., ., y)``: its
    minimiser is the score of p_t(x | y) for a label and that of p_t(x) for the null
    label, the two scores classifier-free guidance mixes (Ho and Salimans 2022;
    :func:`classifier_free`).
    """
    if not 0.0 < p_uncond < 1.0:
        raise ValueError(f"p_uncond: expected a probability in (0, 1), got {p_uncond!r}")
    dsm = losses.denoising_score_matching(sde, weighting=weighting, eps=eps)

    def loss(model, batch, key):
        x0, y = batch
        k_drop, k_dsm = jax.random.split(key)
        drop = jax.random.bernoulli(k_drop, p_uncond, y.shape)
        y = jnp.where(drop, null_label, y)
        return dsm(lambda x, t: model(x, t, y), x0, k_dsm)

    return loss
