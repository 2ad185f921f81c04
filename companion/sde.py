"""Forward SDEs of score-based generative modelling (chapter 2).

Every SDE here is *linear with scalar coefficients* and no offset,

    dx = A(t) x dt + g(t) dw,        t in [0, T], T = 1,

the linear SDE of chapter 2 with c = 0. So the perturbation kernel p_0t(x_t | x_0) is
Gaussian, N(a(t) x_0, b(t)^2 I): x_t = a(t) x_0 + b(t) z with z ~ N(0, I), where the
mean coefficient is a(t) = exp(int_0^t A) and b(t)^2 solves the variance ODE
v' = 2 A v + g^2 from v(0) = 0 (the moment equations of chapter 2). The three SDEs of
Song et al. (2021) differ in A(t) and g(t):

=========  ==============================  ================================  ===========================
SDE        drift A(t) x                    g(t)^2                            kernel std b(t)
=========  ==============================  ================================  ===========================
VE         0                               d sigma(t)^2 / dt                 sqrt(sigma(t)^2 - sigma_min^2)
VP         -beta(t) x / 2                  beta(t)                           sqrt(1 - exp(-B(t)))
sub-VP     -beta(t) x / 2                  beta(t) (1 - exp(-2 B(t)))        1 - exp(-B(t))
=========  ==============================  ================================  ===========================

with sigma(t) = sigma_min (sigma_max / sigma_min)^t, beta(t) = beta_min + t (beta_max -
beta_min) and B(t) = int_0^t beta; the mean coefficient is a(t) = 1 for VE and
exp(-B(t)/2) for VP and sub-VP. Chapter 2 derives each (the section "The three SDEs of
score-based models" and its table).

**VE convention.** The kernel of the VE SDE started *at* x_0 has variance
b(t)^2 = sigma(t)^2 - sigma_min^2, which is what ``VE.marginal`` returns. Song et al. use
b(t) = sigma(t), the kernel of an SDE whose data were already blurred by
N(0, sigma_min^2). We keep the exact kernel so that drift, diffusion and marginal
describe one and the same process (a simulation of ``drift`` and ``diffusion``
reproduces ``marginal``, and the exact perturbed mixtures of :mod:`companion.toy` are
exact). The two differ by sigma_min^2 = 1e-4, which matters only for t close to 0.

Shapes: ``x`` is ``(n, *dims)``; ``t`` is a scalar or ``(n,)``; coefficients of ``t``
broadcast against ``x`` along the batch axis.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from companion._common import check_x, sq_norms

__all__ = ["ScoreFn", "LinearSDE", "VE", "VP", "SubVP", "batch_broadcast", "check_sde", "check_time", "check_cutoff"]

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


# --------------------------------------------------------------------------- helpers


def batch_broadcast(c: jax.Array, x: jax.Array) -> jax.Array:
    """Reshape a per-sample coefficient ``c`` (scalar or ``(n,)``) to broadcast against ``x``.

    A scalar stays a scalar; an ``(n,)`` array becomes ``(n, 1, ..., 1)``.
    """
    c = jnp.asarray(c)
    if c.ndim == 0:
        return c
    if c.ndim != 1 or c.shape[0] != x.shape[0]:
        raise ValueError(
            f"t: expected a scalar or shape ({x.shape[0]},) to match x of shape {x.shape}, "
            f"got shape {c.shape}"
        )
    return c.reshape((-1,) + (1,) * (x.ndim - 1))


def check_time(t: ArrayLike, T: float, *, allow_zero: bool) -> None:
    """Raise ``ValueError`` if ``t`` is known at trace time and lies outside ``(0, T]``.

    (``[0, T]`` when ``allow_zero``.) Traced values are not checked: they are unknown
    until the function runs.
    """
    if isinstance(t, jax.core.Tracer):
        return
    tv = np.asarray(t)
    low_ok = np.all(tv >= 0) if allow_zero else np.all(tv > 0)
    if not (low_ok and np.all(tv <= T * (1 + 1e-6))):
        interval = f"[0, {T}]" if allow_zero else f"(0, {T}]"
        raise ValueError(f"t: every time must lie in {interval}, got values in [{tv.min()}, {tv.max()}]")


def check_sde(sde: object) -> None:
    """Raise ``TypeError`` unless ``sde`` is a :class:`LinearSDE` (VE, VP, SubVP)."""
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"sde: expected a companion.sde SDE (VE, VP, SubVP), got {type(sde).__name__}")


def check_cutoff(sde: LinearSDE, eps: float) -> float:
    """Check that ``sde`` is a linear SDE of this module and 0 < ``eps`` < T; return ``eps``.

    ``eps`` is the t-epsilon cut-off of the losses and the likelihood (chapters 3 to 5).
    """
    check_sde(sde)
    eps = float(eps)
    if not 0 < eps < sde.T:
        raise ValueError(f"eps: must lie in (0, T) = (0, {sde.T}), got {eps}")
    return eps


def _parameters(sde, low: str, high: str, *, positive: str, strict: bool) -> None:
    """Check the frozen dataclass ``sde``'s parameters ``low`` and ``high`` and store them back
    as floats: finite numbers >= 0, ``positive`` (one of the two) > 0, and ``low < high``
    (``strict``) or ``low <= high``. The error (``TypeError`` / ``ValueError``) names the
    parameter."""
    values = {}
    for name in (low, high):
        value = getattr(sde, name)
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
        value = float(value)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name}: expected a finite non-negative number, got {value}")
        values[name] = value
    if values[positive] <= 0:
        raise ValueError(f"{positive}: must be positive, got {values[positive]}")
    lo, hi = values[low], values[high]
    if (lo >= hi) if strict else (lo > hi):
        order = ("smaller than", ">=") if strict else ("at most", ">")
        raise ValueError(f"{low} must be {order[0]} {high}, got {lo} {order[1]} {hi}")
    for name, value in values.items():
        object.__setattr__(sde, name, value)


# --------------------------------------------------------------------------- base class


@dataclasses.dataclass(frozen=True)
class LinearSDE(abc.ABC):
    """dx = A(t) x dt + g(t) dw on [0, T], the linear SDE of chapter 2 with no offset.
    Subclasses give A, g, a, b (the four abstract methods); a subclass that misses one
    cannot be instantiated."""

    T = 1.0

    # -- the four scalar functions that define a linear SDE; t is a scalar or (n,) array
    @abc.abstractmethod
    def drift_coefficient(self, t: ArrayLike) -> jax.Array:
        """A(t), the drift coefficient: f(x, t) = A(t) x."""

    @abc.abstractmethod
    def diffusion(self, t: ArrayLike) -> jax.Array:
        """g(t), the diffusion coefficient; shaped like ``t``."""

    @abc.abstractmethod
    def mean_coefficient(self, t: ArrayLike) -> jax.Array:
        """a(t) = exp(int_0^t A(u) du), the mean coefficient: the kernel's mean is a(t) x_0."""

    @abc.abstractmethod
    def kernel_std(self, t: ArrayLike) -> jax.Array:
        """b(t), the kernel's standard deviation: b(t)^2 solves v' = 2 A v + g^2, v(0) = 0."""

    # -- what follows is the same for every linear SDE
    def drift(self, x: ArrayLike, t: ArrayLike) -> jax.Array:
        """f(x, t) = A(t) x, shaped like ``x``."""
        x = check_x(x)
        check_time(t, self.T, allow_zero=True)
        return batch_broadcast(self.drift_coefficient(t), x) * x

    def marginal(self, x0: ArrayLike, t: ArrayLike) -> tuple[jax.Array, jax.Array]:
        """Mean and standard deviation of the perturbation kernel p_0t(x_t | x_0).

        Returns ``(mean, std)`` = (a(t) x_0, b(t)): ``mean`` shaped like ``x0``, ``std``
        shaped like ``t`` (the same in every coordinate). ``x_t = mean + std * z`` with
        ``z ~ N(0, I)``.
        """
        x0 = check_x(x0)
        check_time(t, self.T, allow_zero=False)
        return batch_broadcast(self.mean_coefficient(t), x0) * x0, self.kernel_std(t)

    def perturb(self, key: jax.Array, x0: jax.Array, t: ArrayLike) -> tuple[jax.Array, jax.Array]:
        """Sample x_t ~ p_0t(. | x_0). Returns ``(x_t, z)``, the noise ``z`` that made it."""
        mean, std = self.marginal(x0, t)
        z = jax.random.normal(key, x0.shape, x0.dtype)
        return mean + batch_broadcast(std, x0) * z, z

    def transition(self, s: ArrayLike, t: ArrayLike) -> tuple[jax.Array, jax.Array]:
        """Coefficients ``(ratio, std)`` of the exact one-step transition from time ``s`` to ``t >= s``.

        ``x_t = ratio * x_s + std * z`` with ``z ~ N(0, I)``, where ratio = a(t) / a(s)
        (chapter 3's transition ratio psi) and std^2 = b(t)^2 - ratio^2 b(s)^2 (the
        moment equations of chapter 2 started at time ``s``). This is the discretised
        forward SDE that the reverse-diffusion predictor and the Langevin corrector of
        chapter 3 use: for VE, std^2 = sigma(t)^2 - sigma(s)^2; for VP,
        ratio^2 = 1 - std^2 = exp(-(B(t) - B(s))), one step of a DDPM chain.
        """
        r = self.mean_coefficient(t) / self.mean_coefficient(s)
        q2 = self.kernel_std(t) ** 2 - r**2 * self.kernel_std(s) ** 2
        return r, jnp.sqrt(jnp.maximum(q2, 0.0))

    def prior_std(self) -> jax.Array:
        """Standard deviation of the prior p_T: the kernel at T started from x_0 = 0."""
        return self.kernel_std(self.T)

    def prior_sample(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """Sample ``shape`` = ``(n, *dims)`` from the prior N(0, b(T)^2 I)."""
        return self.prior_std() * jax.random.normal(key, tuple(shape))

    def prior_log_prob(self, x: ArrayLike) -> jax.Array:
        """log N(x; 0, b(T)^2 I) per sample, shape ``(n,)``."""
        x = check_x(x)
        s = self.prior_std()
        d = math.prod(x.shape[1:])
        return -0.5 * sq_norms(x) / s**2 - d * jnp.log(s) - 0.5 * d * math.log(2 * math.pi)

    def reverse_drift(self, score_fn: ScoreFn, x: jax.Array, t: ArrayLike) -> jax.Array:
        """f(x, t) - g(t)^2 score(x, t): the drift of the reverse-time SDE (chapter 3).

        Time runs backwards: dx = [f - g^2 score] dt + g dw_bar with dt < 0; score is
        ``score_fn(x, t)``, the exact score or a score network.
        """
        g = batch_broadcast(self.diffusion(t), x)
        return self.drift(x, t) - g**2 * score_fn(x, t)

    def probability_flow_drift(self, score_fn: ScoreFn, x: jax.Array, t: ArrayLike) -> jax.Array:
        """f(x, t) - g(t)^2 score(x, t) / 2: the drift of the probability flow ODE (chapter 5)."""
        g = batch_broadcast(self.diffusion(t), x)
        return self.drift(x, t) - 0.5 * g**2 * score_fn(x, t)


# --------------------------------------------------------------------------- the three SDEs


@dataclasses.dataclass(frozen=True)
class VE(LinearSDE):
    """Variance exploding: dx = sqrt(d sigma(t)^2 / dt) dw, sigma(t) = sigma_min (sigma_max/sigma_min)^t.

    The VE SDE of chapter 2. The kernel is N(x_0, b(t)^2 I) with
    b(t)^2 = sigma(t)^2 - sigma_min^2, the exact kernel of this SDE (see the module
    docstring for how this differs from Song et al.).
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0

    def __post_init__(self):
        _parameters(self, "sigma_min", "sigma_max", positive="sigma_min", strict=True)

    @property
    def log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t: ArrayLike) -> jax.Array:
        """sigma(t) = sigma_min (sigma_max / sigma_min)^t."""
        return self.sigma_min * jnp.exp(jnp.asarray(t) * self.log_ratio)

    def drift_coefficient(self, t: ArrayLike) -> jax.Array:
        return jnp.zeros_like(jnp.asarray(t, dtype=float))

    def diffusion(self, t: ArrayLike) -> jax.Array:
        # g^2 = d sigma^2/dt = 2 log(sigma_max/sigma_min) sigma(t)^2
        return self.sigma(t) * math.sqrt(2 * self.log_ratio)

    def mean_coefficient(self, t: ArrayLike) -> jax.Array:
        return jnp.ones_like(jnp.asarray(t, dtype=float))

    def kernel_std(self, t: ArrayLike) -> jax.Array:
        # sigma(t)^2 - sigma_min^2 = sigma_min^2 (exp(2 t log r) - 1), expm1 keeps small t accurate
        return self.sigma_min * jnp.sqrt(jnp.expm1(2 * jnp.asarray(t) * self.log_ratio))


@dataclasses.dataclass(frozen=True)
class VP(LinearSDE):
    """Variance preserving: dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw (the VP SDE of chapter 2).

    beta(t) = beta_min + t (beta_max - beta_min); the continuous limit of the DDPM chain.
    Kernel: N(a(t) x_0, b(t)^2 I) with a(t) = exp(-B(t)/2), b(t)^2 = 1 - exp(-B(t)),
    B(t) = int_0^t beta.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0

    def __post_init__(self):
        _parameters(self, "beta_min", "beta_max", positive="beta_max", strict=False)

    def beta(self, t: ArrayLike) -> jax.Array:
        return self.beta_min + jnp.asarray(t) * (self.beta_max - self.beta_min)

    def integrated_beta(self, t: ArrayLike) -> jax.Array:
        """B(t) = int_0^t beta(u) du."""
        t = jnp.asarray(t)
        return self.beta_min * t + 0.5 * t**2 * (self.beta_max - self.beta_min)

    def drift_coefficient(self, t: ArrayLike) -> jax.Array:
        return -0.5 * self.beta(t)

    def diffusion(self, t: ArrayLike) -> jax.Array:
        return jnp.sqrt(self.beta(t))

    def mean_coefficient(self, t: ArrayLike) -> jax.Array:
        return jnp.exp(-0.5 * self.integrated_beta(t))

    def kernel_std(self, t: ArrayLike) -> jax.Array:
        return jnp.sqrt(-jnp.expm1(-self.integrated_beta(t)))


@dataclasses.dataclass(frozen=True)
class SubVP(VP):
    """Sub-VP: dx = -beta(t) x / 2 dt + sqrt(beta(t) (1 - exp(-2 B(t)))) dw (the sub-VP SDE of chapter 2).

    Same drift and mean coefficient a(t) as VP; kernel std b(t) = 1 - exp(-B(t)), never
    above VP's.
    """

    def diffusion(self, t: ArrayLike) -> jax.Array:
        return jnp.sqrt(self.beta(t) * -jnp.expm1(-2 * self.integrated_beta(t)))

    def kernel_std(self, t: ArrayLike) -> jax.Array:
        return -jnp.expm1(-self.integrated_beta(t))
