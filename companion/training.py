"""Training a score model: :func:`fit`, and checkpoints of NNX models (chapters 4 to 7).

``fit`` runs ``steps`` optimiser steps of a loss from :mod:`companion.losses` (any
``loss(model, x0, key) -> scalar``), ``steps_per_call`` of them inside one jitted loop
(``lax.fori_loop``), so Python is visited a handful of times per thousand steps.
``steps_per_call=1`` jits the bare step instead, with no loop around it: XLA:CPU runs
the backward pass of a convolution about ten times slower inside a loop than outside
one (chapter 7's U-Net: 1.1 s against 0.1 s per step on 2 cores), so convolutional
models train faster on a CPU one step per call; for MLPs the loop is the faster.

* Optimiser: optax Adam (the default; pass ``optimizer=`` for another), gradient clipping
  by global norm, linear warm-up of the learning rate, optional exponential moving
  average (EMA) of the weights (Song et al. 2021 sample with EMA weights).
* Determinism: step ``i`` uses ``jax.random.fold_in(key, i)``, so the same key gives the
  same loss curve whatever ``steps_per_call`` and whatever the number of devices (to float
  tolerance: a sharded mean adds in another order).
* Data parallelism: a ``Mesh`` over the devices (all local devices by default) with one
  axis ``"data"``; each minibatch is sharded along it, parameters and optimiser state
  are replicated, and XLA inserts the all-reduce of the gradients.

Checkpoints (:func:`save_checkpoint`, :func:`load_checkpoint`) are msgpack files of the
model's NNX state (``flax.serialization``) with a checksum: a truncated, corrupted or
mismatched file raises ``ValueError`` and nothing is loaded.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, serialization
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jax.typing import ArrayLike

from companion._common import check_positive_int

__all__ = ["fit", "make_optimizer", "save_checkpoint", "load_checkpoint", "template"]


def make_optimizer(learning_rate: float, *, warmup_steps: int = 0,
                   clip_norm: float | None = 1.0) -> optax.GradientTransformation:
    """Adam with a linear warm-up from 0 to ``learning_rate`` over ``warmup_steps``, then constant,
    after clipping the gradient to global norm ``clip_norm`` (``None``: no clipping)."""
    if not learning_rate > 0:
        raise ValueError(f"learning_rate: expected a positive number, got {learning_rate}")
    if warmup_steps > 0:
        schedule = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    else:
        schedule = learning_rate
    parts = []
    if clip_norm is not None:
        if not clip_norm > 0:
            raise ValueError(f"clip_norm: expected a positive number or None, got {clip_norm}")
        parts.append(optax.clip_by_global_norm(clip_norm))
    parts.append(optax.adam(schedule))
    return optax.chain(*parts)


def _batch_source(data, batch_size: int):
    """A traceable ``draw(key) -> (batch_size, *dims)`` and the data to carry into jit."""
    if callable(data):
        return (lambda key, _arr: data(key, batch_size)), None
    arr = jnp.asarray(data)
    if arr.ndim < 2:
        raise ValueError(f"data: expected an array (N, *dims) or a function sample(key, n), got shape {arr.shape}")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(f"data: expected floating-point data, got dtype {arr.dtype}")
    n = arr.shape[0]

    def draw(key, arr):
        return arr[jax.random.randint(key, (batch_size,), 0, n)]

    return draw, arr


def fit(model: nnx.Module, loss: Callable, data: ArrayLike | Callable, *, steps: int, batch_size: int,
        learning_rate: float = 1e-3, key: jax.Array, ema_decay: float | None = None, clip_norm: float | None = 1.0,
        warmup_steps: int = 100, steps_per_call: int = 500, progress: bool = True,
        optimizer: optax.GradientTransformation | None = None,
        devices: Sequence[jax.Device] | None = None) -> tuple[nnx.Module, dict]:
    """Train ``model`` on ``loss`` for ``steps`` steps; returns ``(trained_model, history)``.

    Args:
        model: an NNX module; its ``nnx.Param`` entries are trained, other state is kept.
            It is not modified: the trained model is a new object.
        loss: ``loss(model, x0, key) -> scalar``, e.g. from :mod:`companion.losses`.
        data: an array ``(N, *dims)`` (each minibatch drawn from it with replacement) or a
            function ``sample(key, n)`` giving fresh samples at every step (must be
            traceable by ``jax.jit``).
        steps, batch_size, learning_rate: as usual. ``batch_size`` must be a multiple of
            the number of devices.
        key: a PRNG key; the same key gives the same result.
        ema_decay: if set (e.g. 0.999), keep an EMA of the weights with decay
            ``min(ema_decay, (1 + i) / (10 + i))`` at step ``i`` and return the model
            holding the EMA weights.
        clip_norm, warmup_steps: gradient clipping and linear warm-up of
            :func:`make_optimizer` (ignored when ``optimizer`` is given).
        steps_per_call: optimiser steps per jitted call (a ``lax.fori_loop``; the last
            call runs the remainder with the same compiled program). ``1``: one step per
            call and no loop, the faster for convolutions on a CPU (see the module
            docstring); the same steps, so the same model.
        progress: show a tqdm progress bar with the running loss (updated every call,
            at most every 50 steps).
        devices: the devices to shard the batch over (default ``jax.devices()``).

    Returns:
        ``(model, history)``: ``history["loss"]`` (one value per step, the minibatch loss
        before the update), ``history["grad_norm"]``, ``history["seconds"]`` (wall time of
        the run, compilation included) and ``history["steps_per_second"]``.
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model: expected an nnx.Module, got {type(model).__name__}")
    if not callable(loss):
        raise TypeError(f"loss: expected a function loss(model, x0, key), got {type(loss).__name__}")
    steps = check_positive_int("steps", steps)
    batch_size = check_positive_int("batch_size", batch_size)
    steps_per_call = min(check_positive_int("steps_per_call", steps_per_call), steps)
    if ema_decay is not None and not 0 < ema_decay < 1:
        raise ValueError(f"ema_decay: expected a number in (0, 1) or None, got {ema_decay}")
    if not isinstance(key, jax.Array):
        raise TypeError(f"key: expected a PRNG key such as jax.random.key(0), got {type(key).__name__}")
    tx = optimizer if optimizer is not None else make_optimizer(
        learning_rate, warmup_steps=int(warmup_steps), clip_norm=clip_norm)

    devices = list(jax.devices() if devices is None else devices)
    if batch_size % len(devices):
        raise ValueError(f"batch_size: must be a multiple of the number of devices ({len(devices)}), got {batch_size}")
    mesh = Mesh(np.array(devices), ("data",))
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    draw, arr = _batch_source(data, batch_size)

    def loss_of_params(params, x0, k):
        return loss(nnx.merge(graphdef, params, rest), x0, k)

    value_and_grad = jax.value_and_grad(loss_of_params)

    def one_step(carry, i, arr):
        params, opt_state, ema = carry
        k_batch, k_loss = jax.random.split(jax.random.fold_in(key, i))
        x0 = jax.lax.with_sharding_constraint(draw(k_batch, arr), batch_sharding)
        value, grads = value_and_grad(params, x0, k_loss)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if ema is not None:
            decay = jnp.minimum(ema_decay, (1.0 + i) / (10.0 + i))
            ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, params)
        return (params, opt_state, ema), (value, optax.tree.norm(grads))

    if steps_per_call == 1:  # the bare step, no loop (convolutions on XLA:CPU)

        def chunk(carry, arr, start, count):
            carry, (value, norm) = one_step(carry, start, arr)
            return carry, value[None], norm[None]

    else:

        def chunk(carry, arr, start, count):
            # ``count`` (traced) steps from ``start``: a loop with a run-time trip count, so
            # the last, shorter call reuses the compiled program and no step pays for a
            # ``lax.cond``; the outputs fill buffers of length ``steps_per_call``.
            out_struct = jax.eval_shape(lambda c: one_step(c, start, arr)[1], carry)
            buffers = jax.tree.map(lambda s: jnp.zeros((steps_per_call, *s.shape), s.dtype), out_struct)

            def body(j, state):
                carry, buffers = state
                carry, out = one_step(carry, start + j, arr)
                return carry, jax.tree.map(lambda b, o: b.at[j].set(o), buffers, out)

            carry, (values, norms) = jax.lax.fori_loop(0, count, body, (carry, buffers))
            return carry, values, norms

    run = jax.jit(chunk, out_shardings=(replicated, replicated, replicated))
    carry = (params, tx.init(params), params if ema_decay is not None else None)
    carry = jax.device_put(carry, replicated)
    if arr is not None:
        arr = jax.device_put(arr, replicated)

    bar = _progress_bar(steps) if progress else None
    outputs = []  # (losses, grad norms, count) of each call
    shown = 0  # the calls whose losses have been read back
    t0 = time.perf_counter()
    n_calls = math.ceil(steps / steps_per_call)
    for c in range(n_calls):
        start = c * steps_per_call
        count = min(steps_per_call, steps - start)
        carry, values, gnorms = run(carry, arr, jnp.asarray(start, jnp.int32), jnp.asarray(count, jnp.int32))
        outputs.append((values, gnorms, count))
        pending = outputs[shown:]
        if sum(k for _, _, k in pending) >= 50 or c == n_calls - 1:
            # reading the losses waits for the device: after every call of 50 steps or more;
            # short calls (steps_per_call=1) are queued up to 50 ahead, never more
            recent = np.concatenate([np.asarray(v)[:k] for v, _, k in pending])
            if bar is not None:
                bar.update(len(recent))
                bar.set_postfix(loss=f"{recent.mean():.4g}")
            shown = len(outputs)
    carry = jax.block_until_ready(carry)
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    losses = [np.asarray(v)[:k] for v, _, k in outputs]
    norms = [np.asarray(g)[:k] for _, g, k in outputs]

    params, _, ema = carry
    final = ema if ema_decay is not None else params
    final = jax.device_put(final, devices[0])
    trained = nnx.merge(graphdef, final, rest)
    loss_curve = np.concatenate(losses)
    history = {
        "loss": loss_curve,
        "grad_norm": np.concatenate(norms),
        "seconds": seconds,
        "steps_per_second": steps / seconds,
    }
    if not np.all(np.isfinite(loss_curve)):
        bad = int(np.argmin(np.isfinite(loss_curve)))
        warnings.warn(f"fit: the loss became NaN or inf at step {bad}; try a smaller learning_rate", RuntimeWarning)
    return trained, history


def _progress_bar(total: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tqdm.auto warns when ipywidgets is missing, then falls back to text
        from tqdm.auto import tqdm
        return tqdm(total=total, desc="training", unit="step")


# --------------------------------------------------------------------------- checkpoints

_FORMAT = "companion-nnx-checkpoint-v1"


def _stringify(tree):
    """Nested dict with every key a string (msgpack map keys; ``nnx.List`` indices are ints)."""
    if isinstance(tree, dict):
        return {str(k): _stringify(v) for k, v in tree.items()}
    return np.asarray(tree)


def save_checkpoint(model: nnx.Module, path: str | Path) -> Path:
    """Write the whole NNX state of ``model`` (parameters and buffers) to ``path`` (msgpack).

    The file holds a format tag, the model's class name, a SHA-256 checksum and the state;
    it is written to a temporary file and renamed, so a crash never leaves half a file
    under ``path``. Returns the path.
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model: expected an nnx.Module, got {type(model).__name__}")
    path = Path(path)
    state = _stringify(nnx.to_pure_dict(nnx.state(model)))
    payload = serialization.msgpack_serialize(state)
    blob = serialization.msgpack_serialize({
        "format": _FORMAT,
        "class": type(model).__name__,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "state": payload,
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, path)
    return path


def template(make: Callable[[], nnx.Module]) -> nnx.Module:
    """The model that ``make()`` builds, with zero weights, made from its shapes alone
    (``nnx.eval_shape``): a template for :func:`load_checkpoint`. Running the initialisers
    of a U-Net eagerly takes seconds on a CPU, and the checkpoint overwrites them. The
    zeros are NumPy arrays: ``jnp.zeros`` compiles once per weight shape (about 0.7 s
    for chapter 7's two networks, cold)."""
    graphdef, state = nnx.split(nnx.eval_shape(make))
    return nnx.merge(graphdef, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), state))


def load_checkpoint(model_template: nnx.Module, path: str | Path) -> nnx.Module:
    """A new model with the architecture of ``model_template`` and the state stored in ``path``.

    The template is not modified. Raises ``FileNotFoundError`` if there is no file and
    ``ValueError`` if the file is truncated or corrupted, was written for another class,
    or holds a state whose entries, shapes or dtypes differ from the template's; the
    message names what differs. Nothing is loaded unless everything matches.
    """
    if not isinstance(model_template, nnx.Module):
        raise TypeError(f"model_template: expected an nnx.Module, got {type(model_template).__name__}")
    path = Path(path)
    blob = path.read_bytes()
    try:
        outer = serialization.msgpack_restore(blob)
        if not isinstance(outer, dict) or outer.get("format") != _FORMAT:
            raise ValueError("not a companion checkpoint")
        payload = outer["state"]
        if hashlib.sha256(payload).hexdigest() != outer["sha256"]:
            raise ValueError("checksum mismatch")
        stored = serialization.msgpack_restore(payload)
    except Exception as e:
        raise ValueError(f"path: {path} is not a readable checkpoint (truncated or corrupted?): {e}") from None
    if outer["class"] != type(model_template).__name__:
        raise ValueError(f"path: {path} holds a {outer['class']}, but model_template is a {type(model_template).__name__}")

    graphdef, state = nnx.split(model_template)
    template = nnx.to_pure_dict(state)
    restored = _match(template, stored, where="")
    nnx.replace_by_pure_dict(state, restored)
    return nnx.merge(graphdef, state)


def _match(template, stored, *, where: str):
    """``stored`` (string keys) re-keyed like ``template``, after checking every entry."""
    if isinstance(template, dict):
        if not isinstance(stored, dict):
            raise ValueError(f"checkpoint does not match the model: {where or 'the state'} should be a collection")
        keys_t = {str(k): k for k in template}
        missing = sorted(set(keys_t) - set(stored))
        extra = sorted(set(stored) - set(keys_t))
        if missing or extra:
            raise ValueError(
                f"checkpoint does not match the model at '{where or '/'}': "
                f"missing entries {missing}, unexpected entries {extra} (another architecture?)")
        return {keys_t[k]: _match(template[keys_t[k]], stored[k], where=f"{where}/{k}") for k in keys_t}
    want = np.asarray(template)
    got = np.asarray(stored)
    if got.shape != want.shape or got.dtype != want.dtype:
        raise ValueError(
            f"checkpoint does not match the model at '{where}': stored {got.dtype}{list(got.shape)}, "
            f"model has {want.dtype}{list(want.shape)} (another architecture?)")
    return jnp.asarray(got)
