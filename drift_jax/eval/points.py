"""Sample-quality metrics for low-dimensional data: energy distance, MMD, sliced Wasserstein.

Pairwise terms are computed in float32 under ``jax.jit`` in row chunks, so memory stays
near ``chunk_size x m`` floats; per-row sums come back to the host and are combined in float64.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    'DEFAULT_RBF_BANDWIDTHS',
    'energy_distance',
    'mmd_rbf',
    'sliced_wasserstein',
]

#: Default Gaussian-kernel bandwidths (standard deviations) for :func:`mmd_rbf`; these suit
#: data whose coordinates are of order one (standardised or toy 2-D data).
DEFAULT_RBF_BANDWIDTHS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)

# Dimensions up to this use exact differences ``x_i - y_j``; above it the Gram expansion.
_DIRECT_MAX_DIM = 16
# Columns are summed in blocks of this width first, then the block sums are added:
# a two-level sum whose float32 rounding error grows like (width + m / width), not m.
_COL_BLOCK = 128
# Default budget for the largest float32 intermediate of one chunk (about 64 MiB).
_CHUNK_FLOATS = 1 << 24


def _as_points(a: jax.Array | np.ndarray, name: str) -> jax.Array:
    """Validate and convert an array of points.

    Args:
        a: points, shape ``[n, d]``.
        name: argument name for error messages.

    Returns:
        float32 JAX array of shape ``[n, d]``.
    """
    a = jnp.asarray(a, dtype=jnp.float32)
    if a.ndim != 2:
        raise ValueError(f'{name} must have shape [n, d], got {a.shape}')
    if a.shape[0] == 0:
        raise ValueError(f'{name} must contain at least one point')
    return a


def _check_pair(x: jax.Array, y: jax.Array) -> None:
    """Raise ``ValueError`` unless ``x [n, d]`` and ``y [m, d]`` share ``d``."""
    if x.shape[1] != y.shape[1]:
        raise ValueError(f'dimension mismatch: x has d={x.shape[1]}, y has d={y.shape[1]}')


def _center(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Subtract the pooled mean; distances are unchanged but rounding in the Gram form shrinks.

    Args:
        x: ``[n, d]``.
        y: ``[m, d]``.

    Returns:
        ``(x - mu, y - mu)`` with ``mu`` the mean of the ``n + m`` pooled points, ``[d]``.
    """
    n, m = x.shape[0], y.shape[0]
    mu = (jnp.sum(x, axis=0) + jnp.sum(y, axis=0)) / (n + m)
    return x - mu, y - mu


def _row_sums(
    x: jax.Array,
    y: jax.Array,
    *,
    same: bool,
    chunk_size: int,
    direct: bool,
    kernel: str,
    bandwidths: tuple[float, ...],
) -> jax.Array:
    """Per-row sums of a pairwise kernel between ``x`` and ``y``, chunked over rows of ``x``.

    Traced inside a jitted caller. At most ``chunk_size`` rows are processed at once, so
    the largest intermediates are ``[chunk_size, m_pad]`` float32 arrays.

    Args:
        x: ``[n, d]`` float32.
        y: ``[m, d]`` float32 (``x`` itself when ``same``).
        same: ``x`` and ``y`` are the same set; the diagonal ``i == j`` is excluded.
        chunk_size: rows of ``x`` per chunk (clipped to ``[1, n]``).
        direct: squared distances from explicit per-coordinate differences (unrolled over
            ``d``) instead of ``|x|^2 + |y|^2 - 2 x.y`` clamped at 0.
        kernel: ``"distance"`` for ``||x - y||`` or ``"rbf"`` for
            ``sum_h exp(-||x - y||^2 / (2 h^2))``.
        bandwidths: the ``h`` values for ``kernel="rbf"``.

    Returns:
        ``[n]`` float32 sums over the columns of each row; columns are summed in blocks of
        ``_COL_BLOCK`` first and the block sums added afterwards (two-level summation).
    """
    n, d = x.shape
    m = y.shape[0]
    m_pad = _COL_BLOCK * math.ceil(m / _COL_BLOCK)
    y = jnp.pad(y, ((0, m_pad - m), (0, 0)))
    c = int(max(1, min(chunk_size, n)))
    k = math.ceil(n / c)
    x_chunks = jnp.pad(x, ((0, k * c - n), (0, 0))).reshape(k, c, d)
    row_ids = jnp.arange(k * c, dtype=jnp.int32).reshape(k, c)
    cols = jnp.arange(m_pad, dtype=jnp.int32)
    col_ok = cols < m
    y_sq = jnp.sum(y * y, axis=-1)
    y_t = y.T  # [d, m_pad]

    def one_chunk(args: tuple[jax.Array, jax.Array]) -> jax.Array:
        xc, rows = args  # [c, d], [c]
        if direct:
            # Unrolled over the (few) coordinates: contiguous [c, m_pad] work per axis.
            d2 = jnp.zeros((c, m_pad), dtype=jnp.float32)
            for j in range(d):
                diff = xc[:, j, None] - y_t[j][None, :]
                d2 = d2 + diff * diff
        else:
            x_sq = jnp.sum(xc * xc, axis=-1)
            gram = jnp.matmul(xc, y_t, precision=jax.lax.Precision.HIGHEST)
            d2 = jnp.maximum(x_sq[:, None] + y_sq[None, :] - 2.0 * gram, 0.0)
        if kernel == 'distance':
            vals = jnp.sqrt(d2)
        else:
            vals = sum(jnp.exp(d2 * (-0.5 / (h * h))) for h in bandwidths)
        mask = jnp.broadcast_to(col_ok[None, :], (c, m_pad))
        if same:
            mask = mask & (rows[:, None] != cols[None, :])
        vals = jnp.where(mask, vals, 0.0)
        return vals.reshape(c, m_pad // _COL_BLOCK, _COL_BLOCK).sum(-1).sum(-1)

    return jax.lax.map(one_chunk, (x_chunks, row_ids)).reshape(-1)[:n]


@functools.partial(jax.jit, static_argnames=('chunk_size', 'direct', 'kernel', 'bandwidths'))
def _three_row_sums(
    x: jax.Array,
    y: jax.Array,
    *,
    chunk_size: int,
    direct: bool,
    kernel: str,
    bandwidths: tuple[float, ...],
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Row sums of the cross and both within-set kernel matrices, in one compiled program.

    Both sets are first centred on their pooled mean (distances are unchanged; rounding in
    the Gram form shrinks).

    Args:
        x: ``[n, d]`` float32.
        y: ``[m, d]`` float32.
        chunk_size, direct, kernel, bandwidths: see :func:`_row_sums`.

    Returns:
        ``(xy [n], xx [n], yy [m])`` float32 row sums; within-set sums exclude ``i == j``.
    """
    x, y = _center(x, y)
    kw = dict(chunk_size=chunk_size, direct=direct, kernel=kernel, bandwidths=bandwidths)
    return (
        _row_sums(x, y, same=False, **kw),
        _row_sums(x, x, same=True, **kw),
        _row_sums(y, y, same=True, **kw),
    )


def _pair_sums(
    x: jax.Array,
    y: jax.Array,
    *,
    kernel: str,
    bandwidths: tuple[float, ...] = (),
    chunk_size: int | None = None,
    method: str = 'auto',
) -> tuple[float, float, float]:
    """Kernel sums over all cross pairs and all off-diagonal within-set pairs.

    Args:
        x: ``[n, d]`` float32.
        y: ``[m, d]`` float32.
        kernel: ``"distance"`` or ``"rbf"``; see :func:`_row_sums`.
        bandwidths: Gaussian bandwidths for ``"rbf"``.
        chunk_size: rows per chunk; ``None`` picks one from a ~64 MiB budget.
        method: ``"direct"``, ``"gram"`` or ``"auto"`` (direct when ``d <= 16``).

    Returns:
        ``(sum_ij k(x_i, y_j), sum_{i != i'} k(x_i, x_i'), sum_{j != j'} k(y_j, y_j'))`` as
        Python floats; rows are added in float64 on the host.
    """
    n, d = x.shape
    m = y.shape[0]
    if method == 'auto':
        direct = d <= _DIRECT_MAX_DIM
    elif method in ('direct', 'gram'):
        direct = method == 'direct'
    else:
        raise ValueError(f"method must be 'auto', 'direct' or 'gram', got {method!r}")
    if chunk_size is None:
        widest = _COL_BLOCK * math.ceil(max(n, m) / _COL_BLOCK)
        chunk_size = _CHUNK_FLOATS // widest
    chunk_size = int(max(1, min(int(chunk_size), max(n, m))))
    sums = _three_row_sums(
        x,
        y,
        chunk_size=chunk_size,
        direct=direct,
        kernel=kernel,
        bandwidths=tuple(float(h) for h in bandwidths),
    )
    xy, xx, yy = (float(np.sum(np.asarray(a, dtype=np.float64))) for a in jax.device_get(sums))
    return xy, xx, yy


def energy_distance(
    x: jax.Array | np.ndarray,
    y: jax.Array | np.ndarray,
    *,
    unbiased: bool = True,
    chunk_size: int | None = None,
    method: str = 'auto',
) -> float:
    """Squared-form energy distance ``2 E||X-Y|| - E||X-X'|| - E||Y-Y'||``.

    With ``unbiased=True`` (default) the within-set expectations are U-statistics (the
    diagonal ``i == j`` is excluded, dividing by ``n (n - 1)``), so the estimate is unbiased
    for the population energy distance. It is then roughly zero-mean for two samples of the
    same distribution and can be slightly negative; for identical sets it equals
    ``-2 E||X-X'|| / n``. With ``unbiased=False`` all three terms are V-statistics (means over
    all pairs): this is the exact energy distance between the two empirical measures, always
    ``>= 0``, exactly ``0`` for identical sets, and biased upward by about
    ``E||X-X'|| (1/n + 1/m)`` for same-distribution samples.

    Distances are float32, computed in row chunks (never more than a few ``chunk_size x m``
    arrays at once). For ``d <= 16`` they come from explicit
    differences; above that from ``|x|^2 + |y|^2 - 2 x.y`` after centring both sets on their
    pooled mean, clamped at 0, with the matmul at HIGHEST precision (no TF32 on GPU).
    Columns are summed two-level in float32 and rows in float64 on the host.

    Args:
        x: samples, shape ``[n, d]``.
        y: samples, shape ``[m, d]``.
        unbiased: U-statistics (True) or V-statistics (False) for the within-set terms.
        chunk_size: rows per chunk; ``None`` picks one from a ~64 MiB budget. Results do not
            depend on it beyond float32 rounding.
        method: ``"auto"``, ``"direct"`` (differences) or ``"gram"`` (expansion).

    Returns:
        The energy distance as a Python float (same units as the data).
    """
    x = _as_points(x, 'x')
    y = _as_points(y, 'y')
    _check_pair(x, y)
    n, m = x.shape[0], y.shape[0]
    if unbiased and min(n, m) < 2:
        raise ValueError('unbiased energy distance needs at least 2 points in each set')
    s_xy, s_xx, s_yy = _pair_sums(x, y, kernel='distance', chunk_size=chunk_size, method=method)
    nxx = n * (n - 1) if unbiased else n * n
    nyy = m * (m - 1) if unbiased else m * m
    return float(2.0 * s_xy / (n * m) - s_xx / nxx - s_yy / nyy)


def mmd_rbf(
    x: jax.Array | np.ndarray,
    y: jax.Array | np.ndarray,
    bandwidths: Sequence[float] = DEFAULT_RBF_BANDWIDTHS,
    *,
    chunk_size: int | None = None,
    method: str = 'auto',
) -> float:
    """Unbiased squared MMD with a sum of Gaussian kernels.

    ``k(a, b) = sum_h exp(-||a - b||^2 / (2 h^2))`` and
    ``MMD^2 = mean_{i != i'} k(x_i, x_i') + mean_{j != j'} k(y_j, y_j') - 2 mean k(x_i, y_j)``.
    Being unbiased it can be slightly negative when both sets share a distribution.
    Bandwidths are absolute (data units); rescale the data or pass your own for data whose
    scale is far from one.

    Args:
        x: samples, shape ``[n, d]``, ``n >= 2``.
        y: samples, shape ``[m, d]``, ``m >= 2``.
        bandwidths: Gaussian standard deviations ``h`` (non-empty, positive).
        chunk_size: rows per chunk; ``None`` picks one automatically.
        method: ``"auto"``, ``"direct"`` or ``"gram"`` (see :func:`energy_distance`).

    Returns:
        MMD^2 as a Python float.
    """
    x = _as_points(x, 'x')
    y = _as_points(y, 'y')
    _check_pair(x, y)
    bw = tuple(float(h) for h in bandwidths)
    if not bw or min(bw) <= 0:
        raise ValueError('bandwidths must be a non-empty sequence of positive numbers')
    n, m = x.shape[0], y.shape[0]
    if min(n, m) < 2:
        raise ValueError('unbiased MMD needs at least 2 points in each set')
    s_xy, s_xx, s_yy = _pair_sums(
        x, y, kernel='rbf', bandwidths=bw, chunk_size=chunk_size, method=method
    )
    return float(s_xx / (n * (n - 1)) + s_yy / (m * (m - 1)) - 2.0 * s_xy / (n * m))


def _quantile_pairing(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact coupling of two sorted 1-D empirical measures of sizes ``n`` and ``m``.

    The quantile functions are step functions with jumps at ``i / n`` and ``j / m``; on each
    interval between consecutive merged jumps both are constant. Computed with integers
    (jumps scaled by ``n m``) so no breakpoint is lost to rounding.

    Returns:
        ``(idx_x [K], idx_y [K], weight [K])`` with ``K <= n + m``: sorted-order indices and
        interval lengths (summing to 1) such that
        ``W_p^p = sum_k weight_k |a_sorted[idx_x_k] - b_sorted[idx_y_k]|^p``.
    """
    t = np.union1d(np.arange(1, n + 1, dtype=np.int64) * m, np.arange(1, m + 1, dtype=np.int64) * n)
    widths = np.diff(t, prepend=0).astype(np.float64) / float(n * m)
    idx_x = (t + m - 1) // m - 1
    idx_y = (t + n - 1) // n - 1
    return idx_x.astype(np.int32), idx_y.astype(np.int32), widths.astype(np.float32)


@functools.partial(jax.jit, static_argnames=('num_projections',))
def _sliced_wp(
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    idx_x: jax.Array,
    idx_y: jax.Array,
    weights: jax.Array,
    *,
    num_projections: int,
    p: jax.Array | int,
) -> jax.Array:
    """Per-projection ``W_p^p`` between projected samples.

    Args:
        x: ``[n, d]``; y: ``[m, d]``; key: PRNG key for the directions.
        idx_x, idx_y, weights: ``[K]`` coupling from :func:`_quantile_pairing`.
        num_projections: number ``P`` of random unit directions.
        p: 1 or 2 (traced, so both share one compilation).

    Returns:
        ``[P]`` float32 values of ``W_p^p`` along each direction.
    """
    x, y = _center(x, y)
    d = x.shape[1]
    theta = jax.random.normal(key, (d, num_projections), dtype=jnp.float32)
    theta = theta / jnp.linalg.norm(theta, axis=0, keepdims=True)
    px = jnp.sort(jnp.matmul(x, theta, precision=jax.lax.Precision.HIGHEST), axis=0)
    py = jnp.sort(jnp.matmul(y, theta, precision=jax.lax.Precision.HIGHEST), axis=0)
    gap = jnp.abs(px[idx_x] - py[idx_y])  # [K, P]
    cost = jnp.where(p == 1, gap, gap * gap)
    return jnp.sum(weights[:, None] * cost, axis=0)


def sliced_wasserstein(
    x: jax.Array | np.ndarray,
    y: jax.Array | np.ndarray,
    key: jax.Array,
    num_projections: int = 128,
    *,
    p: int = 2,
) -> float:
    """Sliced Wasserstein-p distance ``(mean_theta W_p^p(theta.x, theta.y))^(1/p)``.

    Directions are uniform on the unit sphere. Each 1-D ``W_p`` is exact between the two
    projected empirical measures; sizes may differ (the sorted samples are matched through
    their quantile step functions, so for ``n == m`` this is plain sorted matching).

    Args:
        x: samples, shape ``[n, d]``.
        y: samples, shape ``[m, d]``.
        key: JAX PRNG key for the projection directions.
        num_projections: number of random directions.
        p: 1 or 2.

    Returns:
        SW_p as a Python float (data units).
    """
    if p not in (1, 2):
        raise ValueError(f'p must be 1 or 2, got {p}')
    x = _as_points(x, 'x')
    y = _as_points(y, 'y')
    _check_pair(x, y)
    idx_x, idx_y, w = _quantile_pairing(x.shape[0], y.shape[0])
    per_proj = _sliced_wp(
        x,
        y,
        key,
        jnp.asarray(idx_x),
        jnp.asarray(idx_y),
        jnp.asarray(w),
        num_projections=int(num_projections),
        p=int(p),
    )
    mean = float(np.mean(np.asarray(per_proj, dtype=np.float64)))
    return mean ** (1.0 / p)


def mean_pairwise_distance(x: jax.Array | np.ndarray, *, chunk_size: int | None = None) -> float:
    """``E||X-X'||`` over distinct pairs of ``x`` ``[n, d]`` (a U-statistic), as a float."""
    x = _as_points(x, 'x')
    n = x.shape[0]
    if n < 2:
        raise ValueError('mean_pairwise_distance needs at least 2 points')
    _, s_xx, _ = _pair_sums(x, x[:2], kernel='distance', chunk_size=chunk_size, method='auto')
    return float(s_xx / (n * (n - 1)))


def expected_energy_floor(
    data: jax.Array | np.ndarray, n: int, m: int, *, chunk_size: int | None = None
) -> float:
    """Expected V-statistic energy distance between two independent draws of sizes n and m.

    For i.i.d. draws X (n points) and Y (m points) of one distribution, the V-statistic
    (``energy_distance(..., unbiased=False)``) has expectation exactly
    ``delta (1/n + 1/m)`` with ``delta = E||X-X'||``: the cross term has mean ``2 delta`` and
    each within-set mean loses its zero diagonal, ``(1 - 1/n) delta``. ``delta`` is
    estimated from ``data`` ``[k, d]`` (independent of the sets it will be compared with).

    One pair of draws scatters widely around this value (for 25 tight Gaussian modes and
    n = m = 5000, single draws ranged from 0.4x to 3x of it), which is why the toy evaluation
    divides by the expectation rather than by one draw.

    Returns:
        The expected floor as a Python float.
    """
    if n < 1 or m < 1:
        raise ValueError(f'n and m must be positive, got {n} and {m}')
    return mean_pairwise_distance(data, chunk_size=chunk_size) * (1.0 / n + 1.0 / m)
