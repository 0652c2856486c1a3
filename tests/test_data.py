"""Specification tests for drift_jax.data: toy samplers, point files, datasets.

Each shape test checks the geometry of a sampler, so a wrong sampler fails; the
file tests cover round trips and every bad-input error message.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from drift_jax.data import (
    BIMODAL_CENTERS,
    DATASET_NAMES,
    TOY_DATASETS,
    Standardizer,
    bimodal_init,
    bimodal_mode_fractions,
    load_points,
    make_dataset,
    sample_toy,
    toy,
    validate_data_config,
)

N = 2000  # one sample size everywhere so each sampler compiles once


@functools.partial(jax.jit, static_argnums=0)
def _train_and_eval(name: str, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Both splits of toy ``name`` in one compile: two float32 ``[N, 2]`` arrays."""
    ds = make_dataset(_data_config(name))
    return ds.sample(key, N), ds.sample(key, N, split='eval')


def _draw(name: str, seed: int = 0) -> np.ndarray:
    return np.asarray(_train_and_eval(name, jax.random.key(seed))[0])


def _data_config(name: str, path: str = '') -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({'name': name, 'path': path})


def _min_dist_to_curve(x: np.ndarray, curve: np.ndarray) -> np.ndarray:
    """Distance from each point ``[n, 2]`` to the nearest of ``curve [m, 2]``."""
    d2 = ((x[:, None, :] - curve[None, :, :]) ** 2).sum(-1)
    return np.sqrt(d2.min(axis=1))


# ----------------------------------------------------------------------------
# Toy samplers: generic properties.


def test_dataset_names() -> None:
    assert len(TOY_DATASETS) == 8
    assert DATASET_NAMES == TOY_DATASETS + ('points',)


@pytest.mark.parametrize('name', TOY_DATASETS)
def test_toy_shape_dtype_scale_jit(name: str) -> None:
    x = _train_and_eval(name, jax.random.key(0))[0]
    assert x.shape == (N, 2)
    assert x.dtype == jnp.float32
    x = np.asarray(x)
    assert np.isfinite(x).all()
    assert np.mean(np.abs(x) <= 2.5) > 0.99
    assert np.all((x.std(axis=0) > 0.2) & (x.std(axis=0) < 2.0))


@pytest.mark.parametrize('name', TOY_DATASETS)
def test_toy_keys(name: str) -> None:
    a = _draw(name, seed=1)
    b = _draw(name, seed=1)
    c = _draw(name, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize('name', TOY_DATASETS)
def test_toy_train_eval_streams_differ(name: str) -> None:
    ds = make_dataset(_data_config(name))
    assert ds.name == name and ds.dim == 2
    key = jax.random.key(3)
    train, evals = (np.asarray(a) for a in _train_and_eval(name, key))
    assert evals.shape == (N, 2) and evals.dtype == np.float32
    assert np.isfinite(evals).all()
    assert not np.any(np.all(np.isclose(train, evals), axis=1))
    np.testing.assert_array_equal(ds.to_data_space(train), train)
    with pytest.raises(ValueError, match="'test'.*train, eval"):
        ds.sample(key, 10, split='test')


def test_toy_train_stream_is_sample_toy() -> None:
    ds = make_dataset(_data_config('bimodal'))

    @jax.jit
    def draws(key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        return sample_toy('bimodal', key, 16), ds.sample(key, 16), ds.sample(key, 16, 'train')

    y, a, b = (np.asarray(v) for v in draws(jax.random.key(0)))
    assert y.shape == (16, 2) and y.dtype == np.float32 and np.isfinite(y).all()
    np.testing.assert_array_equal(a, y)
    np.testing.assert_array_equal(b, y)


def test_unknown_toy_name() -> None:
    with pytest.raises(ValueError, match="'circle'.*spiral.*bimodal"):
        sample_toy('circle', jax.random.key(0), 10)


# ----------------------------------------------------------------------------
# Toy samplers: geometry of each distribution.


def test_checkerboard_on_dark_squares() -> None:
    x = _draw('checkerboard')
    assert np.all((x >= -2.0) & (x <= 2.0))
    col = np.clip(np.floor(x[:, 0] + 2.0), 0, 3).astype(int)
    row = np.clip(np.floor(x[:, 1] + 2.0), 0, 3).astype(int)
    assert np.all((col + row) % 2 == 0)
    counts = np.bincount(row * 4 + col, minlength=16)
    dark = [r * 4 + c for r in range(4) for c in range(4) if (r + c) % 2 == 0]
    assert np.all(counts[dark] > N / 8 * 0.8)


def test_eight_gaussians_on_circle_at_eight_angles() -> None:
    x = _draw('eight_gaussians')
    radius = np.linalg.norm(x, axis=1)
    assert np.all(np.abs(radius - 2.0) < 0.5)
    angle = np.arctan2(x[:, 1], x[:, 0])
    k = np.round(angle / (math.pi / 4))
    assert np.all(np.abs(angle - k * math.pi / 4) < 0.25)
    counts = np.bincount(k.astype(int) % 8, minlength=8)
    assert np.all(counts > N / 8 * 0.8)
    # Within-cluster spread is small (std ~0.1), not a ring.
    centres = 2.0 * np.stack([np.cos(k * math.pi / 4), np.sin(k * math.pi / 4)], axis=1)
    assert 0.05 < np.std(x - centres) < 0.15


def test_twenty_five_gaussians_near_grid() -> None:
    x = _draw('twenty_five_gaussians')
    grid = np.round(x)
    assert np.all(np.abs(x - grid) < 0.4)
    assert np.all((grid >= -2) & (grid <= 2))
    cell = ((grid[:, 0] + 2) * 5 + grid[:, 1] + 2).astype(int)
    assert np.all(np.bincount(cell, minlength=25) > N / 25 * 0.6)


def test_rings_radii_cluster() -> None:
    x = _draw('rings')
    radius = np.linalg.norm(x, axis=1)
    radii = np.asarray(toy.RING_RADII)
    assert len(radii) in (2, 3)
    which = np.argmin(np.abs(radius[:, None] - radii[None, :]), axis=1)
    assert np.all(np.abs(radius - radii[which]) < 0.25)
    assert np.all(np.bincount(which, minlength=len(radii)) > N / len(radii) * 0.8)
    # Angles are spread uniformly around each ring.
    angle = np.arctan2(x[:, 1], x[:, 0])
    hist = np.histogram(angle, bins=8, range=(-math.pi, math.pi))[0]
    assert np.all(hist > N / 8 * 0.8)


def test_bimodal_balanced_modes() -> None:
    x = _draw('bimodal')
    f0, f1 = bimodal_mode_fractions(x)
    assert abs(f0 - 0.5) < 0.05 and abs(f0 + f1 - 1.0) < 1e-9
    centres = np.asarray(BIMODAL_CENTERS)
    np.testing.assert_allclose(centres, [[-1.5, 0.0], [1.5, 0.0]])
    nearest = centres[np.argmin(np.linalg.norm(x[:, None] - centres[None], axis=-1), axis=1)]
    assert 0.25 < np.std(x - nearest) < 0.35


def test_bimodal_mode_fractions_constructed() -> None:
    x = np.array([[-1.4, 0.0], [-2.0, 0.3], [-0.1, 5.0], [1.6, 0.0]], dtype=np.float32)
    assert bimodal_mode_fractions(x) == pytest.approx((0.75, 0.25))
    assert bimodal_mode_fractions(jnp.asarray([[3.0, 0.0]])) == pytest.approx((0.0, 1.0))
    with pytest.raises(ValueError, match=r'\(3,\)'):
        bimodal_mode_fractions(np.zeros(3))


def test_bimodal_init() -> None:
    offset, spread = bimodal_init('middle')
    assert offset == (0.0, 0.0) and 0.0 < spread <= 0.5
    offset, spread = bimodal_init('collapsed')
    assert offset == tuple(BIMODAL_CENTERS[0]) and 0.0 < spread <= 0.5
    offset, _ = bimodal_init('far')
    far = np.asarray(offset)
    assert np.all(np.linalg.norm(np.asarray(BIMODAL_CENTERS) - far, axis=1) > 3.0)
    with pytest.raises(ValueError, match="'nearby'.*middle.*far.*collapsed"):
        bimodal_init('nearby')


def test_moons_two_arcs() -> None:
    x = _draw('moons')
    dists, sides = [], []
    for (cx, cy), upper in toy.MOON_ARCS:
        r = np.linalg.norm(x - np.array([cx, cy]), axis=1)
        dists.append(np.abs(r - toy.MOON_RADIUS))
        sides.append((x[:, 1] - cy) * (1 if upper else -1) > -0.2)
    dists_a, sides_a = np.stack(dists, 1), np.stack(sides, 1)
    on_arc = (dists_a < 0.25) & sides_a
    assert np.all(on_arc.any(axis=1))
    # Two components of about equal mass; the arcs interleave (centred overall).
    which = np.argmin(np.where(sides_a, dists_a, np.inf), axis=1)
    assert abs(np.mean(which == 0) - 0.5) < 0.05
    assert np.all(np.abs(x.mean(axis=0)) < 0.1)
    assert x[which == 0, 1].mean() > x[which == 1, 1].mean()


def test_spiral_on_curve() -> None:
    x = _draw('spiral')
    theta = np.linspace(0.0, toy.SPIRAL_MAX_ANGLE, 3000)
    r = toy.SPIRAL_MAX_RADIUS * theta / toy.SPIRAL_MAX_ANGLE
    curve = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
    assert np.mean(_min_dist_to_curve(x, curve) < 0.2) > 0.99
    assert 3 * math.pi <= toy.SPIRAL_MAX_ANGLE  # at least 1.5 turns
    # Points cover the whole arc, not only its start.
    assert np.linalg.norm(x, axis=1).max() > 0.9 * toy.SPIRAL_MAX_RADIUS


def test_swiss_roll_on_curve() -> None:
    x = _draw('swiss_roll')
    lo, hi = toy.SWISS_ROLL_T_RANGE
    t = np.linspace(lo, hi, 3000)
    curve = toy.SWISS_ROLL_SCALE * t[:, None] * np.stack([np.cos(t), np.sin(t)], axis=1)
    assert np.mean(_min_dist_to_curve(x, curve) < 0.2) > 0.99
    radius = np.linalg.norm(x, axis=1)
    assert radius.min() > 0.6 * toy.SWISS_ROLL_SCALE * lo  # hole in the middle


# ----------------------------------------------------------------------------
# Point files.


def _cloud(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) * np.arange(1, d + 1) + 10.0).astype(np.float32)


def _write_csv(path, x: np.ndarray, header: str | None = None) -> None:
    lines = [header] if header is not None else []
    lines += [','.join(repr(float(v)) for v in row) for row in x]
    path.write_text('\n'.join(lines) + '\n')


@pytest.mark.parametrize('d', [1, 2, 3])
def test_load_points_npy_round_trip(tmp_path, d: int) -> None:
    x = _cloud(30, d)
    path = tmp_path / 'pts.npy'
    np.save(path, x)
    y = load_points(str(path))
    assert y.dtype == np.float32 and y.shape == (30, d)
    np.testing.assert_array_equal(y, x)


def test_load_points_npy_1d_and_float64(tmp_path) -> None:
    x = np.linspace(-1.0, 1.0, 12)
    np.save(tmp_path / 'a.npy', x)
    y = load_points(str(tmp_path / 'a.npy'))
    assert y.shape == (12, 1) and y.dtype == np.float32
    np.testing.assert_allclose(y[:, 0], x, rtol=1e-6)
    np.save(tmp_path / 'b.npy', np.arange(24).reshape(12, 2))  # integers are fine
    assert load_points(str(tmp_path / 'b.npy')).dtype == np.float32


@pytest.mark.parametrize('d', [1, 3])
@pytest.mark.parametrize('header', [None, 'x,y,z'])
def test_load_points_csv_round_trip(tmp_path, d: int, header: str | None) -> None:
    x = _cloud(25, d, seed=d)
    if header is not None:
        header = ','.join(header.split(',')[:d])
    path = tmp_path / 'pts.csv'
    _write_csv(path, x, header)
    y = load_points(str(path))
    assert y.dtype == np.float32 and y.shape == (25, d)
    np.testing.assert_array_equal(y, x)


def test_load_points_csv_whitespace_and_blank_lines(tmp_path) -> None:
    x = _cloud(12, 2)
    path = tmp_path / 'pts.csv'
    rows = [f' {float(a)!r} , {float(b)!r} ' for a, b in x]
    path.write_text('a, b\n\n' + '\n'.join(rows) + '\n\n')
    np.testing.assert_array_equal(load_points(str(path)), x)


def test_standardizer_round_trip() -> None:
    x = _cloud(100, 3)
    x[:, 1] = 7.0  # constant column must not divide by zero
    st = Standardizer.fit(x)
    assert st.mean.shape == (3,) and st.std.shape == (3,)
    assert np.all(st.std > 0)
    z = st.transform(x)
    assert np.isfinite(z).all()
    np.testing.assert_allclose(z[:, [0, 2]].mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z[:, [0, 2]].std(0), 1.0, atol=1e-4)
    np.testing.assert_allclose(z[:, 1], 0.0)
    np.testing.assert_allclose(st.inverse(z), x, rtol=1e-5, atol=1e-5)
    zj = jax.jit(st.transform)(jnp.asarray(x))
    assert isinstance(zj, jax.Array)
    np.testing.assert_allclose(np.asarray(st.inverse(zj)), x, rtol=1e-5, atol=1e-5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        st.mean = np.zeros(3)  # type: ignore[misc]


@pytest.mark.parametrize('n, n_train, n_eval', [(50, 40, 10), (10, 8, 2), (11, 9, 2)])
def test_points_dataset_split(tmp_path, n: int, n_train: int, n_eval: int) -> None:
    x = _cloud(n, 3, seed=n)
    path = tmp_path / 'pts.npy'
    np.save(path, x)
    ds = make_dataset(_data_config('points', str(path)))
    assert ds.name == 'points' and ds.dim == 3
    assert ds.train_points.shape == (n_train, 3) and ds.eval_points.shape == (n_eval, 3)
    train_rows = np.asarray(ds.to_data_space(ds.train_points))
    eval_rows = np.asarray(ds.to_data_space(ds.eval_points))
    # The split is a partition of the file's rows.
    both = np.concatenate([train_rows, eval_rows])
    np.testing.assert_allclose(both[np.lexsort(both.T)], x[np.lexsort(x.T)], rtol=1e-5)
    # Standardised on the training split.
    np.testing.assert_allclose(np.asarray(ds.train_points).mean(0), 0.0, atol=1e-4)
    # The split is deterministic.
    ds2 = make_dataset(_data_config('points', str(path)))
    np.testing.assert_array_equal(np.asarray(ds2.eval_points), np.asarray(ds.eval_points))


def test_points_dataset_sampling(tmp_path) -> None:
    x = _cloud(60, 2)
    path = tmp_path / 'pts.csv'
    _write_csv(path, x, 'u,v')
    ds = make_dataset(_data_config('points', str(path)))
    # One compile for both splits (n and split are static inside the trace).
    both = jax.jit(lambda k: (ds.sample(k, 500), ds.sample(k, 500, split='eval')))
    key = jax.random.key(0)
    train, evals = both(key)
    for split, s, pool in (('train', train, ds.train_points), ('eval', evals, ds.eval_points)):
        assert s.shape == (500, 2) and s.dtype == jnp.float32
        s, pool = np.asarray(s), np.asarray(pool)
        match = np.all(np.isclose(s[:, None, :], pool[None, :, :]), axis=-1)
        assert np.all(match.any(axis=1)), f'{split} samples must be rows of the {split} split'
        assert len(np.unique(s, axis=0)) == len(pool)  # 500 draws cover every row
    np.testing.assert_array_equal(np.asarray(both(key)[0]), np.asarray(train))
    other = np.asarray(both(jax.random.key(1))[0])
    assert not np.array_equal(np.asarray(train), other)
    back = ds.to_data_space(np.asarray(train))
    assert isinstance(back, np.ndarray)
    assert np.all(np.any(np.all(np.isclose(back[:, None], x[None], rtol=1e-5, atol=1e-4), -1), 1))


# ----------------------------------------------------------------------------
# Bad inputs.


def test_unknown_dataset_name_lists_choices() -> None:
    with pytest.raises(ValueError, match="'mnist'") as info:
        validate_data_config(_data_config('mnist'))
    for name in DATASET_NAMES:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="'mnist'.*points"):
        make_dataset(_data_config('mnist'))


def test_points_empty_path() -> None:
    with pytest.raises(ValueError, match=re.escape('--config.data.path=FILE')):
        validate_data_config(_data_config('points'))


def test_toy_with_path_is_rejected(tmp_path) -> None:
    with pytest.raises(ValueError, match='config.data.name=points'):
        validate_data_config(_data_config('spiral', str(tmp_path / 'x.npy')))


def test_missing_file(tmp_path) -> None:
    path = str(tmp_path / 'nope.npy')
    with pytest.raises(FileNotFoundError, match=re.escape(path)):
        load_points(path)
    with pytest.raises(FileNotFoundError, match=re.escape(path)):
        validate_data_config(_data_config('points', path))


def test_bad_extension(tmp_path) -> None:
    path = tmp_path / 'pts.txt'
    path.write_text('1,2\n' * 20)
    with pytest.raises(ValueError, match=re.escape(str(path)) + r".*'\.txt'.*\.npy, \.csv"):
        load_points(str(path))


def test_nan_row(tmp_path) -> None:
    x = _cloud(20, 2)
    x[3, 1] = np.nan
    x[7, 0] = np.inf
    path = tmp_path / 'bad.npy'
    np.save(path, x)
    msg = re.escape(str(path)) + r'.*2 row\(s\).*first bad row index 3'
    with pytest.raises(ValueError, match=msg):
        validate_data_config(_data_config('points', str(path)))
    csv = tmp_path / 'bad.csv'
    _write_csv(csv, x)
    with pytest.raises(ValueError, match=re.escape(str(csv)) + r'.*first bad row index 3'):
        load_points(str(csv))


def test_wrong_ndim(tmp_path) -> None:
    path = tmp_path / 'cube.npy'
    np.save(path, np.zeros((4, 5, 2), dtype=np.float32))
    msg = re.escape(str(path)) + r'.*\[num_points, dim\].*\(4, 5, 2\)'
    with pytest.raises(ValueError, match=msg):
        load_points(str(path))
    scalar = tmp_path / 'scalar.npy'
    np.save(scalar, np.float32(1.0))
    with pytest.raises(ValueError, match=r'shape \(\)'):
        load_points(str(scalar))


def test_too_few_points(tmp_path) -> None:
    path = tmp_path / 'few.csv'
    _write_csv(path, _cloud(5, 2), 'x,y')
    with pytest.raises(ValueError, match=re.escape(str(path)) + r'.*only 5 points.*at least 10'):
        make_dataset(_data_config('points', str(path)))


def test_non_numeric_csv_cell(tmp_path) -> None:
    path = tmp_path / 'text.csv'
    path.write_text('x,y\n' + '1.0,2.0\n' * 5 + '3.0,abc\n' + '1.0,2.0\n' * 5)
    with pytest.raises(ValueError, match=re.escape(str(path)) + r".*'abc'.*line 7"):
        load_points(str(path))
    ragged = tmp_path / 'ragged.csv'
    ragged.write_text('1,2\n' * 6 + '1,2,3\n' + '1,2\n' * 6)
    with pytest.raises(ValueError, match=re.escape(str(ragged)) + r'.*line 7 has 3 columns'):
        load_points(str(ragged))


def test_non_numeric_npy(tmp_path) -> None:
    path = tmp_path / 'str.npy'
    np.save(path, np.array([['a', 'b']] * 12))
    with pytest.raises(ValueError, match=re.escape(str(path)) + '.*dtype'):
        load_points(str(path))
