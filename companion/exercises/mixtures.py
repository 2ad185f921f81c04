"""Hidden tests of the exercises of chapter 6 (mixtures and conditional generation).

* ``class_probabilities(sde, x, t, means, variances, weights)``: the Bayes classifier
  p_t(y | x) of a mixture of isotropic Gaussians under a linear SDE (chapter 6's Bayes
  classifier of noisy data), tested also at points far from every mode, where a
  normalisation outside log space underflows.
* ``conditional_weights(means, covs, weights, x_observed, observed)`` (derivation): the
  weights pi_k of a Gaussian mixture reweighted by observed coordinates x_o, which the
  chapter describes in words only; ``observed`` comes in any order.
* ``replace_known(sde, x, x_observed, observed, t, z)`` (the chapter's warm-up): one
  replacement of the known coordinates by a draw of the forward kernel; ``observed`` in any
  order, ``t`` one time for every sample.
* ``guided_score``: in :mod:`companion.exercises.guidance`.

Inputs come from fixed seeds; messages say how an answer is wrong, never what is right.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from companion import sde as sde_lib
from companion import toy
from companion.exercises._calling import call_compiled_each
from companion.exercises._core import (
    Mismatch,
    as_array,
    exercise,
    expect_close,
    is_close,
)

__all__: list[str] = []  # importing the module registers its exercises; nothing to import


_SDES = [
    ("VP(0.1, 20)", sde_lib.VP(beta_min=0.1, beta_max=20.0)),
    ("VE(0.01, 50)", sde_lib.VE(sigma_min=0.01, sigma_max=50.0)),
    ("sub-VP(0.1, 20)", sde_lib.SubVP(beta_min=0.1, beta_max=20.0)),
]

# ------------------------------------------------------------------------ class_probabilities

_UNDERFLOW = ("not a probability at points far from every component: there every density "
              "pi_k N_k underflows to 0 (0/0). Normalise the log densities over k in log "
              "space (log-sum-exp, a softmax of the logs)")



def _log_joint(m, s, x, means, variances, weights, *, scale_var=True, normalise=True):
    """log pi_k N(x; a mu_k, (a^2 v_k + b^2) I) with a = a(t), b = b(t) passed as ``m``, ``s``;
    shape (n, K), in float64 (and mistaken variants)."""
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
    """Reference: the softmax over k of log pi_k + log N(x; a(t) mu_k, (a(t)^2 v_k + b(t)^2) I) (float64)."""
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
    # far from every mode: every density pi_k N_k underflows (exponents below -1000), so
    # only a normalisation in log space (log-sum-exp) gives probabilities there
    far = jnp.asarray([[30.0, -25.0, 12.0], [-40.0, 35.0, -20.0], [45.0, 45.0, 45.0]], jnp.float32)
    cases.append(("three 3-D Gaussians of different widths under VP(0.1, 20), t = 0.05, points far "
                  "from every mode", _SDES[0][1], far, 0.05, *mixtures[2][1:]))
    return cases


# Probabilities in [0, 1] from float32 logits of size up to ~1e4 (the far points, where
# they differ by hundreds, so the answer is one-hot there): atol 2e-4. The mistakes (no
# kernel noise b^2, means not scaled by a, the normalising factor of each Gaussian left
# out, the weights left out, not normalised, normalised outside log space) each change
# some probability by > 1e-2 on these cases.
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
        return "the mixture weights pi_k are missing"
    if near(np.exp(lj)):
        return "these are the joint densities pi_k N_k(x), not normalised over k"
    if near(_softmax(_log_joint(m, s, x, np.asarray(means, np.float64) / m, variances, weights))):
        return "the component means are not scaled by the kernel's mean coefficient a(t)"
    if near(_softmax(_log_joint(m, s, x, means, variances, weights, scale_var=False))):
        return "the component variances are not scaled by a(t)^2"
    return None


@exercise(
    "class_probabilities",
    chapter=6,
    hint=(
        "The Bayes classifier of noisy data (chapter 6, section 'A time-dependent "
        "classifier'): Bayes' rule with the components of p_t, not of the data. How does "
        "the SDE move and widen each component by time t?"
    ),
    hint2=(
        "The perturbation kernel of chapter 2 sends x_0 to a(t) x_0 + b(t) z: what does "
        "it do to the mean and the variance of a Gaussian component? Then work with log "
        "weights plus log densities (all of the normalising factor: the widths differ) "
        "and normalise over k in log space: far from every mode the densities "
        "themselves are all 0."
    ),
    blocked=(
        "companion.toy:*",  # the mixture's methods, exact_classifier
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
        if arr.shape == want.shape and "far from every mode" in label and not (
                np.all(np.isfinite(arr)) and np.allclose(arr.sum(axis=1), 1.0, atol=1e-3)):
            raise Mismatch(f"{what}: {_UNDERFLOW}")
        expect_close(arr, want, what=what, rtol=_CLASS_RTOL, atol=_CLASS_ATOL,
                     diagnose=lambda arr: _diagnose_class(arr, s, x, t, means, variances, weights))


# ------------------------------------------------------------------------ conditional_weights


def _log_marginals(means, covs, weights, x_o, observed, *, block=None, normalise=True, use_weights=True):
    """log pi_k + log N(x_o; mu_k[o], S_k[o, o]), shape (n, K), float64 (and mistaken variants).

    ``block(cov_k, o)`` gives the precision of the observed block (default: the inverse of
    the covariance block); ``observed`` is taken in the given order."""
    means, covs, weights = (np.asarray(a, np.float64) for a in (means, covs, weights))
    x_o, o = np.asarray(x_o, np.float64), np.asarray(observed)
    out = []
    for mu, cov, w in zip(means, covs, weights):
        prec = np.linalg.inv(cov[np.ix_(o, o)]) if block is None else block(cov, o)
        diff = x_o - mu[o]
        val = -0.5 * np.einsum("ni,ij,nj->n", diff, prec, diff)
        if normalise:
            val = val + 0.5 * np.linalg.slogdet(prec)[1] - 0.5 * len(o) * np.log(2 * np.pi)
        out.append(val + (np.log(w) if use_weights else 0.0))
    return np.stack(out, axis=1)


def _conditional_weights(means, covs, weights, x_observed, observed):
    """Reference: softmax over k of log pi_k + log N(x_o; mu_k,o, S_k,oo), shape (n, K) (float64)."""
    return _softmax(_log_marginals(means, covs, weights, x_observed, observed))


def _random_mixture(rng, K, d, spread=2.0):
    means = rng.normal(0, spread, (K, d))
    covs = []
    for _ in range(K):
        a = rng.normal(size=(d, d))
        covs.append(0.4 * a @ a.T / d + 0.3 * np.eye(d))
    w = rng.uniform(0.5, 1.5, K)
    return means, np.stack(covs), w / w.sum()


def _weights_cases():
    """(label, means (K, d), covs (K, d, d), weights (K,), x_observed (n, m), observed list)."""
    rng = np.random.default_rng(20210602)
    diag = (np.array([[-1.5, -1.5], [1.5, 1.5]]), np.stack([0.3 * np.eye(2)] * 2), np.array([0.7, 0.3]))
    three, four = _random_mixture(rng, 3, 3), _random_mixture(rng, 2, 4)
    cases = [
        ("the diagonal mixture of the chapter, x_1 observed", *diag, np.array([[3.0], [0.5], [0.0], [-1.0]]), [0]),
        ("the diagonal mixture, x_2 observed", *diag, np.array([[1.0], [-0.2]]), [1]),
        ("three 3-D Gaussians, observed [2, 0]", *three, rng.normal(0, 2, (5, 2)), [2, 0]),
        ("three 3-D Gaussians, observed [0, 2]", *three, rng.normal(0, 2, (3, 2)), [0, 2]),
        ("two 4-D Gaussians, observed [3, 1]", *four, rng.normal(0, 2, (4, 2)), [3, 1]),
        ("two 4-D Gaussians, observed [1, 3, 0]", *four, rng.normal(0, 2, (3, 3)), [1, 3, 0]),
        ("three 3-D Gaussians, points far from every component, observed [1, 2]", *three,
         np.array([[40.0, -35.0], [-30.0, 45.0], [50.0, 50.0]]), [1, 2]),
    ]
    return cases


# Probabilities from float32 log densities of size up to ~1e3 (the far points): an absolute
# error of ~1e-4 in a logit; atol 2e-4, rtol 1e-3. Each mistake below moves some
# probability by more than 1e-2 on these cases.
_WEIGHTS_RTOL, _WEIGHTS_ATOL = 1e-3, 2e-4


def _diagnose_weights(arr, means, covs, weights, x_o, observed):
    o = np.asarray(observed)

    def near(logs):
        return is_close(arr, _softmax(logs), _WEIGHTS_RTOL, _WEIGHTS_ATOL)

    if len(o) > 1 and not np.array_equal(np.sort(o), o):
        if near(_log_marginals(means, covs, weights, x_o, np.sort(o))):
            return ("x_observed lists its values in the order of `observed`, which need not be "
                    "increasing; your answer takes the coordinates in increasing order (as a "
                    "boolean mask does), pairing values with the wrong coordinates")
    if near(_log_marginals(means, covs, weights, x_o, o,
                           block=lambda c, o: np.linalg.inv(c)[np.ix_(o, o)])):
        return ("the observed coordinates' precision is the block of the inverse covariance; "
                "that block belongs to the conditional of x_o given the other coordinates. "
                "Their marginal has the block of the covariance itself")
    if near(_log_marginals(means, covs, weights, x_o, o, normalise=False)):
        return ("the normalising factor of each Gaussian (its determinant) is missing: "
                "components with different covariances need it")
    if near(_log_marginals(means, covs, weights, x_o, o, use_weights=False)):
        return "the mixture weights pi_k are missing"
    if is_close(arr, np.broadcast_to(np.asarray(weights, np.float64), arr.shape), _WEIGHTS_RTOL, _WEIGHTS_ATOL):
        return "these are the prior weights pi_k: the observed values must reweight them"
    d = np.asarray(means).shape[1]
    for fill, what in ((lambda mu: np.zeros(d), "zero"), (lambda mu: mu, "the component's mean")):
        logs = []
        for k, (mu, cov) in enumerate(zip(np.asarray(means, np.float64), np.asarray(covs, np.float64))):
            x_full = np.broadcast_to(fill(mu), (len(x_o), d)).copy()
            x_full[:, o] = x_o
            logs.append(_log_marginals(mu[None], cov[None], np.asarray(weights)[k:k + 1], x_full, np.arange(d))[:, 0])
        if near(np.stack(logs, axis=1)):
            return (f"the unobserved coordinates were set to {what} in the full density; they are "
                    "not known, so they must be integrated out (the marginal of x_o)")
    return None


@exercise(
    "conditional_weights",
    chapter=6,
    hint=(
        "Bayes' rule over the components, as for the classifier of exercise 1, but the "
        "evidence is x_o alone: how probable is x_o under component k when the other "
        "coordinates are unknown?"
    ),
    hint2=(
        "Integrating coordinates out of a Gaussian leaves a Gaussian: which entries of "
        "mu_k and of Sigma_k survive, and in which order must they be taken to pair with "
        "x_observed? Then weigh by pi_k and normalise over k in log space."
    ),
    blocked=("companion.toy:*",),  # condition, responsibilities, log_prob
    reference=_conditional_weights,
)
def _test_conditional_weights(fn):
    cases = _weights_cases()
    args = [(*(jnp.asarray(a, jnp.float32) for a in c[1:5]), list(c[5])) for c in cases]
    for (label, means, covs, weights, x_o, observed), got in zip(cases, call_compiled_each(fn, args)):
        want = _conditional_weights(means, covs, weights, x_o, observed)
        what = f"case '{label}'"
        arr = as_array(got, what)
        if arr.shape == want.shape and "far" in label and not (
                np.all(np.isfinite(arr)) and np.allclose(arr.sum(axis=1), 1.0, atol=1e-3)):
            raise Mismatch(f"{what}: {_UNDERFLOW}")
        expect_close(arr, want, what=what, rtol=_WEIGHTS_RTOL, atol=_WEIGHTS_ATOL,
                     diagnose=lambda arr: _diagnose_weights(arr, means, covs, weights, x_o, observed))


# ------------------------------------------------------------------------------ replace_known


def _replace_known(sde, x, x_observed, observed, t, z):
    """Reference: x with column observed[j] set to a(t) x_observed[:, j] + b(t) z[:, j] (float64)."""
    a, b = float(sde.mean_coefficient(t)), float(sde.kernel_std(t))
    out = np.array(x, np.float64)
    out[:, np.asarray(observed)] = a * np.asarray(x_observed, np.float64) + b * np.asarray(z, np.float64)
    return out


def _replace_cases():
    """(label, sde, x (n, d), x_observed (n, m), observed, t, z (n, m))."""
    rng = np.random.default_rng(20210603)
    cases = []
    for (name, s), (n, d), observed in zip(_SDES * 2, [(6, 2), (5, 4), (4, 3), (3, 5), (5, 3), (4, 6)],
                                           [[0], [3, 1], [2, 0, 1], [4, 0, 2], [1], [5, 2, 3, 0]]):
        t = float(rng.uniform(0.2, 0.8))
        x = jnp.asarray(rng.normal(0, 3, (n, d)), jnp.float32)
        x_o = jnp.asarray(rng.normal(0, 1, (n, len(observed))), jnp.float32)
        z = jnp.asarray(rng.normal(size=(n, len(observed))), jnp.float32)
        cases.append((f"{name}, d = {d}, observed {observed}, t = {t:.2f}", s, x, x_o, observed, t, z))
    return cases


# A few float32 operations on values of size ~10: rtol 1e-5, atol 1e-5.
_REPL_RTOL, _REPL_ATOL = 1e-5, 1e-5


def _diagnose_replace(arr, sde, x, x_o, observed, t, z):
    a, b = float(sde.mean_coefficient(t)), float(sde.kernel_std(t))
    o = np.asarray(observed)

    def near(values, cols=o):
        want = np.array(x, np.float64)
        want[:, cols] = values
        return is_close(arr, want, _REPL_RTOL, _REPL_ATOL)

    x_o, z = np.asarray(x_o, np.float64), np.asarray(z, np.float64)
    if not np.array_equal(np.sort(o), o) and near(a * x_o + b * z, np.sort(o)):
        return ("the values land on the observed coordinates in increasing order (as with a "
                "boolean mask); column j of x_observed and z belongs to coordinate observed[j]")
    if near(x_o):
        return ("the known values are put back as they are; at time t they must look like data "
                "run through the forward process until t (a draw of the perturbation kernel)")
    if near(x_o + b * z):
        return "the kernel's mean is the known value times the mean coefficient a(t), not the known value"
    if near(a * x_o + b**2 * z):
        return "the noise is scaled by the kernel's variance b(t)^2; it takes the standard deviation b(t)"
    if near(a * x_o):
        return "the noise is missing: the kernel at time t is a distribution, drawn with the given z"
    if near(b * x_o + a * z):
        return "the mean coefficient a(t) and the standard deviation b(t) are swapped"
    if is_close(arr, np.asarray(x, np.float64), _REPL_RTOL, _REPL_ATOL):
        return "nothing was replaced: x comes back unchanged"
    return None


@exercise(
    "replace_known",
    chapter=6,
    hint=(
        "The replacement step of chapter 6: the known coordinates at time t must look like "
        "the known values after the forward process ran until t; the others stay as they are."
    ),
    hint2=(
        "A draw of the perturbation kernel of chapter 2 started at the known values, with the "
        "given z as its noise, written into the columns that `observed` names, in its order "
        "(x.at[:, ...].set). The mean coefficient and the kernel's std come from the SDE."
    ),
    blocked=("companion.conditional:*",),  # impute
    reference=_replace_known,
)
def _test_replace_known(fn):
    cases = _replace_cases()
    for (label, s, x, x_o, observed, t, z), got in zip(cases, call_compiled_each(fn, [c[1:] for c in cases])):
        want = _replace_known(s, x, x_o, observed, t, z)
        what = f"case '{label}'"
        expect_close(got, want, what=what, rtol=_REPL_RTOL, atol=_REPL_ATOL,
                     diagnose=lambda arr: _diagnose_replace(arr, s, x, x_o, observed, t, z))
