"""Hidden tests of chapter 6's guidance exercise (registered after
:mod:`companion.exercises.mixtures`, so ``exercises.names()`` keeps the book's order).

* ``guided_score(score_fn, logits_fn, y, scale)`` (decision): the classifier-guided
  score from a time-dependent classifier that returns unnormalised logits.

Inputs come from fixed seeds; messages say how an answer is wrong, never what is right.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from companion.exercises._calling import call_compiled_each
from companion.exercises._core import (
    Mismatch,
    exercise,
    expect_close,
    is_close,
)

__all__: list[str] = []  # importing the module registers its exercises; nothing to import


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

    def grad_of(per_sample):
        return np.asarray(jax.grad(lambda x: jnp.sum(per_sample(x)))(x), np.float64)

    def pick(values, labels=yy):
        return jnp.take_along_axis(values, labels[:, None], axis=1)[:, 0]

    def log_p(x, labels=yy):
        return pick(jax.nn.log_softmax(logits_fn(x, t), axis=-1), labels)

    base = np.asarray(score_fn(x, t), np.float64)
    right = grad_of(log_p)

    def near(v):
        return is_close(arr, v, _GUIDE_RTOL, _GUIDE_ATOL)

    if near(base + scale * grad_of(lambda x: pick(logits_fn(x, t)))):
        return ("you follow the gradient of the raw logit of class y; "
                "logits are not log probabilities (their normaliser depends on x)")
    if near(base + scale * grad_of(lambda x: jnp.exp(log_p(x)))):
        return "you differentiate the probability p_t(y | x); the score of Bayes' rule takes its logarithm"
    if bool(np.any(np.asarray(yy) != 0)) and near(base + scale * grad_of(lambda x: log_p(x, jnp.zeros_like(yy)))):
        return "every sample is guided towards class 0: y gives each sample's class"
    if scale != 1.0 and near(scale * (base + right)):
        return "the scale multiplies the unconditional score too; it weighs only the classifier's term"
    if near(scale * right):
        return "the unconditional score is missing: guidance adds the classifier's term to it"
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
        "Guidance (chapter 6, section 'Class-conditional sampling'): Bayes' rule for "
        "the score, grad log p_t(x | y) = "
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
        "companion.conditional:*",  # guided_score, classifier_grad, classifier_log_prob
    ),
    reference=_guided_score,
)
def _test_guided_score(fn):
    _test_guided_score_impl(fn)
