"""A linear autoregressive baseline for images of discrete levels (chapter 7).

The pixels of an image, flattened in raster order (row by row), are coded one after the
other: pixel ``i``'s level ``v_i`` in ``{0, ..., L - 1}`` has a categorical distribution
whose logits are an affine function of the pixels before it,

    p(v_i = l | v_<i) = softmax_l( b_il + sum_{j < i} W_jil v_j / (L - 1) ),

softmax regression on the earlier pixels' grey values (the fully visible sigmoid belief
net of Frey 1998 and Neal 1992, with L classes instead of two). The product over ``i`` is
an exact probability of the discrete image, so its bits per dimension
``-log2 p(v) / d`` are a code length with no dequantisation and no bound.

:func:`fit` maximises the log-likelihood of the training images with an L2 penalty
``l2 / 2 * ||W||^2`` on the weights (full-batch L-BFGS from optax; the problem is convex);
:func:`choose_l2` picks the penalty on a validation part of the training images (the
test images are never looked at). ``python -m companion.autoregressive`` made the
shipped ``checkpoints/digits_autoregressive.msgpack`` (the penalty chosen on 287 of the
1 437 training digits, then refitted on all of them; about a minute on two CPU cores), which
:func:`load` reads.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from jax.typing import ArrayLike

from companion import data

__all__ = ["FILE", "L2_GRID", "logits", "log_prob", "bits_per_dim", "fit", "choose_l2", "sample",
           "save", "load", "main"]

FILE = "digits_autoregressive.msgpack"
L2_GRID = (3e-4, 1e-3, 3e-3, 1e-2)


def _flat(levels, n_levels):
    levels = np.asarray(levels)
    if not np.issubdtype(levels.dtype, np.integer):
        raise TypeError(f"levels: expected integer levels, got dtype {levels.dtype}")
    if levels.ndim < 2:
        raise ValueError(f"levels: expected shape (n, *dims), got {levels.shape}")
    if levels.min() < 0 or levels.max() >= n_levels:
        raise ValueError(f"levels: expected values in 0..{n_levels - 1}, got {levels.min()}..{levels.max()}")
    return jnp.asarray(levels.reshape(len(levels), -1), jnp.int32)


def _mask(d):
    return jnp.tril(jnp.ones((d, d), jnp.float32), -1).T  # mask[j, i] = 1 where j < i


def _logits(weight, bias, flat, n_levels):
    x = flat.astype(jnp.float32) / (n_levels - 1)  # grey values in [0, 1]
    w = weight * _mask(flat.shape[1])[:, :, None]  # pixel i sees pixels j < i only
    return jnp.einsum("nj,jil->nil", x, w) + bias


def _nll(weight, bias, flat, n_levels):
    lp = jax.nn.log_softmax(_logits(weight, bias, flat, n_levels))
    return -jnp.take_along_axis(lp, flat[..., None], -1)[..., 0].sum(1)  # (n,) nats


def logits(params: dict, levels: ArrayLike, n_levels: int = data.DIGITS_LEVELS) -> jax.Array:
    """The logits of every pixel's level given the pixels before it: shape ``(n, d, n_levels)``."""
    flat = _flat(levels, n_levels)
    return _logits(params["weight"], params["bias"], flat, n_levels)


def log_prob(params: dict, levels: ArrayLike, n_levels: int = data.DIGITS_LEVELS) -> jax.Array:
    """log p(v) in nats of each integer image ``levels`` ``(n, *dims)``: shape ``(n,)``."""
    return -_nll(params["weight"], params["bias"], _flat(levels, n_levels), n_levels)


def bits_per_dim(params: dict, levels: ArrayLike, n_levels: int = data.DIGITS_LEVELS) -> np.ndarray:
    """The exact code length -log2 p(v) / d of each image, bits per dimension, shape ``(n,)``."""
    flat = _flat(levels, n_levels)
    return np.asarray(-log_prob(params, levels, n_levels)) / (flat.shape[1] * np.log(2.0))


@partial(jax.jit, static_argnames=("n_levels", "steps"))
def _lbfgs_run(weight, bias, flat, l2, n_levels, steps):

    def objective(p):
        w = p["weight"] * _mask(flat.shape[1])[:, :, None]
        return _nll(p["weight"], p["bias"], flat, n_levels).mean() + 0.5 * l2 * jnp.sum(w**2)

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def step(_, carry):
        p, state = carry
        value, grad = value_and_grad(p, state=state)
        updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=objective)
        return optax.apply_updates(p, updates), state

    p = {"weight": weight, "bias": bias}
    p, _ = jax.lax.fori_loop(0, steps, step, (p, opt.init(p)))
    return p, objective(p)


def fit(train_levels: ArrayLike, n_levels: int = data.DIGITS_LEVELS, *, l2: float = 1e-3,
        steps: int = 300) -> dict:
    """Maximum-likelihood weights (with the penalty ``l2``) on the integer images
    ``train_levels`` ``(n, *dims)``: ``{"weight": (d, d, L), "bias": (d, L), "l2": l2}``
    (weights of pixel j on pixel i, zero unless j < i). ``steps`` L-BFGS iterations from zero."""
    if l2 < 0:
        raise ValueError(f"l2: expected a non-negative penalty, got {l2}")
    flat = _flat(train_levels, n_levels)
    d = flat.shape[1]
    p, _ = _lbfgs_run(jnp.zeros((d, d, n_levels)), jnp.zeros((d, n_levels)), flat, jnp.float32(l2),
                      n_levels, int(steps))
    return {"weight": np.asarray(p["weight"] * _mask(d)[:, :, None]), "bias": np.asarray(p["bias"]),
            "l2": np.float32(l2)}


def choose_l2(train_levels: ArrayLike, n_levels: int = data.DIGITS_LEVELS, *,
              grid: Sequence[float] = L2_GRID, n_valid: int = 287, seed: int = 0,
              steps: int = 300) -> tuple[float, dict]:
    """The penalty of ``grid`` with the fewest bits per dimension on ``n_valid`` training
    images held out (a seeded permutation) when fitting on the others: ``(l2, {l2: bits})``."""
    levels = np.asarray(train_levels)
    perm = np.random.default_rng(seed).permutation(len(levels))
    valid, rest = levels[perm[:n_valid]], levels[perm[n_valid:]]
    scores = {float(l2): float(bits_per_dim(fit(rest, n_levels, l2=l2, steps=steps), valid, n_levels).mean())
              for l2 in grid}
    return min(scores, key=scores.get), scores


def sample(params: dict, key: jax.Array, n: int, shape: Sequence[int] = data.DIGITS_SHAPE) -> jax.Array:
    """``n`` integer images of ``shape`` drawn pixel by pixel in raster order."""
    weight, bias = jnp.asarray(params["weight"]), jnp.asarray(params["bias"])
    d, n_levels = bias.shape
    if int(np.prod(shape)) != d:
        raise ValueError(f"shape: expected {d} pixels, got shape {tuple(shape)}")
    keys = jax.random.split(key, d)

    def step(i, flat):
        x = flat.astype(jnp.float32) / (n_levels - 1)  # pixels >= i are still 0: masked anyway
        logit = x @ (weight[:, i] * (jnp.arange(d) < i)[:, None]) + bias[i]
        return flat.at[:, i].set(jax.random.categorical(keys[i], logit))

    flat = jax.lax.fori_loop(0, d, step, jnp.zeros((n, d), jnp.int32))
    return flat.reshape((n, *shape))


def save(params: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_bytes(serialization.msgpack_serialize({k: np.asarray(v) for k, v in params.items()}))
    return path


def load(path: str | Path | None = None) -> dict:
    """The shipped (or ``path``'s) weights of the digits' linear autoregressive model."""
    path = Path(__file__).resolve().parent / "checkpoints" / FILE if path is None else Path(path)
    return {k: np.asarray(v) for k, v in serialization.msgpack_restore(path.read_bytes()).items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fit the digits' linear autoregressive baseline.")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "checkpoints" / FILE)
    args = parser.parse_args(argv)
    levels, _ = data.load_digits("train")
    l2, scores = choose_l2(levels)
    print("validation bits/dim per penalty:", scores, "-> l2 =", l2, flush=True)
    params = fit(levels, l2=l2)
    print("train bits/dim", float(bits_per_dim(params, levels).mean()), "->", save(params, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
