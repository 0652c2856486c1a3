"""Loading a user's own point cloud (``.npy`` or ``.csv``) with strict checks.

``load_points`` returns float32 ``[n, d]`` or raises a one-line message naming the
file and the problem; ``parse_columns`` reads the ``data.columns`` setting that picks
the coordinate columns of a table (names or 0-based indices); ``Standardizer`` maps
points to zero mean / unit std and back.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import os
import re
import shlex
from collections.abc import Sequence
from typing import Any

import numpy as np

VALID_EXTENSIONS: tuple[str, ...] = ('.npy', '.csv')
MIN_POINTS: int = 10
COLUMNS_FLAG: str = '--config.data.columns'

# One column of `data.columns`: a header name or a 0-based index.
Column = str | int
_INDEX = re.compile(r'[+-]?\d+')
_MAX_SHOWN = 40  # longest cell value quoted in a message
_NPY_MAGIC = b'\x93NUMPY'


def _parse_float(cell: str) -> float | None:
    """``float(cell)``, or None when the cell is not a number."""
    try:
        return float(cell)
    except ValueError:
        return None


def _show(name: str) -> str:
    """A column name as printed in a message: plain when printable, else quoted."""
    if name and name.isprintable() and name == name.strip() and ',' not in name:
        return name
    return repr(name)


def _quote_value(cell: str) -> str:
    """``repr`` of a cell value, shortened to keep messages to one readable line."""
    if len(cell) > _MAX_SHOWN:
        cell = cell[: _MAX_SHOWN - 3] + '...'
    return repr(cell)


def parse_columns(columns: Any) -> tuple[Column, ...]:
    """Normalises a ``data.columns`` setting to a tuple of names and indices.

    Accepts what a config file or the command line gives: ``''``/``None``/``()`` (all
    columns), a comma-separated string (``'longitude,latitude'``, ``'1,2'``), an int, or a
    tuple/list of such items (``('longitude', 'latitude')``, ``(1, 2)``; the command line
    ``--config.data.columns=a,b`` arrives as ``('a,b',)``). Items of strings are split on
    commas and stripped; an item that is a whole number is an index.

    Args:
      columns: the setting.

    Returns:
      The chosen columns in order, ``()`` for all of them.

    Raises:
      ValueError: an empty item between commas, a negative index, a type other than
        str/int, or a column chosen twice (by the same name or index).
    """
    if columns is None:
        return ()
    items = [columns] if isinstance(columns, (str, int, np.integer)) else columns
    if not isinstance(items, Sequence) or isinstance(items, (bytes, bytearray)):
        raise ValueError(
            f'data.columns must be names or 0-based indices (a comma-separated string or a '
            f'tuple), got {type(columns).__name__} {columns!r}'
        )
    out: list[Column] = []
    for item in items:
        if isinstance(item, (bool, np.bool_)):
            raise ValueError(f'data.columns must be names or 0-based indices, got {item!r}')
        if isinstance(item, (int, np.integer)):
            tokens: list[str | int] = [int(item)]
        elif isinstance(item, str):
            if not item.strip():
                continue  # `--config.data.columns=` (empty): all columns
            tokens = [t.strip() for t in item.split(',')]
        else:
            raise ValueError(
                f'data.columns must be names or 0-based indices, got {type(item).__name__} {item!r}'
            )
        for token in tokens:
            if isinstance(token, str) and _INDEX.fullmatch(token):
                token = int(token)
            if token == '':
                raise ValueError(
                    f'data.columns {columns!r} has an empty entry; separate names or '
                    f'indices by single commas, e.g. {COLUMNS_FLAG}=longitude,latitude'
                )
            if isinstance(token, int) and token < 0:
                raise ValueError(
                    f'data.columns has index {token}; column indices count from 0 '
                    '(negative indices are not supported)'
                )
            if token in out:
                raise ValueError(f'data.columns chooses column {token!r} twice')
            out.append(token)
    return tuple(out)


def _check_index(index: int, width: int, path: str) -> None:
    """Raises when ``index`` is not one of the ``width`` columns of ``path``."""
    if index >= width:
        raise ValueError(
            f'data.columns has index {index}, but {path} has only {width} column'
            f'{"s" if width != 1 else ""} (indices 0 to {width - 1})'
        )


def _close_names(column: str, header: list[str]) -> list[str]:
    """At most one header name that ``column`` was probably meant to be."""
    key = column.casefold()
    for match in (
        [n for n in header if n.casefold() == key],
        [n for n in header if n.casefold().startswith(key)],
    ):
        if len(match) == 1:
            return match
    return difflib.get_close_matches(column, header, n=1)


def _resolve_columns(
    columns: tuple[Column, ...], header: list[str] | None, width: int, path: str
) -> list[int]:
    """0-based file column indices of ``columns`` (names need ``header``)."""
    indices: list[int] = []
    for column in columns:
        if isinstance(column, int):
            _check_index(column, width, path)
            index = column
        elif header is None:
            raise ValueError(
                f'data.columns names {column!r}, but {path} has no header row (its first '
                'line holds numbers, so it is read as data); names need a header row: '
                f'add one, or give 0-based indices (its rows have {width} columns), '
                f'e.g. {COLUMNS_FLAG}=0,1'
            )
        else:
            matches = [i for i, name in enumerate(header) if name == column]
            if not matches:
                listing = ', '.join(_show(name) for name in header)
                hint = _close_names(column, header)
                raise ValueError(
                    f'data.columns names {column!r}, which {path} does not have; its '
                    f'columns are: {listing}' + (f' (did you mean {hint[0]!r}?)' if hint else '')
                )
            if len(matches) > 1:
                raise ValueError(
                    f'data.columns names {column!r}, but {path} has {len(matches)} columns '
                    f'of that name (indices {", ".join(map(str, matches))}); choose one by '
                    'its 0-based index'
                )
            index = matches[0]
        if index in indices:
            raise ValueError(f'data.columns chooses column {index} of {path} twice')
        indices.append(index)
    return indices


def _column_label(index: int, header: list[str] | None) -> str:
    """How a message names file column ``index`` (by header name when there is one)."""
    if header is None:
        return f'column {index} (0-based; the file has no header)'
    return f'column {header[index]!r} (index {index})'


def _suggest_columns(cells: list[str], header: list[str] | None) -> str:
    """``--config.data.columns=...`` choosing the numeric cells of a row."""
    numeric = [i for i, cell in enumerate(cells) if _parse_float(cell) is not None]
    if not numeric:
        return f'{COLUMNS_FLAG}=NAME,NAME'
    names = [header[i] for i in numeric] if header is not None else None
    if names and all(n and ',' not in n and names.count(n) == 1 for n in names):
        value = ','.join(names)
    else:
        value = ','.join(map(str, numeric))
    return f'{COLUMNS_FLAG}={shlex.quote(value)}'


@dataclasses.dataclass
class _Table:
    """Parsed CSV data: ``values [n, k]``, each row's file line and each column's label."""

    values: np.ndarray
    lines: list[int]
    labels: list[str]


def _read_csv(path: str, columns: tuple[Column, ...]) -> _Table:
    """Parses a comma-separated file into float64 ``[n, k]`` (the chosen columns).

    The first non-blank line is a header of column names when none of its cells is a
    number; blank lines are skipped; fields may be quoted (``"Paris, France"``). Every
    row must have as many cells as the first; every chosen cell must be a number.
    """
    header: list[str] | None = None
    chosen: list[int] | None = None
    width = 0
    rows: list[list[float]] = []
    lines: list[int] = []
    seen_first = False
    with open(path, encoding='utf-8-sig', newline='') as f:  # tolerate a BOM
        reader = csv.reader(f)
        while True:
            try:
                raw = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise ValueError(
                    f'{path}: not a readable .csv near line {reader.line_num}: {e}'
                ) from e
            cells = [c.strip() for c in raw]
            if not any(cells) and len(cells) <= 1:
                continue  # blank line
            lineno = reader.line_num
            if not seen_first:
                seen_first = True
                width = len(cells)
                if all(_parse_float(c) is None for c in cells):
                    header = cells
                    chosen = _resolve_columns(columns, header, width, path)
                    continue
                chosen = _resolve_columns(columns, None, width, path)
            if len(cells) != width:
                what = 'the header has' if header is not None else 'earlier rows have'
                raise ValueError(
                    f'{path}: line {lineno} has {len(cells)} columns but {what} {width}'
                )
            assert chosen is not None
            picked = chosen if columns else range(width)
            values = [_parse_float(cells[i]) for i in picked]
            if None in values:
                i = picked[values.index(None)]
                by = ', chosen by data.columns,' if columns else ''
                sep = next((s for s in (';', '\t') if s in cells[i]), None)
                if sep:
                    hint = (
                        f'the file looks {"semicolon" if sep == ";" else "tab"}-separated; '
                        'a .csv must separate values by commas'
                    )
                else:
                    hint = (
                        f'train on numeric columns only with {_suggest_columns(cells, header)} '
                        '(names or 0-based indices)'
                    )
                raise ValueError(
                    f'{path}: {_column_label(i, header)}{by} holds the non-numeric value '
                    f'{_quote_value(cells[i])} on line {lineno}; {hint}'
                )
            rows.append(values)  # type: ignore[arg-type]
            lines.append(lineno)
    if not seen_first:
        raise ValueError(f'{path}: the file holds no rows (only blank lines)')
    if not rows:
        raise ValueError(f'{path}: the file holds a header line but no data rows')
    assert chosen is not None
    picked = chosen if columns else list(range(width))
    return _Table(
        values=np.asarray(rows, dtype=np.float64),
        lines=lines,
        labels=[_column_label(i, header) for i in picked],
    )


def _read_npy(path: str, columns: tuple[Column, ...]) -> _Table:
    """Loads a numeric ``.npy`` array as ``[n, k]`` (the chosen columns, by index)."""
    with open(path, 'rb') as f:
        if f.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
            raise ValueError(
                f'{path}: not a NumPy .npy file (it lacks the .npy header); save the array '
                'with numpy.save, or write a .csv'
            )
    try:
        raw: Any = np.load(path, allow_pickle=False)
    except Exception as e:  # re-raised with the path, on one line
        reason = ' '.join(str(e).split()) or type(e).__name__
        raise ValueError(f'{path}: could not read .npy file: {reason}') from e
    if not isinstance(raw, np.ndarray):
        raise ValueError(
            f'{path}: expected a single array in the .npy file, got {type(raw).__name__}'
        )
    if raw.dtype == np.bool_ or not (
        np.issubdtype(raw.dtype, np.integer) or np.issubdtype(raw.dtype, np.floating)
    ):
        raise ValueError(f'{path}: expected a real numeric array, got dtype {raw.dtype}')
    if raw.ndim == 1:
        raw = raw[:, None]
    if raw.ndim != 2:
        raise ValueError(
            f'{path}: expected a 2-D array [num_points, dim], got shape {tuple(raw.shape)}'
        )
    width = raw.shape[1]
    names = [c for c in columns if isinstance(c, str)]
    if names:
        raise ValueError(
            f'data.columns names {names[0]!r}, but {path} is a .npy array, which has no '
            f'column names; choose columns by 0-based index (it has {width} columns), '
            f'e.g. {COLUMNS_FLAG}=0,1'
        )
    indices = [int(c) for c in columns]
    for index in indices:
        _check_index(index, width, path)
    if indices:
        raw = raw[:, indices]
    picked = indices or list(range(width))
    return _Table(
        values=raw,
        lines=[],
        labels=[f'column {i}' for i in picked],
    )


# The last file read: validation and the dataset both load it, and a large .csv is slow
# to parse. Keyed by what identifies its content; `load_points` hands out copies.
_CACHE: dict[tuple, np.ndarray] = {}


def load_points(path: str, columns: Any = ()) -> np.ndarray:
    """Loads a point cloud from a ``.npy`` or ``.csv`` file.

    A ``.csv`` holds comma-separated values, one point per line, with an optional header
    line of column names (taken as a header when none of its cells is a number). Without
    ``columns`` every cell must be a number; with it, only the chosen columns are read and
    the others may hold anything (names, codes). A 1-D array (``.npy``) is accepted and
    returned as ``[n, 1]``.

    Args:
      path: file path ending in ``.npy`` or ``.csv``.
      columns: the ``data.columns`` setting (see ``parse_columns``): header names
        (``.csv`` with a header only) or 0-based indices, in the order wanted; empty for
        all columns.

    Returns:
      float32 array ``[n, d]`` with ``n >= 10``, ``d >= 1``, all finite.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: unsupported extension, unreadable, empty or non-numeric content, a
        column that the file does not have, wrong number of dimensions, fewer than 10
        points, or NaN/inf values. Each message is one line and names the file.
    """
    path = os.fspath(path)
    chosen = parse_columns(columns)
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
    stat = os.stat(path)
    key = (os.path.abspath(path), chosen, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key in _CACHE:
        return _CACHE[key].copy()
    if stat.st_size == 0:
        raise ValueError(f'{path}: the file is empty (0 bytes)')
    try:
        table = _read_npy(path, chosen) if ext == '.npy' else _read_csv(path, chosen)
    except UnicodeDecodeError as e:
        raise ValueError(f'{path}: could not read .csv as UTF-8 text: {e}') from e
    except OSError as e:
        raise ValueError(f'{path}: could not read the file: {e.strerror or e}') from e
    points = _check_points(path, table)
    _CACHE.clear()
    _CACHE[key] = points
    return points.copy()


def _check_points(path: str, table: _Table) -> np.ndarray:
    """float32 ``[n, d]`` of ``table`` after the size and finiteness checks."""
    raw = table.values
    n, d = raw.shape
    if d < 1:
        raise ValueError(
            f'{path}: points have dimension 0 (shape {tuple(raw.shape)}); need dim >= 1'
        )
    if n < MIN_POINTS:
        raise ValueError(
            f'{path}: only {n} point{"s" if n != 1 else ""}; need at least {MIN_POINTS}'
        )
    with np.errstate(over='ignore', invalid='ignore'):
        points = raw.astype(np.float32)
    finite = np.isfinite(points)
    bad_rows = np.flatnonzero(~finite.all(axis=1))
    if bad_rows.size:
        row = int(bad_rows[0])
        col = int(np.flatnonzero(~finite[row])[0])
        where = f'line {table.lines[row]}, ' if table.lines else ''
        value = float(raw[row, col])
        raise ValueError(
            f'{path}: NaN/inf (or values beyond float32 range) in {bad_rows.size} row(s); '
            f'first bad row index {row} ({where}{table.labels[col]}, value {value!r})'
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
