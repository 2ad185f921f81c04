"""Train the small networks of chapter 8 (flow matching) on the 2-D mixture.

    python -m companion.train_flows                 # all of them, the shipped settings
    python -m companion.train_flows --out-dir /tmp/flows

The shipped checkpoints ``companion/checkpoints/flow_*.msgpack`` were made by the first
command on a shared 2-core CPU (the seconds each took are in ``COST``); chapter 8
loads them with :func:`load` and retrains with :func:`train_all` when its ``RETRAIN``
flag is set. Training them inside the chapter would take many times its one-minute budget.

The data: :func:`companion.toy.four_gaussians_2d`, fresh samples at every step.

Three models of the VP path, each trained from ``SEEDS`` (one checkpoint per seed,
``flow_<name>_seed<k>.msgpack``), all with the same network (:class:`companion.nets.ScoreMLP`
with the VP SDE's preconditioning: input scaled by ``1 / sqrt(a^2 + b^2)``, time entering
as the normalised log noise level), optimiser, batch and number of steps:

* ``dsm_vp``: a score model (output divided by b(t): noise prediction) trained by
  denoising score matching with the "sigma2" weighting (chapter 4): weight 1 on the
  noise-prediction error.
* ``dsm_fmw_vp``: the same score model trained by denoising score matching with flow
  matching's weight g^4 / (4 b^2) on the noise-prediction error (:func:`dsm_fm_weight`),
  with the same initial weights, batches, times and noise as ``dsm_vp`` of its seed: the
  control that changes only the weighting.
* ``fm_vp``: a velocity model (``scale_output=False``: the same input and time, the
  output taken as the velocity) trained by conditional flow matching on the VP path
  ``paths.from_sde(VP())``.

Two models of the rectified path (one seed):

* ``fm_rectified``: a velocity model (the MLP with ``t`` as its time input and no
  scaling: a(1) = 0 leaves no finite log noise level at t = 1) trained by flow matching
  on ``paths.Rectified()``.
* ``reflow``: ``fm_rectified`` fine-tuned by flow matching on the couplings
  (z, x_0 = ODE(z)) that ``fm_rectified``'s own ODE makes (reflow, Liu et al. 2023):
  ``REFLOW["n_pairs"]`` noise draws pushed through Heun with ``REFLOW["ode_steps"]`` steps.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from companion import losses, nets, paths, toy, training
from companion._common import sq_norms
from companion.sde import VP, batch_broadcast, check_cutoff

__all__ = [
    "CHECKPOINT_DIR",
    "NAMES",
    "COMPARED",
    "SEEDS",
    "SDE",
    "NET",
    "TRAINING",
    "REFLOW",
    "COST",
    "score_net",
    "vp_velocity_net",
    "velocity_net",
    "dsm_fm_weight",
    "couplings",
    "train_compared",
    "train_rectified",
    "train_all",
    "checkpoint_path",
    "load",
    "save",
    "main",
]

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
COMPARED = ("dsm_vp", "dsm_fmw_vp", "fm_vp")  # the VP models, one per seed
NAMES = COMPARED + ("fm_rectified", "reflow")
SEEDS = (0, 1, 2, 3, 4)

SDE = VP(beta_min=0.1, beta_max=20.0)
NET = dict(hidden=64, depth=3)
# one budget for every first model (the comparison of chapter 8 needs the same)
TRAINING = dict(steps=4000, batch_size=512, learning_rate=3e-3, warmup_steps=100)
REFLOW = dict(n_pairs=40_000, ode_steps=50, steps=4000, batch_size=512, learning_rate=1e-3, warmup_steps=100)
# wall seconds of the shipped checkpoints' training (2 shared CPU cores, under load
# from other jobs, so an upper bound): per model and seed, and the couplings of reflow
COST = {
    "dsm_vp": (29.4, 42.6, 32.0, 34.4, 23.2),
    "dsm_fmw_vp": (20.9, 35.0, 25.2, 36.1, 22.0),
    "fm_vp": (25.9, 29.2, 35.8, 49.4, 16.5),
    "fm_rectified": 29.6,
    "couplings": 10.2,
    "reflow": 16.4,
}


def score_net(seed: int = 0) -> nets.ScoreMLP:
    """The score models' architecture: noise-prediction parametrisation of the VP SDE."""
    return nets.ScoreMLP(2, **NET, sde=SDE, rngs=nnx.Rngs(seed))


def vp_velocity_net(seed: int = 0) -> nets.ScoreMLP:
    """The VP velocity model's architecture: :func:`score_net` without the division of its
    output by b(t) (same input scaling, same time input, same initial weights)."""
    return nets.ScoreMLP(2, **NET, sde=SDE, scale_output=False, rngs=nnx.Rngs(seed))


def velocity_net(seed: int = 0) -> nets.ScoreMLP:
    """The rectified path's velocity models: the same MLP seeing ``x`` and ``t`` as they are."""
    return nets.ScoreMLP(2, **NET, rngs=nnx.Rngs(seed))


def dsm_fm_weight(sde=SDE, *, eps: float = 1e-5) -> losses.Loss:
    """Denoising score matching with flow matching's weight: per sample

        (g(t)^4 / (4 b(t)^2)) || b(t) model(x_t, t) + z ||^2 / 2,

    the noise-prediction error weighted as flow matching weighs it on the VP path
    (b' - a' b / a = g^2 / (2 b), chapter 8). Its draws of ``t`` and ``z`` are those of
    :func:`companion.losses.denoising_score_matching` with the same key, so a model
    trained with the same key and initial weights differs only by the weighting."""
    eps = check_cutoff(sde, eps)

    def per_sample(model, x0, key):
        k_t, k_x, _ = jax.random.split(key, 3)
        t = jax.random.uniform(k_t, (x0.shape[0],), x0.dtype, minval=eps, maxval=sde.T)
        xt, z = sde.perturb(k_x, x0, t)
        b = sde.kernel_std(t)
        weight = sde.diffusion(t) ** 4 / (4 * b**2)
        return weight * sq_norms(batch_broadcast(b, x0) * model(xt, t) + z) / 2

    return losses.Loss("denoising_score_matching", per_sample, weighting="flow matching's", eps=eps)


def _fit(model, loss, data, key, cfg, progress):
    return training.fit(model, loss, data, steps=cfg["steps"], batch_size=cfg["batch_size"],
                        learning_rate=cfg["learning_rate"], warmup_steps=cfg["warmup_steps"], key=key,
                        progress=progress)


def couplings(teacher: Callable, key: jax.Array, n_pairs: int, ode_steps: int) -> jax.Array:
    """``(n_pairs, 2, 2)`` pairs ``[x_0, z]``: noise ``z`` and the end ``x_0`` of ``teacher``'s
    ODE from ``z`` (Heun, ``ode_steps`` steps, 2 ``ode_steps`` evaluations per pair)."""
    z = jax.random.normal(key, (n_pairs, 2))
    x0, _ = paths.integrate(teacher, z, method="heun", n_steps=ode_steps)
    return jnp.stack([x0, z], axis=1)


def _timed(fn, seconds, name):
    t0 = time.perf_counter()
    out = fn()
    seconds[name] = time.perf_counter() - t0
    return out


def train_compared(seed: int, *, progress: bool = True) -> tuple[dict, dict]:
    """The three VP models of one seed: ``({name: model}, {name: seconds})``. The key
    ``jax.random.key(seed)`` is split as in :func:`train_all`; ``dsm_vp`` and
    ``dsm_fmw_vp`` share their key (same batches, times and noise)."""
    mix = toy.four_gaussians_2d()
    keys = jax.random.split(jax.random.key(seed), 5)
    jobs = [
        ("dsm_vp", score_net(seed), losses.denoising_score_matching(SDE), keys[0]),
        ("dsm_fmw_vp", score_net(seed), dsm_fm_weight(SDE), keys[0]),
        ("fm_vp", vp_velocity_net(seed), losses.flow_matching(paths.from_sde(SDE)), keys[1]),
    ]
    out, seconds = {}, {}
    for name, model, loss, key in jobs:
        out[name] = _timed(lambda: _fit(model, loss, mix.sample, key, TRAINING, progress)[0], seconds, name)
    return out, seconds


def train_rectified(*, seed: int = 0, progress: bool = True) -> tuple[dict, dict]:
    """``fm_rectified`` and its ``reflow``: ``({name: model}, {name: seconds})``."""
    mix = toy.four_gaussians_2d()
    keys = jax.random.split(jax.random.key(seed), 5)
    out, seconds = {}, {}
    loss = losses.flow_matching(paths.Rectified())
    out["fm_rectified"] = _timed(lambda: _fit(velocity_net(seed), loss, mix.sample, keys[2], TRAINING, progress)[0],
                                 seconds, "fm_rectified")
    pairs = _timed(lambda: couplings(out["fm_rectified"], keys[3], REFLOW["n_pairs"], REFLOW["ode_steps"]),
                   seconds, "couplings")
    student = nnx.clone(out["fm_rectified"])  # reflow starts from the teacher's weights
    out["reflow"] = _timed(lambda: _fit(student, losses.flow_matching(paths.Rectified(), coupled=True), pairs,
                                        keys[4], REFLOW, progress)[0], seconds, "reflow")
    return out, seconds


def train_all(*, seeds: Sequence[int] = SEEDS, progress: bool = True) -> dict:
    """Train every model from scratch: returns ``{name: model}``, where each name of
    ``COMPARED`` maps to a tuple of models, one per seed in ``seeds``, and, under
    ``"seconds"``, the wall time of each training (keys ``name`` or ``name/seed``)."""
    out, seconds = {name: [] for name in COMPARED}, {}
    for seed in seeds:
        models, secs = train_compared(seed, progress=progress)
        for name in COMPARED:
            out[name].append(models[name])
            seconds[f"{name}/{seed}"] = secs[name]
    out = {name: tuple(models) for name, models in out.items()}
    models, secs = train_rectified(seed=0, progress=progress)
    out.update(models)
    seconds.update(secs)
    out["seconds"] = seconds
    return out


_MAKE = {"dsm_vp": score_net, "dsm_fmw_vp": score_net, "fm_vp": vp_velocity_net, "fm_rectified": velocity_net,
         "reflow": velocity_net}


def checkpoint_path(directory: Path, name: str, seed: int | None = None) -> Path:
    """Where ``name`` (of seed ``seed`` for the compared models) is saved."""
    return Path(directory) / (f"flow_{name}.msgpack" if seed is None else f"flow_{name}_seed{seed}.msgpack")


def load(directory: str | Path = CHECKPOINT_DIR, *, seeds: Sequence[int] = SEEDS) -> dict:
    """The shipped (or ``directory``'s) models, as :func:`train_all` returns them (without
    ``"seconds"``): a tuple of models per seed for the names of ``COMPARED``."""
    templates = {make: training.template(make) for make in set(_MAKE.values())}  # not modified by loading
    out = {name: tuple(training.load_checkpoint(templates[_MAKE[name]], checkpoint_path(directory, name, seed))
                       for seed in seeds)
           for name in COMPARED}
    for name in ("fm_rectified", "reflow"):
        out[name] = training.load_checkpoint(templates[_MAKE[name]], checkpoint_path(directory, name))
    return out


def save(models: dict, directory: str | Path = CHECKPOINT_DIR, *, seeds: Sequence[int] = SEEDS) -> None:
    """Save what :func:`train_all` (or :func:`load`) returns under ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in COMPARED:
        for seed, model in zip(seeds, models[name]):
            training.save_checkpoint(model, checkpoint_path(directory, name, seed))
    for name in ("fm_rectified", "reflow"):
        training.save_checkpoint(models[name], checkpoint_path(directory, name))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=str(CHECKPOINT_DIR))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--only", choices=("compared", "rectified", "all"), default="all",
                        help="train only the VP models of the seeds, or only the rectified pair")
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seconds = {}
    if args.only in ("compared", "all"):
        for seed in args.seeds:
            models, secs = train_compared(seed)
            for name in COMPARED:
                training.save_checkpoint(models[name], checkpoint_path(out, name, seed))
                seconds[f"{name}/{seed}"] = secs[name]
            print({k: round(v, 1) for k, v in seconds.items()}, flush=True)
    if args.only in ("rectified", "all"):
        models, secs = train_rectified()
        for name in ("fm_rectified", "reflow"):
            training.save_checkpoint(models[name], checkpoint_path(out, name))
        seconds.update(secs)
    print({k: round(v, 1) for k, v in seconds.items()})


if __name__ == "__main__":
    main()
