"""Time-conditioned networks (flax.nnx): a score model and a noise-level-aware classifier.

Every model here is called as ``model(x, t)`` with ``x`` of shape ``(n, *dims)`` and ``t``
a scalar or shape ``(n,)``, so a score model *is* a score function in the sense of
:mod:`companion.sde` and can be handed to any sampler or to :mod:`companion.likelihood`.

* :class:`ScoreMLP` (chapters 4 and 5): an MLP whose hidden layers all receive an
  embedding of the time (Gaussian Fourier features, Tancik et al. 2020, as in Song et al.
  2021, or fixed sinusoids). With ``sde`` given it uses the *noise-prediction
  parametrisation* (chapter 4's noise prediction): the network sees
  ``x / sqrt(a(t)^2 + b(t)^2)`` (unit scale for unit-variance data), its output is
  divided by the kernel std ``b(t)``, so it predicts ``-z`` where ``x_t = a x_0 + b z``,
  and it is conditioned on the log noise level rather than on t (see :func:`time_input`).
* :class:`TimeClassifier` (chapter 6): the same trunk ending in ``n_classes`` logits, a
  classifier of noisy inputs ``x_t`` for classifier guidance.
* :class:`ClassConditionalMLP` (chapter 6): ``model(x, t, y)``, the score MLP with a
  label embedding and a null label, for classifier-free guidance.
* :class:`UNet` (chapter 7): a small convolutional score model for images, with the
  same noise-prediction parametrisation and log-noise-level conditioning.

Samples never interact (no normalisation across the batch), so the Jacobian of
``model(x, t)`` with respect to ``x`` is block diagonal over the batch; the divergence
helpers of :mod:`companion.likelihood` rely on this.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import ArrayLike

from companion._common import check_positive_int
from companion.sde import LinearSDE, batch_broadcast

__all__ = [
    "Buffer",
    "T_MIN",
    "time_input",
    "TimeEmbedding",
    "ScoreMLP",
    "TimeClassifier",
    "ClassConditionalMLP",
    "count_params",
    "UNet",
]


class Buffer(nnx.Variable):
    """A fixed (non-trained) array that belongs to a model, saved with its checkpoint."""


def _dims(dim) -> tuple[int, ...]:
    """``dim`` as a tuple of positive ints: an int ``d`` means data of shape ``(n, d)``."""
    dims = (dim,) if isinstance(dim, (int,)) and not isinstance(dim, bool) else dim
    try:
        dims = tuple(dims)
    except TypeError:
        raise TypeError(f"dim: expected an int or a tuple of ints, got {type(dim).__name__}") from None
    if not dims or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
        raise ValueError(f"dim: expected positive ints, got {dim!r}")
    return dims


def _check_xt(x, t, dims: tuple[int, ...]):
    """Validate ``x`` (n, *dims) and ``t`` (scalar or (n,)); return x and t in x's dtype.

    A scalar ``t`` stays a scalar: the samplers pass one time for the whole batch, and the
    networks then compute the time embedding once per call rather than once per sample.
    """
    x = jnp.asarray(x)
    if x.ndim != len(dims) + 1 or tuple(x.shape[1:]) != dims:
        raise ValueError(f"x: expected shape (n, {', '.join(map(str, dims))}), got {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x: expected a floating-point array, got dtype {x.dtype}")
    t = jnp.asarray(t, dtype=x.dtype)
    if t.ndim != 0 and t.shape != (x.shape[0],):
        raise ValueError(f"t: expected a scalar or shape ({x.shape[0]},), got shape {t.shape}")
    return x, t


# The range of times over which the log noise level is normalised (the losses' default cut-off).
T_MIN = 1e-5


def time_input(t: ArrayLike, sde: LinearSDE | None) -> jax.Array:
    """What the time embedding sees, about [0, 1] over the times that matter.

    Without an SDE: ``t`` itself. With one: the log noise-to-signal ratio log nu(t),
    nu = b(t) / a(t), mapped affinely so that t = T_MIN gives 0 and t = T gives 1
    (noise-level conditioning, as in Song and Ermon 2019 and Karras et al. 2022). The
    score changes on the scale of nu, not of t: near t = 0, nu ~ sqrt(t) for VP, and
    a network fed t must resolve very fast changes there. Conditioning on log nu makes
    the network smooth in log nu, which is what the fast ODE samplers of chapter 5
    integrate over (chapter 7 measures the difference on its U-Net: Tsit5's NFE and
    DPM-Solver's error with t and Fourier scale 8 against log nu and scale 2).
    """
    if sde is None:
        return t
    with jax.ensure_compile_time_eval():  # constants of the SDE, not traced values
        lo = math.log(float(sde.kernel_std(T_MIN) / sde.mean_coefficient(T_MIN)))
        hi = math.log(float(sde.kernel_std(sde.T) / sde.mean_coefficient(sde.T)))
    log_sigma = jnp.log(sde.kernel_std(t)) - jnp.log(sde.mean_coefficient(t))
    return (log_sigma - lo) / (hi - lo)


class TimeEmbedding(nnx.Module):
    """Features of a time input ``u`` (about [0, 1], :func:`time_input`): ``(n,) -> (n, embed_dim)``,
    and a scalar ``u`` to one row ``(1, embed_dim)`` that broadcasts over the batch.

    ``"fourier"``: ``[sin 2 pi W t, cos 2 pi W t]`` with fixed random ``W ~ N(0, scale^2)``
    (Gaussian Fourier features, used by Song et al. 2021). ``"sinusoidal"``: the same with
    frequencies spaced geometrically from 1/2 to ``max_frequency`` (the Transformer /
    DDPM positional embedding of a continuous time).
    """

    def __init__(self, embed_dim: int, *, kind: str = "fourier", scale: float = 2.0,
                 max_frequency: float = 8.0, rngs: nnx.Rngs):
        embed_dim = check_positive_int("embed_dim", embed_dim)
        if embed_dim % 2:
            raise ValueError(f"embed_dim: must be even (sines and cosines), got {embed_dim}")
        if kind == "fourier":
            w = scale * jax.random.normal(rngs.params(), (embed_dim // 2,))
        elif kind == "sinusoidal":
            w = jnp.geomspace(0.5, max_frequency, embed_dim // 2)
        else:
            raise ValueError(f"embedding: expected 'fourier' or 'sinusoidal', got {kind!r}")
        self.kind = kind
        self.frequencies = Buffer(w.astype(jnp.float32))

    def __call__(self, t: jax.Array) -> jax.Array:
        angles = 2 * math.pi * jnp.atleast_1d(t)[:, None] * self.frequencies[...].astype(t.dtype)
        return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class _Trunk(nnx.Module):
    """An MLP of ``depth`` hidden layers of width ``hidden``; every layer receives the time.

    h_0 = x;  h_l = silu(W_l h_{l-1} + U_l e(t));  e(t) = silu(V embed(t)).
    """

    def __init__(self, d_in: int, *, hidden: int, depth: int, embed_dim: int, embedding: str,
                 fourier_scale: float, rngs: nnx.Rngs):
        hidden = check_positive_int("hidden", hidden)
        depth = check_positive_int("depth", depth)
        self.embed = TimeEmbedding(embed_dim, kind=embedding, scale=fourier_scale, rngs=rngs)
        self.embed_proj = nnx.Linear(embed_dim, embed_dim, rngs=rngs)
        widths = [d_in] + [hidden] * depth
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
        self.time_proj = nnx.List([nnx.Linear(embed_dim, hidden, use_bias=False, rngs=rngs) for _ in range(depth)])

    def __call__(self, h, t, label=None, rows=None):
        """``rows`` given: ``label`` is one embedding per class ``(K, E)``, sample i takes row
        ``rows[i]`` of each time projection (one time: each class projected once, chapter 6)."""
        e = self.embed_proj(self.embed(t))
        e = nnx.silu(e if label is None else e + label)  # a label embedding joins the time's
        for layer, tp in zip(self.layers, self.time_proj):
            u = tp(e)
            h = nnx.silu(layer(h) + (u if rows is None else u[rows]))
        return h


class ScoreMLP(nnx.Module):
    """A time-conditioned MLP score model ``model(x, t) -> array shaped like x``.

    Args:
        dim: the data dimension ``d`` (data ``(n, d)``) or a shape tuple (data ``(n, *dim)``,
            flattened inside).
        hidden, depth: width and number of hidden layers.
        embed_dim: size of the time embedding (even).
        embedding: ``"fourier"`` (Gaussian Fourier features, scale ``fourier_scale``) or
            ``"sinusoidal"``. A small scale (2: a few oscillations over the range of
            :func:`time_input`) keeps the network smooth in time; large ones (8, 16) make
            the probability flow rough and slow to solve (chapter 5).
        sde: if given, the noise-prediction parametrisation (chapter 4): input scaled by
            ``1 / sqrt(a(t)^2 + b(t)^2)``, output divided by the kernel std ``b(t)``, time entering as
            the normalised log noise level (:func:`time_input`); without it the output is the score and
            the network sees ``t``.
        scale_output: ``False``: with ``sde``, the same input scaling and time input but the output
            not divided by ``b(t)`` (chapter 8's velocity model with the score model's preconditioning).
        rngs: ``nnx.Rngs`` for the initial weights (and the Fourier frequencies).
    """

    def __init__(self, dim: int | Sequence[int], *, hidden: int = 128, depth: int = 3,
                 embed_dim: int = 32, embedding: str = "fourier", fourier_scale: float = 2.0,
                 sde: LinearSDE | None = None, scale_output: bool = True, rngs: nnx.Rngs):
        if sde is not None and not isinstance(sde, LinearSDE):
            raise TypeError(f"sde: expected a companion.sde SDE or None, got {type(sde).__name__}")
        if not isinstance(rngs, nnx.Rngs):
            raise TypeError(f"rngs: expected nnx.Rngs, got {type(rngs).__name__}")
        self.dims, self.sde, self.scale_output = _dims(dim), sde, bool(scale_output)
        d = math.prod(self.dims)
        self.trunk = _Trunk(d, hidden=hidden, depth=depth, embed_dim=embed_dim, embedding=embedding,
                            fourier_scale=fourier_scale, rngs=rngs)
        self.out = nnx.Linear(hidden, d, rngs=rngs)

    def __call__(self, x: ArrayLike, t: ArrayLike) -> jax.Array:
        return self._apply(*_check_xt(x, t, self.dims))

    def _apply(self, x, t, label=None, rows=None):
        """The parametrisation around the trunk (``label``, ``rows``: see :class:`_Trunk`)."""
        h = x.reshape(x.shape[0], -1)
        if self.sde is not None:
            m, s = self.sde.mean_coefficient(t), self.sde.kernel_std(t)
            h = h / batch_broadcast(jnp.sqrt(m**2 + s**2), h)
        out = self.out(self.trunk(h, time_input(t, self.sde), label, rows))
        if self.sde is not None and self.scale_output:
            out = out / batch_broadcast(s, out)
        return out.reshape(x.shape).astype(x.dtype)


class TimeClassifier(nnx.Module):
    """A classifier of noisy inputs: ``clf(x, t) -> logits`` of shape ``(n, n_classes)``.

    Same trunk as :class:`ScoreMLP` (the time enters every layer), for classifier
    guidance in chapter 6: ``grad_x log p_t(y | x)`` is ``jax.grad`` of a log-softmax.
    """

    def __init__(self, dim: int | Sequence[int], n_classes: int, *, hidden: int = 128, depth: int = 3,
                 embed_dim: int = 32, embedding: str = "fourier", fourier_scale: float = 2.0,
                 rngs: nnx.Rngs):
        if not isinstance(rngs, nnx.Rngs):
            raise TypeError(f"rngs: expected nnx.Rngs, got {type(rngs).__name__}")
        self.dims = _dims(dim)
        self.n_classes = check_positive_int("n_classes", n_classes)
        d = math.prod(self.dims)
        self.trunk = _Trunk(d, hidden=hidden, depth=depth, embed_dim=embed_dim, embedding=embedding,
                            fourier_scale=fourier_scale, rngs=rngs)
        self.out = nnx.Linear(hidden, self.n_classes, rngs=rngs)

    def __call__(self, x: ArrayLike, t: ArrayLike) -> jax.Array:
        x, t = _check_xt(x, t, self.dims)
        return self.out(self.trunk(x.reshape(x.shape[0], -1), t))


class ClassConditionalMLP(nnx.Module):
    """A class-conditional score model ``model(x, t, y) -> array shaped like x`` (chapter 6).

    :class:`ScoreMLP` with a learned embedding of the label ``y`` added to the time
    embedding of every layer. ``y`` runs over ``0..n_classes``: the extra value
    ``n_classes`` (:attr:`null_label`) means "no label", so one network is both the
    conditional score s(x, t | y) and the unconditional one s(x, t), as classifier-free
    guidance needs (Ho and Salimans 2022; trained with label dropout by
    :func:`companion.losses.label_dropout_loss`). Same arguments as
    :class:`ScoreMLP`, plus ``n_classes``.
    """

    def __init__(self, dim: int | Sequence[int], n_classes: int, *, hidden: int = 128, depth: int = 3,
                 embed_dim: int = 32, embedding: str = "fourier", fourier_scale: float = 2.0,
                 sde: LinearSDE | None = None, rngs: nnx.Rngs):
        self.score = ScoreMLP(dim, hidden=hidden, depth=depth, embed_dim=embed_dim, embedding=embedding,
                              fourier_scale=fourier_scale, sde=sde, rngs=rngs)
        self.n_classes = check_positive_int("n_classes", n_classes)
        self.label_embed = nnx.Embed(self.n_classes + 1, embed_dim, rngs=rngs)

    @property
    def null_label(self) -> int:
        """The label that stands for "no label" (the unconditional score)."""
        return self.n_classes

    def __call__(self, x: ArrayLike, t: ArrayLike, y: ArrayLike) -> jax.Array:
        x, t = _check_xt(x, t, self.score.dims)
        y = jnp.asarray(y, jnp.int32)
        labels = jnp.broadcast_to(y, x.shape[:1])  # (n,); raises for a wrong shape
        if t.ndim == 0 and y.ndim == 0:  # one label and one time: one embedding for the batch
            label, rows = self.label_embed(y)[None], None
        elif t.ndim == 0:  # one time, a label per sample: project every class once, then gather
            label, rows = self.label_embed.embedding[...], labels
        else:
            label, rows = self.label_embed(labels), None
        return self.score._apply(x, t, label, rows)


def count_params(model: nnx.Module) -> int:
    """Number of trained parameters (``nnx.Param`` entries) of ``model``."""
    return sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


# --------------------------------------------------------------------------- U-Net (chapter 7)

# Images of at most this many pixels get their stride-1 convolutions as one matmul (_conv).
_MATMUL_PIXELS = 4


def _conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
          dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """``lax.conv_general_dilated`` as ``nnx.Conv`` calls it (NHWC, HWIO kernel), except that a
    stride-1 'SAME' convolution of an image of at most ``_MATMUL_PIXELS`` pixels is one matmul
    of the flattened image ``(n, h*w*c_in)`` with the ``(h*w*c_in, h*w*c_out)`` matrix whose
    block (input pixel q, output pixel p) is the kernel tap at q - p (zero off the kernel):
    the same products, summed in another order; the weights keep ``nnx.Conv``'s layout.
    XLA:CPU's convolution is slow on the U-Net's 2x2 level (chapter 7's 300 Euler-Maruyama
    steps on 64 digits: 4.3 -> 2.3 s CPU, compilation aside); at 4x4 and 8x8 it is as fast
    as the matmul or faster, so those keep it."""
    n, h, w, c = lhs.shape
    kh, kw = rhs.shape[:2]
    if (h * w > _MATMUL_PIXELS or padding != "SAME" or tuple(window_strides) != (1, 1) or feature_group_count != 1
            or any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))):
        return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                            dimension_numbers, feature_group_count, precision=precision, **kwargs)
    # tap (q - p + pad) for input pixel q = (qy, qx) and output pixel p = (py, px): (h, w, h, w) indices
    qy, qx, py, px = np.meshgrid(np.arange(h), np.arange(w), np.arange(h), np.arange(w), indexing="ij")
    iy, ix = qy - py + (kh - 1) // 2, qx - px + (kw - 1) // 2
    inside = (iy >= 0) & (iy < kh) & (ix >= 0) & (ix < kw)
    taps = rhs[np.clip(iy, 0, kh - 1), np.clip(ix, 0, kw - 1)]  # (h, w, h, w, c_in, c_out)
    if not inside.all():
        taps = jnp.where(inside[..., None, None], taps, 0)
    matrix = taps.transpose(0, 1, 4, 2, 3, 5).reshape(h * w * c, -1)
    out = jnp.dot(lhs.reshape(n, h * w * c), matrix, precision=precision)
    return out.reshape(n, h, w, -1)


class _ResBlock(nnx.Module):
    """GroupNorm, SiLU, 3x3 conv, a per-channel shift from the time embedding, and again; residual."""

    def __init__(self, c_in: int, c_out: int, embed_dim: int, groups: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.GroupNorm(c_in, num_groups=math.gcd(groups, c_in), rngs=rngs)
        self.conv1 = nnx.Conv(c_in, c_out, (3, 3), conv_general_dilated=_conv, rngs=rngs)
        self.time = nnx.Linear(embed_dim, c_out, rngs=rngs)
        self.norm2 = nnx.GroupNorm(c_out, num_groups=math.gcd(groups, c_out), rngs=rngs)
        # zero-initialised last conv: every block starts as the identity (or its 1x1 skip)
        self.conv2 = nnx.Conv(c_out, c_out, (3, 3), kernel_init=nnx.initializers.zeros, conv_general_dilated=_conv,
                              rngs=rngs)
        self.skip = nnx.Conv(c_in, c_out, (1, 1), conv_general_dilated=_conv, rngs=rngs) if c_in != c_out else None

    def __call__(self, x, e):
        h = self.conv1(nnx.silu(self.norm1(x)))
        h = h + self.time(e)[:, None, None, :]
        h = self.conv2(nnx.silu(self.norm2(h)))
        return h + (x if self.skip is None else self.skip(x))


class UNet(nnx.Module):
    """A small time-conditioned U-Net for images ``(n, height, width, channels)`` (chapter 7).

    ``len(features)`` resolution levels: at level ``i`` a residual block with
    ``features[i]`` channels, then a stride-2 convolution halves the resolution; a middle
    block; then back up (nearest-neighbour upsampling), each level concatenating the skip
    connection of the same resolution before its residual block. Every residual block
    adds a learned per-channel function of the time embedding. GroupNorm normalises each
    sample on its own, so samples never interact (the divergence helpers of
    :mod:`companion.likelihood` rely on it).

    Args:
        shape: ``(height, width, channels)``; height and width divisible by
            ``2 ** (len(features) - 1)``. The 8x8 digits: ``(8, 8, 1)``.
        features: channels per level, finest first.
        embed_dim, embedding, fourier_scale: the time embedding, as in :class:`ScoreMLP`:
            it sees :func:`time_input` (the normalised log noise level when ``sde`` is
            given), with Fourier features of scale 2 by default.
        groups: GroupNorm groups (the gcd with the channel count is used).
        sde: the noise-prediction parametrisation of :class:`ScoreMLP` when given.
        raw_time: feed ``t`` itself to the embedding even with an SDE (the first shipped
            U-Net did so, with ``fourier_scale=8``; chapter 7 compares the two).
        rngs: ``nnx.Rngs`` for the initial weights.
    """

    def __init__(self, shape: Sequence[int], *, features: Sequence[int] = (32, 64), embed_dim: int = 64,
                 groups: int = 8, embedding: str = "fourier", fourier_scale: float = 2.0,
                 sde: LinearSDE | None = None, raw_time: bool = False, rngs: nnx.Rngs):
        if sde is not None and not isinstance(sde, LinearSDE):
            raise TypeError(f"sde: expected a companion.sde SDE or None, got {type(sde).__name__}")
        if not isinstance(rngs, nnx.Rngs):
            raise TypeError(f"rngs: expected nnx.Rngs, got {type(rngs).__name__}")
        self.dims = _dims(shape)
        if len(self.dims) != 3:
            raise ValueError(f"shape: expected (height, width, channels), got {shape!r}")
        height, width, channels = self.dims
        f = tuple(check_positive_int("features", c) for c in features)
        if not f:
            raise ValueError("features: expected at least one level")
        k = 2 ** (len(f) - 1)
        if height % k or width % k:
            raise ValueError(f"shape: height and width must be divisible by {k} for {len(f)} levels, got {height}x{width}")
        groups = check_positive_int("groups", groups)
        self.sde = sde
        self.raw_time = bool(raw_time)
        self.embed = TimeEmbedding(embed_dim, kind=embedding, scale=fourier_scale, rngs=rngs)
        self.embed_in = nnx.Linear(embed_dim, embed_dim, rngs=rngs)
        self.embed_out = nnx.Linear(embed_dim, embed_dim, rngs=rngs)
        self.conv_in = nnx.Conv(channels, f[0], (3, 3), rngs=rngs)
        self.down = nnx.List([_ResBlock(f[max(i - 1, 0)], f[i], embed_dim, groups, rngs=rngs) for i in range(len(f))])
        self.downsample = nnx.List([nnx.Conv(c, c, (3, 3), strides=2, rngs=rngs) for c in f[:-1]])
        self.middle = _ResBlock(f[-1], f[-1], embed_dim, groups, rngs=rngs)
        ups, c = [], f[-1]
        for i in reversed(range(len(f))):  # coarsest first: upsampled features + that level's skip
            ups.append(_ResBlock(c + f[i], f[i], embed_dim, groups, rngs=rngs))
            c = f[i]
        self.up = nnx.List(ups)
        self.norm_out = nnx.GroupNorm(f[0], num_groups=math.gcd(groups, f[0]), rngs=rngs)
        self.conv_out = nnx.Conv(f[0], channels, (3, 3), kernel_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, x: ArrayLike, t: ArrayLike) -> jax.Array:
        x, t = _check_xt(x, t, self.dims)
        h = x
        if self.sde is not None:
            m, s = self.sde.mean_coefficient(t), self.sde.kernel_std(t)
            h = h / batch_broadcast(jnp.sqrt(m**2 + s**2), h)
        u = t if self.raw_time else time_input(t, self.sde)
        e = self.embed_out(nnx.silu(self.embed_in(self.embed(u))))
        h = self.conv_in(h)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, e)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.middle(h, e)
        for j, block in enumerate(self.up):
            if j > 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest-neighbour upsampling
            h = block(jnp.concatenate([h, skips[-1 - j]], axis=-1), e)
        out = self.conv_out(nnx.silu(self.norm_out(h)))
        if self.sde is not None:
            out = out / batch_broadcast(s, out)
        return out.astype(x.dtype)
