"""Train the score model and the time-dependent classifier of chapter 7 on the 8x8 digits.

    python -m companion.train_digits                  # both models, the shipped settings
    python -m companion.train_digits --only score --steps 2000 --out-dir /tmp/ckpt
    python -m companion.train_digits --evaluate       # bits/dim on all 360 test digits -> json

The shipped checkpoints ``companion/checkpoints/digits_unet.msgpack`` and
``companion/checkpoints/digits_classifier.msgpack`` were made by the first command (seed 0)
on a 2-core CPU (the score model last, with ``--only score``, after the U-Net's time
input changed); the same command reproduces them (up to the floating-point order of
the machine). ``--evaluate`` then wrote ``digits_unet_evaluation.json`` (:func:`evaluate`). Chapter 7 loads them with :func:`load` and retrains with :func:`train_score_model`
and :func:`train_classifier` when its ``RETRAIN`` flag is set.

The data: the train split of :func:`companion.data.load_digits` (1 437 images), uniformly
dequantised afresh at every step into ``[-1, 1]`` (chapter 7, "The data"), so the model is a
density of the dequantised data and its bits per dimension are those of the digits.

* Score model: :class:`companion.nets.UNet` with the noise-prediction parametrisation and
  the time entering as the normalised log noise level (:func:`companion.nets.time_input`,
  Fourier features of scale 2; the first shipped U-Net saw t with scale 8 and is kept as
  ``digits_unet_raw_time.msgpack`` for chapter 7's comparison), VP SDE, denoising score
  matching with the *likelihood weighting* g(t)^2 and importance sampling of t (Song, Durkan et al. 2021; :func:`companion.losses.denoising_score_matching`),
  Adam with warm-up and cosine decay, EMA of the weights.
* Classifier: :class:`companion.nets.TimeClassifier` on the flattened image, trained with
  the cross-entropy of :func:`companion.losses.classifier_loss` on x(t) from the
  forward kernel, for classifier guidance.
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

from companion import data, losses, nets, training
from companion.sde import VP, ScoreFn

__all__ = [
    "CHECKPOINT_DIR",
    "SCORE_FILE",
    "CLASSIFIER_FILE",
    "EVALUATION_FILE",
    "SDE",
    "UNET",
    "CLASSIFIER",
    "SCORE_TRAINING",
    "CLASSIFIER_TRAINING",
    "score_model",
    "classifier",
    "train_score_model",
    "train_classifier",
    "load",
    "evaluate",
    "stored_evaluation",
    "main",
]

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
SCORE_FILE = "digits_unet.msgpack"
CLASSIFIER_FILE = "digits_classifier.msgpack"

SDE = VP(beta_min=0.1, beta_max=20.0)
UNET = dict(features=(16, 32, 32), embed_dim=32, groups=8)
CLASSIFIER = dict(hidden=256, depth=3)
SCORE_TRAINING = dict(steps=6000, batch_size=128, learning_rate=2e-3, ema_decay=0.999, warmup_steps=200)
CLASSIFIER_TRAINING = dict(steps=3000, batch_size=256, learning_rate=2e-3, warmup_steps=100)

# The shipped score model's bits per dimension on all the test digits, with its standard error,
# written by ``python -m companion.train_digits --evaluate`` (:func:`evaluate`) beside the
# checkpoint; chapter 7 spot-checks it on a few digits (:func:`stored_evaluation` reads it).
EVALUATION_FILE = "digits_unet_evaluation.json"


def score_model(seed: int = 0) -> nets.UNet:
    """The architecture of the shipped score model, freshly initialised from ``seed``."""
    return nets.UNet(data.DIGITS_SHAPE, **UNET, sde=SDE, rngs=nnx.Rngs(seed))


def classifier(seed: int = 0) -> nets.TimeClassifier:
    """The architecture of the shipped classifier (10 classes), freshly initialised from ``seed``."""
    return nets.TimeClassifier(data.DIGITS_SHAPE, 10, **CLASSIFIER, rngs=nnx.Rngs(seed))


def _sampler(levels, labels=None):
    """``sample(key, n)``: ``n`` training digits drawn with replacement, freshly dequantised."""
    levels = jnp.asarray(levels)
    labels = None if labels is None else jnp.asarray(labels)

    def sample(key, n):
        k_idx, k_u = jax.random.split(key)
        idx = jax.random.randint(k_idx, (n,), 0, levels.shape[0])
        x = data.dequantize(k_u, levels[idx], data.DIGITS_LEVELS)
        return x if labels is None else (x, labels[idx])

    return sample


def _optimizer(steps, learning_rate, warmup_steps):
    warmup_steps = min(warmup_steps, steps // 2)
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, steps, 0.05 * learning_rate)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))


def train_score_model(*, seed: int = 0, progress: bool = True, **overrides) -> tuple[nets.UNet, dict]:
    """Train the score model from scratch; returns ``(model, history)`` of
    :func:`companion.training.fit`. ``overrides`` change entries of ``SCORE_TRAINING`` (e.g.
    ``steps=500`` for a quick look) or set ``steps_per_call``: 1 by default, one jitted
    step per call, because XLA:CPU runs the U-Net's convolutions ten times slower inside
    ``fit``'s loop (the shipped model was trained so; more steps per call take the same
    steps and may be faster on a GPU)."""
    cfg = {"steps_per_call": 1, **SCORE_TRAINING, **overrides}
    levels, _ = data.load_digits("train", seed=0)
    loss = losses.denoising_score_matching(SDE, weighting="likelihood", importance_sampling=True)
    return training.fit(
        score_model(seed), loss, _sampler(levels), steps=cfg["steps"], batch_size=cfg["batch_size"],
        key=jax.random.key(seed + 1), ema_decay=cfg["ema_decay"],
        optimizer=_optimizer(cfg["steps"], cfg["learning_rate"], cfg["warmup_steps"]),
        steps_per_call=cfg["steps_per_call"], progress=progress,
    )


def train_classifier(*, seed: int = 0, progress: bool = True, **overrides) -> tuple[nets.TimeClassifier, dict]:
    """Train the time-dependent classifier from scratch; returns ``(model, history)``.
    (An MLP: :func:`companion.training.fit` and its ``lax.scan`` are fast for it.)"""
    cfg = {**CLASSIFIER_TRAINING, **overrides}
    levels, labels = data.load_digits("train", seed=0)
    return training.fit(
        classifier(seed), losses.classifier_loss(SDE), _sampler(levels, labels), steps=cfg["steps"],
        batch_size=cfg["batch_size"], key=jax.random.key(seed + 2),
        optimizer=_optimizer(cfg["steps"], cfg["learning_rate"], cfg["warmup_steps"]),
        steps_per_call=250, progress=progress,
    )


def load(directory: str | Path = CHECKPOINT_DIR) -> tuple[nets.UNet, nets.TimeClassifier]:
    """The shipped (or ``directory``'s) ``(score_model, classifier)``."""
    directory = Path(directory)
    return (training.load_checkpoint(training.template(score_model), directory / SCORE_FILE),
            training.load_checkpoint(training.template(classifier), directory / CLASSIFIER_FILE))


def evaluate(model: ScoreFn, *, n_digits: int | None = None, draws: int = 1, seed: int = 0,
             n_t: int = 128) -> dict:
    """Bits per dimension of ``model`` on the first ``n_digits`` test digits (all 360 by default).

    Each digit gets ``draws`` independent draws of its dequantisation noise and of its
    Rademacher probe; ``bits_per_dim`` is the mean, and its standard error comes from the
    spread of the per-digit means (the digits are independent: this covers both the choice of
    digits and the Monte-Carlo noise). ``mc_sd`` is the standard deviation of one draw about
    its digit's mean (the Monte-Carlo noise alone). The SDE bound (the negative ELBO of the
    reverse-SDE model, :func:`companion.likelihood.sde_bound`, ``n_t`` time draws) is
    computed on the same dequantised digits. Returns a dict (what ``--evaluate`` stores).
    """
    from companion import likelihood

    levels, _ = data.load_digits("test")
    levels = levels if n_digits is None else levels[:n_digits]
    n, D, L = len(levels), 64, data.DIGITS_LEVELS
    ode, bound = [], []
    for r in range(draws):
        k_probe, k_deq, k_sde = jax.random.split(jax.random.fold_in(jax.random.key(seed), r), 3)
        ode.append(np.asarray(likelihood.bits_per_dim(SDE, model, levels, n_levels=L, key=k_probe,
                                                      dequantize_key=k_deq)))
        x = data.dequantize(k_deq, levels)  # the same u as bits_per_dim's
        nats = likelihood.sde_bound(SDE, model, x, k_sde, n_t=n_t)
        bound.append(np.asarray(likelihood.nats_to_bits_per_dim(-nats, D, n_levels=L)))
    ode, bound = np.stack(ode, axis=1), np.stack(bound, axis=1)  # (n, draws)
    per_digit, per_digit_bound = ode.mean(axis=1), bound.mean(axis=1)
    gap = bound - ode
    return {
        "n_digits": n, "draws": draws, "seed": seed,
        "bits_per_dim": float(per_digit.mean()),
        "bits_per_dim_se": float(per_digit.std(ddof=1) / np.sqrt(n)),
        "mc_sd": float(np.sqrt(np.mean(ode.var(axis=1, ddof=1)))) if draws > 1 else None,
        "sde_bound_bits_per_dim": float(per_digit_bound.mean()),
        "sde_bound_se": float(per_digit_bound.std(ddof=1) / np.sqrt(n)),
        "gap": float(gap.mean()), "gap_se": float(gap.mean(axis=1).std(ddof=1) / np.sqrt(n)),
        "sde_bound_n_t": n_t,
    }


def stored_evaluation(directory: str | Path = CHECKPOINT_DIR) -> dict:
    """The figures :func:`evaluate` stored beside the shipped (or ``directory``'s) score model."""
    import json

    return json.loads((Path(directory) / EVALUATION_FILE).read_text())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("score", "classifier"), help="train one model only")
    parser.add_argument("--seed", type=int, default=0, help="initial weights and training randomness")
    parser.add_argument("--steps", type=int, help="optimiser steps (default: the shipped settings)")
    parser.add_argument("--out-dir", type=Path, default=CHECKPOINT_DIR, help="where to write the checkpoints")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--evaluate", action="store_true",
                        help=f"only evaluate the score model in --out-dir on all the test digits -> {EVALUATION_FILE}")
    args = parser.parse_args(argv)
    if args.evaluate:
        import json

        model = training.load_checkpoint(training.template(score_model), args.out_dir / SCORE_FILE)
        t0 = time.perf_counter()
        result = {**evaluate(model), "seconds": round(time.perf_counter() - t0)}
        (args.out_dir / EVALUATION_FILE).write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result, indent=1), flush=True)
        return 0
    overrides = {} if args.steps is None else {"steps": args.steps}
    jobs = [("score", train_score_model, SCORE_FILE), ("classifier", train_classifier, CLASSIFIER_FILE)]
    for name, train, filename in jobs:
        if args.only not in (None, name):
            continue
        t0 = time.perf_counter()
        model, history = train(seed=args.seed, progress=not args.no_progress, **overrides)
        path = training.save_checkpoint(model, args.out_dir / filename)
        tail = history["loss"][-min(500, len(history["loss"])):].mean()
        print(f"{name}: {len(history['loss'])} steps in {time.perf_counter() - t0:.0f} s, "
              f"final loss {tail:.4f}, {nets.count_params(model)} parameters -> {path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
