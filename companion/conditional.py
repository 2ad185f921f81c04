"""Conditional generation (chapters 6 and 7): guidance, classifier-free mixing, imputation.

**Class-conditional scores.** By Bayes' rule p_t(x | y) = p_t(y | x) p_t(x) / p(y), so

    grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x),     (the conditional score)

and the reverse SDE of p_t(x | y) is the unconditional one with this score (Song et al.
2021, Appendix I). A *time-dependent classifier* p_t(y | x), trained on noisy inputs
x(t) ~ p_0t(. | x_0), gives the second term by automatic differentiation
(:func:`classifier_grad`). A *guidance scale* gamma weights it,

    s_theta(x, t) + gamma grad log p_t(y | x),                        (the guided score)

gamma = 1 being the conditional score and gamma > 1 sharpening p_t(y | x)^gamma
(Dhariwal & Nichol 2021; chapter 6, "The guidance scale", measures what that does to
the width of the classes). Classifier-free guidance (Ho & Salimans 2022) replaces the
classifier by a conditional score network: s_theta + gamma (s_theta(. | y) - s_theta) is
the guided score with the implicit classifier
grad log p_t(y | x) = s_theta(. | y) - s_theta (:func:`classifier_free`).

**Imputation by replacement** (Song et al. 2021, Appendix I.2): to sample the unknown
coordinates of x given the known ones, run a reverse-time sampler on the whole vector and,
after every step to time t, overwrite the known coordinates by a fresh draw from the
forward kernel p_0t(x_t | x_0) = N(a(t) x_0, b(t)^2 I) of the known values,
x_o(t) <- a(t) x_o + b(t) z (:func:`impute`). Chapter 6 measures that it under-uses the
known coordinates when the unknown ones depend on them. *Resampling* (Lugmayr et al.
2022, RePaint; ``impute(..., jumps=J)``) takes each step J times: after the step from t
down to t' and the replacement, the whole vector goes back up to t by the forward
transition x_t = (a(t)/a(t')) x_t' + (b(t)^2 - (a(t)/a(t'))^2 b(t')^2)^(1/2) z
(:meth:`companion.sde.LinearSDE.transition`) and the step is taken again, so the unknown
coordinates get J chances per noise level to agree with the known ones; chapter 7
measures what it buys on the digits.

The guided scores are pytree callables whose fields are the score model(s), the
classifier, the labels and the scale: a sampler takes them as traced state
(``companion._common.traceable``), so one compiled sampler serves every scale,
label and model of one architecture. The losses that train the classifier and the
class-conditional model are :func:`companion.losses.classifier_loss` and
:func:`companion.losses.label_dropout_loss`; the exact references for Gaussian mixtures
(p(x | y), the Bayes classifier, p(x_u | x_o)) are
:meth:`companion.toy.GaussianMixture.component`, :func:`companion.toy.exact_classifier`
and :meth:`companion.toy.GaussianMixture.condition`.
"""

from __future__ import annotations

import functools
import numbers
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from companion import sampling
from companion._common import check_int, check_positive, check_score_fn, shared_time, traceable
from companion.sde import LinearSDE, ScoreFn, check_cutoff, check_sde

__all__ = [
    "classifier_log_prob",
    "classifier_grad",
    "guided_score",
    "classifier_free",
    "impute",
]


# --------------------------------------------------------------------------- guidance


def _check_labels(y) -> jax.Array:
    """Class labels ``y`` (an int or one per sample) as an int array."""
    y = jnp.asarray(y)
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(f"y: expected integer class labels, got dtype {y.dtype}")
    return y


def _labels(y, n: int) -> jax.Array:
    """Labels ``y`` (an int or shape ``(n,)``) as an int array of shape ``(n,)``."""
    y = _check_labels(y)
    if y.ndim == 0:
        return jnp.broadcast_to(y, (n,))
    if y.shape != (n,):
        raise ValueError(f"y: expected an int or shape ({n},) to match x, got shape {y.shape}")
    return y


def _check_callable(name: str, fn, what: str) -> None:
    if not callable(fn):
        raise TypeError(f"{name}: expected a callable {what}, got {type(fn).__name__}")


def _non_negative(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < np.inf:
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return float(value)


# The guided scores below are jax.tree_util.Partial objects over these module-level
# functions: a Partial is a pytree whose leaves are its arguments (the models' weights,
# the labels, the scale), so a sampler traces them instead of baking them into its
# compiled program, and compiles once for every scale, label and model of one
# architecture. A closure would be static: one compilation per closure object.


def _log_prob(classifier, y, x, t):
    """log p_t(y | x), shape ``(n,)``: log-softmax of the logits at the labels."""
    logits = classifier(x, t)
    labels = _labels(y, x.shape[0])
    return jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), labels[:, None], axis=-1)[:, 0]


def _grad(classifier, y, x, t):
    return jax.grad(lambda z: jnp.sum(_log_prob(classifier, y, z, t)))(x)


def _guided(score_fn, classifier, y, scale, x, t):
    return score_fn(x, t) + scale * _grad(classifier, y, x, t)


def _classifier_free(cond_score_fn, uncond_score_fn, scale, x, t):
    uncond = uncond_score_fn(x, t)
    return uncond + scale * (cond_score_fn(x, t) - uncond)


def classifier_log_prob(classifier: Callable, y) -> Callable:
    """``fn(x, t) -> log p_t(y | x)``, shape ``(n,)``, from ``classifier(x, t) -> logits (n, K)``.

    ``y`` is the class, an int or one per sample ``(n,)``; ``x`` is ``(n, *dims)`` and
    ``t`` a scalar or ``(n,)``. The result is a pytree callable (its leaves the
    classifier's weights and the labels).
    """
    _check_callable("classifier", classifier, "classifier(x, t) -> logits")
    return jax.tree_util.Partial(_log_prob, classifier, _check_labels(y))


def classifier_grad(classifier: Callable, y) -> ScoreFn:
    """``fn(x, t) -> grad_x log p_t(y | x)``, shaped like ``x`` (the last term of the conditional score, chapter 6).

    One reverse-mode pass for the whole batch: samples do not interact in the classifier,
    so the gradient of the *sum* of the per-sample log-probabilities is the per-sample
    gradient. A pytree callable, as :func:`classifier_log_prob`.
    """
    _check_callable("classifier", classifier, "classifier(x, t) -> logits")
    return jax.tree_util.Partial(_grad, classifier, _check_labels(y))


def guided_score(score_fn: ScoreFn, classifier: Callable, y, scale: float = 1.0) -> ScoreFn:
    """Classifier guidance (the guided score, chapter 6): ``score_fn(x, t) + scale * grad log p_t(y | x)``.

    Args:
        score_fn: the unconditional score ``score_fn(x, t)``, ``x`` of shape ``(n, *dims)``.
        classifier: ``classifier(x, t) -> logits (n, K)`` of the noisy input at time ``t``.
        y: the class, an int or one per sample ``(n,)``.
        scale: the guidance scale gamma >= 0 (1: the conditional score).

    Returns the guided score ``fn(x, t)``, shaped like ``x``: a pytree callable whose
    leaves are the weights of ``score_fn`` and ``classifier`` (when they are NNX modules
    or other pytrees), the labels and the scale, so a sampler compiled for one guided
    score serves every other scale, label and model of the same architecture.
    """
    _check_callable("score_fn", score_fn, "score_fn(x, t)")
    _check_callable("classifier", classifier, "classifier(x, t) -> logits")
    scale = jnp.asarray(_non_negative("scale", scale))
    return jax.tree_util.Partial(_guided, score_fn, classifier, _check_labels(y), scale)


def classifier_free(cond_score_fn: ScoreFn, uncond_score_fn: ScoreFn, scale: float) -> ScoreFn:
    """Classifier-free guidance: ``s(x, t) + scale * (s(x, t | y) - s(x, t))``.

    ``cond_score_fn`` is the score of p_t(x | y) for the wanted class, ``uncond_score_fn``
    that of p_t(x), both ``fn(x, t)`` shaped like ``x`` ``(n, *dims)``. ``scale = 1``
    returns the conditional score; Ho & Salimans' weight w is ``scale - 1``. A pytree
    callable with the scale a traced leaf, as :func:`guided_score`: keep the two score
    functions (or pass pytree callables) to reuse one compiled sampler for every scale.
    """
    _check_callable("cond_score_fn", cond_score_fn, "score_fn(x, t)")
    _check_callable("uncond_score_fn", uncond_score_fn, "score_fn(x, t)")
    scale = jnp.asarray(_non_negative("scale", scale))
    return jax.tree_util.Partial(_classifier_free, cond_score_fn, uncond_score_fn, scale)


# --------------------------------------------------------------------------- imputation


_UP = 1 << 20  # fold_in tag of the noise that takes a resampling pass back up to t


@functools.partial(jax.jit, static_argnames=("sde", "predictor", "corrector", "n_corrector"))  # score_fn: traced
def _impute(sde, score_fn, key, x_known, mask, n_steps, eps, predictor, corrector, n_corrector, snr, jumps):
    k_prior, k_known, k_loop = jax.random.split(key, 3)
    x = sde.prior_sample(k_prior, x_known.shape).astype(x_known.dtype)
    predictor_step, corrector_step = sampling.PREDICTORS[predictor], sampling.CORRECTORS[corrector]

    def replace(x, t, k):
        """The replacement step: the known coordinates <- a draw of p_0t(x_t | x_0 = x_known)."""
        x_t, _ = sde.perturb(k, x_known, shared_time(x, t))
        return jnp.where(mask, x_t, x)

    def replacing(step, at_next):
        """A step of the public contract, then the replacement at the time the step ends
        (``t_next`` for a predictor, ``t`` for a corrector, which stays at ``t``). The
        mean, what the last step returns, ends on ``x_known`` exactly."""

        def wrapped(x, t, t_next, k_step, k_replace):
            x, mean = step(x, t, t_next, k_step)
            return replace(x, t_next if at_next else t, k_replace), jnp.where(mask, x_known, mean)

        return wrapped

    predict = replacing(lambda x, t, t_next, k: predictor_step(sde, score_fn, x, t, t_next, k), at_next=True)
    correct = replacing(lambda x, t, t_next, k: corrector_step(sde, score_fn, x, t, t_next, k, snr), at_next=False)

    def one_pass(x, t, t_next, k):
        keys = jax.random.split(k, 2 * n_corrector + 2)  # (step, replacement) per sub-step
        for j in range(n_corrector):  # correct at t, keeping the known part a draw at t
            x, _ = correct(x, t, t_next, keys[2 * j], keys[2 * j + 1])
        return predict(x, t, t_next, keys[-2], keys[-1])

    def step(x, t, t_next, k):
        ratio, std = sde.transition(t_next, t)

        def jump(j, carry):  # pass j >= 1 starts by going back up from t_next to t
            x, _ = carry
            # pass 0 uses k itself, so jumps = 1 is plain replacement, key for key
            k_j = jax.lax.cond(j == 0, lambda: k, lambda: jax.random.fold_in(k, j))
            # a cond, not a where: plain replacement (pass 0) draws no back-up noise
            x = jax.lax.cond(j > 0, lambda x: ratio * x + std * jax.random.normal(
                jax.random.fold_in(k_j, _UP), x.shape, x.dtype), lambda x: x, x)
            return one_pass(x, t, t_next, k_j)

        # a traced trip count: one compiled sampler serves every number of jumps
        return jax.lax.fori_loop(0, jumps, jump, (x, x))

    x = replace(x, sde.T, k_known)
    return sampling.reverse_loop(step, sde, x, k_loop, n_steps, eps)


def impute(
    sde: LinearSDE,
    score_fn: ScoreFn,
    key: jax.Array,
    x_known: jax.Array,
    mask: jax.Array,
    *,
    n_steps: int = sampling.DEFAULT_N_STEPS,
    eps: float = sampling.DEFAULT_EPS,
    predictor: str = "euler_maruyama",
    n_corrector: int = 0,
    snr: float = 0.16,
    corrector: str = "langevin",
    jumps: int = 1,
) -> tuple[jax.Array, int]:
    """Sample the unknown coordinates of ``x_known`` by the replacement method.

    The reverse-time sampler of :func:`companion.sampling.predictor_corrector` runs on the
    whole array: at every grid time ``n_corrector`` steps of ``corrector`` (a name of
    :data:`companion.sampling.CORRECTORS`, at ``snr``), then one step of ``predictor``
    ("euler_maruyama" or "reverse_diffusion", :data:`companion.sampling.PREDICTORS`).
    After each of these steps, which end at time t (a corrector's stays at its grid
    time), the known coordinates are replaced by a fresh draw x_t ~ p_0t(. | x_known)
    (the replacement step of chapter 6; Song et al. 2021, Appendix I.2). The last step
    returns the mean, with the known coordinates equal to ``x_known``. The public steps
    and :func:`companion.sampling.reverse_loop`, wrapped with the replacement: step k
    splits ``fold_in(key_loop, k)`` into ``2 n_corrector + 2`` keys, a (step,
    replacement) pair per corrector step and then the predictor's.

    With ``jumps = J > 1`` each step is taken J times (resampling, Lugmayr et al. 2022):
    between two passes the whole array goes back up from t' to t by the forward
    transition x_t = (a(t)/a(t')) x_t' + (b(t)^2 - (a(t)/a(t'))^2 b(t')^2)^(1/2) z; pass
    j >= 1 uses ``fold_in(key_k, j)`` where pass 0 uses ``key_k``, so ``jumps = 1`` is the
    plain replacement sampler, draw for draw. The number of jumps is traced: one
    compiled sampler serves every ``jumps`` (and ``n_steps``).

    Args:
        x_known: ``(n, *dims)``; its values where ``mask`` is False are ignored.
        mask: booleans broadcastable to ``x_known.shape``, True where a coordinate is known
            (``(d,)`` or ``(1, d)`` for one mask for every sample, ``(n, *dims)`` for one each).

    Returns ``(x, nfe)``: ``x`` shaped like ``x_known``,
    ``nfe = n_steps * jumps * (1 + n_corrector)``.
    """
    check_sde(sde)
    check_score_fn(score_fn)
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
    n_steps = check_int("n_steps", n_steps, 1)
    n_corrector = check_int("n_corrector", n_corrector, 0)
    eps = check_cutoff(sde, eps)
    snr = check_positive("snr", snr)
    if predictor not in sampling.PREDICTORS:
        raise ValueError(f"predictor: expected one of {sorted(sampling.PREDICTORS)}, got {predictor!r}")
    if corrector not in sampling.CORRECTORS:
        raise ValueError(f"corrector: expected one of {sorted(sampling.CORRECTORS)}, got {corrector!r}")
    jumps = check_int("jumps", jumps, 1)
    x = _impute(sde, traceable(score_fn), key, x_known, mask, n_steps, eps, predictor, corrector, n_corrector, snr,
                jumps)
    return x, n_steps * jumps * (1 + n_corrector)
