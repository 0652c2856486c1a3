"""Tests for drift_jax.eval.points against float64 NumPy references and basic metric properties.

References are written from the formulas with dense pairwise matrices, so sets stay small.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from drift_jax.eval.points import (
    energy_distance,
    expected_energy_floor,
    mean_pairwise_distance,
    mmd_rbf,
    sliced_wasserstein,
)


def _dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense float64 Euclidean distances, ``[n, m]``."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return np.sqrt(np.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1))


def _ref_energy(x: np.ndarray, y: np.ndarray, unbiased: bool) -> float:
    """``2 E||X-Y|| - E||X-X'|| - E||Y-Y'||`` with U- or V-statistic within-set terms."""
    n, m = len(x), len(y)
    sxx = _dists(x, x).sum()
    syy = _dists(y, y).sum()
    exx = sxx / (n * (n - 1)) if unbiased else sxx / n**2
    eyy = syy / (m * (m - 1)) if unbiased else syy / m**2
    return float(2.0 * _dists(x, y).mean() - exx - eyy)


def _ref_mmd(x: np.ndarray, y: np.ndarray, bandwidths: tuple[float, ...]) -> float:
    """Unbiased MMD^2 with a sum of Gaussian kernels."""

    def k(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d2 = _dists(a, b) ** 2
        return sum(np.exp(-d2 / (2.0 * h * h)) for h in bandwidths)

    n, m = len(x), len(y)
    kxx = k(x, x)
    kyy = k(y, y)
    exx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    eyy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(exx + eyy - 2.0 * k(x, y).mean())


def _sample(rng: np.random.Generator, n: int, d: int, shift: float = 0.0) -> np.ndarray:
    return (rng.normal(size=(n, d)) + shift).astype(np.float32)


@pytest.mark.parametrize(
    'n,m,d,method',
    [
        (300, 400, 2, 'auto'),
        (257, 129, 3, 'auto'),
        (200, 200, 16, 'auto'),
        (150, 220, 40, 'auto'),
        (300, 250, 2, 'gram'),
        (120, 90, 5, 'direct'),
    ],
)
@pytest.mark.parametrize('unbiased', [True, False])
def test_energy_matches_float64_reference(n, m, d, method, unbiased):
    rng = np.random.default_rng(n + m + d)
    x = _sample(rng, n, d, shift=0.0) * 1.5 + 4.0
    y = _sample(rng, m, d, shift=0.3) + 4.0
    ref = _ref_energy(x, y, unbiased)
    got = energy_distance(x, y, unbiased=unbiased, method=method)
    scale = _dists(x, y).mean()
    assert got == pytest.approx(ref, rel=1e-4, abs=1e-6 * scale)


def test_energy_near_noise_floor_is_accurate():
    # Same distribution: the estimate is a small difference of large terms.
    rng = np.random.default_rng(0)
    x = _sample(rng, 600, 2) + 10.0
    y = _sample(rng, 700, 2) + 10.0
    ref = _ref_energy(x, y, unbiased=True)
    got = energy_distance(x, y)
    assert abs(got - ref) < 1e-6 * _dists(x, y).mean()


def test_energy_chunked_and_unchunked_agree():
    rng = np.random.default_rng(1)
    x = _sample(rng, 333, 4)
    y = _sample(rng, 301, 4, shift=0.5)
    full = energy_distance(x, y, chunk_size=10_000)  # one chunk holds every row
    assert energy_distance(x, y, chunk_size=1) == pytest.approx(full, rel=1e-5)
    assert energy_distance(x, y, method='gram', chunk_size=13) == pytest.approx(full, rel=1e-4)


def test_energy_symmetric():
    rng = np.random.default_rng(2)
    x = _sample(rng, 200, 3)
    y = _sample(rng, 150, 3, shift=0.7)
    assert energy_distance(x, y) == pytest.approx(energy_distance(y, x), rel=1e-5)


def test_energy_identical_sets():
    rng = np.random.default_rng(3)
    x = _sample(rng, 400, 2)
    assert abs(energy_distance(x, x, unbiased=False)) < 1e-6
    # The U-statistic on identical sets is exactly -2 E||X-X'|| / n: small.
    u = energy_distance(x, x)
    exx = _dists(x, x).sum() / (400 * 399)
    assert u == pytest.approx(-2.0 * exx / 400, rel=1e-4)
    assert abs(u) < 0.01


def test_energy_same_distribution_small_and_grows_with_shift():
    rng = np.random.default_rng(4)
    x = _sample(rng, 1000, 2)
    same = energy_distance(x, _sample(rng, 1000, 2))
    values = [energy_distance(x, _sample(rng, 1000, 2, shift=s)) for s in (0.25, 0.5, 1.0, 2.0)]
    assert abs(same) < 0.1 * values[0]
    assert all(b > a for a, b in zip(values, values[1:], strict=False))


def test_energy_rejects_bad_input():
    with pytest.raises(ValueError):
        energy_distance(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError):
        energy_distance(np.zeros((1, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError):
        energy_distance(np.zeros(5), np.zeros(5))


@pytest.mark.parametrize('n,m,d', [(200, 300, 2), (150, 100, 20)])
def test_mmd_matches_float64_reference(n, m, d):
    rng = np.random.default_rng(10 + d)
    x = _sample(rng, n, d)
    y = _sample(rng, m, d, shift=0.4)
    bw = (0.5, 1.0, 2.0)
    assert mmd_rbf(x, y, bw) == pytest.approx(_ref_mmd(x, y, bw), rel=1e-4, abs=1e-6)


def test_mmd_properties():
    rng = np.random.default_rng(11)
    x = _sample(rng, 800, 2)
    same = mmd_rbf(x, _sample(rng, 800, 2))
    values = [mmd_rbf(x, _sample(rng, 800, 2, shift=s)) for s in (0.5, 1.0, 2.0)]
    assert values[0] > 0
    assert abs(same) < 0.1 * values[0]
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    assert mmd_rbf(x, x[::-1], chunk_size=17) == pytest.approx(mmd_rbf(x, x[::-1]), rel=1e-4)


def _ref_w1d(a: np.ndarray, b: np.ndarray, p: int) -> float:
    """Exact W_p^p between 1-D empirical measures via quantile functions on a fine grid."""
    a = np.sort(a.astype(np.float64))
    b = np.sort(b.astype(np.float64))
    n, m = len(a), len(b)
    grid = np.sort(np.concatenate([np.arange(n + 1) / n, np.arange(m + 1) / m]))
    mids = (grid[1:] + grid[:-1]) / 2
    w = np.diff(grid)
    qa = a[np.minimum((mids * n).astype(int), n - 1)]
    qb = b[np.minimum((mids * m).astype(int), m - 1)]
    return float(np.sum(w * np.abs(qa - qb) ** p))


def test_sliced_wasserstein_1d_exact_unequal_sizes():
    # In 1-D every direction is +-1, so SW equals the exact 1-D Wasserstein distance.
    rng = np.random.default_rng(12)
    a = _sample(rng, 37, 1)
    b = _sample(rng, 53, 1, shift=0.8)
    for p in (1, 2):
        got = sliced_wasserstein(a, b, jax.random.key(0), num_projections=4, p=p)
        want = _ref_w1d(a[:, 0], b[:, 0], p) ** (1.0 / p)
        assert got == pytest.approx(want, rel=1e-5)


def test_sliced_wasserstein_properties():
    rng = np.random.default_rng(13)
    key = jax.random.key(1)
    x = _sample(rng, 1000, 3)

    def sw(a: np.ndarray, b: np.ndarray) -> float:
        return sliced_wasserstein(a, b, key, num_projections=256)

    assert sw(x, x) < 1e-6
    same = sw(x, _sample(rng, 1000, 3))
    values = [sw(x, _sample(rng, 1000, 3, shift=s)) for s in (0.5, 1.0, 2.0)]
    assert same < 0.5 * values[0]
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    # Shifting every coordinate by 2 moves projection theta by 2 * sum(theta), whose RMS
    # over uniform unit directions is 2, so SW_2 is about 2.
    y = x + 2.0
    assert sw(x, y) == pytest.approx(2.0, rel=0.1)
    assert sw(x, y) == pytest.approx(sw(y, x), rel=1e-5)


def test_mean_pairwise_distance_matches_brute_force():
    rng = np.random.default_rng(11)
    x = _sample(rng, 150, 3)
    d = _dists(x, x)
    expected = d.sum() / (150 * 149)
    assert mean_pairwise_distance(x) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match='at least 2'):
        mean_pairwise_distance(x[:1])


def test_expected_energy_floor_is_the_mean_of_many_draws():
    """delta (1/n + 1/m) against the average V-statistic over 300 independent pairs of a
    two-mode mixture (the wrong 2 delta / n misses by more than 5 SE)."""
    rng = np.random.default_rng(12)

    def draw(k):
        centres = np.array([[-3.0, 0.0], [3.0, 0.0]])[rng.integers(0, 2, k)]
        return (centres + rng.normal(size=(k, 2))).astype(np.float32)

    n, m = 40, 90
    values = np.array([energy_distance(draw(n), draw(m), unbiased=False) for _ in range(300)])
    expected = expected_energy_floor(draw(4000), n, m)
    sem = values.std() / np.sqrt(len(values))
    assert abs(values.mean() - expected) < 3 * sem, (values.mean(), expected, sem)
    assert abs(values.mean() - 2 * expected * m / (n + m)) > 5 * sem
    with pytest.raises(ValueError, match='positive'):
        expected_energy_floor(draw(10), 0, 5)
