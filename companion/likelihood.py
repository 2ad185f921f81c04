"""Exact log-likelihoods through the probability flow ODE (chapter 5).

The probability flow ODE (chapter 5),

    dx/dt = F(x, t) = f(x, t) - g(t)^2 score(x, t) / 2,

moves every sample of p_t to a sample of p_t' (t' > t). Along a solution the log density
obeys the instantaneous change of variables (Chen et al. 2018; chapter 5),

    d log p_t(x(t)) / dt = -div F(x(t), t),

so, integrating from ``eps`` to ``T``,

    log p_eps(x) = log p_T(x(T)) + int_eps^T div F(x(t), t) dt,

with p_T replaced by the prior N(0, b(T)^2 I) (:meth:`~companion.sde.LinearSDE.prior_log_prob`). The
divergence is exact (``d`` Jacobian-vector products) or the Skilling-Hutchinson estimate
E_xi[xi^T (dF/dx) xi] with one probe xi per sample held fixed along the trajectory, as in
FFJORD (Grathwohl et al. 2019).

The divergences are those of :mod:`companion.divergence`, shared with the losses of
chapter 4.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from companion import divergence
from companion._common import check_int, check_score_fn, check_x, sq_norms, static, traceable
from companion.losses import TimeSampler
from companion.sde import LinearSDE, ScoreFn, batch_broadcast, check_cutoff

__all__ = ["log_prob", "solver_nfe", "bits_per_dim", "nats_to_bits_per_dim", "sde_bound"]


# --------------------------------------------------------------------------- log-likelihood


def log_prob(sde: LinearSDE, score_fn: ScoreFn, x: ArrayLike, *, key: jax.Array | None = None,
             eps: float = 1e-5, rtol: float = 1e-5, atol: float = 1e-5, n_probes: int = 1,
             probe: str = "rademacher", solver: diffrax.AbstractSolver | None = None, max_steps: int = 8192,
             prior_log_prob: Callable | None = None,
             return_stats: bool = False) -> jax.Array | tuple[jax.Array, dict]:
    """log p_eps(x) in nats per sample, shape ``(n,)``, by the probability flow ODE.

    Solves (x, Delta) from ``t = eps`` to ``T`` with dx/dt = F (the probability flow) and
    dDelta/dt = div F (the instantaneous change of variables, chapter 5), adaptive
    ``solver`` (default Tsit5) with a PID controller at ``rtol``/``atol``, then returns
    ``sde.prior_log_prob(x(T)) + Delta(T)``. Each sample is its own ODE (``vmap``), so a
    sample's result does not depend on the rest of the batch.

    Args:
        key: ``None`` for the exact divergence (``D`` JVPs per evaluation); a PRNG key for
            the Skilling-Hutchinson estimator with ``n_probes`` probes of kind ``probe``
            (``"rademacher"`` or ``"gaussian"``) per sample, fixed along the trajectory.
        eps: the start time; the result is the density of the data *perturbed to eps*.
        prior_log_prob: the log density used for x(T), ``(n, *dims) -> (n,)``; default
            ``sde.prior_log_prob``, the model's own prior. (Passing the exact p_T of toy
            data isolates the error of the ODE solve.)
        return_stats: also return a dict with ``"num_steps"`` (solver steps per sample,
            shape ``(n,)``) and ``"nfe"`` (drift evaluations per sample of the solver
            passed, :func:`solver_nfe`: 6 per step plus 1 for Tsit5; each costs ``D`` JVPs
            when exact).

    The error has three parts: the ODE solve (``rtol``, ``atol``), the score's error, and
    the replacement of p_T by the prior. The last is log p_T(x_T) - log N(x_T; 0, b(T)^2):
    for VP with the default betas p_T has mean a(T) E[x_0], a(T) = 0.0066, so it is about
    a(T) E[x_0] x_T, up to 0.02 nats for data with mean 0.8 (``tests/test_likelihood.py``
    measures it); for VE it is of order ``|x_0| |x_T| / sigma_max^2``.
    """
    eps = check_cutoff(sde, eps)
    x = check_x(x)
    check_score_fn(score_fn)
    n, dims = x.shape[0], x.shape[1:]
    n_probes = check_int("n_probes", n_probes, 1)
    if key is None:
        v = jnp.zeros((n, 0), x.dtype)  # unused
    else:
        v = divergence.probes(key, (n, n_probes) + dims, kind=probe, dtype=x.dtype)
    solver = diffrax.Tsit5() if solver is None else solver
    prior = sde.prior_log_prob if prior_log_prob is None else prior_log_prob
    logp, steps = _solve_log_prob(sde, traceable(score_fn), static(prior), solver, key is None, int(max_steps),
                                  x, v, eps, rtol, atol)
    if return_stats:
        return logp, {"num_steps": steps, "nfe": solver_nfe(solver, steps)}
    return logp


def solver_nfe(solver: diffrax.AbstractSolver, num_steps: ArrayLike) -> ArrayLike:
    """Vector-field evaluations of ``solver`` for ``num_steps`` steps (accepted and rejected).

    An explicit Runge-Kutta method with ``k`` stages makes ``k`` evaluations per step, one
    fewer when its last stage is the next step's first (FSAL: Tsit5, Dopri5, Bosh3), plus
    one at the start; Euler makes one per step. Checked against a counter in
    ``tests/test_likelihood.py``. Each evaluation of the log-likelihood's field costs
    ``D`` JVPs with the exact divergence.
    """
    tableau = getattr(solver, "tableau", None)
    if tableau is not None:
        fsal = int(bool(tableau.fsal))
        return (tableau.num_stages - fsal) * num_steps + fsal
    if isinstance(solver, diffrax.Euler):
        return num_steps
    raise TypeError(f"solver: cannot count the evaluations of {type(solver).__name__}")


@functools.partial(jax.jit, static_argnums=(0, 2, 3, 4, 5))  # score_fn: traced state
def _solve_log_prob(sde, score_fn, prior, solver, exact, max_steps, x, v, eps, rtol, atol):
    def one(xi, vi):
        def field(t, y, args):
            xb = y[0][None]
            fn = lambda z: sde.probability_flow_drift(score_fn, z, t)
            if exact:
                div = divergence.exact_divergence(fn, xb)
            else:
                div = divergence.hutchinson_divergence(fn, xb, vi[:, None])
            return fn(xb)[0], div[0]

        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field), solver, t0=eps, t1=sde.T, dt0=None,
            y0=(xi, jnp.zeros((), xi.dtype)),
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            max_steps=max_steps,
            adjoint=diffrax.ForwardMode(),  # no reverse-mode gradient: a plain loop compiles faster
        )
        return sol.ys[0][-1], sol.ys[1][-1], sol.stats["num_steps"]

    xT, delta, steps = jax.vmap(one)(x, v)
    return prior(xT) + delta, steps


def bits_per_dim(sde: LinearSDE, score_fn: ScoreFn, x_discrete: ArrayLike, *, n_levels: int,
                 key: jax.Array | None = None, dequantize_key: jax.Array | None = None,
                 data_range: tuple[float, float] = (-1.0, 1.0), **kwargs) -> jax.Array:
    """Bits per dimension of integer data in ``{0, ..., n_levels - 1}``, shape ``(n,)``.

    Uniform dequantisation (chapter 5's bits per dimension): u = (x + U[0, 1)) / n_levels
    in [0, 1), then y = lo + (hi - lo) u in ``data_range``, the space the score model was
    trained in. By Jensen, log P(x) >= E_U[log p(y)] + d log((hi - lo) / n_levels), and

        bits/dim = -(log p(y) + d log((hi - lo) / n_levels)) / (d log 2)

    is an upper bound (in expectation over U) on the discrete model's bits per dimension.
    One dequantisation draw per sample from ``dequantize_key`` (``jax.random.key(0)`` if
    None). ``key`` and the other keyword arguments are passed to :func:`log_prob` (``key``
    given: Hutchinson divergence).
    """
    x_discrete = jnp.asarray(x_discrete)
    if x_discrete.ndim < 2:
        raise ValueError(f"x_discrete: expected shape (n, *dims), got {x_discrete.shape}")
    n_levels = check_int("n_levels", n_levels, 2)
    xd = np.asarray(x_discrete)
    if np.any(xd != np.round(xd)) or xd.min() < 0 or xd.max() > n_levels - 1:
        raise ValueError(f"x_discrete: expected integers in [0, {n_levels - 1}], got values in [{xd.min()}, {xd.max()}]")
    lo, hi = (float(a) for a in data_range)
    if not hi > lo:
        raise ValueError(f"data_range: expected (lo, hi) with lo < hi, got {data_range}")
    dequantize_key = jax.random.key(0) if dequantize_key is None else dequantize_key
    u = (x_discrete.astype(jnp.float32) + jax.random.uniform(dequantize_key, x_discrete.shape)) / n_levels
    y = lo + (hi - lo) * u
    logp = log_prob(sde, score_fn, y, key=key, **kwargs)
    D = math.prod(x_discrete.shape[1:])
    return nats_to_bits_per_dim(logp, D, n_levels=n_levels, data_range=(lo, hi))


def nats_to_bits_per_dim(log_p_continuous: ArrayLike, D: int, *, n_levels: int,
                         data_range: tuple[float, float] = (-1.0, 1.0)) -> jax.Array:
    """Convert a continuous log density of the rescaled data (nats) to discrete bits/dim.

    A bin of the discrete data has width (hi - lo) / n_levels in the rescaled space, so
    log P(bin) ~ log p(y) + D log((hi - lo) / n_levels), with ``D`` the number of
    dimensions (the d of the book).
    """
    lo, hi = data_range
    return -(log_p_continuous + D * math.log((hi - lo) / n_levels)) / (D * math.log(2))


# --------------------------------------------------------------------------- the SDE bound


def sde_bound(sde: LinearSDE, score_fn: ScoreFn, x: ArrayLike, key: jax.Array, *, n_t: int = 64,
              eps: float = 1e-5, importance_sampling: bool = True,
              prior_log_prob: Callable | None = None) -> jax.Array:
    """Upper bound on -log p(x) of the reverse-SDE model, in nats per sample, shape ``(n,)``.

    The model: x_T from the prior p_prior, the reverse SDE with ``score_fn`` from T down to
    ``eps`` (this gives a density p_eps^SDE), then the Gaussian decoder
    x_0 ~ N(x_eps / a(eps), (b(eps) / a(eps))^2 I) that inverts the kernel
    x_eps = a(eps) x_0 + b(eps) z. Its negative ELBO (Song, Durkan et al. 2021, Thm. 3;
    Huang et al. 2021), with x_t = a(t) x + b(t) z (the reverse SDE's bound, chapter 5),
    is::

        -log p(x) <= -d log a(eps)                               reconstruction - entropy
                     + E_z[-log p_prior(a(T) x + b(T) z)]        prior term
                     + int_eps^T g(t)^2 E_z || score_fn(x_t, t) + z / b(t) ||^2 / 2 dt
                     - d log(b(T) / b(eps)),                     d = prod(dims)

    the third line being the denoising loss with the likelihood weighting
    lambda(t) = g(t)^2 (chapter 4), integrated over t. The last line subtracts that
    term's value for the *zero model* (score_fn = 0, whose residual is z / b, of mean
    square d / b^2), plus the integrated divergence of the drift f = A(t) x::

        int_eps^T (g^2 d / b^2 / 2 + d A(t)) dt = d log(b(T) / b(eps)),

    since the kernel's variance obeys (b^2)' = 2 A b^2 + g^2, i.e.
    (log b^2)' = 2 A + g^2 / b^2 (chapter 5 checks it by quadrature). It is not the
    constant of chapter 4's denoising loss (the loss of the exact score): the zero
    model's loss grows like (d / 2) log(1 / eps), and subtracting it keeps the bound
    finite as eps -> 0. For the exact score and the exact p_T as prior the
    reverse SDE reproduces p_eps and the only slack is the decoder's (the KL divergence
    between the kernel's x_eps given x and the model's), which vanishes as eps -> 0.

    The time integral is estimated with ``n_t`` draws of (t, z) per sample, t drawn with
    density proportional to g(t)^2 / b(t)^2 (the importance sampling of chapter 4;
    uniform when ``importance_sampling=False``). Each draw subtracts the control variate
    c(t) (g^2 / b^2) (||z||^2 - d) / 2, of mean zero, with c = (a^2 / (a^2 + b^2))^2: near
    t = 0 the residual b score + z is nearly z (c -> 1) and the chi-square noise of
    ||z||^2 would otherwise dominate; at large t the residual is small (c -> 0). (c is
    the squared signal fraction for data of unit variance: near-optimal there, unbiased
    always.) The prior term is exact for the default
    prior N(0, b(T)^2 I); a ``prior_log_prob`` (``(n, *dims) -> (n,)``) is averaged over
    the same ``n_t`` draws of z. The result is a Monte-Carlo estimate: unbiased for the
    bound, so it exceeds -log p(x) only on average; its standard error is that of the
    ``n_t`` terms (see ``tests/test_likelihood.py``).
    """
    eps = check_cutoff(sde, eps)
    x = check_x(x)
    check_score_fn(score_fn)
    n_t = check_int("n_t", n_t, 1)
    T = sde.T
    if importance_sampling:
        sampler = TimeSampler(lambda t: sde.diffusion(t) ** 2 / sde.kernel_std(t) ** 2, eps, T)
        grid = (sampler.grid, sampler.cdf, sampler.density)
    else:
        grid = None
    prior = None if prior_log_prob is None else static(prior_log_prob)
    return _sde_bound(sde, traceable(score_fn), prior, int(n_t), x, key, eps, grid)


@functools.partial(jax.jit, static_argnums=(0, 2, 3))  # score_fn: traced state
def _sde_bound(sde, score_fn, prior, n_t, x, key, eps, grid):
    n, dims = x.shape[0], x.shape[1:]
    d = math.prod(dims)
    T = sde.T
    dtype = x.dtype
    m_eps, s_eps = sde.mean_coefficient(eps), sde.kernel_std(eps)
    m_T, s_T = sde.mean_coefficient(T), sde.kernel_std(T)
    const = -d * jnp.log(m_eps) - d * jnp.log(s_T / s_eps)

    def one(carry, k):
        k_t, k_z, k_p = jax.random.split(k, 3)
        if grid is None:
            t = jax.random.uniform(k_t, (n,), dtype, minval=eps, maxval=T)
            w = jnp.full((n,), T - eps, dtype)  # 1 / r(t) for r uniform on [eps, T]
        else:
            g_t, cdf, dens = grid
            u = jax.random.uniform(k_t, (n,), jnp.float32)
            cell = jnp.clip(jnp.searchsorted(cdf, u, side="right") - 1, 0, dens.shape[0] - 1)
            frac = (u - cdf[cell]) / jnp.maximum(cdf[cell + 1] - cdf[cell], 1e-30)
            t = (g_t[cell] + jnp.clip(frac, 0.0, 1.0) * (g_t[cell + 1] - g_t[cell])).astype(dtype)
            w = (1.0 / dens[cell]).astype(dtype)
        xt, z = sde.perturb(k_z, x, t)
        s = sde.kernel_std(t)
        g2 = sde.diffusion(t) ** 2
        # g^2 ||score + z/s||^2 / 2 = (g^2 / s^2) ||s score + z||^2 / 2: the noise-prediction
        # form, minus the control variate c (g^2 / s^2) (||z||^2 - d) / 2
        resid = batch_broadcast(s, x) * score_fn(xt, t) + z
        m = sde.mean_coefficient(t)
        c = (m**2 / (m**2 + s**2)) ** 2
        term = w * g2 / s**2 * (sq_norms(resid) - c * (sq_norms(z) - d)) / 2
        if prior is not None:
            zT = jax.random.normal(k_p, x.shape, dtype)
            term = term - prior(m_T * x + s_T * zT)
        return carry + term, None

    total, _ = jax.lax.scan(one, jnp.zeros((n,), dtype), jax.random.split(key, n_t))
    bound = total / n_t + const
    if prior is None:  # E[-log N(m_T x + s_T z; 0, s_T^2 I)], exact
        bound = bound + 0.5 * d * jnp.log(2 * jnp.pi * s_T**2) + 0.5 * d + m_T**2 * sq_norms(x) / (2 * s_T**2)
    return bound
