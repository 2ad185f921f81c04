"""Distil chapter 7's digits U-Net into a consistency model (chapter 9, "The digits in one step").

    python -m companion.train_consistency_digits                    # the shipped settings
    python -m companion.train_consistency_digits --steps 200 --out-dir /tmp/ckpt

The shipped checkpoint ``companion/checkpoints/consistency_digits.msgpack`` was made by the
first command (seed 0) on a 2-core CPU shared with other jobs (load average about 8):
4000 steps of 128 images in 1242 s (21 minutes, compilation included), 1 024 000
teacher network evaluations (2 per training image; the student and its target add 2
more forward passes per image), final loss 0.036 (``COST``). The same command
reproduces it (up to the floating-point order of the machine); ``--seed 1`` made the
second training seed's ``consistency_digits_seed1.msgpack`` (709 s at load average
about 4, final loss 0.037).
Chapter 9 loads it with :func:`load` and retrains with :func:`train` when its ``RETRAIN``
flag is set.

* Teacher: the shipped score U-Net of :mod:`companion.train_digits` (VP SDE, noise
  prediction), whose probability flow the student learns to jump along: one Heun step
  of :func:`companion.consistency.teacher_step` (2 teacher evaluations per training
  image) from t_{n+1} to t_n on :func:`companion.consistency.time_grid` (``n_steps``
  intervals).
* Student: :class:`DigitsConsistencyModel`, the consistency parametrisation of
  :class:`companion.consistency.ConsistencyModel`,
  f_theta(x, t) = a(eps) [c_skip(t) xhat + c_out(t) F_theta(c_in(t) xhat, u(t))],
  with ``F_theta`` a :class:`companion.nets.UNet` of the teacher's size (plain output,
  fed the normalised log noise level u) and sigma_d = ``SIGMA_DATA``, the root mean
  square of the dequantised training digits (the second moment is what c_skip needs:
  it minimises E ``|x_0 - c_skip xhat|^2`` at each nu). f_theta(x, eps) = x by construction.
* Loss: :func:`companion.consistency.distillation` (squared distance) with an EMA target,
  theta^- <- mu theta^- + (1 - mu) theta, mu = ``target_decay`` (chapter 9 measures
  mu = 0.95 far closer to the exact map than the stop-gradient target on the mixture);
  Adam with warm-up and cosine decay, gradient clipping; the online weights are shipped.
* Data: the train split of :func:`companion.data.load_digits`, dequantised afresh at every
  step (as the teacher saw them).

The loop jits one step per call (not :func:`companion.consistency.fit_with_target`'s
``fori_loop``): XLA:CPU runs the U-Net's convolutions much slower inside a loop
(:func:`companion.train_digits.train_score_model`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from companion import consistency, data, nets, train_digits, training
from companion._common import DEFAULT_EPS, check_positive, check_positive_int, traceable
from companion.sde import check_cutoff

__all__ = [
    "CHECKPOINT_DIR", "FILE", "SDE", "EPS", "SIGMA_DATA", "UNET", "TRAINING", "COST", "DigitsConsistencyModel",
    "model", "teacher", "train", "filename", "load", "sample", "teacher_evaluations", "main",
]

CHECKPOINT_DIR = train_digits.CHECKPOINT_DIR
FILE = "consistency_digits.msgpack"
SDE = train_digits.SDE
EPS = DEFAULT_EPS
#: Root mean square of the dequantised training digits in [-1, 1] (0.798 over 50 draws of
#: the dequantisation of all 1 437; the test checks it).
SIGMA_DATA = 0.80
UNET = dict(train_digits.UNET)
#: ``steps`` optimiser steps of ``batch_size`` images; ``n_steps`` grid intervals;
#: ``target_decay`` the EMA target's mu; Adam's ``learning_rate`` warmed up over
#: ``warmup_steps``, cosine-decayed to 5 % of it; ``from_teacher``: the student's U-Net
#: starts from the teacher's weights (as Song et al. 2023 do; a 400-step pilot from them
#: landed one step 0.23 from the teacher's flow, RMS per pixel, against 0.40 from random
#: weights).
TRAINING = dict(steps=4000, batch_size=128, n_steps=18, target_decay=0.95,
                learning_rate=1e-3, warmup_steps=200, from_teacher=True)
#: The cost of training the shipped checkpoint, the run of the module docstring, in wall
#: ``seconds`` on the shared 2-core CPU at load average ``load``, and in the teacher's
#: network evaluations (:func:`teacher_evaluations`).
COST = dict(seconds=1242, load=8, teacher_evaluations=1_024_000, seconds_seed1=709, load_seed1=4)


class DigitsConsistencyModel(consistency.ConsistencyModel):
    """f_theta(x, t) for digits ``x`` ``(n, 8, 8, 1)``, ``t`` a scalar or ``(n,)`` in
    [eps, T]: :class:`companion.consistency.ConsistencyModel`'s parametrisation (and its
    ``__call__``) with ``F_theta`` a :class:`companion.nets.UNet` without an SDE (so it
    returns its plain output and reads the normalised log noise level as its time).

    Args:
        sde, sigma_data, eps: as :class:`companion.consistency.ConsistencyModel`.
        features, embed_dim, groups: the U-Net (:class:`companion.nets.UNet`).
        rngs: ``nnx.Rngs`` for the initial weights.
    """

    def __init__(self, sde=SDE, *, sigma_data: float = SIGMA_DATA, eps: float = EPS,
                 features: Sequence[int] = UNET["features"], embed_dim: int = UNET["embed_dim"],
                 groups: int = UNET["groups"], rngs: nnx.Rngs):
        self.sde = sde
        self.eps = check_cutoff(sde, eps)
        self.sigma_data = check_positive("sigma_data", sigma_data)
        self.net = nets.UNet(data.DIGITS_SHAPE, features=features, embed_dim=embed_dim, groups=groups, rngs=rngs)


def model(seed: int = 0) -> DigitsConsistencyModel:
    """The architecture of the shipped student, freshly initialised from ``seed``."""
    return DigitsConsistencyModel(SDE, sigma_data=SIGMA_DATA, eps=EPS, **UNET, rngs=nnx.Rngs(seed))


def teacher() -> nets.UNet:
    """Chapter 7's shipped score U-Net (:func:`companion.train_digits.load`)."""
    return train_digits.load()[0]


def teacher_evaluations(steps: int, batch_size: int) -> int:
    """Teacher network evaluations per image spent by :func:`train`: 2 per training image
    (one Heun step), ``2 * steps * batch_size``."""
    return 2 * check_positive_int("steps", steps) * check_positive_int("batch_size", batch_size)


def _optimizer(cfg):
    lr, steps = cfg["learning_rate"], cfg["steps"]
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(cfg["warmup_steps"], steps // 2), steps, 0.05 * lr)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))


def train(*, seed: int = 0, score_fn: nnx.Module | None = None, log_every: int = 0,
          **overrides) -> tuple[DigitsConsistencyModel, dict]:
    """Distil ``score_fn`` (default :func:`teacher`) into :func:`model` (``seed``) with the
    settings ``TRAINING`` (``overrides`` change entries, e.g. ``steps=100``). Step ``i``
    draws its batch and its loss's randomness from ``fold_in(key(seed + 1), i)``.
    Returns ``(model, {"loss": (steps,), "seconds": wall time})``; ``log_every`` > 0
    prints the mean loss every that many steps."""
    cfg = {**TRAINING, **overrides}
    steps, batch_size = check_positive_int("steps", cfg["steps"]), check_positive_int("batch_size", cfg["batch_size"])
    mu = cfg["target_decay"]
    if not 0 <= mu < 1:
        raise ValueError(f"target_decay: expected a number in [0, 1), got {mu}")
    teacher_net = teacher() if score_fn is None else score_fn
    t_graph, t_state = nnx.split(teacher_net)
    levels = jnp.asarray(data.load_digits("train", seed=0)[0])
    student = model(seed)
    if cfg["from_teacher"]:  # the same U-Net: start from the teacher's weights
        nnx.update(student.net, nnx.state(teacher_net, nnx.Param))
    graphdef, params, rest = nnx.split(student, nnx.Param, ...)
    tx = _optimizer({**cfg, "steps": steps})

    @jax.jit
    def step(params, opt_state, target, t_state, key):
        k_idx, k_u, k_loss = jax.random.split(key, 3)
        idx = jax.random.randint(k_idx, (batch_size,), 0, levels.shape[0])
        x0 = data.dequantize(k_u, levels[idx])
        loss = consistency.distillation(SDE, nnx.merge(t_graph, t_state), n_steps=cfg["n_steps"], eps=EPS)
        frozen = nnx.merge(graphdef, target, rest)
        value, grads = jax.value_and_grad(lambda p: loss(nnx.merge(graphdef, p, rest), x0, k_loss, frozen))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        target = jax.tree.map(lambda e, p: mu * e + (1 - mu) * p, target, params)
        return params, opt_state, target, value

    key, values, t0 = jax.random.key(seed + 1), [], time.perf_counter()
    opt_state, target = tx.init(params), params
    for i in range(steps):
        params, opt_state, target, value = step(params, opt_state, target, t_state, jax.random.fold_in(key, i))
        values.append(value)
        if log_every and (i + 1) % log_every == 0:
            recent = float(np.mean(np.asarray(values[-log_every:])))
            print(f"step {i + 1}/{steps}: loss {recent:.5f}, {time.perf_counter() - t0:.0f} s", flush=True)
    losses = np.asarray(jnp.stack(values))
    return nnx.merge(graphdef, params, rest), {"loss": losses, "seconds": time.perf_counter() - t0}


def filename(seed: int = 0) -> str:
    """The checkpoint's file name: ``FILE`` for seed 0, ``consistency_digits_seed<S>.msgpack`` else."""
    return FILE if seed == 0 else FILE.replace(".msgpack", f"_seed{seed}.msgpack")


def load(directory: str | Path = CHECKPOINT_DIR, seed: int = 0) -> DigitsConsistencyModel:
    """The shipped (or ``directory``'s) student of training seed ``seed`` (0 or 1 shipped)."""
    return training.load_checkpoint(training.template(model), Path(directory) / filename(seed))


@jax.jit
def _evaluate(model, x, t):
    return model(x, t)


def sample(model: consistency.ConsistencyModel, key: jax.Array, shape: tuple[int, ...],
           times: Sequence[float] = (1.0,)) -> tuple[jax.Array, int]:
    """:func:`companion.consistency.sample` (the same algorithm, keys and draws; the same
    result up to float32 rounding) with one compiled evaluation of ``model`` reused at
    every step and every call: ``consistency.sample`` compiles its loop unrolled, once per
    number of steps, and XLA:CPU spends seconds on each copy of the U-Net. ``times``
    decreasing in (eps, T], ``times[0]`` = T. Returns ``(x, nfe)``, ``x`` of shape ``shape``."""
    times, sde, eps = np.asarray(times, np.float64), model.sde, model.eps
    if times.ndim != 1 or times.size == 0 or times[0] != sde.T or np.any(np.diff(times) >= 0) or times[-1] <= eps:
        raise ValueError(f"times: expected decreasing times starting at T = {sde.T}, all above eps, got {times}")
    ts, f = jnp.asarray(times, jnp.result_type(float)), traceable(model)
    keys = jax.random.split(key, ts.shape[0])
    x = _evaluate(f, sde.prior_sample(keys[0], tuple(shape)), ts[0])
    for k in range(1, ts.shape[0]):  # re-noise from eps to t_k, then denoise
        r, q = sde.transition(eps, ts[k])
        x = _evaluate(f, r * x + q * jax.random.normal(keys[k], tuple(shape), x.dtype), ts[k])
    return x, int(times.size)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="initial weights and training randomness")
    parser.add_argument("--steps", type=int, help="optimiser steps (default: the shipped settings)")
    parser.add_argument("--batch-size", type=int, help="images per step (default: the shipped settings)")
    parser.add_argument("--out-dir", type=Path, default=CHECKPOINT_DIR, help="where to write the checkpoint")
    parser.add_argument("--random-init", action="store_true", help="start from random weights, not the teacher's")
    parser.add_argument("--log-every", type=int, default=100, help="print the mean loss every this many steps")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size)) if v is not None}
    if args.random_init:
        overrides["from_teacher"] = False
    student, history = train(seed=args.seed, log_every=args.log_every, **overrides)
    path = training.save_checkpoint(student, args.out_dir / filename(args.seed))
    cfg = {**TRAINING, **overrides}
    print(f"{cfg['steps']} steps of {cfg['batch_size']} in {history['seconds']:.0f} s, "
          f"{teacher_evaluations(cfg['steps'], cfg['batch_size'])} teacher evaluations, "
          f"final loss {history['loss'][-min(500, cfg['steps']):].mean():.5f} -> {path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
