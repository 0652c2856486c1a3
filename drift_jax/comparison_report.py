"""The report of a comparison (`comparison.compare`), made from the rows of results.json.

`write_tables`: results.json, table.md and table.csv. `write_figures`: `samples.png`
(samples of every method (rows) on every dataset (columns)), `quality_vs_nfe.png` and
`quality_vs_time.png` (the ratio to the noise floor against network evaluations per sample
and against training wall time, one panel per dataset, one colour per method).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from drift_jax import plotting

RESULTS_FILE, TABLE_MD, TABLE_CSV = 'results.json', 'table.md', 'table.csv'
SAMPLES_FILE = 'comparison_samples.npz'  # in each run's workdir, written by the comparison


def write_json(path: str, value: Any) -> None:
    """Writes `value` as JSON to `path` atomically (a temporary file, then a rename)."""
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(value, f, indent=1)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- tables

#: table.md columns: header, row key, format.
_MD_COLUMNS = (
    ('data', 'data', '{}'),
    ('method', 'method', '{}'),
    ('ratio', 'ratio', '{:.3g}'),
    ('NFE', 'nfe', '{}'),
    ('train s', 'train_seconds', '{:.1f}'),
    ('samples/s', 'samples_per_second', '{:,.0f}'),
    ('params', 'params', '{:,}'),
    ('class acc.', 'class_accuracy', '{:.3f}'),
)
CSV_COLUMNS: tuple[str, ...] = (
    'data',
    'method',
    'run',
    'ratio_key',
    'ratio',
    'nfe',
    'train_steps',
    'train_seconds',
    'samples_per_second',
    'params',
    'class_accuracy',
    'error',
)


def format_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """table.md: one line per row (missing values '-'), the class accuracy column only when
    a row has one, a line saying what each ratio is and one naming the runs that failed."""
    columns = [c for c in _MD_COLUMNS if c[1] != 'class_accuracy']
    if any(r.get('class_accuracy') is not None for r in rows):
        columns.append(_MD_COLUMNS[-1])
    lines = [
        '| ' + ' | '.join(c[0] for c in columns) + ' |',
        '|' + '---|' * len(columns),
    ]
    for r in rows:
        cells = []
        for _, key, fmt in columns:
            value = r.get(key)
            bad = value is None or (isinstance(value, float) and not math.isfinite(value))
            cells.append('-' if bad else fmt.format(value))
        lines.append('| ' + ' | '.join(cells) + ' |')
    names = sorted({r['ratio_key'] for r in rows})
    meaning = {'energy_ratio': 'ED / floor (points)', 'fd_ratio': 'FD / floor (images)'}
    lines += ['', 'ratio: ' + '; '.join(meaning.get(n, n) for n in names) + '.']
    failed = [r['run'] for r in rows if r.get('error')]
    if failed:
        lines.append(f'Failed (diverged; the error is in results.json): {", ".join(failed)}.')
    return '\n'.join(lines) + '\n'


def format_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """table.csv: `CSV_COLUMNS`, full precision, missing values empty."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator='\n')
    w.writerow(CSV_COLUMNS)
    for r in rows:
        w.writerow(['' if r.get(c) is None else r[c] for c in CSV_COLUMNS])
    return buf.getvalue()


def write_tables(rows: Sequence[Mapping[str, Any]], out: str) -> list[str]:
    """Writes results.json (the rows), table.md and table.csv into `out`; returns the paths."""
    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, f) for f in (RESULTS_FILE, TABLE_MD, TABLE_CSV)]
    write_json(paths[0], list(rows))
    for path, text in zip(paths[1:], (format_markdown(rows), format_csv(rows)), strict=True):
        with open(path, 'w') as f:
            f.write(text)
    return paths


# ----------------------------------------------------------------------------- figures

RATIO_LABELS = {'energy_ratio': 'ED / floor', 'fd_ratio': 'FD / floor'}
FIGURES = ('samples.png', 'quality_vs_nfe.png', 'quality_vs_time.png')


def _ordered(rows: Sequence[Mapping[str, Any]], key: str) -> list[str]:
    return list(dict.fromkeys(r[key] for r in rows))


def _colours(rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """One matplotlib cycle colour per method, the same in every figure."""
    return {m: f'C{i % 10}' for i, m in enumerate(_ordered(rows, 'method'))}


def _panels(n: int, width: float = 4.0, height: float = 3.2):
    """A figure with n panels, up to four per row; returns (figure, [axes])."""
    ncol = min(n, 4)
    nrow = math.ceil(n / ncol)
    fig = plotting.new_figure(figsize=(max(width * ncol, 6.0), height * nrow + 0.4))
    return fig, [fig.add_subplot(nrow, ncol, i + 1) for i in range(n)]


def sample_grid(rows: Sequence[Mapping[str, Any]], runs_dir: str, path: str) -> str:
    """Samples of each row's run (`<runs_dir>/<run>/comparison_samples.npz`) on a grid of
    methods (rows) x datasets (columns): points over held-out data (grey), or images, one
    class per column. Each panel's label gives its ratio. Returns `path`."""
    data_names, method_names = _ordered(rows, 'data'), _ordered(rows, 'method')
    by_cell = {(r['method'], r['data']): r for r in rows}
    points = any(r['ratio_key'] == 'energy_ratio' for r in rows)
    cell_height = 2.6 if points else 1.6  # image panels are wide: one class per column
    height = cell_height * len(method_names) + 0.4
    fig = plotting.new_figure(figsize=(2.6 * len(data_names), height))
    for i, method in enumerate(method_names):
        for j, name in enumerate(data_names):
            ax = fig.add_subplot(len(method_names), len(data_names), i * len(data_names) + j + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name)
            if j == 0:
                ax.set_ylabel(method)
            row = by_cell.get((method, name))
            if row is None:
                continue
            if row.get('error'):
                ax.set_xlabel('failed (diverged)', fontsize=8)
                continue
            with np.load(os.path.join(runs_dir, row['run'], SAMPLES_FILE)) as f:
                samples = f['samples']
                data = f['data'] if 'data' in f.files else None
                per_class = int(f['per_class']) if 'per_class' in f.files else None
            if samples.ndim == 2:
                plotting.scatter_samples(ax, samples, data)
            else:  # [K * per_class] sorted by class -> one class per column
                k = len(samples) // per_class
                by_class = samples.reshape(k, per_class, *samples.shape[1:]).swapaxes(0, 1)
                tile = plotting.tile_images(by_class.reshape(samples.shape), k, padding=1)
                tile = tile[..., 0] if tile.shape[-1] == 1 else tile
                ax.imshow(tile, cmap='gray', vmin=0, vmax=1)
            label = RATIO_LABELS.get(row['ratio_key'], row['ratio_key'])
            ax.set_xlabel(f'{label} {row["ratio"]:.3g}', fontsize=8)
    fig.suptitle('Samples (grey: held-out data)' if points else 'Samples')
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / height))  # the title above the column names
    return plotting.save_figure(fig, path)


def _curves(
    rows: Sequence[Mapping[str, Any]],
    path: str,
    points,
    xlabel: str,
    title: str,
    xlog: bool,
) -> str:
    """One panel per dataset; in each, `points(row) -> (x [k], y [k])` of every method."""
    data_names = _ordered(rows, 'data')
    colours = _colours(rows)
    fig, axes = _panels(len(data_names))
    for ax, name in zip(axes, data_names, strict=True):
        mine = [r for r in rows if r['data'] == name]
        ys_all = []
        for r in mine:
            x, y = points(r)
            if not len(x):
                continue
            ys_all += list(y)
            ax.plot(x, y, marker='o', markersize=4, color=colours[r['method']], label=r['method'])
        ax.axhline(1.0, color='k', linestyle='--', linewidth=1, label='noise floor')
        finite = np.asarray([v for v in ys_all if np.isfinite(v)])
        if finite.size and np.all(finite > 0):
            ax.set_yscale('log')
        if xlog:
            ax.set_xscale('log')
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(RATIO_LABELS.get(mine[0]['ratio_key'], 'ratio'))
        ax.grid(True, which='both', alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return plotting.save_figure(fig, path)


def quality_vs_nfe(rows: Sequence[Mapping[str, Any]], path: str) -> str:
    """Each method's ratio against NFE (log axis) from its row's 'nfe_sweep'. Returns `path`."""

    def points(r):
        sweep = r.get('nfe_sweep') or []
        return [p['nfe'] for p in sweep], [p['ratio'] for p in sweep]

    return _curves(
        rows,
        path,
        points,
        'network evaluations per sample (NFE)',
        'Quality against sampling cost (1: the noise floor)',
        xlog=True,
    )


def quality_vs_time(rows: Sequence[Mapping[str, Any]], path: str) -> str:
    """Each method's ratio at its run's evaluations against seconds since the run's first
    logged metrics (its row's 'curve'). Returns `path`."""

    def points(r):
        curve = r.get('curve') or {'seconds': [], 'ratio': []}
        return curve['seconds'], curve['ratio']

    return _curves(
        rows,
        path,
        points,
        'training wall time (s)',
        'Quality during training (1: the noise floor)',
        xlog=False,
    )


def write_figures(rows: Sequence[Mapping[str, Any]], out: str) -> list[str]:
    """Draws `FIGURES` into `out` from the rows (runs in `<out>/runs`); returns the paths."""
    if not rows:
        return []
    paths = [os.path.join(out, f) for f in FIGURES]
    sample_grid(rows, os.path.join(out, 'runs'), paths[0])
    quality_vs_nfe(rows, paths[1])
    quality_vs_time(rows, paths[2])
    return paths
