"""Train the four small networks of chapter 8 (flow matching) on the 2-D mixture.

    python -m companion.train_flows                 # all four, the shipped settings
    python -m companion.train_flows --out-dir /tmp/flows

The shipped checkpoints ``companion/checkpoints/flow_*.msgpack`` were made by the first
command on a 2-core CPU (about a minute); chapter 8 loads them with :func:`load` and
retrains with :func:`train_all` when its ``RETRAIN`` flag is set. Training them inside the
chapter would take most of its one-minute budget.

The data: :func:`companion.toy.four_gaussians_2d`, fresh samples at every step.

* ``dsm_vp``: a score model (:class:`companion.nets.ScoreMLP`, noise-prediction
  parametrisation) trained by denoising score matching on the VP SDE (chapter 4).
* ``fm_vp``: a velocity model (the same MLP, plain output) trained by conditional flow
  matching on the VP path ``paths.from_sde(VP())``, with the same budget as ``dsm_vp``.
* ``fm_rectified``: the same on the rectified path ``paths.Rectified()``.
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
from companion.sde import VP

__all__ = [
    "CHECKPOINT_DIR",
    "NAMES",
    "SDE",
    "NET",
    "TRAINING",
    "REFLOW",
    "score_net",
    "velocity_net",
    "couplings",
    "train_all",
    "load",
    "main",
]

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
NAMES = ("dsm_vp", "fm_vp", "fm_rectified", "reflow")

SDE = VP(beta_min=0.1, beta_max=20.0)
NET = dict(hidden=64, depth=3)
# one budget for the three first models (the comparison of chapter 8 needs the same)
TRAINING = dict(steps=4000, batch_size=512, learning_rate=3e-3, warmup_steps=100)
REFLOW = dict(n_pairs=40_000, ode_steps=50, steps=4000, batch_size=512, learning_rate=1e-3, warmup_steps=100)


def score_net(seed: int = 0) -> nets.ScoreMLP:
    """The score model's architecture: noise-prediction parametrisation of the VP SDE."""
    return nets.ScoreMLP(2, **NET, sde=SDE, rngs=nnx.Rngs(seed))


def velocity_net(seed: int = 0) -> nets.ScoreMLP:
    """The velocity models' architecture: the same MLP, its output taken as the velocity."""
    return nets.ScoreMLP(2, **NET, rngs=nnx.Rngs(seed))


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


def train_all(*, seed: int = 0, progress: bool = True) -> dict:
    """Train the four models from scratch; returns ``{name: model}`` and, under
    ``"seconds"``, the wall time of each step."""
    mix = toy.four_gaussians_2d()
    keys = jax.random.split(jax.random.key(seed), 5)
    out, seconds = {}, {}
    jobs = [
        ("dsm_vp", score_net(seed), losses.denoising_score_matching(SDE)),
        ("fm_vp", velocity_net(seed), losses.flow_matching(paths.from_sde(SDE))),
        ("fm_rectified", velocity_net(seed), losses.flow_matching(paths.Rectified())),
    ]
    for (name, model, loss), key in zip(jobs, keys[:3]):
        t0 = time.perf_counter()
        out[name], _ = _fit(model, loss, mix.sample, key, TRAINING, progress)
        seconds[name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pairs = couplings(out["fm_rectified"], keys[3], REFLOW["n_pairs"], REFLOW["ode_steps"])
    seconds["couplings"] = time.perf_counter() - t0
    student = nnx.clone(out["fm_rectified"])  # reflow starts from the teacher's weights
    t0 = time.perf_counter()
    out["reflow"], _ = _fit(student, losses.flow_matching(paths.Rectified(), coupled=True), pairs, keys[4],
                            REFLOW, progress)
    seconds["reflow"] = time.perf_counter() - t0
    out["seconds"] = seconds
    return out


def load(directory: str | Path = CHECKPOINT_DIR) -> dict:
    """The shipped (or ``directory``'s) models, ``{name: model}`` for ``name`` in ``NAMES``."""
    directory = Path(directory)
    make = {"dsm_vp": score_net, "fm_vp": velocity_net, "fm_rectified": velocity_net, "reflow": velocity_net}
    return {name: training.load_checkpoint(training.template(make[name]), directory / f"flow_{name}.msgpack")
            for name in NAMES}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=str(CHECKPOINT_DIR))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    models = train_all(seed=args.seed)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        training.save_checkpoint(models[name], out / f"flow_{name}.msgpack")
    print({k: round(v, 1) for k, v in models["seconds"].items()})


if __name__ == "__main__":
    main()
