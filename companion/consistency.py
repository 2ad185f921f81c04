"""Consistency models: one to four network evaluations per sample (chapter 9).

The probability flow ODE (chapter 5) carries every point ``x`` at time ``t`` to one point
at the cut-off ``eps``: its flow map Phi_{t -> eps}(x)
(:func:`companion.ode_sampling.flow_map`). A *consistency model* (Song et al. 2023)
learns that map, f_theta(x, t) ~ Phi_{t -> eps}(x), so that a prior draw at T becomes a
sample in one evaluation.

**The parametrisation** (:class:`ConsistencyModel`). In the scaled variable (the book's x tilde)
``xhat = x / a(t)`` the kernel reads ``xhat = x_0 + nu z`` with the noise-to-signal
ratio nu(t) = b(t) / a(t) (:func:`companion.ode_sampling.noise_level`; EDM's sigma), and

    f_theta(x, t) = a(eps) [ c_skip(t) xhat + c_out(t) F_theta(c_in(t) xhat, u(t)) ],

    c_skip = sigma_d^2 / ((nu - nu_eps)^2 + sigma_d^2),
    c_out  = sigma_d (nu - nu_eps) / sqrt(sigma_d^2 + nu^2),
    c_in   = 1 / sqrt(sigma_d^2 + nu^2),

with ``F_theta`` a :class:`companion.nets.ScoreMLP` (plain output) fed the normalised log
noise level u(t) (:func:`companion.nets.time_input`), sigma_d the data's standard
deviation and nu_eps = nu(eps). At t = eps, c_skip = 1 and c_out = 0, so f_theta(x, eps)
= x for every theta: the boundary condition holds by construction. The coefficients
are Karras et al. 2022's preconditioning (the target of F_theta has unit variance and
c_skip minimises it, chapter 9's derivation) with nu shifted by nu_eps, as in Song et
al. 2023. We use nu rather than t because the flow is nearly straight in nu (chapter
5's change of variables) and the same formulas then serve VE, VP and sub-VP.

**The time grid** (:func:`time_grid`): eps = t_0 < t_1 < ... < t_N = T equally spaced
in nu^(1/rho), rho = 7 (Karras et al. 2022, chapter 5's grid, reversed), as in Song et
al. 2023: the points crowd at small nu, where the consistency function changes fastest.

**The losses** (:func:`distillation`, :func:`consistency_training`): per sample an index
n uniform in {0, ..., N - 1}, z ~ N(0, I) and x_{t_{n+1}} = a x_0 + b z; the loss is

    || f_theta(x_{t_{n+1}}, t_{n+1}) - stopgrad f_target(xtilde_{t_n}, t_n) ||^2,

where ``xtilde_{t_n}`` is one step of a teacher ODE solver (distillation) or the kernel's
point with the same x_0 and z (training, no teacher). The target is the online model
itself under a stop-gradient (``target=None``: what :func:`companion.training.fit` trains)
or a separate network, e.g. an exponential moving average (EMA) of the weights
(:func:`fit_with_target`: the loop of ``training.fit`` with an EMA target, which
``training.fit`` cannot hand to a loss). :func:`sample` is the multistep sampler.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from companion import losses, nets, ode_sampling, toy, training
from companion._common import DEFAULT_EPS, check_positive, check_positive_int, check_x, sq_norms, traceable
from companion.sde import VP, LinearSDE, ScoreFn, batch_broadcast, check_cutoff

__all__ = [
    "TEACHER_STEPS", "coefficients", "ConsistencyModel", "time_grid", "teacher_step", "ConsistencyLoss",
    "distillation", "consistency_training", "fit_with_target", "sample", "errors_by_band",
    "CHECKPOINT_DIR", "NAMES", "SDE", "SIGMA_DATA", "NET", "TRAINING", "ABLATIONS", "model", "teacher",
    "train_all", "train_ablations", "load", "main",
]

#: The teacher solvers of :func:`teacher_step`.
TEACHER_STEPS = ("euler", "heun")


def coefficients(nu: jax.Array, nu_eps: float, sigma_data: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(c_skip, c_out, c_in)`` at the noise-to-signal ratio ``nu`` (any shape): the
    parametrisation of the module docstring, with c_skip(nu_eps) = 1, c_out(nu_eps) = 0."""
    shifted = nu - nu_eps
    c_skip = sigma_data**2 / (shifted**2 + sigma_data**2)
    c_out = sigma_data * shifted / jnp.sqrt(sigma_data**2 + nu**2)
    return c_skip, c_out, 1.0 / jnp.sqrt(sigma_data**2 + nu**2)


class ConsistencyModel(nnx.Module):
    """f_theta(x, t): ``model(x, t)`` with ``x`` ``(n, *dims)``, ``t`` a scalar or ``(n,)``
    in [eps, T]; returns an array shaped like ``x``, the estimate of the point at ``eps``
    on the probability flow through ``x`` at ``t`` (module docstring for the equations).

    Args:
        dim: the data dimension ``d`` or a shape tuple (as :class:`companion.nets.ScoreMLP`).
        sde: the forward SDE whose probability flow the model learns.
        sigma_data: the data's standard deviation per coordinate (sigma_d > 0).
        eps: the cut-off, where f_theta(x, eps) = x exactly.
        hidden, depth, embed_dim: the MLP ``F_theta``.
        rngs: ``nnx.Rngs`` for the initial weights.
    """

    def __init__(self, dim: int | Sequence[int], sde: LinearSDE, *, sigma_data: float, eps: float = DEFAULT_EPS,
                 hidden: int = 128, depth: int = 3, embed_dim: int = 32, rngs: nnx.Rngs):
        self.sde = sde
        self.eps = check_cutoff(sde, eps)
        self.sigma_data = check_positive("sigma_data", sigma_data)
        self.net = nets.ScoreMLP(dim, hidden=hidden, depth=depth, embed_dim=embed_dim, rngs=rngs)

    def __call__(self, x: jax.Array, t: Any) -> jax.Array:
        x = check_x(x)
        t = jnp.asarray(t, x.dtype)
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != x.shape[0]):
            raise ValueError(f"t: expected a scalar or shape ({x.shape[0]},), got shape {t.shape}")
        nu = ode_sampling.noise_level(self.sde, t)
        nu_eps = ode_sampling.noise_level(self.sde, jnp.asarray(self.eps, x.dtype))
        c_skip, c_out, c_in = (batch_broadcast(c, x) for c in coefficients(nu, nu_eps, self.sigma_data))
        xhat = x / batch_broadcast(self.sde.mean_coefficient(t), x)
        out = self.net(c_in * xhat, nets.time_input(t, self.sde))
        return self.sde.mean_coefficient(jnp.asarray(self.eps, x.dtype)) * (c_skip * xhat + c_out * out)


def time_grid(sde: LinearSDE, n_steps: int, eps: float = DEFAULT_EPS, rho: float = 7.0) -> jax.Array:
    """eps = t_0 < t_1 < ... < t_N = T, ``N = n_steps``, equally spaced in nu^(1/rho)
    (:func:`companion.ode_sampling.noise_level_grid` with ``spacing="karras"``, reversed),
    shape ``(N + 1,)``."""
    return ode_sampling.noise_level_grid(sde, n_steps, eps, spacing="karras", rho=rho)[::-1]


def _slope(sde, score_fn, x, t):
    """d xhat / d nu = -nu a(t) score(x, t) at x = a xhat (chapter 5's flow in nu), ``(n, *dims)``."""
    nu = ode_sampling.noise_level(sde, t)
    return -batch_broadcast(nu * sde.mean_coefficient(t), x) * score_fn(x, t)


def teacher_step(sde: LinearSDE, score_fn: ScoreFn, x: jax.Array, t: Any, t_next: Any,
                 method: str = "heun") -> jax.Array:
    """One step of the probability flow ODE from ``t`` to ``t_next`` (scalars or ``(n,)``,
    either direction) for points ``x`` ``(n, *dims)``, in the variables of chapter 5's
    change of variables: xhat = x / a(t) against nu, d xhat / d nu = -nu a score(a xhat, t).
    ``"euler"``: one slope (1 score evaluation); ``"heun"``: the average of the slopes at
    both ends of the Euler step (2; Karras et al. 2022's Heun, as Song et al. 2023
    distil with). Returns x at ``t_next``, shaped like ``x``."""
    if method not in TEACHER_STEPS:
        raise ValueError(f"method: expected one of {TEACHER_STEPS}, got {method!r}")
    a, a_next = (batch_broadcast(sde.mean_coefficient(s), x) for s in (t, t_next))
    h = batch_broadcast(ode_sampling.noise_level(sde, t_next) - ode_sampling.noise_level(sde, t), x)
    xhat, d = x / a, _slope(sde, score_fn, x, t)
    euler = xhat + h * d
    if method == "euler":
        return a_next * euler
    return a_next * (xhat + 0.5 * h * (d + _slope(sde, score_fn, a_next * euler, t_next)))


class ConsistencyLoss(losses.Loss):
    """A consistency loss: ``loss(model, x0, key, target=None) -> scalar`` and
    ``loss.per_sample(...) -> (n,)``; with ``target=None`` the target is ``model`` under a
    stop-gradient, so ``loss(model, x0, key)`` is the Loss interface of chapter 4 and
    :func:`companion.training.fit` trains it."""

    def per_sample(self, model: Callable, x0: jax.Array, key: jax.Array, target: Callable | None = None):
        return self._per_sample(model, check_x(x0, "x0"), key, model if target is None else target)

    def __call__(self, model: Callable, x0: jax.Array, key: jax.Array, target: Callable | None = None):
        return jnp.mean(self.per_sample(model, x0, key, target))


def _pairs(sde, grid, x0, key):
    """Per sample: n, t_{n+1}, t_n, z and x_{t_{n+1}} = a x_0 + b z."""
    k_n, k_z = jax.random.split(key)
    n = jax.random.randint(k_n, (x0.shape[0],), 0, grid.shape[0] - 1)
    t_hi, t_lo = grid[n + 1].astype(x0.dtype), grid[n].astype(x0.dtype)
    z = jax.random.normal(k_z, x0.shape, x0.dtype)
    x_hi = batch_broadcast(sde.mean_coefficient(t_hi), x0) * x0 + batch_broadcast(sde.kernel_std(t_hi), x0) * z
    return t_hi, t_lo, z, x_hi


def _grid(sde, n_steps, eps, rho):
    n_steps = check_positive_int("n_steps", n_steps)
    return time_grid(sde, n_steps, check_cutoff(sde, eps), check_positive("rho", rho))


def distillation(sde: LinearSDE, score_fn: ScoreFn, *, n_steps: int = 18, teacher: str = "heun",
                 eps: float = DEFAULT_EPS, rho: float = 7.0) -> ConsistencyLoss:
    """Consistency distillation (Song et al. 2023, chapter 9): per sample,

        || f_theta(x_{t_{n+1}}, t_{n+1}) - stopgrad f_target(xtilde_{t_n}, t_n) ||^2,

    ``xtilde_{t_n}`` = :func:`teacher_step` (``teacher``) from x_{t_{n+1}} back to t_n with
    ``score_fn``, on the grid :func:`time_grid` (``n_steps`` intervals). Keys:
    ``k_n, k_z = jax.random.split(key)`` draw n and z."""
    grid = _grid(sde, n_steps, eps, rho)
    if teacher not in TEACHER_STEPS:
        raise ValueError(f"teacher: expected one of {TEACHER_STEPS}, got {teacher!r}")

    def per_sample(model, x0, key, target):
        t_hi, t_lo, _, x_hi = _pairs(sde, grid, x0, key)
        x_lo = jax.lax.stop_gradient(teacher_step(sde, score_fn, x_hi, t_hi, t_lo, teacher))
        return sq_norms(model(x_hi, t_hi) - jax.lax.stop_gradient(target(x_lo, t_lo)))

    return ConsistencyLoss("distillation", per_sample, n_steps=n_steps, teacher=teacher, eps=eps, rho=rho)


def consistency_training(sde: LinearSDE, *, n_steps: int = 18, eps: float = DEFAULT_EPS,
                         rho: float = 7.0) -> ConsistencyLoss:
    """Consistency training without a teacher (Song et al. 2023, chapter 9): as
    :func:`distillation`, with the teacher's point replaced by the kernel's point with
    the same data and noise, x_{t_n} = a(t_n) x_0 + b(t_n) z."""
    grid = _grid(sde, n_steps, eps, rho)

    def per_sample(model, x0, key, target):
        t_hi, t_lo, z, x_hi = _pairs(sde, grid, x0, key)
        x_lo = batch_broadcast(sde.mean_coefficient(t_lo), x0) * x0 + batch_broadcast(sde.kernel_std(t_lo), x0) * z
        return sq_norms(model(x_hi, t_hi) - jax.lax.stop_gradient(target(x_lo, t_lo)))

    return ConsistencyLoss("consistency_training", per_sample, n_steps=n_steps, eps=eps, rho=rho)


def fit_with_target(model: nnx.Module, loss: ConsistencyLoss, data: Callable, *, target_decay: float, steps: int,
                    batch_size: int, key: jax.Array, learning_rate: float = 1e-3, warmup_steps: int = 100,
                    clip_norm: float | None = 1.0,
                    optimizer: optax.GradientTransformation | None = None) -> tuple[nnx.Module, dict]:
    """:func:`companion.training.fit`'s loop (Adam, clipping, warm-up, step ``i`` keyed by
    ``fold_in(key, i)``, fresh samples ``data(key, batch_size)``) with a target network:
    theta^- <- mu theta^- + (1 - mu) theta after every step, ``mu = target_decay`` in
    [0, 1), theta^- starting at theta. ``target_decay=0`` is ``training.fit`` on
    ``loss`` (the stop-gradient target). ``optimizer`` replaces the Adam of
    :func:`companion.training.make_optimizer`. Returns the online model and
    ``{"loss": (steps,)}``."""
    if not 0 <= target_decay < 1:
        raise ValueError(f"target_decay: expected a number in [0, 1), got {target_decay}")
    if not callable(data):
        raise TypeError(f"data: expected a function sample(key, n), got {type(data).__name__}")
    steps = check_positive_int("steps", steps)
    batch_size = check_positive_int("batch_size", batch_size)
    tx = optimizer or training.make_optimizer(learning_rate, warmup_steps=warmup_steps, clip_norm=clip_norm)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def one_step(i, carry):
        params, opt_state, target, values = carry
        k_batch, k_loss = jax.random.split(jax.random.fold_in(key, i))
        x0 = data(k_batch, batch_size)
        frozen = nnx.merge(graphdef, target, rest)
        value, grads = jax.value_and_grad(lambda p: loss(nnx.merge(graphdef, p, rest), x0, k_loss, frozen))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        target = jax.tree.map(lambda e, p: target_decay * e + (1 - target_decay) * p, target, params)
        return params, opt_state, target, values.at[i].set(value)

    run = jax.jit(lambda carry: jax.lax.fori_loop(0, steps, one_step, carry))
    params, _, _, values = run((params, tx.init(params), params, jnp.zeros((steps,))))
    return nnx.merge(graphdef, params, rest), {"loss": np.asarray(values)}


@functools.partial(jax.jit, static_argnames=("sde", "shape"))
def _sample(model, sde, key, shape, times, eps):
    keys = jax.random.split(key, times.shape[0])
    x = model(sde.prior_sample(keys[0], shape), times[0])
    for k in range(1, times.shape[0]):  # re-noise from eps to t_k, then denoise
        r, q = sde.transition(eps, times[k])
        x = model(r * x + q * jax.random.normal(keys[k], shape, x.dtype), times[k])
    return x


def sample(model: Callable, sde: LinearSDE, key: jax.Array, shape: tuple[int, ...],
           times: Sequence[float] = (1.0,)) -> tuple[jax.Array, int]:
    """The multistep consistency sampler (Song et al. 2023, Algorithm 1): x = f(x_T, T)
    with x_T from the prior (``times[0]`` must be T), then for each later time tau:
    x <- f(r x + q z, tau), with (r, q) = ``sde.transition(eps, tau)``, the exact kernel
    from eps (where f's outputs live) to tau. ``times`` decreasing in (eps, T]; ``model``
    has an ``eps`` (a :class:`ConsistencyModel`). Returns ``(x, nfe)``, ``x`` of shape
    ``shape``, ``nfe = len(times)``."""
    times = np.asarray(times, np.float64)
    eps = check_cutoff(sde, float(getattr(model, "eps", DEFAULT_EPS)))
    if times.ndim != 1 or times.size == 0 or times[0] != sde.T or np.any(np.diff(times) >= 0) or times[-1] <= eps:
        raise ValueError(f"times: expected decreasing times starting at T = {sde.T}, all above eps, got {times}")
    x = _sample(traceable(model), sde, key, tuple(shape), jnp.asarray(times, jnp.result_type(float)), eps)
    return x, int(times.size)


def errors_by_band(err: np.ndarray, t: np.ndarray, edges: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``err`` ``(n,)`` over the samples with ``t`` in each band [edges[i],
    edges[i + 1]), and its standard error (sample std / sqrt(count)); two arrays of
    shape ``(len(edges) - 1,)``."""
    err, t = np.asarray(err, np.float64), np.asarray(t, np.float64)
    if err.shape != t.shape or err.ndim != 1:
        raise ValueError(f"t: expected the shape of err {err.shape}, got {t.shape}")
    means, ses = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        e = err[(t >= lo) & (t < hi)]
        if e.size < 2:
            raise ValueError(f"edges: the band [{lo}, {hi}) holds {e.size} samples, at least 2 needed")
        means.append(e.mean())
        ses.append(e.std(ddof=1) / np.sqrt(e.size))
    return np.array(means), np.array(ses)


# --------------------------------------------------------------------------- chapter 9's checkpoints

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
#: ``cd_exact``: distilled from the exact score; ``cd_learned``: from chapter 6's score
#: network; ``ct``: consistency training, no teacher.
NAMES = ("cd_exact", "cd_learned", "ct")
SDE = VP(beta_min=0.1, beta_max=20.0)
SIGMA_DATA = 4.25**0.5  # the per-coordinate std of toy.four_gaussians_2d (means +-2, std 0.5)
NET = dict(hidden=128, depth=3)
#: Adam, learning rate warmed up over ``warmup_steps`` then cosine-decayed to 1 % of
#: ``learning_rate``; EMA of the weights (``ema_decay``) returned; ``n_steps`` grid intervals.
TRAINING = dict(steps=20_000, batch_size=512, learning_rate=2e-3, warmup_steps=200, ema_decay=0.995, n_steps=18)


def model(seed: int = 0) -> ConsistencyModel:
    """The architecture of the shipped consistency models."""
    return ConsistencyModel(2, SDE, sigma_data=SIGMA_DATA, **NET, rngs=nnx.Rngs(seed))


def teacher() -> nnx.Module:
    """Chapter 6's score network of the four-Gaussian mixture (its shipped checkpoint)."""
    make = lambda: nets.ScoreMLP(2, hidden=64, depth=3, sde=SDE, rngs=nnx.Rngs(2))  # noqa: E731
    return training.load_checkpoint(training.template(make), CHECKPOINT_DIR / "mixtures_2d.msgpack")


def _optimizer(cfg):
    """Adam on the warm-up-then-cosine schedule of ``cfg`` (:data:`TRAINING`)."""
    lr, steps = cfg["learning_rate"], cfg["steps"]
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, cfg["warmup_steps"], steps, 0.01 * lr)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))


#: The ablations of ``cd_exact`` (seed 0): the grid (``n40``: N = 40 intervals) and the
#: target (``target0`` / ``ema95``: :func:`fit_with_target` with target_decay 0 / 0.95).
#: Chapter 9 also ships ``ema95`` of seed 1 (``python -m companion.consistency --ablations
#: --seed 1`` makes it, with the other two of that seed).
ABLATIONS = ("n40", "target0", "ema95")


def train_ablations(*, seed: int = 0) -> dict:
    """The models of :data:`ABLATIONS`, ``{name: model}``: ``cd_exact``'s budget and
    optimiser; ``target0`` and ``ema95`` without the EMA of the returned weights (their
    loop does not keep one), so they compare with each other."""
    mix, cfg = toy.four_gaussians_2d(), TRAINING
    score, key = toy.exact_score(mix, SDE), jax.random.key(seed)
    out = {"n40": training.fit(model(seed), distillation(SDE, score, n_steps=40), mix.sample, key=key,
                               steps=cfg["steps"], batch_size=cfg["batch_size"], ema_decay=cfg["ema_decay"],
                               optimizer=_optimizer(cfg), progress=False)[0]}
    for name, mu in (("target0", 0.0), ("ema95", 0.95)):
        out[name] = fit_with_target(model(seed), distillation(SDE, score, n_steps=cfg["n_steps"]), mix.sample,
                                    target_decay=mu, steps=cfg["steps"], batch_size=cfg["batch_size"], key=key,
                                    optimizer=_optimizer(cfg))[0]
    return out


def train_all(*, seed: int = 0, progress: bool = True) -> dict:
    """Train the three models of :data:`NAMES` on fresh samples of
    :func:`companion.toy.four_gaussians_2d` with :func:`companion.training.fit` (the
    stop-gradient target; ``TRAINING``); returns ``{name: model}``."""
    mix = toy.four_gaussians_2d()
    cfg = dict(TRAINING)
    cfg["optimizer"] = _optimizer(cfg)
    n_steps = cfg.pop("n_steps")
    del cfg["learning_rate"], cfg["warmup_steps"]
    jobs = {"cd_exact": distillation(SDE, toy.exact_score(mix, SDE), n_steps=n_steps),
            "cd_learned": distillation(SDE, teacher(), n_steps=n_steps),
            "ct": consistency_training(SDE, n_steps=n_steps)}
    keys = jax.random.split(jax.random.key(seed), len(NAMES))
    return {name: training.fit(model(seed), jobs[name], mix.sample, key=k, progress=progress, **cfg)[0]
            for name, k in zip(NAMES, keys)}


def load(directory: str | Path = CHECKPOINT_DIR, seed: int = 0, names: Sequence[str] = NAMES) -> dict:
    """The shipped (or ``directory``'s) models ``{name: model}`` for ``names`` (:data:`NAMES`
    or :data:`ABLATIONS`); ``seed`` 1 are the second training seed's
    (``consistency_<name>_seed1.msgpack``)."""
    suffix = "" if seed == 0 else f"_seed{seed}"
    return {name: training.load_checkpoint(training.template(model), Path(directory) /
                                           f"consistency_{name}{suffix}.msgpack") for name in names}


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m companion.consistency [--out-dir DIR] [--seed S] [--ablations]``: train
    :data:`NAMES` (or :data:`ABLATIONS`) and save them."""
    parser = argparse.ArgumentParser(description="Train chapter 9's consistency models.")
    parser.add_argument("--out-dir", default=str(CHECKPOINT_DIR))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ablations", action="store_true", help="train the ABLATIONS instead")
    args = parser.parse_args(argv)
    suffix = "" if args.seed == 0 else f"_seed{args.seed}"
    trained = train_ablations(seed=args.seed) if args.ablations else train_all(seed=args.seed)
    for name, m in trained.items():
        training.save_checkpoint(m, Path(args.out_dir) / f"consistency_{name}{suffix}.msgpack")


if __name__ == "__main__":
    main()
