"""Image data for chapter 7: scikit-learn's 8x8 digits (shipped) and MNIST (optional).

**Digits.** ``sklearn.datasets.load_digits`` ships with scikit-learn: 1 797 images of
8 x 8 pixels with 17 intensity levels 0..16, ten classes. :func:`load_digits` returns
them as integer *levels* of shape ``(n, 8, 8, 1)`` (NHWC, one channel) with a fixed
train/test split drawn from a seed (1 437 train, 360 test by default).

**The model's range.** Score models see continuous data in ``[-1, 1]``: a level ``v``
out of ``L`` is *uniformly dequantised* (the dequantisation of chapter 5),

    y = -1 + 2 (v + u) / L,        u ~ U[0, 1),

so that bin ``v`` is the interval ``[-1 + 2v/L, -1 + 2(v+1)/L)`` of width ``2/L``. This is
the ``data_range=(-1, 1)`` of :func:`companion.likelihood.bits_per_dim`, so the bits per
dimension of the book are of the discrete levels. :func:`to_levels` maps back.

**MNIST** (28 x 28, 256 levels) is for readers with a GPU and the internet:
:func:`load_mnist` downloads the four IDX files once into a cache directory and parses
them with :func:`read_idx`. Nothing in the book or the tests downloads anything.
"""

from __future__ import annotations

import gzip
import os
import struct
import urllib.request
from pathlib import Path
from typing import BinaryIO

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from companion._common import check_int

DIGITS_LEVELS = 17
DIGITS_SHAPE = (8, 8, 1)
MNIST_LEVELS = 256
MNIST_SHAPE = (28, 28, 1)
DATA_RANGE = (-1.0, 1.0)

__all__ = [
    "DIGITS_LEVELS",
    "DIGITS_SHAPE",
    "MNIST_LEVELS",
    "MNIST_SHAPE",
    "DATA_RANGE",
    "load_digits",
    "dequantize",
    "scale",
    "to_levels",
    "read_idx",
    "load_mnist",
    "pixel_histogram",
    "fit_categorical_mixture",
    "categorical_mixture_bits",
]


# --------------------------------------------------------------------------- digits


def load_digits(split: str = "train", *, seed: int = 0, n_test: int = 360) -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 digits as integer levels: ``(levels, labels)``.

    Args:
        split: ``"train"``, ``"test"`` or ``"all"`` (the 1 797 images in scikit-learn's order).
        seed: the seed of the permutation that splits the data (``numpy.random.default_rng``):
            the same seed always gives the same split.
        n_test: size of the test split; the train split is the rest.

    Returns:
        ``levels``: int32, shape ``(n, 8, 8, 1)``, values in ``{0, ..., 16}``;
        ``labels``: int32, shape ``(n,)``, the digit 0..9.
    """
    from sklearn.datasets import load_digits as _sklearn_digits

    if split not in ("train", "test", "all"):
        raise ValueError(f"split: expected 'train', 'test' or 'all', got {split!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    bunch = _sklearn_digits()
    levels = bunch.images.astype(np.int32)[..., None]
    labels = bunch.target.astype(np.int32)
    n = levels.shape[0]
    if isinstance(n_test, bool) or not isinstance(n_test, (int, np.integer)) or not 0 < n_test < n:
        raise ValueError(f"n_test: expected an int in (0, {n}), got {n_test!r}")
    if split == "all":
        return levels, labels
    order = np.random.default_rng(seed).permutation(n)
    idx = order[n - n_test:] if split == "test" else order[: n - n_test]
    return levels[idx], labels[idx]


def _check_levels(levels, n_levels):
    check_int("n_levels", n_levels, 2)
    levels = jnp.asarray(levels)
    if levels.ndim < 2:
        raise ValueError(f"levels: expected shape (n, *dims), got {levels.shape}")
    return levels


def dequantize(key: jax.Array, levels: ArrayLike, n_levels: int = DIGITS_LEVELS) -> jax.Array:
    """Uniformly dequantised data in ``[-1, 1)`` (chapter 7, "The data"): ``-1 + 2 (v + u) / L``.

    A fresh ``u ~ U[0, 1)`` per entry from ``key``; float32, shaped like ``levels``.
    """
    levels = _check_levels(levels, n_levels)
    u = jax.random.uniform(key, levels.shape, jnp.float32)
    return -1.0 + 2.0 * (levels.astype(jnp.float32) + u) / n_levels


def scale(levels: ArrayLike, n_levels: int = DIGITS_LEVELS) -> jax.Array:
    """The centres of the bins: ``-1 + 2 (v + 1/2) / L`` in ``(-1, 1)``; float32."""
    levels = _check_levels(levels, n_levels)
    return -1.0 + 2.0 * (levels.astype(jnp.float32) + 0.5) / n_levels


def to_levels(x: ArrayLike, n_levels: int = DIGITS_LEVELS) -> jax.Array:
    """The bin of each value of ``x`` (inverse of :func:`dequantize`), clipped to ``0..L-1``; int32."""
    x = jnp.asarray(x)
    v = jnp.floor((x + 1.0) * n_levels / 2.0)
    return jnp.clip(v, 0, n_levels - 1).astype(jnp.int32)


# --------------------------------------------------------------------------- discrete baselines
#
# Models of the levels themselves, with no network and no dequantisation: their bits per
# dimension are exact code lengths, -log2 P(levels) / D, the numbers a density model of the
# dequantised digits must beat (its bits/dim bound the same code length from above).


def _flat_levels(levels, n_levels):
    v = np.asarray(levels).reshape(len(levels), -1)
    if not np.issubdtype(v.dtype, np.integer) or v.min() < 0 or v.max() >= n_levels:
        raise ValueError(f"levels: expected integers in 0..{n_levels - 1}")
    return v


def pixel_histogram(train_levels: ArrayLike, n_levels: int = DIGITS_LEVELS, *, alpha: float = 0.5) -> np.ndarray:
    """Independent per-pixel categorical distributions: ``probs (D, L)``.

    ``probs[i, v]`` is the frequency of level ``v`` at pixel ``i`` in ``train_levels``
    (``(n, *dims)``), smoothed by ``alpha`` pseudo-counts per level (1/2: the
    Krichevsky-Trofimov estimator of coding theory; 1: Laplace's rule) so that no level
    unseen in training gets probability 0. A one-component
    :func:`categorical_mixture_bits` evaluates it.
    """
    v = _flat_levels(train_levels, n_levels)
    counts = np.stack([(v == level).sum(axis=0) for level in range(n_levels)], axis=-1)
    return (counts + alpha) / (len(v) + alpha * n_levels)


def fit_categorical_mixture(train_levels: ArrayLike, n_components: int, n_levels: int = DIGITS_LEVELS, *,
                            seed: int = 0, n_iter: int = 50, alpha: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """A mixture of ``K`` independent per-pixel categoricals fitted by EM: ``(weights (K,), probs (K, D, L))``.

    p(v) = sum_k w_k prod_i probs[k, i, v_i]. EM from random responsibilities (``seed``);
    the M-step adds ``alpha`` pseudo-counts per level (a Dirichlet prior, the maximum a
    posteriori fit), as :func:`pixel_histogram` does, so every level keeps a positive
    probability.
    """
    v = _flat_levels(train_levels, n_levels)
    n, d = v.shape
    onehot = (v[..., None] == np.arange(n_levels)).reshape(n, d * n_levels).astype(np.float64)
    resp = np.random.default_rng(seed).dirichlet(np.ones(n_components), size=n)  # (n, K)
    for _ in range(n_iter):
        counts = (resp.T @ onehot).reshape(n_components, d, n_levels) + alpha  # one matmul
        probs = counts / counts.sum(axis=-1, keepdims=True)
        weights = (resp.sum(axis=0) + 1.0) / (n + n_components)  # a pseudo-count: no empty component
        log_joint = np.log(weights) + onehot @ np.log(probs).reshape(n_components, -1).T  # (n, K)
        resp = np.exp(log_joint - log_joint.max(axis=1, keepdims=True))
        resp /= resp.sum(axis=1, keepdims=True)
    return weights, probs


def categorical_mixture_bits(weights: ArrayLike, probs: ArrayLike, levels: ArrayLike,
                             n_levels: int = DIGITS_LEVELS) -> np.ndarray:
    """Exact bits per dimension, ``-log2 p(v) / D``, of each image of ``levels`` (shape ``(n,)``)
    under the mixture ``(weights (K,), probs (K, D, L))`` of :func:`fit_categorical_mixture`;
    ``weights = [1]`` and ``probs = pixel_histogram(...)[None]`` give the histogram's."""
    v = _flat_levels(levels, n_levels)
    log_probs = np.log(np.asarray(probs, np.float64))  # (K, D, L)
    per_pixel = log_probs[:, np.arange(v.shape[1]), v]  # (K, n, D): log probs[k, i, v_i]
    log_joint = np.log(np.asarray(weights, np.float64)) + per_pixel.sum(axis=-1).T  # (n, K)
    top = log_joint.max(axis=1, keepdims=True)
    log_p = top[:, 0] + np.log(np.exp(log_joint - top).sum(axis=1))
    return -log_p / (v.shape[1] * np.log(2.0))


# --------------------------------------------------------------------------- IDX and MNIST

_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(source: str | Path | bytes | BinaryIO) -> np.ndarray:
    """Parse an IDX file (the format of MNIST): a path, ``bytes`` or a binary file object.

    The format: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions ``k``, then ``k`` big-endian
    uint32 sizes and the data, big-endian, in C order. Gzipped input (``.gz``, magic
    ``1f 8b``) is decompressed. Returns an array in native byte order.
    """
    if isinstance(source, (str, os.PathLike)):
        raw = Path(source).read_bytes()
    elif isinstance(source, (bytes, bytearray)):
        raw = bytes(source)
    elif hasattr(source, "read"):
        raw = source.read()
    else:
        raise TypeError(f"source: expected a path, bytes or a binary file, got {type(source).__name__}")
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError("source: not an IDX file (it must start with two zero bytes)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_TYPES:
        raise ValueError(f"source: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError("source: IDX header is truncated")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_TYPES[code]
    count = int(np.prod(dims, dtype=np.int64))
    if len(raw) != header + count * dtype.itemsize:
        raise ValueError(
            f"source: IDX data has {len(raw) - header} bytes, the header promises {count * dtype.itemsize}"
        )
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def load_mnist(split: str = "train", *, cache_dir: str | Path | None = None,
               url: str = MNIST_URL) -> tuple[np.ndarray, np.ndarray]:
    """MNIST as integer levels ``(n, 28, 28, 1)`` (0..255, uint8) and labels ``(n,)``.

    **Optional, needs the internet once**: the two IDX files of ``split`` are downloaded
    from ``url`` into ``cache_dir`` (default ``~/.cache/score-sde-course/mnist``) unless
    already there. For readers with a GPU who want to go beyond the 8x8 digits; train with
    :func:`dequantize` at ``n_levels=256`` exactly as chapter 7 does. Never called by the
    book or the tests.
    """
    if split not in _MNIST_FILES:
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    cache = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "score-sde-course" / "mnist"
    cache.mkdir(parents=True, exist_ok=True)
    arrays = []
    for name in _MNIST_FILES[split]:
        path = cache / name
        if not path.exists():
            tmp = path.with_suffix(".part")
            with urllib.request.urlopen(url + name, timeout=60) as response:
                tmp.write_bytes(response.read())
            tmp.rename(path)
        arrays.append(read_idx(path))
    images, labels = arrays
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise ValueError(f"MNIST files in {cache} have unexpected shapes {images.shape}, {labels.shape}")
    return images[..., None], labels.astype(np.int32)
