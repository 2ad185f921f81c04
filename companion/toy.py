"""Gaussian mixtures: toy data whose density, score and perturbed marginals are exact.

Under a linear SDE (:mod:`companion.sde`) the kernel is Gaussian, so a Gaussian mixture
stays one: component k of p_t, with the kernel's coefficients a(t) and b(t)
(x_t = a(t) x_0 + b(t) z), has mean a(t) mu_k and covariance a(t)^2 Sigma_k + b(t)^2 I
(the perturbed mixture of chapter 3). Its score is the responsibility-weighted average
of the component scores,

    grad log p(x) = sum_k gamma_k(x) (-Sigma_k^{-1} (x - mu_k)),
    gamma_k(x) = pi_k N_k(x) / p(x)  (the responsibilities, pi_k the weights),

computed with Cholesky factors and triangular solves (no explicit inverse) and a
log-sum-exp, so it stays finite in float32 far from every mode.

The exact references of conditional generation (chapter 6), the components being the
classes: :meth:`GaussianMixture.component` (p(x | y), one component),
:func:`exact_classifier` (the Bayes classifier p_t(y | x) of noisy data, chapter 6,
as logits) and :meth:`GaussianMixture.condition` (p(x_u | x_o), again a Gaussian
mixture). Chapter 8's :func:`exact_velocity` is the exact marginal velocity of a
Gaussian probability path started from a mixture.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular
from jax.scipy.special import logsumexp

from companion.sde import LinearSDE, ScoreFn, check_time

__all__ = [
    "GaussianMixture",
    "exact_score",
    "exact_classifier",
    "exact_velocity",
    "two_gaussians_1d",
    "four_gaussians_2d",
]


def _is_traced(*arrays) -> bool:
    return any(isinstance(a, jax.core.Tracer) for a in arrays)


def _component_terms(x, means, chol, log_weights):
    """For one point ``x`` (d,): per-component log pi_k N_k(x), shape (K,), and scores, (K, d)."""
    d = x.shape[-1]
    diff = x - means  # (K, d)
    z = solve_triangular(chol, diff[..., None], lower=True)[..., 0]  # L^{-1} (x - mu)
    log_det = 2 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    log_pk = log_weights - 0.5 * (jnp.sum(z**2, axis=-1) + log_det + d * math.log(2 * math.pi))
    # -Sigma^{-1} (x - mu) = -L^{-T} z
    scores = -solve_triangular(chol, z[..., None], lower=True, trans=1)[..., 0]
    return log_pk, scores


def _log_prob_and_score(x, means, chol, log_weights):
    log_pk, scores = _component_terms(x, means, chol, log_weights)
    log_p = logsumexp(log_pk)
    resp = jnp.exp(log_pk - log_p)  # responsibilities gamma_k(x), summing to 1
    return log_p, resp @ scores


# The per-point formulas, vmapped over a batch and compiled once per shape: run op by op,
# each of their dozen primitives would be compiled on its own for every new batch size.
@jax.jit
def _batch_log_prob_and_score(x, means, chol, weights):
    return jax.vmap(lambda xi: _log_prob_and_score(xi, means, chol, jnp.log(weights)))(x)


@jax.jit
def _batch_responsibilities(x, means, chol, weights):
    f = lambda xi: jax.nn.softmax(_component_terms(xi, means, chol, jnp.log(weights))[0])
    return jax.vmap(f)(x)


@functools.partial(jax.jit, static_argnums=4)
def _sample(key, means, chol, weights, n):
    k_label, k_noise = jax.random.split(key)
    labels = jax.random.categorical(k_label, jnp.log(weights), shape=(n,))
    z = jax.random.normal(k_noise, (n, means.shape[1]), means.dtype)
    return means[labels] + jnp.einsum("nij,nj->ni", chol[labels], z), labels


def _observed_index(observed, d: int) -> np.ndarray:
    """The observed coordinates of :meth:`GaussianMixture.condition`, sorted, from a mask or a list."""
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


# The conditional as one compiled program per (shapes, observed coordinates): run op by
# op, its two dozen operations would each be compiled for every new shape.
@functools.partial(jax.jit, static_argnums=(4, 5))
def _condition(means, covs, weights, x_o, o, u):
    """(means, covs, weights) of p(x_u | x_o) for the mixture (means, covs, weights); ``o``
    and ``u`` the observed and the other coordinates, tuples of ints in increasing order."""
    o, u = np.asarray(o), np.asarray(u)
    mu_o, mu_u = means[:, o], means[:, u]
    s_oo = covs[:, o][:, :, o]
    s_uo = covs[:, u][:, :, o]
    s_uu = covs[:, u][:, :, u]
    chol = jnp.linalg.cholesky(s_oo)
    # log pi_k N(x_o; mu_k,o, S_k,oo) for every k: the responsibilities of the observed part
    log_joint, _ = _component_terms(x_o, mu_o, chol, jnp.log(weights))
    new_weights = jnp.exp(log_joint - logsumexp(log_joint))
    gain = jnp.swapaxes(jnp.linalg.solve(s_oo, jnp.swapaxes(s_uo, -1, -2)), -1, -2)  # S_uo S_oo^{-1}
    new_means = mu_u + jnp.einsum("kij,kj->ki", gain, x_o - mu_o)
    new_covs = s_uu - jnp.einsum("kij,kjl->kil", gain, jnp.swapaxes(s_uo, -1, -2))
    new_covs = 0.5 * (new_covs + jnp.swapaxes(new_covs, -1, -2))
    return new_means, new_covs, new_weights / jnp.sum(new_weights)


@jax.tree_util.register_pytree_node_class
class GaussianMixture:
    """p(x) = sum_k pi_k N(x; mu_k, Sigma_k) in d dimensions.

    Args:
        means: ``(K, d)``.
        covs: ``(K, d, d)``, symmetric positive definite.
        weights: ``(K,)``, the pi_k: non-negative, summing to 1.
    """

    def __init__(self, means, covs, weights):
        self.means = jnp.asarray(means)
        self.covs = jnp.asarray(covs)
        self.weights = jnp.asarray(weights)
        if not _is_traced(self.means, self.covs, self.weights):
            self._validate()
        self.chol = jnp.linalg.cholesky(self.covs)

    def _validate(self):
        means, covs, weights = (np.asarray(a) for a in (self.means, self.covs, self.weights))
        if means.ndim != 2:
            raise ValueError(f"means: expected shape (K, d), got {means.shape}")
        K, d = means.shape
        if covs.shape != (K, d, d):
            raise ValueError(f"covs: expected shape ({K}, {d}, {d}) to match means, got {covs.shape}")
        if weights.shape != (K,):
            raise ValueError(f"weights: expected shape ({K},) to match means, got {weights.shape}")
        for name, a in (("means", means), ("covs", covs), ("weights", weights)):
            if not np.all(np.isfinite(a)):
                raise ValueError(f"{name}: contains NaN or inf")
        if np.any(weights < 0) or abs(weights.sum() - 1) > 1e-5:
            raise ValueError(f"weights: must be non-negative and sum to 1, got sum {weights.sum()}")
        if not np.allclose(covs, np.swapaxes(covs, -1, -2), rtol=1e-5, atol=1e-8):
            raise ValueError("covs: every covariance must be symmetric")
        if np.any(np.linalg.eigvalsh(covs.astype(np.float64)) <= 0):
            raise ValueError("covs: every covariance must be positive definite")

    # pytree protocol: the arrays are leaves, so a mixture passes through jit and vmap
    def tree_flatten(self):
        return (self.means, self.covs, self.weights), None

    @classmethod
    def tree_unflatten(cls, _, children):
        return cls(*children)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def _check_points(self, x):
        x = jnp.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x: expected shape (n, {self.dim}), got {x.shape}")
        return x

    def sample(
        self, key: jax.Array, n: int, *, return_labels: bool = False
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """``n`` samples, shape ``(n, d)`` (and their component labels ``(n,)`` if asked)."""
        x, labels = _sample(key, self.means, self.chol, self.weights, n)
        return (x, labels) if return_labels else x

    def log_prob(self, x: jax.Array) -> jax.Array:
        """log p(x), shape ``(n,)``."""
        x = self._check_points(x)
        return _batch_log_prob_and_score(x, self.means, self.chol, self.weights)[0]

    def score(self, x: jax.Array) -> jax.Array:
        """grad_x log p(x), shape ``(n, d)``."""
        x = self._check_points(x)
        return _batch_log_prob_and_score(x, self.means, self.chol, self.weights)[1]

    def responsibilities(self, x: jax.Array) -> jax.Array:
        """p(component k | x), shape ``(n, K)``: the exact classifier of chapter 6."""
        x = self._check_points(x)
        return _batch_responsibilities(x, self.means, self.chol, self.weights)

    def perturbed(self, sde: LinearSDE, t: float | jax.Array) -> GaussianMixture:
        """The exact marginal p_t of data from this mixture under ``sde``, at a scalar ``t``."""
        if jnp.ndim(t) != 0:
            raise ValueError(f"t: expected a scalar, got shape {jnp.shape(t)}; use exact_score for per-sample t")
        check_time(t, sde.T, allow_zero=False)
        m, s = sde.mean_coefficient(t), sde.kernel_std(t)
        eye = jnp.eye(self.dim, dtype=self.covs.dtype)
        return GaussianMixture(m * self.means, m**2 * self.covs + s**2 * eye, self.weights)

    def component(self, k: int) -> GaussianMixture:
        """Component ``k`` alone, as a one-component mixture (weight 1).

        With the components as classes this is p(x | y = k) (chapter 6); its exact score
        under an SDE, ``exact_score(mix.component(k), sde)``, is the reference for
        class-conditional sampling.
        """
        if isinstance(k, bool) or not isinstance(k, (numbers.Integral, np.integer)):
            raise TypeError(f"k: expected an int component (class) label, got {type(k).__name__}")
        if not 0 <= k < self.n_components:
            raise ValueError(f"k: expected a component in 0..{self.n_components - 1}, got {k}")
        k = int(k)
        return GaussianMixture(self.means[k : k + 1], self.covs[k : k + 1], jnp.ones((1,), self.weights.dtype))

    def condition(self, x_observed: jax.Array, observed) -> GaussianMixture:
        """p(x_u | x_o = ``x_observed``): the exact conditional, a mixture over the other coordinates.

        Component k keeps its Gaussian conditional (Schur complement: the Gaussian
        conditional of chapter 6), mean mu_u + S_uo S_oo^{-1} (x_o - mu_o) and
        covariance S_uu - S_uo S_oo^{-1} S_ou, and its weight becomes
        pi_k N(x_o; mu_k,o, S_k,oo) / sum_j pi_j N(x_o; mu_j,o, S_j,oo).

        Args:
            x_observed: the observed values, shape ``(d_o,)``, in increasing coordinate order.
            observed: the observed coordinates, a boolean mask of shape ``(d,)`` or a list of
                indices; the result is over the others, in increasing order (dimension
                ``d - d_o``, ``K`` components).
        """
        o = _observed_index(observed, self.dim)
        u = np.setdiff1d(np.arange(self.dim), o)
        x_o = jnp.asarray(x_observed, dtype=self.means.dtype)
        if x_o.shape != (o.size,):
            raise ValueError(
                f"x_observed: expected shape ({o.size},) for {o.size} observed coordinates, got {x_o.shape}")
        parts = _condition(self.means, self.covs, self.weights, x_o, tuple(o.tolist()), tuple(u.tolist()))
        return GaussianMixture(*parts)

    def __repr__(self):
        return f"GaussianMixture(K={self.n_components}, d={self.dim})"


def _perturbed_components(mix, sde, log_w, evals, evecs, x, t):
    """The components of p_t at ``x`` (n, d), from Sigma_k = U_k diag(evals_k) U_k^T:
    ``y = U_k^T (x - a mu_k)`` (n, K, d), the eigenvalues a^2 evals_k + b^2 of the perturbed
    covariances (``(K, d)`` for a scalar ``t``, ``(n, K, d)`` for ``t`` of shape ``(n,)``),
    ``U`` (K, d, d) and log pi_k N(x; a mu_k, a^2 Sigma_k + b^2 I) (n, K), with a = a(t),
    b = b(t) the kernel's coefficients (the perturbed mixture of chapter 3). Shared by
    :func:`exact_score` and
    :func:`exact_classifier`."""
    m, s = sde.mean_coefficient(t), sde.kernel_std(t)
    if t.ndim:
        m, s = m[:, None, None], s[:, None, None]  # (n, 1, 1)
    lam = m**2 * evals.astype(x.dtype) + s**2
    u = evecs.astype(x.dtype)
    y = jnp.einsum("kji,nkj->nki", u, x[:, None, :] - m * mix.means.astype(x.dtype))  # U^T (x - m mu)
    log_pk = log_w - 0.5 * jnp.sum(y**2 / lam + jnp.log(lam), axis=-1) - 0.5 * mix.dim * math.log(2 * math.pi)
    return y, lam, u, log_pk


def exact_score(mix: GaussianMixture, sde: LinearSDE) -> ScoreFn:
    """The exact score of p_t, as a ``score_fn(x, t)`` with ``t`` a scalar or ``(n,)``.

    ``x`` has shape ``(n, d)``. Each sample gets its own perturbed mixture, so a sampler
    can pass per-sample times. Component k of p_t has covariance a(t)^2 Sigma_k + b(t)^2 I
    (the perturbed mixture of chapter 3); with the eigendecomposition
    Sigma_k = U_k diag(e_k) U_k^T computed once, that is
    U_k diag(a^2 e_k + b^2) U_k^T, so each call needs only elementwise work and
    matrix products (no factorisation per sample and time step: samplers call this
    thousands of times).
    """
    log_w = jnp.log(mix.weights)
    evals, evecs = jnp.linalg.eigh(mix.covs)  # (K, d), (K, d, d); Sigma_k = U diag(l) U^T

    @jax.jit  # one compiled program per shape, also when a chapter calls it outside a sampler
    def perturbed_score(x, t):
        t = jnp.broadcast_to(jnp.asarray(t, dtype=x.dtype), (x.shape[0],))
        y, lam, u, log_pk = _perturbed_components(mix, sde, log_w, evals, evecs, x, t)
        scores = -jnp.einsum("kij,nkj->nki", u, y / lam)  # -(m^2 Sigma + s^2 I)^{-1} (x - m mu)
        resp = jax.nn.softmax(log_pk, axis=-1)  # responsibilities, a log-sum-exp inside
        return jnp.einsum("nk,nki->ni", resp, scores).astype(x.dtype)

    def score_fn(x, t):
        x = mix._check_points(x)
        check_time(t, sde.T, allow_zero=False)
        return perturbed_score(x, t)

    return score_fn


def exact_classifier(mix: GaussianMixture, sde: LinearSDE) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The Bayes classifier of p_t, the components as classes: ``classifier(x, t) -> logits (n, K)``.

    ``x`` has shape ``(n, d)`` and ``t`` is a scalar or ``(n,)``. The logits are
    log pi_k + log N(x; a(t) mu_k, a(t)^2 Sigma_k + b(t)^2 I) (chapter 6's Bayes
    classifier of noisy data), so their softmax is
    ``mix.perturbed(sde, t).responsibilities(x)``: the
    reference for the learned time-dependent classifiers of chapter 6. As in
    :func:`exact_score`, the eigendecomposition Sigma_k = U_k diag(e_k) U_k^T is
    computed once: the perturbed covariance is U_k diag(a^2 e_k + b^2) U_k^T, and a
    call (a guided sampler makes one per step, and differentiates it) needs no
    factorisation. A scalar ``t`` gives one set of perturbed eigenvalues for the batch.
    """
    log_w = jnp.log(mix.weights)
    evals, evecs = jnp.linalg.eigh(mix.covs)  # (K, d), (K, d, d); Sigma_k = U diag(l) U^T

    @jax.jit  # one compiled program per shape, also when called outside a sampler
    def logits(x, t):
        log_pk = _perturbed_components(mix, sde, log_w, evals, evecs, x, jnp.asarray(t, dtype=x.dtype))[-1]
        return log_pk.astype(x.dtype)

    def classifier(x, t):
        x = mix._check_points(x)
        check_time(t, sde.T, allow_zero=False)
        if jnp.ndim(t) != 0:
            t = jnp.broadcast_to(jnp.asarray(t, dtype=x.dtype), x.shape[:1])
        return logits(x, t)

    return classifier


# --------------------------------------------------------------------------- the course's data sets


def two_gaussians_1d() -> GaussianMixture:
    """The 1-D mixture of chapters 3, 4 and 6: 0.3 N(-2, 1^2) + 0.7 N(2, 0.5^2)."""
    return GaussianMixture(
        means=[[-2.0], [2.0]],
        covs=[[[1.0]], [[0.25]]],
        weights=[0.3, 0.7],
    )


def four_gaussians_2d() -> GaussianMixture:
    """The 2-D mixture of chapters 3, 5 and 6: four equally weighted Gaussians, std 0.5,
    centred on the corners (+-2, +-2) of a square."""
    means = [[-2.0, -2.0], [-2.0, 2.0], [2.0, -2.0], [2.0, 2.0]]
    return GaussianMixture(means=means, covs=[0.25 * np.eye(2)] * 4, weights=[0.25] * 4)


# --------------------------------------------------------------------------- flow matching (chapter 8)


def exact_velocity(mix: GaussianMixture, path) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The exact marginal velocity of the Gaussian ``path`` started from ``mix``, as
    ``velocity(x, t)`` with ``x`` ``(n, d)`` and ``t`` a scalar or ``(n,)`` in [0, 1].

    u_t(x) = E[a'(t) x_0 + b'(t) z | x_t = x] (the marginal velocity of chapter 8). For a
    mixture, component k of p_t is N(a mu_k, C_k) with C_k = a^2 Sigma_k + b^2 I, and the
    Gaussian posterior means E[x_0 | x, k] = mu_k + a Sigma_k C_k^{-1} (x - a mu_k),
    E[z | x, k] = b C_k^{-1} (x - a mu_k) give

        u_t(x) = sum_k gamma_k(x) [a' mu_k + (a a' Sigma_k + b b' I) C_k^{-1} (x - a mu_k)],

    gamma_k the responsibilities under p_t. Only b b' enters, never b' alone, and nothing is
    divided by a or b: the velocity is finite at t = 0 and t = 1 (``path.b_db``). With the
    eigendecomposition Sigma_k = U diag(e) U^T, every matrix above is
    U diag(.) U^T, as in :func:`exact_score`.
    """
    log_w = jnp.log(mix.weights)
    evals, evecs = jnp.linalg.eigh(mix.covs)
    d = mix.dim

    @jax.jit
    def velocity_jit(x, t):
        t = jnp.broadcast_to(jnp.asarray(t, dtype=x.dtype), (x.shape[0],))
        a, da = path.a(t)[:, None, None], path.da(t)[:, None, None]
        b2, b_db = path.b(t)[:, None, None] ** 2, path.b_db(t)[:, None, None]
        lam_data = evals.astype(x.dtype)
        lam = a**2 * lam_data + b2  # (n, K, d): eigenvalues of C_k
        u = evecs.astype(x.dtype)
        mu = mix.means.astype(x.dtype)
        y = jnp.einsum("kji,nkj->nki", u, x[:, None, :] - a * mu)  # U^T (x - a mu)
        log_pk = log_w - 0.5 * jnp.sum(y**2 / lam + jnp.log(lam), axis=-1) - 0.5 * d * math.log(2 * math.pi)
        gain = (a * da * lam_data + b_db) / lam
        comp = da * mu + jnp.einsum("kij,nkj->nki", u, gain * y)  # (n, K, d)
        resp = jax.nn.softmax(log_pk, axis=-1)
        return jnp.einsum("nk,nki->ni", resp, comp).astype(x.dtype)

    def velocity(x, t):
        x = mix._check_points(x)
        from companion.paths import check_times  # paths imports sde only: no cycle at call time

        check_times(t)
        return velocity_jit(x, t)

    return velocity
