"""Loading a user's own point cloud (``.npy`` or ``.csv``) with strict checks.

``load_points`` returns float32 ``[n, d]`` or raises a message naming the file
and the problem; ``Standardizer`` maps points to zero mean / unit std and back.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

VALID_EXTENSIONS: tuple[str, ...] = ('.npy', '.csv')
MIN_POINTS: int = 10


def _parse_float(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _load_csv(path: str) -> np.ndarray:
    """Parses a comma-separated file of numbers into ``[n, d]`` float64.

    The first non-empty line is skipped as a header when none of its cells are
    numbers; blank lines are ignored. Any other non-numeric cell is an error.
    """
    with open(path, encoding='utf-8-sig') as f:  # tolerate a BOM
        lines = f.read().splitlines()
    rows: list[list[float]] = []
    width = None
    seen_first = False
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(',')]
        values = [_parse_float(c) for c in cells]
        if not seen_first:
            seen_first = True
            if all(v is None for v in values):
                continue  # header of column names
        bad = [c for c, v in zip(cells, values, strict=True) if v is None]
        if bad:
            raise ValueError(
                f'{path}: non-numeric value {bad[0]!r} on line {lineno}; '
                'a .csv must hold comma-separated numbers (one optional header line)'
            )
        if width is None:
            width = len(values)
        elif len(values) != width:
            raise ValueError(
                f'{path}: line {lineno} has {len(values)} columns but earlier rows have {width}'
            )
        rows.append(values)  # type: ignore[arg-type]
    if not rows:
        return np.zeros((0, width or 1), dtype=np.float64)
    return np.asarray(rows, dtype=np.float64)


def load_points(path: str) -> np.ndarray:
    """Loads a point cloud from a ``.npy`` or ``.csv`` file.

    A ``.csv`` holds comma-separated numbers, one point per line, with an
    optional one-line header of (non-numeric) column names. A 1-D array
    (``.npy``) is accepted and returned as ``[n, 1]``.

    Args:
      path: file path ending in ``.npy`` or ``.csv``.

    Returns:
      float32 array ``[n, d]`` with ``n >= 10``, ``d >= 1``, all finite.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: unsupported extension, unreadable or non-numeric content,
        wrong number of dimensions, fewer than 10 points, or NaN/inf values.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f'data file not found: {path!r}')
    if not os.path.isfile(path):
        raise ValueError(f'data path is not a file: {path!r}')
    ext = os.path.splitext(path)[1].lower()
    if ext not in VALID_EXTENSIONS:
        raise ValueError(
            f'{path}: unsupported file extension {ext or "(none)"!r}; '
            f'valid extensions: {", ".join(VALID_EXTENSIONS)}'
        )
    if ext == '.npy':
        try:
            raw: Any = np.load(path, allow_pickle=False)
        except Exception as e:  # re-raised with the path
            raise ValueError(f'{path}: could not read .npy file: {e}') from e
        if not isinstance(raw, np.ndarray):
            raise ValueError(
                f'{path}: expected a single array in the .npy file, got {type(raw).__name__}'
            )
        if raw.dtype == np.bool_ or not (
            np.issubdtype(raw.dtype, np.integer) or np.issubdtype(raw.dtype, np.floating)
        ):
            raise ValueError(f'{path}: expected a real numeric array, got dtype {raw.dtype}')
    else:
        try:
            raw = _load_csv(path)
        except UnicodeDecodeError as e:
            raise ValueError(f'{path}: could not read .csv as text: {e}') from e

    if raw.ndim == 1:
        raw = raw[:, None]
    if raw.ndim != 2:
        raise ValueError(
            f'{path}: expected a 2-D array [num_points, dim], got shape {tuple(raw.shape)}'
        )
    n, d = raw.shape
    if d < 1:
        raise ValueError(
            f'{path}: points have dimension 0 (shape {tuple(raw.shape)}); need dim >= 1'
        )
    if n < MIN_POINTS:
        raise ValueError(f'{path}: only {n} points; need at least {MIN_POINTS}')
    with np.errstate(over='ignore', invalid='ignore'):
        points = raw.astype(np.float32)
    bad_rows = np.flatnonzero(~np.isfinite(points).all(axis=1))
    if bad_rows.size:
        raise ValueError(
            f'{path}: NaN/inf (or values beyond float32 range) in {bad_rows.size} row(s); '
            f'first bad row index {int(bad_rows[0])}'
        )
    return points


@dataclasses.dataclass(frozen=True, eq=False)
class Standardizer:
    """Per-dimension affine map to zero mean and unit std, and its inverse.

    Attributes:
      mean: float32 numpy array ``[d]``.
      std: float32 numpy array ``[d]``; a (near-)constant column gets std 1 so
        nothing is divided by zero.
    """

    mean: np.ndarray
    std: np.ndarray

    MIN_STD = 1e-8

    @classmethod
    def fit(cls, points: np.ndarray) -> Standardizer:
        """Fits mean/std on ``points [n, d]`` (n >= 1)."""
        pts = np.asarray(points, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[0] == 0:
            raise ValueError(f'Standardizer.fit expects [n, d] with n >= 1, got shape {pts.shape}')
        mean = pts.mean(axis=0)
        std = pts.std(axis=0)
        scale = np.maximum(np.abs(mean), 1.0)
        std = np.where(std > cls.MIN_STD * scale, std, 1.0)
        return cls(mean=mean.astype(np.float32), std=std.astype(np.float32))

    def transform(self, x: Any) -> Any:
        """User coordinates ``[..., d]`` -> standardised ``[..., d]`` (numpy or JAX)."""
        return (x - self.mean) / self.std

    def inverse(self, x: Any) -> Any:
        """Standardised ``[..., d]`` -> user coordinates ``[..., d]`` (numpy or JAX)."""
        return x * self.std + self.mean
