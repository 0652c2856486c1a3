"""Real tables as point files: ``data.columns`` picks coordinate columns by name or index.

Every bad file fails with one line naming the file and the fix, during validation; the one
subprocess test checks that the command line prints it without a traceback.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from drift_jax import defaults
from drift_jax.data import load_points, make_dataset, parse_columns, validate_data_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 15  # rows of each table


def _coords(n: int = N, seed: int = 0) -> np.ndarray:
    """float32-exact coordinates ``[n, 2]`` (longitude, latitude)."""
    rng = np.random.default_rng(seed)
    return np.round(rng.normal(size=(n, 2)) * [50.0, 20.0], 3).astype(np.float32)


def _cities(path: Path, xy: np.ndarray, header: bool = True) -> Path:
    """A table with a quoted text column, a numeric code and the coordinates."""
    lines = ['name,code,longitude,latitude'] if header else []
    lines += [
        f'"City {i}, Land",{100 + i},{float(lon)!r},{float(lat)!r}'
        for i, (lon, lat) in enumerate(xy)
    ]
    path.write_text('\n'.join(lines) + '\n')
    return path


def _data_config(path: Path, columns=()) -> ml_collections.ConfigDict:
    """``config.data`` for ``path``; ``columns`` of any accepted type (a config from Python)."""
    return ml_collections.ConfigDict({'name': 'points', 'path': str(path), 'columns': columns})


@pytest.mark.parametrize(
    'columns',
    [
        'longitude,latitude',
        ('longitude,latitude',),  # --config.data.columns=longitude,latitude
        ('longitude', 'latitude'),
        ['longitude', ' latitude '],
        (2, 3),  # --config.data.columns=2,3
        '2,3',
        ('2', 'latitude'),
    ],
)
def test_text_columns_by_name_or_index(tmp_path, columns) -> None:
    xy = _coords()
    path = _cities(tmp_path / 'cities.csv', xy)
    np.testing.assert_array_equal(load_points(str(path), columns), xy)
    ds = make_dataset(_data_config(path, columns))
    assert ds.dim == 2


def test_column_order_and_subset(tmp_path) -> None:
    xy = _coords()
    path = _cities(tmp_path / 'cities.csv', xy)
    np.testing.assert_array_equal(load_points(str(path), 'latitude,longitude'), xy[:, ::-1])
    codes = load_points(str(path), 'code')
    np.testing.assert_array_equal(codes[:, 0], 100 + np.arange(N))


def test_defaults_have_columns_and_empty_means_all(tmp_path) -> None:
    assert defaults.toy_config().data.columns == ()
    xy = _coords()
    path = tmp_path / 'plain.csv'
    path.write_text('x,y\n' + '\n'.join(f'{float(a)!r},{float(b)!r}' for a, b in xy) + '\n')
    for empty in ((), '', None, ('',)):  # ('',): --config.data.columns=
        np.testing.assert_array_equal(load_points(str(path), empty), xy)


def test_bad_name_lists_the_columns(tmp_path) -> None:
    path = _cities(tmp_path / 'data.csv', _coords())
    msg = (
        f"data.columns names 'lat', which {path} does not have; its columns are: "
        'name, code, longitude, latitude'
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        validate_data_config(_data_config(path, 'longitude,lat'))
    with pytest.raises(ValueError, match=re.escape("did you mean 'latitude'?")):
        load_points(str(path), 'Latitude')


def test_index_out_of_range_says_the_count(tmp_path) -> None:
    path = _cities(tmp_path / 'data.csv', _coords())
    msg = f'data.columns has index 4, but {path} has only 4 columns (indices 0 to 3)'
    with pytest.raises(ValueError, match=re.escape(msg)):
        load_points(str(path), (2, 4))


@pytest.mark.parametrize(
    'columns, message',
    [
        ('a,,b', 'has an empty entry'),
        ('-1', 'count from 0'),
        ('longitude,longitude', "chooses column 'longitude' twice"),
        ((True,), 'names or 0-based indices'),
        (1.5, 'names or 0-based indices'),
    ],
)
def test_bad_columns_setting(columns, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_columns(columns)


def test_same_column_by_name_and_index(tmp_path) -> None:
    path = _cities(tmp_path / 'data.csv', _coords())
    with pytest.raises(ValueError, match='chooses column 2 .* twice'):
        load_points(str(path), 'longitude,2')


def test_non_numeric_cell_names_column_row_value_and_fix(tmp_path) -> None:
    path = _cities(tmp_path / 'cities.csv', _coords())
    msg = (
        f"{path}: column 'name' (index 0) holds the non-numeric value 'City 0, Land' on "
        'line 2; train on numeric columns only with '
        '--config.data.columns=code,longitude,latitude'
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        load_points(str(path))
    # A text cell inside a chosen column.
    bad = tmp_path / 'bad.csv'
    bad.write_text('a,x,y\n' + 'p,1,2\n' * 5 + 'q,3,n/a\n' + 'p,1,2\n' * 5)
    msg = (
        f"{bad}: column 'y' (index 2), chosen by data.columns, holds the non-numeric value "
        "'n/a' on line 7"
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        load_points(str(bad), 'x,y')


def test_csv_without_header(tmp_path) -> None:
    xy = _coords()
    path = _cities(tmp_path / 'nohead.csv', xy, header=False)
    np.testing.assert_array_equal(load_points(str(path), '2,3'), xy)
    with pytest.raises(ValueError, match=re.escape(f'{path} has no header row') + '.*names need'):
        load_points(str(path), 'longitude,latitude')
    with pytest.raises(ValueError, match=re.escape('column 0 (0-based; the file has no header)')):
        load_points(str(path))
    plain = tmp_path / 'plain.csv'  # all numbers, no header: read as before
    plain.write_text('\n'.join(f'{float(a)!r},{float(b)!r}' for a, b in xy) + '\n')
    np.testing.assert_array_equal(load_points(str(plain)), xy)


def test_npy_columns_by_index_only(tmp_path) -> None:
    x = np.random.default_rng(1).normal(size=(N, 4)).astype(np.float32)
    path = tmp_path / 'cloud.npy'
    np.save(path, x)
    np.testing.assert_array_equal(load_points(str(path), (3, 0)), x[:, [3, 0]])
    np.testing.assert_array_equal(load_points(str(path), ('1,2',)), x[:, 1:3])
    with pytest.raises(ValueError, match=r"names 'x', but .*\.npy array, which has no column"):
        load_points(str(path), 'x,1')
    with pytest.raises(ValueError, match='has only 4 columns'):
        load_points(str(path), '4')


@pytest.mark.parametrize(
    'name, text, message',
    [
        ('empty.csv', '', 'the file is empty'),
        ('empty.npy', '', 'the file is empty'),
        ('blank.csv', '\n \n\n', 'no rows (only blank lines)'),
        ('header.csv', 'x,y\n', 'header line but no data rows'),
        ('one.csv', 'x,y\n1,2\n', 'only 1 point; need at least 10'),
        ('text.npy', 'not an array', 'not a NumPy .npy file'),
        ('semi.csv', 'x;y\n' + '1;2\n' * 12, 'semicolon-separated'),
    ],
)
def test_bad_files_name_the_file(tmp_path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(str(path)) + '.*' + re.escape(message)):
        validate_data_config(_data_config(path))


def test_nan_names_line_and_column(tmp_path) -> None:
    path = tmp_path / 'nan.csv'
    path.write_text('name,x,y\n' + 'p,1,2\n' * 5 + 'q,3,inf\n' + 'p,1,2\n' * 5)
    msg = "first bad row index 5 (line 7, column 'y' (index 2), value inf)"
    with pytest.raises(ValueError, match=re.escape(msg)):
        load_points(str(path), 'x,y')
    np.testing.assert_array_equal(load_points(str(path), 'x')[:, 0], [1] * 5 + [3] + [1] * 5)


def test_toy_dataset_refuses_columns() -> None:
    c = defaults.toy_config().data
    c.columns = ('x',)
    with pytest.raises(ValueError, match='data.columns.*built-in toy'):
        validate_data_config(c)


def test_cli_prints_one_line_without_traceback(tmp_path) -> None:
    path = _cities(tmp_path / 'cities.csv', _coords())
    out = subprocess.run(
        [
            sys.executable,
            '-m',
            'drift_jax.main',
            '--config=configs/points.py',
            f'--config.data.path={path}',
            '--config.data.columns=longitude,lat',
            f'--workdir={tmp_path / "w"}',
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert 'Traceback' not in out.stderr + out.stdout
    last = out.stderr.strip().splitlines()[-1]
    assert last == (
        f"drift_jax: error: data.columns names 'lat', which {path} does not have; its columns are: "
        "name, code, longitude, latitude (did you mean 'latitude'?)"
    )
    assert not (tmp_path / 'w').exists()  # failed before anything was written
