"""Samplers of the reverse-time SDE (chapter 3), built on public predictor and corrector steps.

Every sampler starts from the prior p_T of a :class:`companion.sde.LinearSDE`, runs time
backwards to a small ``eps > 0`` with a score function ``score_fn(x, t)`` and returns
``(x, nfe)``: the samples and the number of score evaluations made. The samplers use the
uniform grid T = t_0 > t_1 > ... > t_N = eps (:func:`uniform_grid`, one time
:func:`uniform_time`) and a ``lax.fori_loop`` over its steps (:func:`reverse_loop`); the
last step adds no noise (it returns the mean of the last transition, the "denoising"
step of Song et al. 2021). The samplers of the probability flow ODE (chapter 5) are in
:mod:`companion.ode_sampling`.

===============================  ================================================  ==================
sampler                          one step from t_k to t_{k+1} (h = t_k - t_{k+1})  NFE
===============================  ================================================  ==================
:func:`euler_maruyama`           x - [f - g^2 score] h + g sqrt(h) z                N
:func:`reverse_diffusion`        x - (psi - 1) x + G^2 score + G z                  N
:func:`predictor_corrector`      ``n_corrector`` Langevin steps, then a predictor   N (1 + n_corrector)
===============================  ================================================  ==================

Here f, g are the drift and diffusion of the forward SDE at t_k, score = score_fn(x, t_k)
(the score grad log p_t), and (psi, G) = ``sde.transition(t_{k+1}, t_k)`` is the exact
forward transition x_{t_k} = psi x_{t_{k+1}} + G z over the step (the reverse-time SDE
and the samplers of chapter 3).

**The step contract** (as the predictors and correctors of Song et al.'s code). Each
step is a public function ``step(sde, score_fn, x, t, t_next, key) -> (x_next, mean)``
from the scalar time ``t`` down to ``t_next``, ``mean`` being its noise-free part:
:func:`euler_maruyama_step` and :func:`reverse_diffusion_step` (the registry
:data:`PREDICTORS`) and :func:`langevin_step` (:data:`CORRECTORS`, with ``snr`` and
``per_sample`` after the key). :func:`predictor_corrector` is these steps in
:func:`reverse_loop`; :func:`companion.conditional.impute` wraps the same steps.

**Why stop at eps.** The perturbation kernel's std b(t) goes to 0 as t -> 0, so the
score of data with fine structure grows like 1 / b(t) and a score model is least
accurate there; stopping at ``eps`` changes the samples only by noise of std b(eps)
(VP with beta_min = 0.1: b(1e-3) = 0.010; VE(0.01, 50): b(1e-3) = 0.0013), well below
the scale of any structure in the course's data. ``eps = 1e-3`` is the default for all
three SDEs, as Song et al. use for VP and sub-VP (chapter 3 measures both sides).

All samplers are jitted with ``sde`` and ``shape`` static and ``n_steps``, ``eps``,
``snr`` traced. A model (an ``nnx.Module``, or any pytree callable such as the guided
scores of :mod:`companion.conditional`) is passed as traced state: its weights are
arguments of the compiled program, its architecture part of the cache key, so every
model of one architecture, for any number of steps, reuses the compiled code. A plain
function is static (keep one function object to reuse the compiled code).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from companion._common import DEFAULT_EPS, check_int, check_positive, check_score_fn, check_shape, norms, shared_time, traceable, uniform_time
from companion.ode_sampling import euler_step, probability_flow  # noqa: F401 (sampling.probability_flow: the course contract)
from companion.sde import LinearSDE, ScoreFn, batch_broadcast, check_cutoff, check_sde

DEFAULT_N_STEPS = 1000

__all__ = [
    "DEFAULT_EPS", "DEFAULT_N_STEPS", "uniform_time", "uniform_grid", "euler_maruyama_step",
    "reverse_diffusion_step", "langevin_step", "langevin_step_size", "PREDICTORS", "CORRECTORS",
    "reverse_loop", "euler_maruyama", "reverse_diffusion", "predictor_corrector", "trajectory",
]

Step = Callable[..., tuple[jax.Array, jax.Array]]


# --------------------------------------------------------------------------- the uniform grid


def uniform_grid(sde: LinearSDE, n_steps: int, eps: float = DEFAULT_EPS, dtype: Any = None) -> jax.Array:
    """The whole uniform grid T = t_0 > t_1 > ... > t_N = eps (:func:`uniform_time` for
    every k), shape ``(n_steps + 1,)``."""
    k = jnp.arange(n_steps + 1, dtype=dtype or jnp.result_type(float))
    return uniform_time(sde, k, n_steps, eps)


# --------------------------------------------------------------------------- the steps


def langevin_step_size(
    score: jax.Array, z: jax.Array, snr: Any, alpha: Any = 1.0, per_sample: bool | jax.Array = False
) -> jax.Array:
    """The Langevin corrector's step size delta = 2 alpha (snr ||z|| / ||score||)^2 (the
    corrector of chapter 3, section "Three samplers"), shape ``(n,)``, for ``score`` and ``z`` ``(n, *dims)``.

    With ``per_sample=False`` (the default, as in Song et al.'s code) ||z|| and ||score||
    are averaged over the batch, so every sample takes the same step. With
    ``per_sample=True`` each sample uses its own norms; in high dimension the two agree
    (the norms concentrate), but in low dimension ||score|| of a sample near a mode is
    close to 0 and its step blows up: in 2-D E[1 / ||score||^2] is infinite near a
    Gaussian mode, and chapter 3 measures the damage. A zero score gives step 0.
    """
    gnorm, znorm = norms(score), norms(z)
    # per_sample may be traced (one compiled sampler for both): select, don't branch
    gnorm = jnp.where(per_sample, gnorm, jnp.mean(gnorm))
    znorm = jnp.where(per_sample, znorm, jnp.mean(znorm))
    safe = jnp.where(gnorm > 0, gnorm, 1.0)
    return jnp.where(gnorm > 0, 2 * alpha * (snr * znorm / safe) ** 2, 0.0)


def euler_maruyama_step(
    sde: LinearSDE, score_fn: ScoreFn, x: jax.Array, t: jax.Array, t_next: jax.Array, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """One Euler-Maruyama step of the reverse SDE (chapter 3) from the scalar time ``t``
    down to ``t_next < t``, h = t - t_next:

        mean = x - [f(x, t) - g(t)^2 score(x, t)] h,    x_next = mean + g(t) sqrt(h) z.

    ``x`` has shape ``(n, *dims)``; returns ``(x_next, mean)``, both shaped like ``x``
    (``mean`` is the noise-free part, what the last step of a sampler returns). The
    step contract of :data:`PREDICTORS`.
    """
    h = t - t_next
    tv = shared_time(x, t)
    mean = x - sde.reverse_drift(score_fn, x, tv) * h
    g = batch_broadcast(sde.diffusion(tv), x)
    z = jax.random.normal(key, x.shape, x.dtype)
    return mean + g * jnp.sqrt(h) * z, mean


def reverse_diffusion_step(
    sde: LinearSDE, score_fn: ScoreFn, x: jax.Array, t: jax.Array, t_next: jax.Array, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """One reverse-diffusion step (Song et al. 2021) from ``t`` down to ``t_next``: with the
    exact forward transition x_t = psi x_{t_next} + G z over the step (``sde.transition``
    returns (psi, G); the discretised forward SDE has the increment f = (psi - 1) x),

        mean = x - f + G^2 score(x, t),    x_next = mean + G z.

    ``x`` has shape ``(n, *dims)``; returns ``(x_next, mean)``. The step contract of
    :data:`PREDICTORS`.
    """
    r, q = sde.transition(t_next, t)
    f = (r - 1) * x  # the forward step's drift increment, evaluated at x_{t}
    mean = x - f + q**2 * score_fn(x, shared_time(x, t))
    z = jax.random.normal(key, x.shape, x.dtype)
    return mean + q * z, mean


def langevin_step(sde: LinearSDE, score_fn: ScoreFn, x: jax.Array, t: jax.Array, t_next: jax.Array, key: jax.Array,
                  snr: float | jax.Array, per_sample: bool | jax.Array = False) -> tuple[jax.Array, jax.Array]:
    """One Langevin corrector step at time ``t`` (the corrector of chapter 3):

        mean = x + delta score(x, t),    x_next = mean + sqrt(2 delta) z,

    with delta = 2 alpha (snr ||z|| / ||score||)^2 (:func:`langevin_step_size`) and
    alpha = psi^2 of the forward transition over [t_next, t] (1 for VE). ``t_next`` only sets alpha:
    the step stays at time ``t``. ``x`` has shape ``(n, *dims)``; returns
    ``(x_next, mean)``. The step contract of :data:`CORRECTORS`, with ``snr`` and
    ``per_sample`` bound by the caller.
    """
    r, _ = sde.transition(t_next, t)
    score = score_fn(x, shared_time(x, t))
    z = jax.random.normal(key, x.shape, x.dtype)
    step = langevin_step_size(score, z, snr, r**2, per_sample)
    step = batch_broadcast(step, x)
    mean = x + step * score
    return mean + jnp.sqrt(2 * step) * z, mean


#: The predictors of :func:`predictor_corrector`, by name: each is
#: ``step(sde, score_fn, x, t, t_next, key) -> (x_next, mean)`` from ``t`` down to ``t_next``.
PREDICTORS: dict[str, Callable[..., tuple[jax.Array, jax.Array]]] = {
    "euler_maruyama": euler_maruyama_step,
    "reverse_diffusion": reverse_diffusion_step,
}

#: The correctors of :func:`predictor_corrector`, by name: the same signature as the
#: predictors, followed by ``snr`` and ``per_sample``.
CORRECTORS: dict[str, Callable[..., tuple[jax.Array, jax.Array]]] = {"langevin": langevin_step}


# --------------------------------------------------------------------------- the loop


def reverse_loop(step: Callable[[jax.Array, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]],
                 sde: LinearSDE, x: jax.Array, key: jax.Array, n_steps: Any, eps: Any) -> jax.Array:
    """Run ``step(x, t_k, t_{k+1}, key_k) -> (x, mean)`` for k = 0 .. n_steps - 1 on the
    uniform grid (:func:`uniform_time`) from ``x`` ``(n, *dims)`` at T and return the last
    ``mean`` (no noise at the end), shaped like ``x``. ``step`` is one of the steps above
    with ``sde`` and ``score_fn`` bound (:func:`predictor_corrector` chains correctors and
    a predictor in it).

    A ``lax.fori_loop`` whose trip count may be traced, so one compiled sampler serves
    every ``n_steps`` (compiling a sampler costs seconds on a CPU; a chapter sweeps
    ``n_steps``). ``key_k = fold_in(key, k)``.
    """
    dtype = x.dtype

    def body(k, carry):
        x, _ = carry
        t = uniform_time(sde, k, n_steps, eps).astype(dtype)
        t_next = uniform_time(sde, k + 1, n_steps, eps).astype(dtype)
        return step(x, t, t_next, jax.random.fold_in(key, k))

    _, mean = jax.lax.fori_loop(0, n_steps, body, (x, x))
    return mean


@functools.partial(jax.jit, static_argnames=("sde", "shape", "predictor", "corrector", "n_corrector"))
def _sample_reverse_sde(sde, score_fn, key, shape, n_steps, eps, predictor, corrector, n_corrector, snr, per_sample):
    k_prior, k_loop = jax.random.split(key)
    x = sde.prior_sample(k_prior, shape)
    predict, correct = PREDICTORS[predictor], CORRECTORS[corrector]

    def step(x, t, t_next, k):
        keys = jax.random.split(k, n_corrector + 1)
        for j in range(n_corrector):  # a static, small number of corrector steps
            x, _ = correct(sde, score_fn, x, t, t_next, keys[j], snr, per_sample)
        return predict(sde, score_fn, x, t, t_next, keys[-1])

    return reverse_loop(step, sde, x, k_loop, n_steps, eps)


def _run(sde, score_fn, key, shape, n_steps, eps, predictor, n_corrector=0, snr=0.16, per_sample=False,
         corrector="langevin"):
    check_sde(sde)
    check_score_fn(score_fn)
    shape = check_shape(shape)
    n_steps = check_int("n_steps", n_steps, 1)
    eps = check_cutoff(sde, eps)
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor: expected one of {sorted(PREDICTORS)}, got {predictor!r}")
    if corrector not in CORRECTORS:
        raise ValueError(f"corrector: expected one of {sorted(CORRECTORS)}, got {corrector!r}")
    n_corrector = check_int("n_corrector", n_corrector, 0)
    snr = check_positive("snr", snr)
    if not isinstance(per_sample, bool):
        raise ValueError(f"per_sample_norms: expected True or False, got {per_sample!r}")
    x = _sample_reverse_sde(
        sde, traceable(score_fn), key, shape, n_steps, eps, predictor, corrector, n_corrector, snr, per_sample
    )
    return x, n_steps * (1 + n_corrector)


# --------------------------------------------------------------------------- the samplers


def euler_maruyama(sde: LinearSDE, score_fn: ScoreFn, key: jax.Array, shape: tuple[int, ...],
                   n_steps: int = DEFAULT_N_STEPS, eps: float = DEFAULT_EPS) -> tuple[jax.Array, int]:
    """Euler-Maruyama on the reverse-time SDE (chapter 3).

    x_{k+1} = x_k - [f(x_k, t_k) - g(t_k)^2 score(x_k, t_k)] h + g(t_k) sqrt(h) z_k on the
    uniform grid from T to ``eps`` (h = (T - eps) / n_steps; :func:`euler_maruyama_step`);
    the last step adds no noise.

    Returns ``(x, nfe)`` with ``x`` of shape ``shape`` and ``nfe = n_steps``.
    """
    return _run(sde, score_fn, key, shape, n_steps, eps, "euler_maruyama")


def reverse_diffusion(sde: LinearSDE, score_fn: ScoreFn, key: jax.Array, shape: tuple[int, ...],
                      n_steps: int = DEFAULT_N_STEPS, eps: float = DEFAULT_EPS) -> tuple[jax.Array, int]:
    """The reverse-diffusion predictor of Song et al. (2021), an ancestral-style sampler.

    With the forward SDE discretised on the grid as x_{k} = psi x_{k+1} + G z (the exact
    transition, ``sde.transition``; f = (psi - 1) x), one step is
    x_{k+1} = x_k - f + G^2 score(x_k, t_k) + G z. For VE this is Song et al.'s step with
    G^2 = sigma(t_k)^2 - sigma(t_{k+1})^2; for VP, G^2 = 1 - exp(-(B(t_k) - B(t_{k+1})))
    is their beta_i to first order (:func:`reverse_diffusion_step`, the reverse-diffusion
    step of chapter 3). The last step adds no noise.

    Returns ``(x, nfe)``, ``x`` of shape ``shape``, ``nfe = n_steps``.
    """
    return _run(sde, score_fn, key, shape, n_steps, eps, "reverse_diffusion")


def predictor_corrector(sde: LinearSDE, score_fn: ScoreFn, key: jax.Array, shape: tuple[int, ...],
                        n_steps: int = DEFAULT_N_STEPS, snr: float = 0.16, n_corrector: int = 1,
                        eps: float = DEFAULT_EPS, predictor: str = "reverse_diffusion",
                        per_sample_norms: bool = False, corrector: str = "langevin") -> tuple[jax.Array, int]:
    """Predictor-corrector sampling (Song et al. 2021; the corrector of chapter 3).

    The order is corrector first, as in Song et al.'s code (``pc_sampler``), not as in
    the paper's Algorithms 2 and 3, which predict first: at every grid time t_k,
    ``n_corrector`` Langevin steps at t_k (:func:`langevin_step`, the ``corrector``
    "langevin" of :data:`CORRECTORS`),
    x <- x + delta score(x, t_k) + sqrt(2 delta) z with
    delta = 2 alpha (snr ||z|| / ||score||)^2
    (:func:`langevin_step_size`; alpha = 1 for VE, alpha = psi^2 = exp(-(B(t_k) -
    B(t_{k+1}))) for VP and sub-VP, Song et al.'s 1 - beta_i to first order), then one
    ``predictor`` step (a name of :data:`PREDICTORS`: "reverse_diffusion" or
    "euler_maruyama") from t_k to t_{k+1}. Step k draws its keys as
    ``split(fold_in(key_loop, k), n_corrector + 1)``: the correctors' first, the
    predictor's last. The last grid time eps gets no corrector. ``snr = 0.16`` is Song
    et al.'s setting for CIFAR-10 (VE), not a universal one. ``n_corrector = 0`` gives
    the predictor alone. The norms are averaged over the batch unless
    ``per_sample_norms=True`` (which low-dimensional data punish: see
    :func:`langevin_step_size`).

    Returns ``(x, nfe)``, ``x`` of shape ``shape``, ``nfe = n_steps * (1 + n_corrector)``.
    """
    return _run(sde, score_fn, key, shape, n_steps, eps, predictor, n_corrector, snr, per_sample_norms, corrector)


# ------------------------------------------------------------------ whole trajectories


@functools.partial(jax.jit, static_argnames=("sde", "shape", "n_frames", "stochastic"))
def _trajectory(sde, score_fn, key, shape, n_steps, eps, n_frames, stochastic):
    # the same random streams as euler_maruyama (stochastic) and ode_sampling.euler_ode
    k_prior, k_loop = jax.random.split(key) if stochastic else (key, key)
    x = sde.prior_sample(k_prior, shape)
    per_frame = n_steps // (n_frames - 1)

    def step(k, x):
        t = uniform_time(sde, k, n_steps, eps).astype(x.dtype)
        t_next = uniform_time(sde, k + 1, n_steps, eps).astype(x.dtype)
        if stochastic:
            k_noise = jax.random.split(jax.random.fold_in(k_loop, k), 1)[-1]
            new, mean = euler_maruyama_step(sde, score_fn, x, t, t_next, k_noise)
            return jnp.where(k == n_steps - 1, mean, new)  # no noise on the last step
        return euler_step(sde, score_fn, x, t, t_next)

    def frame(x, j):
        x = jax.lax.fori_loop(j * per_frame, (j + 1) * per_frame, step, x)
        return x, x

    _, frames = jax.lax.scan(frame, x, jnp.arange(n_frames - 1))
    return jnp.concatenate([x[None], frames])


def trajectory(sde: LinearSDE, score_fn: ScoreFn, key: jax.Array, shape: tuple[int, ...], *,
               n_steps: int = DEFAULT_N_STEPS, n_frames: int = 31, eps: float = DEFAULT_EPS,
               stochastic: bool = True) -> tuple[jax.Array, jax.Array]:
    """The states of a reverse-time sampler along the way, for pictures and animations.

    Runs Euler-Maruyama on the reverse SDE (``stochastic=True``, the same steps as
    :func:`euler_maruyama`) or Euler on the probability flow ODE (``stochastic=False``, as
    :func:`companion.ode_sampling.euler_ode`) on the uniform grid from T to ``eps`` and keeps ``n_frames`` states,
    the prior sample first, every ``n_steps / (n_frames - 1)`` steps (``n_steps`` must be
    a multiple of ``n_frames - 1``). Returns ``(ts, frames)``: the times ``(n_frames,)``
    and the states ``(n_frames, *shape)``.
    """
    check_sde(sde)
    check_score_fn(score_fn)
    shape = check_shape(shape)
    n_steps = check_int("n_steps", n_steps, 1)
    n_frames = check_int("n_frames", n_frames, 2)
    if not isinstance(stochastic, bool):
        raise ValueError(f"stochastic: expected True or False, got {stochastic!r}")
    if n_steps % (n_frames - 1):
        raise ValueError(f"n_steps: expected a multiple of n_frames - 1 = {n_frames - 1}, got {n_steps}")
    eps = check_cutoff(sde, eps)
    frames = _trajectory(sde, traceable(score_fn), key, shape, n_steps, eps, n_frames, stochastic)
    per_frame = n_steps // (n_frames - 1)
    ts = jnp.asarray(uniform_time(sde, np.arange(n_frames) * per_frame, n_steps, eps))  # in float64, as the samplers
    return ts, frames
