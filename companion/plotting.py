"""Small plotting helpers that keep the chapters' cells short.

Each function draws on a Matplotlib ``ax`` the caller owns and returns the artist it
made, so a chapter can still set titles, labels and legends itself.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib.collections as mcoll
import matplotlib.colors as mcolors
import numpy as np
from matplotlib.axes import Axes
from matplotlib.container import BarContainer
from matplotlib.contour import QuadContourSet
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.streamplot import StreamplotSet
from matplotlib.typing import ColorType
from numpy.typing import ArrayLike

__all__ = [
    "vector_field",
    "trajectories",
    "power_law_guide",
    "paths_and_histogram",
    "sample_panels",
    "density_contours",
    "image_grid",
    "animation",
]

Limits = tuple[float, float]


def _as_limits(lim, name: str) -> tuple[float, float]:
    arr = np.asarray(lim, dtype=np.float64)
    if arr.shape != (2,) or not arr[0] < arr[1]:
        raise ValueError(f"{name} must be a pair (low, high) with low < high, got {lim!r}")
    return float(arr[0]), float(arr[1])


def vector_field(
    ax: Axes,
    f: Callable[[np.ndarray], ArrayLike],
    xlim: Limits = (-2.0, 2.0),
    ylim: Limits = (-2.0, 2.0),
    *,
    n: int = 30,
    cmap: str = "Greys",
    **kwargs: Any,
) -> StreamplotSet:
    """Stream lines of a planar vector field ``f`` on ``xlim`` x ``ylim``, darker where faster.

    ``f`` maps an array of points of shape ``(m, 2)`` to their velocities, shape
    ``(m, 2)``; it is called once, on an ``n`` x ``n`` grid. Extra keyword arguments go
    to :meth:`matplotlib.axes.Axes.streamplot`, whose artist is returned.
    """
    x0, x1 = _as_limits(xlim, "xlim")
    y0, y1 = _as_limits(ylim, "ylim")
    if not (isinstance(n, (int, np.integer)) and n >= 2):
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    X, Y = np.meshgrid(np.linspace(x0, x1, n), np.linspace(y0, y1, n))
    points = np.stack([X.ravel(), Y.ravel()], axis=-1)
    V = np.asarray(f(points), dtype=np.float64)
    if V.shape != points.shape:
        raise ValueError(f"f must map points of shape (m, 2) to shape (m, 2), got {V.shape}")
    U, W = V[:, 0].reshape(X.shape), V[:, 1].reshape(X.shape)
    speed = np.hypot(U, W)
    kwargs.setdefault("linewidth", 0.8)
    kwargs.setdefault("density", 1.2)
    # The darker, the faster; the slowest lines stay light grey rather than white.
    kwargs.setdefault("norm", mcolors.Normalize(vmin=-0.4 * speed.max(), vmax=speed.max()))
    artist = ax.streamplot(X, Y, U, W, color=speed, cmap=cmap, **kwargs)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    return artist


def trajectories(
    ax: Axes, ys: ArrayLike, *, color: ColorType = "C0", start_marker: str = "o", **kwargs: Any
) -> mcoll.LineCollection:
    """Planar solution curves ``ys`` of shape ``(k, m, 2)`` (k curves of m points each).

    Draws them as one :class:`~matplotlib.collections.LineCollection` (returned) and
    marks each curve's first point with ``start_marker`` (``""`` for none).
    """
    ys = np.asarray(ys, dtype=np.float64)
    if ys.ndim != 3 or ys.shape[-1] != 2:
        raise ValueError(f"ys must have shape (k, m, 2), got {ys.shape}")
    kwargs.setdefault("linewidth", 1.8)
    lines = mcoll.LineCollection(list(ys), colors=color, **kwargs)
    ax.add_collection(lines)
    if start_marker:
        ax.plot(ys[:, 0, 0], ys[:, 0, 1], start_marker, color=color, markersize=4)
    return lines


def power_law_guide(ax: Axes, hs: ArrayLike, order: float, through: tuple[float, float], **kwargs: Any) -> Line2D:
    """A straight guide line ``C h**order`` on a log-log plot, through the point ``through``.

    ``hs`` are the abscissae it spans; ``through = (h0, e0)`` fixes ``C = e0 / h0**order``.
    Returns the :class:`~matplotlib.lines.Line2D`. Dashed and grey unless told otherwise.
    """
    hs = np.asarray(hs, dtype=np.float64)
    if hs.ndim != 1 or hs.size < 2 or np.any(hs <= 0):
        raise ValueError("hs must be a 1-D array of at least two positive step sizes")
    h0, e0 = (float(v) for v in through)
    if h0 <= 0 or e0 <= 0:
        raise ValueError(f"through must be a point (h0, e0) with h0, e0 > 0, got {through!r}")
    kwargs.setdefault("linestyle", "--")
    kwargs.setdefault("color", "0.5")
    kwargs.setdefault("linewidth", 1.0)
    (line,) = ax.loglog(hs, e0 * (hs / h0) ** order, **kwargs)
    return line


# ------------------------------------------------------- SDE paths and samples (chapters 2, 3)


def paths_and_histogram(
    ax_paths: Axes,
    ax_hist: Axes,
    ts: ArrayLike,
    xs: ArrayLike,
    *,
    n_paths: int = 30,
    bins: int = 60,
    density: Callable[[np.ndarray], ArrayLike] | None = None,
    color: ColorType = "C0",
) -> tuple[mcoll.LineCollection, BarContainer]:
    """Sample paths of a scalar SDE and the histogram of their values at the last time.

    ``ts`` has shape ``(m,)`` and ``xs`` shape ``(n, m)``: ``n`` paths at ``m`` times.
    Draws the first ``n_paths`` paths thinly on ``ax_paths`` and a horizontal density
    histogram of all ``n`` final values ``xs[:, -1]`` on ``ax_hist`` (give it
    ``sharey=ax_paths``). ``density``, a callable ``x -> p(x)`` on a NumPy grid, is
    drawn over the histogram in black. Returns ``(lines, patches)``.
    """
    ts = np.asarray(ts, dtype=np.float64)
    xs = np.asarray(xs, dtype=np.float64)
    if ts.ndim != 1 or xs.ndim != 2 or xs.shape[1] != ts.shape[0]:
        raise ValueError(f"xs must have shape (n, {ts.shape[0]}) to match ts of shape {ts.shape}, got {xs.shape}")
    if not (isinstance(n_paths, (int, np.integer)) and n_paths >= 1):
        raise ValueError(f"n_paths must be a positive integer, got {n_paths!r}")
    segments = [np.stack([ts, x], axis=-1) for x in xs[:n_paths]]
    lines = mcoll.LineCollection(segments, colors=color, linewidths=0.6, alpha=0.6)
    ax_paths.add_collection(lines)
    ax_paths.set_xlim(ts[0], ts[-1])
    shown = np.concatenate([xs[:n_paths].ravel(), xs[:, -1]])
    lo, hi = np.percentile(shown, [0.1, 99.9])
    pad = 0.05 * (hi - lo)
    ax_paths.set_ylim(lo - pad, hi + pad)
    _, _, patches = ax_hist.hist(
        xs[:, -1], bins=bins, density=True, orientation="horizontal", color=color, alpha=0.5
    )
    if density is not None:
        grid = np.linspace(lo - pad, hi + pad, 400)
        ax_hist.plot(np.asarray(density(grid), dtype=np.float64), grid, color="k", linewidth=1.2)
    ax_hist.tick_params(labelleft=False)
    return lines, patches


def sample_panels(
    axes: Axes | Sequence[Axes] | np.ndarray,
    samples: Sequence[ArrayLike] | np.ndarray,
    titles: Sequence[str] | None = None,
    *,
    lim: Limits = (-4.0, 4.0),
    color: ColorType = "C0",
    s: float = 1.5,
    alpha: float = 0.4,
) -> list[mcoll.PathCollection]:
    """Small multiples of 2-D samples: one scatter per axis, on the same square box.

    ``samples`` is a sequence (or an array of shape ``(k, n, 2)``) with one ``(n, 2)``
    array per axis of ``axes``; ``titles`` an optional sequence of strings. Returns the
    list of scatter artists.
    """
    axes = list(np.ravel(axes))
    if len(samples) != len(axes):
        raise ValueError(f"samples: expected {len(axes)} arrays, one per axis, got {len(samples)}")
    if titles is not None and len(titles) != len(axes):
        raise ValueError(f"titles: expected {len(axes)} strings, one per axis, got {len(titles)}")
    lo, hi = _as_limits(lim, "lim")
    artists = []
    for i, (ax, x) in enumerate(zip(axes, samples)):
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != 2:
            raise ValueError(f"samples[{i}] must have shape (n, 2), got {x.shape}")
        artists.append(ax.scatter(x[:, 0], x[:, 1], s=s, alpha=alpha, color=color, linewidths=0))
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
    return artists


def density_contours(
    ax: Axes,
    log_prob: Callable[[np.ndarray], ArrayLike],
    lim: Limits = (-4.0, 4.0),
    *,
    n: int = 120,
    levels: int = 6,
    **kwargs: Any,
) -> QuadContourSet:
    """Contours of a 2-D density given by ``log_prob``, a map from ``(m, 2)`` points to
    ``(m,)`` log densities, on the square box ``lim`` x ``lim``. Levels are spaced evenly
    between 2% and 90% of the largest density on the box (grey lines unless told
    otherwise). Returns the contour set."""
    lo, hi = _as_limits(lim, "lim")
    if not (isinstance(n, (int, np.integer)) and n >= 2):
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    X, Y = np.meshgrid(np.linspace(lo, hi, n), np.linspace(lo, hi, n))
    points = np.stack([X.ravel(), Y.ravel()], axis=-1)
    P = np.exp(np.asarray(log_prob(points), dtype=np.float64)).reshape(X.shape)
    kwargs.setdefault("colors", "0.35")
    kwargs.setdefault("linewidths", 0.7)
    return ax.contour(X, Y, P, levels=np.linspace(0.02, 0.9, levels) * P.max(), **kwargs)


# --------------------------------------------------------------------------- images (chapter 7)


def image_grid(
    ax: Axes,
    images: ArrayLike,
    ncols: int | None = None,
    *,
    titles: Sequence[str | None] | None = None,
    row_labels: Sequence[str] | None = None,
    clim: Limits | None = None,
    cmap: str = "gray_r",
    pad: int = 1,
    fontsize: float = 9,
) -> AxesImage:
    """Grey images tiled row by row into one picture on ``ax``, with gaps between them.

    ``images`` has shape ``(n, h, w)`` or ``(n, h, w, 1)`` (the layout of
    :func:`companion.data.load_digits`); image ``i`` goes to row ``i // ncols``, column
    ``i % ncols`` (``ncols`` defaults to ``ceil(sqrt(n))``). The gaps, ``pad`` pixels
    wide, and the empty cells of the last row have the colour of the low grey level
    ``clim[0]`` (white for ``"gray_r"``); ``clim = (low, high)`` defaults to the images'
    range, so give it (e.g. ``(-1, 1)``) to draw several grids alike. ``titles``: one
    string (or None) per image, written above it, the rows then spaced to make room;
    ``row_labels``: one string per row, on the left. One ``imshow`` for the whole grid
    (fast for hundreds of images); returns its :class:`~matplotlib.image.AxesImage`.
    """
    images = np.asarray(images, dtype=np.float64)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3 or images.shape[0] == 0:
        raise ValueError(f"images: expected shape (n, h, w) or (n, h, w, 1) with n >= 1, got {images.shape}")
    n, h, w = images.shape
    if ncols is None:
        ncols = math.ceil(math.sqrt(n))
    if isinstance(ncols, bool) or not (isinstance(ncols, (int, np.integer)) and ncols >= 1):
        raise ValueError(f"ncols: expected a positive integer, got {ncols!r}")
    if isinstance(pad, bool) or not (isinstance(pad, (int, np.integer)) and pad >= 0):
        raise ValueError(f"pad: expected an integer >= 0, got {pad!r}")
    ncols = min(int(ncols), n)
    nrows = math.ceil(n / ncols)
    if titles is not None and len(titles) != n:
        raise ValueError(f"titles: expected {n} strings (or None), one per image, got {len(titles)}")
    if row_labels is not None and len(row_labels) != nrows:
        raise ValueError(f"row_labels: expected {nrows} strings, one per row, got {len(row_labels)}")
    low, high = _as_limits(clim, "clim") if clim is not None else (float(images.min()), float(images.max()))
    if high <= low:  # constant images: any positive range draws them in the low colour
        high = low + 1.0
    # a title takes about 40% of an image's height at the default figure sizes
    gap_y = pad + (math.ceil(0.4 * h) if titles is not None else 0)
    cell_h, cell_w = h + gap_y, w + pad
    top = gap_y if titles is not None else 0  # a title sits above its image, the first row's too
    mosaic = np.full((nrows * cell_h - gap_y + top, ncols * cell_w - pad), low)
    for i, image in enumerate(images):
        r, c = divmod(i, ncols)
        y0, x0 = top + r * cell_h, c * cell_w
        mosaic[y0 : y0 + h, x0 : x0 + w] = image
    artist = ax.imshow(mosaic, cmap=cmap, vmin=low, vmax=high, interpolation="nearest")
    if titles is not None:
        for i, title in enumerate(titles):
            if title is not None:
                r, c = divmod(i, ncols)
                ax.text(c * cell_w + (w - 1) / 2, top + r * cell_h - 0.5 - pad / 2, str(title),
                        ha="center", va="bottom", fontsize=fontsize)
    ax.set_xticks([])
    if row_labels is not None:
        ax.set_yticks([top + r * cell_h + (h - 1) / 2 for r in range(nrows)], list(row_labels), fontsize=fontsize)
        ax.tick_params(axis="y", length=0)
    else:
        ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    return artist


def animation(
    frames: ArrayLike,
    *,
    kind: str = "points",
    titles: Sequence[str] | None = None,
    lim: Limits = (-4.0, 4.0),
    background: Callable[[Axes], Any] | None = None,
    figsize: tuple[float, float] = (3.2, 3.2),
    dpi: int = 60,
    interval: int = 120,
    cmap: str = "gray_r",
    s: float = 2.0,
    color: ColorType = "C0",
    clim: Limits | None = None,
):
    """A short animation as self-contained HTML (frames embedded, no player to fetch).

    ``frames``: for ``kind="points"`` an array ``(k, n, 2)``, one 2-D point cloud per
    frame (e.g. samples at k times of a forward or reverse SDE); for ``kind="images"``
    an array ``(k, h, w)`` or ``(k, m, h, w)``, one image (or a row of ``m``) per frame.
    ``titles``: k strings, one per frame; ``clim``: the (low, high) grey levels of
    images (default: the frames' range). ``background(ax)``: draws once under every
    frame (e.g. :func:`density_contours`). Returns an ``IPython.display.HTML`` that a
    notebook shows with play, pause and step buttons (Matplotlib's JavaScript player,
    which works in the rendered book, in Jupyter and in Colab, offline). Keep ``k``,
    ``figsize`` and ``dpi`` small: each frame is a PNG in the page (about 5-10 kB for
    800 points without a background; contours under them cost several times more).
    """
    import matplotlib.pyplot as plt
    from IPython.display import HTML
    from matplotlib.animation import FuncAnimation

    frames = np.asarray(frames, dtype=np.float64)
    if kind not in ("points", "images"):
        raise ValueError(f"kind: expected 'points' or 'images', got {kind!r}")
    if kind == "points" and (frames.ndim != 3 or frames.shape[-1] != 2):
        raise ValueError(f"frames: expected shape (k, n, 2) for points, got {frames.shape}")
    if kind == "images" and frames.ndim == 3:
        frames = frames[:, None]
    if kind == "images" and frames.ndim != 4:
        raise ValueError(f"frames: expected shape (k, h, w) or (k, m, h, w) for images, got {frames.shape}")
    if titles is not None and len(titles) != len(frames):
        raise ValueError(f"titles: expected {len(frames)} strings, one per frame, got {len(titles)}")
    if len(frames) < 2:
        raise ValueError(f"frames: an animation needs at least 2 frames, got {len(frames)}")

    if kind == "points":
        fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
        lo, hi = _as_limits(lim, "lim")
        if background is not None:
            background(ax)
        artist = ax.scatter(frames[0, :, 0], frames[0, :, 1], s=s, color=color, alpha=0.5, linewidths=0)
        ax.set(xlim=(lo, hi), ylim=(lo, hi), aspect="equal", xticks=[], yticks=[])
        update = lambda i: artist.set_offsets(frames[i])
        title_ax = ax
    else:
        m = frames.shape[1]
        fig, axes = plt.subplots(1, m, figsize=(figsize[0] * m / 3 if m > 1 else figsize[0], figsize[1]), dpi=dpi,
                                 squeeze=False)
        vmin, vmax = _as_limits(clim, "clim") if clim is not None else (float(np.min(frames)), float(np.max(frames)))
        images = [a.imshow(frames[0, j], cmap=cmap, vmin=vmin, vmax=vmax) for j, a in enumerate(axes[0])]
        for a in axes[0]:
            a.axis("off")
        update = lambda i: [im.set_data(frames[i, j]) for j, im in enumerate(images)]
        title_ax = fig

    def draw(i):
        update(i)
        if titles is not None:
            (title_ax.set_title if kind == "points" else title_ax.suptitle)(titles[i], fontsize=9)

    draw(0)
    fig.tight_layout()
    anim = FuncAnimation(fig, draw, frames=len(frames), interval=interval)
    html = _offline_player(anim.to_jshtml(default_mode="once"))
    plt.close(fig)
    return HTML(html)


# Matplotlib's player draws its buttons with Font Awesome icons from a CDN: the book is
# read offline, so the stylesheet goes and each icon becomes a plain character.
_PLAYER_ICONS = {
    "fa fa-minus": "&#8722;",
    "fa fa-fast-backward": "&#9198;",
    "fa fa-step-backward": "&#9664;&#9474;",
    "fa fa-play fa-flip-horizontal": "&#9664;",
    "fa fa-pause": "&#9208;",
    "fa fa-play": "&#9654;",
    "fa fa-step-forward": "&#9474;&#9654;",
    "fa fa-fast-forward": "&#9197;",
    "fa fa-plus": "+",
}


def _offline_player(html: str) -> str:
    html = re.sub(r'<link rel="stylesheet"\s+href="https?://[^"]*font-awesome[^"]*">', "", html)
    return re.sub(
        r'<i class="(fa [^"]+)"></i>', lambda m: f"<span>{_PLAYER_ICONS.get(m.group(1), '&#8226;')}</span>", html
    )
