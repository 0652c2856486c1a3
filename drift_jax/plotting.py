"""Pictures for drifting models: sample scatters, drift fields, metric curves, GIFs, image grids.

Figures are built with ``matplotlib.figure.Figure`` (object-oriented, rendered by Agg), never
through pyplot, so no window opens, no global backend is changed and no figure is left open.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.quiver import Quiver

__all__ = [
    'image_grid',
    'make_gif',
    'new_figure',
    'plot_drift_field',
    'plot_metric_curve',
    'plot_samples',
    'save_drift_field',
    'save_figure',
    'scatter_samples',
    'tile_images',
]

Limits = tuple[float, float] | tuple[tuple[float, float], tuple[float, float]]


def new_figure(figsize: tuple[float, float] = (5.0, 5.0), dpi: int = 100) -> Figure:
    """A standalone Agg-rendered figure that pyplot does not track (nothing to close).

    Args:
        figsize: ``(width, height)`` in inches.
        dpi: pixels per inch; a saved PNG is ``figsize * dpi`` pixels (width x height).

    Returns:
        An empty ``matplotlib.figure.Figure``; add axes with ``fig.add_subplot``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str) -> str:
    """Write ``fig`` as PNG to ``path`` (creating parent folders) and return ``path``.

    The figure is cleared afterwards (its artists are released); do not draw on it again.
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fig.savefig(path, format='png')
    fig.clear()
    return path


def _points(a: Any, name: str) -> np.ndarray:
    """Convert to a float64 NumPy array of shape ``[n, d]`` with ``d >= 2``."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] < 2:
        raise ValueError(f'{name} must have shape [n, d] with d >= 2, got {a.shape}')
    return a


def _square_limits(
    pts: np.ndarray, limits: Limits | None, pad: float = 0.1
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Axis limits ``((xlo, xhi), (ylo, yhi))`` with equal spans.

    Args:
        pts: ``[n, 2]`` points whose 0.5 / 99.5 percentiles set the range when ``limits``
            is None.
        limits: ``(lo, hi)`` for both axes, or ``((xlo, xhi), (ylo, yhi))``.
        pad: fraction of the span added on each side.
    """
    if limits is not None:
        lim = np.asarray(limits, dtype=np.float64)
        if lim.shape == (2,):
            return (float(lim[0]), float(lim[1])), (float(lim[0]), float(lim[1]))
        if lim.shape == (2, 2):
            return (float(lim[0, 0]), float(lim[0, 1])), (float(lim[1, 0]), float(lim[1, 1]))
        raise ValueError(f'limits must be (lo, hi) or ((xlo, xhi), (ylo, yhi)), got {limits}')
    finite = pts[np.all(np.isfinite(pts), axis=1)]
    if finite.shape[0] == 0:
        return (-1.0, 1.0), (-1.0, 1.0)
    lo = np.percentile(finite, 0.5, axis=0)
    hi = np.percentile(finite, 99.5, axis=0)
    centre = (lo + hi) / 2.0
    half = max(float(np.max(hi - lo)) / 2.0, 1e-6) * (1.0 + 2.0 * pad)
    return (
        (float(centre[0] - half), float(centre[0] + half)),
        (float(centre[1] - half), float(centre[1] + half)),
    )


def _marker_size(n: int) -> float:
    """Scatter marker area that keeps dense clouds readable."""
    return float(np.clip(2000.0 / max(n, 1), 1.0, 12.0))


def plot_samples(
    path: str,
    generated: Any,
    data: Any,
    *,
    title: str = '',
    limits: Limits | None = None,
) -> str:
    """Scatter data (light grey) under generated samples (colour) and save a PNG.

    For ``d > 2`` only the first two coordinates are drawn and the title says so. Axes are
    square with equal spans, from the data's 0.5 / 99.5 percentiles padded by 10 % (or
    ``limits``), so frames of a training run line up.

    Args:
        path: output PNG path.
        generated: model samples, ``[n, d]``, ``d >= 2``.
        data: reference samples, ``[m, d]`` (or None to draw only ``generated``).
        title: figure title.
        limits: ``(lo, hi)`` for both axes or ``((xlo, xhi), (ylo, yhi))``.

    Returns:
        ``path``.
    """
    gen = _points(generated, 'generated')
    d = gen.shape[1]
    if d > 2:
        note = f'(first 2 of {d} dims)'
        title = f'{title} {note}' if title else note
    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    scatter_samples(ax, gen, data, limits=limits)
    ax.legend(loc='upper right', markerscale=max(1.0, 4.0 / math.sqrt(_marker_size(len(gen)))))
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)


def scatter_samples(ax: Axes, generated: Any, data: Any = None, *, limits: Limits | None = None):
    """Scatter data (light grey, labelled 'data') under generated samples (red, 'generated')
    on an existing axes, with square axes of equal spans (see `plot_samples`).

    Args:
        ax: matplotlib axes to draw on.
        generated: model samples, ``[n, d]``, ``d >= 2`` (the first two coordinates drawn).
        data: reference samples, ``[m, d]``, or None.
        limits: ``(lo, hi)`` for both axes or ``((xlo, xhi), (ylo, yhi))``; default from the
            data's (else the samples') 0.5 / 99.5 percentiles, padded by 10 %.
    """
    gen = _points(generated, 'generated')
    ref = None if data is None else _points(data, 'data')
    if ref is not None and ref.shape[1] != gen.shape[1]:
        raise ValueError(f'dimension mismatch: generated d={gen.shape[1]}, data d={ref.shape[1]}')
    xlim, ylim = _square_limits((gen if ref is None else ref)[:, :2], limits)
    if ref is not None:
        ax.scatter(
            ref[:, 0],
            ref[:, 1],
            s=_marker_size(len(ref)),
            c='#bbbbbb',
            linewidths=0,
            label='data',
            rasterized=True,
        )
    ax.scatter(
        gen[:, 0],
        gen[:, 1],
        s=_marker_size(len(gen)),
        c='#d62728',
        linewidths=0,
        alpha=0.8,
        label='generated',
        rasterized=True,
    )
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect('equal', adjustable='box')


def plot_drift_field(
    ax: Axes,
    x: Any,
    v: Any,
    data: Any = None,
    *,
    max_arrows: int = 400,
    seed: int = 0,
) -> Quiver:
    """Draw the drift field ``v`` at points ``x`` as arrows on an existing axes.

    Arrows are coloured by magnitude and length-scaled automatically by matplotlib.

    Args:
        ax: matplotlib axes to draw on.
        x: arrow tails, ``[n, 2]`` (extra columns are ignored).
        v: field vectors, ``[n, 2]`` (extra columns are ignored).
        data: optional reference points ``[m, 2]`` drawn underneath in light grey.
        max_arrows: at most this many arrows, a random subset (fixed ``seed``).
        seed: NumPy seed for the subset.

    Returns:
        The ``Quiver`` artist.
    """
    xs = _points(x, 'x')[:, :2]
    vs = _points(v, 'v')[:, :2]
    if xs.shape[0] != vs.shape[0]:
        raise ValueError(f'x and v need the same number of rows, got {len(xs)} and {len(vs)}')
    if data is not None:
        ref = _points(data, 'data')[:, :2]
        ax.scatter(
            ref[:, 0],
            ref[:, 1],
            s=_marker_size(len(ref)),
            c='#cccccc',
            linewidths=0,
            rasterized=True,
            zorder=0,
        )
    n = xs.shape[0]
    if n > max_arrows:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(n, size=max(max_arrows, 1), replace=False))
        xs, vs = xs[keep], vs[keep]
    mag = np.linalg.norm(vs, axis=1)
    return ax.quiver(
        xs[:, 0],
        xs[:, 1],
        vs[:, 0],
        vs[:, 1],
        mag,
        angles='xy',
        cmap='viridis',
        width=0.004,
        zorder=2,
    )


def save_drift_field(path: str, x: Any, v: Any, data: Any = None, title: str = '') -> str:
    """Make a figure of the drift field ``v [n, 2]`` at ``x [n, 2]`` and save it as PNG.

    Args:
        path: output PNG path.
        x: arrow tails, ``[n, 2]``.
        v: field vectors, ``[n, 2]``.
        data: optional reference points ``[m, 2]`` drawn underneath.
        title: figure title.

    Returns:
        ``path``.
    """
    xs = _points(x, 'x')[:, :2]
    base = xs if data is None else np.concatenate([xs, _points(data, 'data')[:, :2]])
    xlim, ylim = _square_limits(base, None)
    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    plot_drift_field(ax, x, v, data)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect('equal', adjustable='box')
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)


def make_gif(frame_paths: list[str], out_path: str, duration_ms: int = 400) -> str:
    """Assemble already-written image frames into a looping animated GIF.

    Every frame is resized to the first frame's size. Note that Pillow merges consecutive
    frames that are pixel-identical (adding their durations), so such frames are not
    counted separately in the output.

    Args:
        frame_paths: image files (PNG), in order; must be non-empty.
        out_path: output GIF path.
        duration_ms: display time per frame in milliseconds.

    Returns:
        ``out_path``.
    """
    from PIL import Image

    if not frame_paths:
        raise ValueError('make_gif needs at least one frame')
    frames = []
    size: tuple[int, int] | None = None
    for p in frame_paths:
        with Image.open(p) as im:
            rgb = im.convert('RGB')
        if size is None:
            size = rgb.size
        elif rgb.size != size:
            rgb = rgb.resize(size, Image.Resampling.LANCZOS)
        frames.append(rgb)
    parent = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(parent, exist_ok=True)
    frames[0].save(
        out_path,
        format='GIF',
        save_all=True,
        append_images=frames[1:],
        duration=int(duration_ms),
        loop=0,
    )
    return out_path


def plot_metric_curve(
    path: str,
    steps: Sequence[float] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    *,
    floor: float | None = None,
    ylabel: str = '',
    title: str = '',
    log: bool = True,
) -> str:
    """Line plot of a metric against training step, with an optional noise-floor line.

    With ``log=True`` the y axis is logarithmic when all finite values (and the floor) are
    positive, else symmetric-log (unbiased metrics can dip below zero) with a linear band
    up to the floor (or 1e-3 of the largest magnitude when there is no positive floor).

    Args:
        path: output PNG path.
        steps: training steps, ``[k]``.
        values: metric values, ``[k]``.
        floor: draw a dashed horizontal line at this value (e.g. the metric between two
            data samples).
        ylabel: y-axis label (and the curve's legend entry).
        title: figure title.
        log: use a log-type y axis.

    Returns:
        ``path``.
    """
    s = np.asarray(steps, dtype=np.float64).reshape(-1)
    y = np.asarray(values, dtype=np.float64).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f'steps and values differ in length: {s.shape} vs {y.shape}')
    fig = new_figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(s, y, marker='o' if len(y) <= 50 else None, markersize=3, label=ylabel or 'metric')
    if floor is not None:
        ax.axhline(float(floor), color='k', linestyle='--', linewidth=1, label='noise floor')
    if log:
        finite = y[np.isfinite(y)]
        if floor is not None:
            finite = np.append(finite, float(floor))
        if finite.size and np.all(finite > 0):
            ax.set_yscale('log')
        elif finite.size:
            # Linear band around zero: up to the floor if positive, else 1e-3 of the range.
            top = float(np.max(np.abs(finite)))
            lin = float(floor) if floor is not None and floor > 0 else 1e-3 * top
            ax.set_yscale('symlog', linthresh=lin if lin > 0 else 1.0)
    ax.set_xlabel('step')
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, which='both', alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def tile_images(
    images: Any,
    nrow: int | None = None,
    *,
    padding: int = 2,
    pad_value: float = 1.0,
) -> np.ndarray:
    """Tile images into one array: ``[rows * (h + padding) + padding,
    ncol * (w + padding) + padding, c]`` floats in [0, 1] (NaN as 0).

    Layout: ``ncol = nrow or ceil(sqrt(n))`` images per row and ``rows = ceil(n / ncol)``,
    filled row by row. Values are clipped to [0, 1].

    Args:
        images: floats in [0, 1], ``[n, h, w, c]`` with ``c`` in (1, 3, 4) or ``[n, h, w]``.
        nrow: images per row (as in torchvision); default ``ceil(sqrt(n))``.
        padding: pixels between and around tiles.
        pad_value: fill value of the padding, in [0, 1].
    """
    arr = np.asarray(images, dtype=np.float64)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f'images must be [n, h, w] or [n, h, w, c], c in 1/3/4; got {arr.shape}')
    n, h, w, c = arr.shape
    if n == 0:
        raise ValueError('image_grid needs at least one image')
    ncol = int(nrow) if nrow else int(math.ceil(math.sqrt(n)))
    ncol = max(1, min(ncol, n))
    rows = int(math.ceil(n / ncol))
    pad = int(padding)
    grid = np.full((rows * (h + pad) + pad, ncol * (w + pad) + pad, c), pad_value, dtype=np.float64)
    for i in range(n):
        r, q = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[top : top + h, left : left + w] = arr[i]
    return np.clip(np.nan_to_num(grid), 0.0, 1.0)


def image_grid(
    images: Any,
    path: str,
    nrow: int | None = None,
    *,
    padding: int = 2,
    pad_value: float = 1.0,
) -> str:
    """Tile images into one PNG grid (the layout of `tile_images`).

    The output is ``rows * (h + padding) + padding`` pixels high and
    ``ncol * (w + padding) + padding`` wide, ``ncol = nrow or ceil(sqrt(n))``.

    Args:
        images: floats in [0, 1], ``[n, h, w, c]`` with ``c`` in (1, 3, 4) or ``[n, h, w]``.
        path: output PNG path.
        nrow: images per row (as in torchvision); default ``ceil(sqrt(n))``.
        padding: pixels between and around tiles.
        pad_value: fill value of the padding, in [0, 1].

    Returns:
        ``path``.
    """
    from PIL import Image

    grid = tile_images(images, nrow, padding=padding, pad_value=pad_value)
    pixels = np.round(grid * 255.0).astype(np.uint8)
    img = Image.fromarray(pixels[..., 0] if grid.shape[-1] == 1 else pixels)  # L, RGB or RGBA
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    img.save(path, format='PNG')
    return path
