"""Score-matching losses in continuous time (chapter 4).

Each constructor takes the SDE and the options and returns a loss object ``loss`` with

    loss(model, x0, key) -> scalar            the minibatch estimate (mean over samples)
    loss.per_sample(model, x0, key) -> (n,)   one unbiased estimate per data point

where ``model(x, t)`` is any score function (an NNX module or a plain function) and
``x0`` is a batch of data ``(n, *dims)``. Every loss draws one time per sample,
``t ~ U(eps, T)`` (or, for denoising score matching with ``importance_sampling=True``,
from the importance-sampling density q(t) of chapter 4), and the perturbed point
``x_t = a(t) x0 + b(t) z`` from the kernel, and weights the sample by lambda(t):

=================  ==========================  ==========================================
``weighting``      lambda(t)                   remark
=================  ==========================  ==========================================
``"sigma2"``       b(t)^2 (kernel variance)    Song et al. (2021); makes the DSM
                                               regression target O(1) at every t
``"likelihood"``   g(t)^2                      bounds the KL / negative log-likelihood
                                               (Song, Durkan et al. 2021)
``"none"``         1                           the raw Fisher divergence, integrated in t
=================  ==========================  ==========================================

All three losses estimate, up to a constant that does not depend on the model, the
weighted Fisher divergence (chapter 4)

    J(theta) = E_t [ lambda(t) E_{x_t ~ p_t} || model(x_t, t) - grad log p_t(x_t) ||^2 / 2 ].

Keys: ``k_t, k_x, k_v = jax.random.split(key, 3)`` draw the times, the kernel noise
``z`` and (sliced score matching only) the projections, in that order.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from companion import divergence
from companion._common import check_int, check_x, sq_norms
from companion.paths import GaussianPath
from companion.sde import LinearSDE, ScoreFn, batch_broadcast, check_cutoff

__all__ = [
    "WEIGHTINGS",
    "weighting_fn",
    "TimeSampler",
    "Loss",
    "denoising_score_matching",
    "implicit_score_matching",
    "sliced_score_matching",
    "fisher_divergence",
    "flow_matching",
    "velocity_from_score",
    "score_from_velocity",
    "classifier_loss",
    "label_dropout_loss",
]

WEIGHTINGS = ("sigma2", "likelihood", "none")


def weighting_fn(sde: LinearSDE, weighting: str) -> Callable:
    """lambda(t) for ``weighting`` in ``("sigma2", "likelihood", "none")``."""
    if weighting == "sigma2":
        return lambda t: sde.kernel_std(t) ** 2
    if weighting == "likelihood":
        return lambda t: sde.diffusion(t) ** 2
    if weighting == "none":
        return lambda t: jnp.ones_like(jnp.asarray(t))
    raise ValueError(f"weighting: expected one of {WEIGHTINGS}, got {weighting!r}")



class TimeSampler:
    """Draws t on [eps, T] from a density q(t) proportional to ``rate(t)`` (the importance
    sampling of t, chapter 4).

    The inverse CDF is tabulated on a grid (geometric near ``eps``, where lambda/b^2 of
    the likelihood weighting behaves like 1/t); within a grid cell t is uniform, so the
    sampled density q(t) is piecewise constant and known exactly: the importance weight
    ``1 / ((T - eps) q(t))`` makes the estimate exactly unbiased whatever the grid.
    """

    def __init__(self, rate: Callable, eps: float, T: float, n_grid: int = 4096):
        grid = np.unique(np.concatenate([np.geomspace(eps, T, n_grid // 2), np.linspace(eps, T, n_grid // 2)]))
        mid = 0.5 * (grid[1:] + grid[:-1])
        w = np.asarray(rate(jnp.asarray(mid, jnp.float32)), np.float64)
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError("importance_sampling: lambda(t)/b(t)^2 is not finite and positive on [eps, T]")
        mass = w * np.diff(grid)
        self.total = float(mass.sum())  # ~ int_eps^T rate(t) dt
        cdf = np.concatenate([[0.0], np.cumsum(mass) / self.total])
        self.grid = jnp.asarray(grid, jnp.float32)
        self.cdf = jnp.asarray(cdf, jnp.float32)
        self.density = jnp.asarray(mass / np.diff(grid) / self.total, jnp.float32)  # q(t) per cell
        self.eps, self.T = eps, T

    def sample(self, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
        """Times ``(n,)`` and their importance weights ``1 / ((T - eps) q(t))``, ``(n,)``."""
        u = jax.random.uniform(key, (n,), jnp.float32)
        cell = jnp.clip(jnp.searchsorted(self.cdf, u, side="right") - 1, 0, self.density.shape[0] - 1)
        frac = (u - self.cdf[cell]) / jnp.maximum(self.cdf[cell + 1] - self.cdf[cell], 1e-30)
        t = self.grid[cell] + jnp.clip(frac, 0.0, 1.0) * (self.grid[cell + 1] - self.grid[cell])
        weight = 1.0 / ((self.T - self.eps) * self.density[cell])
        return t, weight


class Loss:
    """A score-matching loss: ``loss(model, x0, key) -> scalar``; ``loss.per_sample(...) -> (n,)``."""

    def __init__(self, name: str, per_sample: Callable, **options):
        self.name = name
        self._per_sample = per_sample
        self.options = options

    def per_sample(self, model: ScoreFn, x0: jax.Array, key: jax.Array) -> jax.Array:
        x0 = check_x(x0)
        return self._per_sample(model, x0, key)

    def __call__(self, model: ScoreFn, x0: jax.Array, key: jax.Array) -> jax.Array:
        return jnp.mean(self.per_sample(model, x0, key))

    def __repr__(self):
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{self.name}({opts})"


def _uniform_times(key, n, eps, T, dtype):
    return jax.random.uniform(key, (n,), dtype, minval=eps, maxval=T)


def _uniform_perturbed(sde: LinearSDE, key, x0, eps):
    """``t ~ U(eps, T)`` per sample, ``x_t`` from the kernel p_0t, and a key left for the loss."""
    k_t, k_x, k_rest = jax.random.split(key, 3)
    t = _uniform_times(k_t, x0.shape[0], eps, sde.T, x0.dtype)
    xt, _ = sde.perturb(k_x, x0, t)
    return t, xt, k_rest


def denoising_score_matching(sde: LinearSDE, *, weighting: str = "sigma2", importance_sampling: bool = False,
                             eps: float = 1e-5) -> Loss:
    """Denoising score matching with the perturbation kernel (Vincent 2011; the denoising
    score-matching loss of chapter 4).

    Per sample: ``t``, ``z ~ N(0, I)``, ``x_t = a(t) x_0 + b(t) z``; the kernel's score at
    ``x_t`` is ``-z / b(t)`` and the loss is

        lambda(t) || model(x_t, t) + z / b(t) ||^2 / 2  =  (lambda(t) / b(t)^2) || b(t) model + z ||^2 / 2,

    the second form being the noise-prediction form (``b(t) model`` predicts ``-z``).

    ``importance_sampling=True`` draws ``t`` with density q(t) proportional to
    lambda(t) / b(t)^2 (chapter 4) and multiplies by ``1 / ((T - eps) q(t))``: the same
    expectation, and the weight in front of the O(1) noise-prediction error becomes
    constant. For ``"sigma2"`` it changes nothing (q is uniform).

    ``eps`` is the lower end of the times (t-epsilon cut-off): lambda(t)/b(t)^2 grows like
    1/t for the likelihood weighting and ``"none"``, so with ``eps -> 0`` the estimator's
    mean grows without bound even for the exact score (the model-independent constant:
    near t = 0 the noise-prediction error is ||z||^2 / 2 whatever the model, so the mean
    grows like (d/2) log(1/eps); chapter 4 measures it), and with uniform t so does its
    variance (like 1/eps).
    """
    eps = check_cutoff(sde, eps)
    lam = weighting_fn(sde, weighting)
    sampler = TimeSampler(lambda t: lam(t) / sde.kernel_std(t) ** 2, eps, sde.T) if importance_sampling else None

    def per_sample(model, x0, key):
        k_t, k_x, _ = jax.random.split(key, 3)
        n = x0.shape[0]
        if sampler is None:
            t = _uniform_times(k_t, n, eps, sde.T, x0.dtype)
            iw = jnp.ones((n,), x0.dtype)
        else:
            t, iw = sampler.sample(k_t, n)
            t, iw = t.astype(x0.dtype), iw.astype(x0.dtype)
        xt, z = sde.perturb(k_x, x0, t)
        s = sde.kernel_std(t)
        residual = batch_broadcast(s, x0) * model(xt, t) + z  # noise-prediction error
        return iw * lam(t) / s**2 * sq_norms(residual) / 2

    return Loss("denoising_score_matching", per_sample, weighting=weighting,
                importance_sampling=importance_sampling, eps=eps)


def implicit_score_matching(sde: LinearSDE, *, weighting: str = "sigma2", eps: float = 1e-5) -> Loss:
    """Implicit (Hyvarinen) score matching at every t (chapter 4).

    Per sample: ``t``, ``x_t`` from the kernel, and

        lambda(t) [ tr(d model(x_t, t) / dx) + || model(x_t, t) ||^2 / 2 ],

    with the exact Jacobian trace (``D`` Jacobian-vector products: fine in low dimension).
    It equals the weighted Fisher divergence minus a model-independent constant
    (Hyvarinen 2005), so its gradients agree in expectation with those of
    :func:`denoising_score_matching` with the same weighting.
    """
    eps = check_cutoff(sde, eps)
    lam = weighting_fn(sde, weighting)

    def per_sample(model, x0, key):
        t, xt, _ = _uniform_perturbed(sde, key, x0, eps)
        fn = lambda x: model(x, t)
        return lam(t) * (divergence.exact_divergence(fn, xt) + sq_norms(fn(xt)) / 2)

    return Loss("implicit_score_matching", per_sample, weighting=weighting, eps=eps)


def sliced_score_matching(sde: LinearSDE, *, weighting: str = "sigma2", eps: float = 1e-5, n_projections: int = 1,
                          projection: str = "rademacher", variance_reduction: bool = False) -> Loss:
    """Sliced score matching (Song, Garg et al. 2020; chapter 4).

    The trace of implicit score matching replaced by its projections on random probe
    directions xi (``n_projections`` per sample, ``"rademacher"`` or ``"gaussian"``):

        lambda(t) mean_xi [ xi^T (d model / dx) xi + (xi^T model)^2 / 2 ],

    one Jacobian-vector product per projection whatever the dimension. With
    ``variance_reduction=True`` the second term is ``|| model ||^2 / 2``, its exact
    expectation (SSM-VR).
    """
    eps = check_cutoff(sde, eps)
    lam = weighting_fn(sde, weighting)
    n_projections = check_int("n_projections", n_projections, 1)
    divergence.probes(jax.random.key(0), (1,), kind=projection)  # validates ``projection``

    def per_sample(model, x0, key):
        t, xt, k_v = _uniform_perturbed(sde, key, x0, eps)
        n = x0.shape[0]
        v = divergence.probes(k_v, (n_projections,) + x0.shape, kind=projection, dtype=x0.dtype)
        fn = lambda x: model(x, t)
        score = fn(xt)
        trace = divergence.hutchinson_divergence(fn, xt, v)
        if variance_reduction:
            quad = sq_norms(score) / 2
        else:
            proj = (v * score[None]).reshape(n_projections, n, -1).sum(-1)
            quad = jnp.mean(proj**2, axis=0) / 2
        return lam(t) * (trace + quad)

    return Loss("sliced_score_matching", per_sample, weighting=weighting, eps=eps,
                n_projections=n_projections, projection=projection, variance_reduction=variance_reduction)


def fisher_divergence(sde: LinearSDE, true_score: ScoreFn, *, weighting: str = "sigma2", eps: float = 1e-5) -> Loss:
    """The weighted Fisher divergence itself, when the true score of p_t is known (toy data).

    Per sample: ``lambda(t) || model(x_t, t) - true_score(x_t, t) ||^2 / 2``. Used to check
    that the three practical losses differ from it by a constant.
    """
    eps = check_cutoff(sde, eps)
    lam = weighting_fn(sde, weighting)

    def per_sample(model, x0, key):
        t, xt, _ = _uniform_perturbed(sde, key, x0, eps)
        return lam(t) * sq_norms(model(xt, t) - true_score(xt, t)) / 2

    return Loss("fisher_divergence", per_sample, weighting=weighting, eps=eps)


# --------------------------------------------------------------------------- flow matching (chapter 8)


def _check_path(path):
    if not isinstance(path, GaussianPath):
        raise TypeError(f"path: expected a companion.paths path (Rectified(), from_sde(s)), got {type(path).__name__}")


def flow_matching(path: GaussianPath, *, eps: float = 1e-5, coupled: bool = False) -> Loss:
    """Conditional flow matching on a Gaussian path (Lipman et al. 2023; chapter 8's
    conditional flow-matching loss).

    Per sample: ``t ~ U(eps, 1)``, ``z ~ N(0, I)``, ``x_t = a(t) x_0 + b(t) z`` and

        || model(x_t, t) - (a'(t) x_0 + b'(t) z) ||^2 / 2,

    where ``model(x, t)`` is a velocity model. Its expectation is the regression on the
    marginal velocity E[a' x_0 + b' z | x_t] (the flow-matching identity of chapter 8)
    plus a constant that does not depend on the model.

    ``coupled=True``: each data point comes with its own noise, ``x0`` of shape
    ``(n, 2, *dims)`` holding pairs ``[x_0, z]`` (the couplings of reflow, Liu et al.
    2023); the model still sees ``(n, *dims)``.

    ``eps``: the lower end of the times, as in the score-matching losses. b'(t) of the
    VE and VP paths grows like 1/sqrt(t) near 0, so ``eps > 0`` keeps the targets
    bounded; for :class:`companion.paths.Rectified` nothing is singular and any small
    ``eps`` gives the same loss. Keys: ``k_t, k_z = jax.random.split(key)``.
    """
    _check_path(path)
    eps = float(eps)
    if not 0 < eps < path.T:
        raise ValueError(f"eps: must lie in (0, 1), got {eps}")
    if not isinstance(coupled, bool):
        raise TypeError(f"coupled: expected True or False, got {coupled!r}")

    def per_sample(model, x0, key):
        k_t, k_z = jax.random.split(key)
        if coupled:
            if x0.ndim < 3 or x0.shape[1] != 2:
                raise ValueError(f"x0: with coupled=True expected pairs of shape (n, 2, *dims), got {x0.shape}")
            x0, z = x0[:, 0], x0[:, 1]
        else:
            z = jax.random.normal(k_z, x0.shape, x0.dtype)
        t = _uniform_times(k_t, x0.shape[0], eps, path.T, x0.dtype)
        xt = path.interpolate(x0, z, t)
        target = path.conditional_velocity(x0, z, t)
        return sq_norms(model(xt, t) - target) / 2

    return Loss("flow_matching", per_sample, eps=eps, coupled=coupled)


def velocity_from_score(path: GaussianPath, score_fn: ScoreFn) -> Callable:
    """The velocity field of ``path`` from a score model: ``velocity(x, t)``.

    u = (a'/a) x + (a' b^2 / a - b b') grad log p_t (the velocity from the score,
    chapter 8),
    written as [a' x + (a' b^2 - a b b') score] / a. Valid where a(t) > 0 (all t < 1
    for :class:`~companion.paths.Rectified`). For ``paths.from_sde(s)`` it is the
    probability flow drift f - g^2 score / 2 of chapter 5.
    """
    _check_path(path)

    def velocity(x, t):
        a, b, da = path.a(t), path.b(t), path.da(t)
        c = batch_broadcast(da * b**2 - a * path.b_db(t), x)
        return (batch_broadcast(da, x) * x + c * score_fn(x, t)) / batch_broadcast(a, x)

    return velocity


def score_from_velocity(path: GaussianPath, velocity_fn: Callable) -> ScoreFn:
    """The score model of ``path`` from a velocity model: ``score_fn(x, t)``, the inverse of
    :func:`velocity_from_score`,

        grad log p_t = (a u - a' x) / (a' b^2 - a b b')      (chapter 8).

    The denominator is -a g^2 / 2 for ``paths.from_sde(s)`` (never 0) and -t for
    :class:`~companion.paths.Rectified` (valid for t > 0). With it every score-based
    sampler of the course (chapters 3 and 5) runs on a flow-matching model.
    """
    _check_path(path)

    def score_fn(x, t):
        a, b, da = path.a(t), path.b(t), path.da(t)
        c = batch_broadcast(da * b**2 - a * path.b_db(t), x)
        return (batch_broadcast(a, x) * velocity_fn(x, t) - batch_broadcast(da, x) * x) / c

    return score_fn


# --------------------------------------------------------------------------- conditional generation (chapter 6)
#
# Moved from companion.conditional, which keeps only guidance: the losses that train a
# time-dependent classifier and a class-conditional score model. The batch is a pair
# ``(x0, y)``, so companion.training.fit trains them when its ``data`` is a function
# ``sample(key, n) -> (x0, y)``.


def classifier_loss(sde: LinearSDE, *, eps: float = 1e-3) -> Callable:
    """Cross-entropy of a time-dependent classifier on noisy inputs: ``loss(model, (x0, y), key)``.

    ``model(x, t) -> logits (n, K)``, ``x0`` of shape ``(n, *dims)`` and ``y`` int labels
    ``(n,)``. Per sample: ``t ~ U(eps, T)``, ``x_t ~ p_0t(. | x_0)`` (the forward kernel)
    and ``-log softmax(model(x_t, t))[y]``; the mean over the batch, a scalar. Minimising it
    over all t fits p_t(y | x) at every noise level at once: its minimiser is the Bayes
    classifier of chapter 6 (Bayes' rule on the perturbed class densities). ``eps`` defaults to the samplers'
    cut-off (``companion.sampling.DEFAULT_EPS``), the smallest time guidance is used at.
    """
    eps = check_cutoff(sde, eps)

    def loss(model, batch, key):
        x0, y = batch
        k_t, k_x = jax.random.split(key)
        t = jax.random.uniform(k_t, x0.shape[:1], x0.dtype, minval=eps, maxval=sde.T)
        x_t, _ = sde.perturb(k_x, x0, t)
        log_p = jax.nn.log_softmax(model(x_t, t), axis=-1)
        return -jnp.mean(jnp.take_along_axis(log_p, jnp.asarray(y)[:, None], axis=-1)[:, 0])

    return loss


def label_dropout_loss(sde: LinearSDE, null_label: int, *, p_uncond: float = 0.2, weighting: str = "sigma2",
                       eps: float = 1e-5) -> Callable:
    """Denoising score matching of a class-conditional model with label dropout: ``loss(model, (x0, y), key)``.

    ``model(x, t, y)`` (e.g. :class:`companion.nets.ClassConditionalMLP`), ``x0`` of shape
    ``(n, *dims)`` and ``y`` int labels ``(n,)``. Each sample's label is replaced by
    ``null_label`` with probability ``p_uncond``, and the loss, a scalar, is
    :func:`denoising_score_matching` of ``model(., ., y)`` (chapter 4's denoising loss): its
    minimiser is the score of p_t(x | y) for a label and that of p_t(x) for the null
    label, the two scores classifier-free guidance mixes (Ho and Salimans 2022;
    :func:`companion.conditional.classifier_free`).
    """
    if not 0.0 < p_uncond < 1.0:
        raise ValueError(f"p_uncond: expected a probability in (0, 1), got {p_uncond!r}")
    dsm = denoising_score_matching(sde, weighting=weighting, eps=eps)

    def loss(model, batch, key):
        x0, y = batch
        k_drop, k_dsm = jax.random.split(key)
        drop = jax.random.bernoulli(k_drop, p_uncond, y.shape)
        y = jnp.where(drop, null_label, y)
        return dsm(lambda x, t: model(x, t, y), x0, k_dsm)

    return loss
