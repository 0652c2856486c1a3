"""Tests for drift_jax.eval.images: classifiers, Frechet distance, precision/recall, evaluator.

Uses sklearn's 8x8 digits scaled to [-1, 1] ([N, 8, 8, 1]); classifiers train for few steps,
and the evaluator is built once per module (its second build must come from the cache).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.datasets import load_digits

from drift_jax.eval import images as ie

STEPS = 200


@pytest.fixture(scope='module')
def digits() -> dict[str, np.ndarray]:
    """Digits split into train (1000), test (400) and fresh real images (397)."""
    d = load_digits()
    x = (d.images / 16.0 * 2.0 - 1.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int32)
    perm = np.random.default_rng(0).permutation(len(x))
    tr, te, fr = perm[:1000], perm[1000:1400], perm[1400:]
    return dict(
        x_train=x[tr], y_train=y[tr], x_test=x[te], y_test=y[te], x_fresh=x[fr], y_fresh=y[fr]
    )


@pytest.fixture(scope='module')
def evaluator_and_cache(digits, tmp_path_factory) -> tuple[ie.ImageEvaluator, str]:
    cache = str(tmp_path_factory.mktemp('classifier_cache'))
    ev = ie.ImageEvaluator(
        digits['x_train'],
        digits['y_train'],
        digits['x_test'],
        digits['y_test'],
        10,
        seed=0,
        steps=STEPS,
        cache_dir=cache,
    )
    return ev, cache


# ---------------------------------------------------------------------------------------------
# Classifiers.


def test_classifiers_reach_high_accuracy(evaluator_and_cache, digits):
    ev, _ = evaluator_and_cache
    assert ev.test_accuracy['feature'] >= 0.9
    assert ev.test_accuracy['held_out'] >= 0.9
    net = ev.feature_classifier
    x, y = digits['x_test'], digits['y_test']
    assert net.logits(x[:5]).shape == (5, 10)
    tiled = np.concatenate([x, x, x])  # 1200 = 1024 + a padded tail
    np.testing.assert_allclose(net.features(tiled)[800:], net.features(x), rtol=1e-5, atol=1e-5)
    assert net.features(x[:3, ..., 0]).shape == (3, 128)  # [N, H, W] gets a channel
    assert ie.class_accuracy(net, x, y) == pytest.approx(ev.test_accuracy['feature'])
    per_class = ie.per_class_accuracy(net, x, y)
    assert per_class.shape == (10,)
    counts = np.bincount(y, minlength=10)
    assert np.sum(per_class * counts) / counts.sum() == pytest.approx(net.accuracy(x, y))
    assert np.isnan(ie.per_class_accuracy(net, x[y < 5], y[y < 5])[7])


def test_classifier_untrained_is_chance(digits):
    net = ie.train_classifier(digits['x_train'][:64], digits['y_train'][:64], 10, steps=0)
    assert net.accuracy(digits['x_test'], digits['y_test']) < 0.5


def test_evaluator_cache_skips_training(evaluator_and_cache, digits, monkeypatch):
    ev, cache = evaluator_and_cache

    def fail(*args, **kwargs):
        raise AssertionError('classifier retrained despite the cache')

    monkeypatch.setattr(ie, 'train_classifier', fail)
    ev2 = ie.ImageEvaluator(
        digits['x_train'],
        digits['y_train'],
        digits['x_test'],
        digits['y_test'],
        10,
        seed=0,
        steps=STEPS,
        cache_dir=cache,
    )
    assert ev2.fd_floor == pytest.approx(ev.fd_floor, rel=1e-5)
    assert ev2.test_accuracy == pytest.approx(ev.test_accuracy)
    np.testing.assert_allclose(ev2.test_features, ev.test_features, rtol=1e-5, atol=1e-5)
    with pytest.raises(AssertionError, match='retrained'):  # other settings miss the cache
        ie.ImageEvaluator(
            digits['x_train'],
            digits['y_train'],
            digits['x_test'],
            digits['y_test'],
            10,
            seed=0,
            steps=STEPS + 1,
            cache_dir=cache,
        )


# ---------------------------------------------------------------------------------------------
# Frechet distance.


@pytest.mark.parametrize('method', ['eigh', 'sqrtm'])
def test_frechet_matches_closed_form(method):
    rng = np.random.default_rng(1)
    f = 6
    mu_a, mu_b = rng.normal(size=f), rng.normal(size=f)
    var_a, var_b = rng.uniform(0.1, 3.0, f), rng.uniform(0.1, 3.0, f)
    closed = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    got = ie.frechet_distance_from_moments(
        mu_a, np.diag(var_a), mu_b, np.diag(var_b), method=method
    )
    assert got == pytest.approx(closed, rel=1e-9)
    # Same spectra in a shared rotated basis: the closed form still holds.
    q, _ = np.linalg.qr(rng.normal(size=(f, f)))
    got_rot = ie.frechet_distance_from_moments(
        mu_a, q @ np.diag(var_a) @ q.T, mu_b, q @ np.diag(var_b) @ q.T, method=method
    )
    assert got_rot == pytest.approx(closed, rel=1e-8)


def test_frechet_general_covariances():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s_a, s_b = a @ a.T, b @ b.T  # do not commute
    mu = np.zeros(5)
    eig = ie.frechet_distance_from_moments(mu, s_a, mu, s_b)
    assert eig == pytest.approx(
        ie.frechet_distance_from_moments(mu, s_a, mu, s_b, method='sqrtm'), rel=1e-8
    )
    assert eig > 0.1
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2.
    assert ie.frechet_distance_from_moments([1.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(5.0)
    # Rank-deficient covariances stay finite and the distance of a set to itself is 0.
    low = rng.normal(size=(200, 3)) @ rng.normal(size=(3, 10))
    assert ie.frechet_distance(low, low) == pytest.approx(0.0, abs=1e-6)


def test_frechet_on_samples():
    rng = np.random.default_rng(3)
    n, f = 20000, 4
    std_a, std_b = np.array([1.0, 0.5, 2.0, 1.0]), np.array([1.0, 1.0, 1.0, 0.25])
    a = rng.normal(size=(n, f)) * std_a
    b = rng.normal(size=(n, f)) * std_b + 0.5
    closed = f * 0.25 + np.sum((std_a - std_b) ** 2)
    assert ie.frechet_distance(a, b) == pytest.approx(closed, rel=0.05)
    assert ie.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # A shift d changes only the mean term: FD = ||d||^2, increasing with |d|.
    fds = [ie.frechet_distance(a, a + s) for s in (0.5, 1.0, 2.0)]
    np.testing.assert_allclose(fds, [f * s**2 for s in (0.5, 1.0, 2.0)], rtol=1e-6)
    assert fds[0] < fds[1] < fds[2]
    with pytest.raises(ValueError):
        ie.frechet_distance(a, b[:, :3])


# ---------------------------------------------------------------------------------------------
# Precision and recall.


def _clusters(rng: np.random.Generator, n: int, modes: np.ndarray) -> np.ndarray:
    """``n`` points in 2-D around centres on a circle of radius 10, one mode id per point."""
    angles = 2 * np.pi * np.arange(10) / 10
    centres = 10.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    which = rng.choice(modes, n)
    return centres[which] + 0.3 * rng.normal(size=(n, 2))


def test_precision_recall_limits():
    rng = np.random.default_rng(4)
    real = _clusters(rng, 2000, np.arange(10))
    assert ie.precision_recall(real, real) == (1.0, 1.0)
    assert ie.precision_recall(real, real + 100.0) == (0.0, 0.0)
    fresh = _clusters(rng, 2000, np.arange(10))
    p, r = ie.precision_recall(real, fresh)
    assert p > 0.9 and r > 0.9


def test_precision_recall_half_the_modes():
    rng = np.random.default_rng(5)
    real = _clusters(rng, 2000, np.arange(10))
    fake = _clusters(rng, 1000, np.arange(5))
    p, r = ie.precision_recall(real, fake, k=3)
    assert p > 0.9
    assert 0.4 < r < 0.6


def test_precision_recall_chunking_and_brute_force(monkeypatch):
    rng = np.random.default_rng(6)
    real, fake = rng.normal(size=(300, 5)), rng.normal(size=(250, 5)) + 0.3
    k = 3

    def brute(ref, query):
        d_rr = np.linalg.norm(ref[:, None] - ref[None], axis=-1)
        radii = np.sort(d_rr, axis=1)[:, k]
        d_qr = np.linalg.norm(query[:, None] - ref[None], axis=-1)
        return np.mean(np.any(d_qr <= radii[None], axis=1))

    expected = (brute(real, fake), brute(fake, real))
    assert ie.precision_recall(real, fake, k=k) == pytest.approx(expected)
    monkeypatch.setattr(ie, 'CHUNK_ENTRIES', 1000)  # a few rows per chunk
    assert ie.precision_recall(real, fake, k=k) == pytest.approx(expected)
    assert 0.2 < expected[0] < 0.99 and 0.2 < expected[1] < 0.99


# ---------------------------------------------------------------------------------------------
# Spread and the evaluator.


def test_within_class_spread():
    x = np.zeros((6, 2, 2, 1))
    x[3:5] = 1.0
    x[5] = -1.0  # class 1: values 1, 1, -1
    y = np.array([0, 0, 0, 1, 1, 1])
    std1 = np.std([1.0, 1.0, -1.0])
    assert ie.within_class_spread(x, y) == pytest.approx(0.5 * (0.0 + std1))
    # A class with a single image is skipped.
    assert ie.within_class_spread(x[:4], y[:4]) == pytest.approx(0.0)


def test_evaluator_on_real_images(evaluator_and_cache, digits):
    ev, _ = evaluator_and_cache
    start = time.perf_counter()
    m = ev(digits['x_fresh'], digits['y_fresh'])
    elapsed = time.perf_counter() - start
    assert set(m) == {
        'fd',
        'fd_floor',
        'fd_ratio',
        'precision',
        'recall',
        'class_accuracy',
        'spread_ratio',
    }
    assert m['fd_floor'] > 0 and m['fd_ratio'] == pytest.approx(m['fd'] / m['fd_floor'])
    assert 0.2 < m['fd_ratio'] < 3.0
    assert m['class_accuracy'] > 0.9
    assert 0.85 < m['spread_ratio'] < 1.15
    assert m['precision'] > 0.6 and m['recall'] > 0.6
    per_class = ev.per_class_accuracy(digits['x_fresh'], digits['y_fresh'])
    assert per_class.shape == (10,) and np.nanmin(per_class) > 0.7
    assert elapsed < 10.0


def test_evaluator_on_noise_and_collapse(evaluator_and_cache, digits):
    ev, _ = evaluator_and_cache
    real = ev(digits['x_fresh'], digits['y_fresh'])
    rng = np.random.default_rng(7)
    n = len(digits['y_fresh'])
    noise = rng.uniform(-1, 1, size=(n, 8, 8, 1)).astype(np.float32)
    m = ev(noise, digits['y_fresh'])
    assert m['fd_ratio'] > 10.0 * max(real['fd_ratio'], 1.0)
    assert m['class_accuracy'] < 0.3
    assert m['precision'] < 0.2
    # Mode collapse: one image per class, repeated. Accurate but no diversity.
    x_train, y_train = digits['x_train'], digits['y_train']
    firsts = np.array([np.flatnonzero(y_train == c)[0] for c in range(10)])
    labels = np.arange(n) % 10
    c = ev(x_train[firsts][labels], labels)
    assert c['spread_ratio'] == pytest.approx(0.0, abs=1e-6)
    assert c['recall'] < 0.3
    assert c['fd_ratio'] > 2.0 * real['fd_ratio']
