"""Evaluation of class-conditional image generators against a labelled real dataset.

Trains small convolutional classifiers (`image_classifier`, re-exported here) whose
penultimate features give a Frechet distance and k-NN precision/recall, and whose predictions
give the class accuracy of samples.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging

from drift_jax.eval.classifier import (
    Classifier,
    ConvNet,
    as_images,
    as_labels,
    train_classifier,
)

__all__ = [
    'Classifier',
    'ConvNet',
    'ImageEvaluator',
    'class_accuracy',
    'frechet_distance',
    'frechet_distance_from_moments',
    'per_class_accuracy',
    'precision_recall',
    'train_classifier',
    'within_class_spread',
]

#: Budget (float64 entries) for one chunk of a pairwise squared-distance matrix, about
#: 64 MiB; `precision_recall` works through its distance matrices in chunks of this size.
CHUNK_ENTRIES = 1 << 23


# ----------------------------------------------------------------------------------------------
# Metrics.


def class_accuracy(classifier: Classifier, images: Any, labels: Any) -> float:
    """Fraction of ``images [N, H, W, C]`` that ``classifier`` assigns to ``labels [N]``."""
    return classifier.accuracy(images, labels)


def per_class_accuracy(
    classifier: Classifier, images: Any, labels: Any, num_classes: int | None = None
) -> np.ndarray:
    """Accuracy per true class, float64 ``[num_classes]``; NaN for classes with no images.

    Args:
      classifier: a trained `Classifier`.
      images: ``[N, H, W, C]``.
      labels: int ``[N]``, the intended classes.
      num_classes: K; defaults to the classifier's.
    """
    x = as_images(images)
    y = as_labels(labels, x.shape[0])
    k = classifier.module.num_classes if num_classes is None else num_classes
    correct = classifier.predict(x) == y
    totals = np.bincount(y, minlength=k)[:k].astype(np.float64)
    hits = np.bincount(y, weights=correct.astype(np.float64), minlength=k)[:k]
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(totals > 0, hits / np.maximum(totals, 1), np.nan)


def within_class_spread(images: Any, labels: Any) -> float:
    """Mean over classes of the per-pixel standard deviation within the class, averaged over pixels.

    A diversity measure: a generator that collapses each class to few images scores low.
    Classes with fewer than 2 images are skipped (NaN if none has 2).

    Args:
      images: ``[N, ...]`` (any trailing shape; each trailing entry is a "pixel").
      labels: int ``[N]``.
    """
    x = np.asarray(images, dtype=np.float64)
    y = np.asarray(labels)
    if y.shape != (x.shape[0],):
        raise ValueError(f'labels must have shape [{x.shape[0]}], got {y.shape}')
    x = x.reshape(x.shape[0], -1)
    spreads = [x[y == c].std(axis=0).mean() for c in np.unique(y) if np.sum(y == c) >= 2]
    return float(np.mean(spreads)) if spreads else float('nan')


def _as_features(a: Any, name: str) -> np.ndarray:
    """float64 ``[n, F]`` with n >= 2."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f'{name} must have shape [n, F], got {a.shape}')
    if a.shape[0] < 2:
        raise ValueError(f'{name} needs at least 2 rows, got {a.shape[0]}')
    return a


def _trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray, method: str) -> float:
    """``Tr((S_a S_b)^{1/2})`` for symmetric PSD ``S_a, S_b [F, F]``.

    'eigh': with ``R = S_a^{1/2}`` (eigendecomposition, eigenvalues clamped at 0), ``S_a S_b``
    is similar to the symmetric PSD ``R S_b R``, so the trace is the sum of the square roots of
    its (clamped) eigenvalues. 'sqrtm': real part of ``trace(scipy.linalg.sqrtm(S_a S_b))``.
    """
    if method == 'eigh':
        w, u = np.linalg.eigh(cov_a)
        root_a = (u * np.sqrt(np.clip(w, 0.0, None))) @ u.T
        m = root_a @ cov_b @ root_a
        ev = np.linalg.eigvalsh(0.5 * (m + m.T))
        return float(np.sum(np.sqrt(np.clip(ev, 0.0, None))))
    if method == 'sqrtm':
        import scipy.linalg

        return float(np.real(np.trace(scipy.linalg.sqrtm(cov_a @ cov_b))))
    raise ValueError(f"method must be 'eigh' or 'sqrtm', got {method!r}")


def frechet_distance_from_moments(
    mu_a: Any, cov_a: Any, mu_b: Any, cov_b: Any, *, method: str = 'eigh'
) -> float:
    """Frechet (2-Wasserstein) distance between Gaussians N(mu_a, S_a) and N(mu_b, S_b).

    ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})`` in float64, clamped at 0.

    Args:
      mu_a, mu_b: means ``[F]``.
      cov_a, cov_b: symmetric PSD covariances ``[F, F]``.
      method: 'eigh' (default; numpy only, stable for singular covariances) or 'sqrtm' (scipy).
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.atleast_2d(cov_a).astype(np.float64), np.atleast_2d(cov_b).astype(np.float64)
    if mu_a.shape != mu_b.shape or cov_a.shape != cov_b.shape or cov_a.shape != mu_a.shape * 2:
        raise ValueError(
            f'shape mismatch: {mu_a.shape}, {cov_a.shape}, {mu_b.shape}, {cov_b.shape}'
        )
    diff = mu_a - mu_b
    tr = np.trace(cov_a) + np.trace(cov_b) - 2.0 * _trace_sqrt_product(cov_a, cov_b, method)
    return float(max(diff @ diff + tr, 0.0))


def frechet_distance(feats_a: Any, feats_b: Any, *, method: str = 'eigh') -> float:
    """Frechet distance between Gaussians fitted to two feature sets (FID-style).

    Means and unbiased covariances (``np.cov``) are computed in float64. The estimate is biased
    upwards for finite samples and the bias depends on the sizes, so compare values computed
    with equal set sizes.

    Args:
      feats_a: features ``[N, F]``, N >= 2.
      feats_b: features ``[M, F]``, M >= 2.
      method: see `frechet_distance_from_moments`.

    Returns:
      The distance, a float >= 0.
    """
    a, b = _as_features(feats_a, 'feats_a'), _as_features(feats_b, 'feats_b')
    if a.shape[1] != b.shape[1]:
        raise ValueError(f'feature sizes differ: {a.shape[1]} vs {b.shape[1]}')
    return frechet_distance_from_moments(
        a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False), method=method
    )


def _row_chunks(n_rows: int, n_cols: int) -> int:
    """Rows per chunk so that a ``[rows, n_cols]`` float64 block stays near the budget."""
    return max(1, min(n_rows, CHUNK_ENTRIES // max(n_cols, 1)))


def _sq_dists(q: np.ndarray, q_sq: np.ndarray, r: np.ndarray, r_sq: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances ``[n, m]`` from ``q [n, F]`` to ``r [m, F]`` (clamped >= 0)."""
    return np.maximum(q_sq[:, None] + r_sq[None, :] - 2.0 * (q @ r.T), 0.0)


def _knn_sq_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Squared distance from each row of ``x [n, F]`` to its k-th nearest other row, ``[n]``."""
    n = x.shape[0]
    x_sq = np.einsum('ij,ij->i', x, x)
    out = np.empty(n)
    rows = _row_chunks(n, n)
    for s in range(0, n, rows):
        d = _sq_dists(x[s : s + rows], x_sq[s : s + rows], x, x_sq)
        # Sorted row entry 0 is the point itself (distance 0), entry k its k-th neighbour.
        out[s : s + rows] = np.partition(d, k, axis=1)[:, k]
    return out


def _covered(queries: np.ndarray, refs: np.ndarray, ref_sq_radii: np.ndarray) -> float:
    """Fraction of ``queries [n, F]`` inside at least one ball (refs ``[m, F]``, radii² ``[m]``)."""
    q_sq = np.einsum('ij,ij->i', queries, queries)
    r_sq = np.einsum('ij,ij->i', refs, refs)
    rows = _row_chunks(queries.shape[0], refs.shape[0])
    hits = 0
    for s in range(0, queries.shape[0], rows):
        d = _sq_dists(queries[s : s + rows], q_sq[s : s + rows], refs, r_sq)
        hits += int(np.sum(np.any(d <= ref_sq_radii[None, :], axis=1)))
    return hits / queries.shape[0]


def precision_recall(real_feats: Any, fake_feats: Any, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al., 2019) with k-NN manifolds.

    Each real point gets a ball whose radius is the distance to its k-th nearest other real
    point; precision is the fraction of fake points inside at least one real ball. Recall is
    the same with the roles swapped (fraction of real points inside some fake ball). Distances
    are computed in float64 numpy in row chunks of about 64 MiB, so 10k x 10k sets are fine
    (cost O(N M F)).

    Args:
      real_feats: ``[N, F]``, N > k.
      fake_feats: ``[M, F]``, M > k.
      k: neighbour rank defining the radii (the paper uses 3).

    Returns:
      ``(precision, recall)``, each in [0, 1].
    """
    real, fake = _as_features(real_feats, 'real_feats'), _as_features(fake_feats, 'fake_feats')
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f'feature sizes differ: {real.shape[1]} vs {fake.shape[1]}')
    if k < 1 or min(real.shape[0], fake.shape[0]) <= k:
        raise ValueError(
            f'need 1 <= k < set sizes, got k={k}, sizes {real.shape[0]}, {fake.shape[0]}'
        )
    precision = _covered(fake, real, _knn_sq_radii(real, k))
    recall = _covered(real, fake, _knn_sq_radii(fake, k))
    return precision, recall


# ----------------------------------------------------------------------------------------------
# The evaluator.


def _fingerprint(*arrays: np.ndarray) -> str:
    """Short hex digest of array shapes, dtypes and bytes."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f'{a.shape}{a.dtype}'.encode())
        h.update(memoryview(a).cast('B'))
    return h.hexdigest()[:16]


class ImageEvaluator:
    """Scores generated labelled images against a real test set; build once, call per sample.

    Two classifiers are trained on the *whole* training split (or loaded from ``cache_dir``):

    * the **feature** classifier (``seed``, average pooling, ``width``) supplies the features
      for the Frechet distance and precision/recall;
    * the **held-out** classifier (``seed + 1``, max pooling, ``held_out_width``, its own batch
      order and augmentation draws) measures the class accuracy of generated images. It is
      independent of the feature network by initialisation, data order and architecture, not by
      data: halving a small training set (8x8 digits) costs more accuracy than it buys.

    At construction the features of all ``n_ref = len(test)`` test images are stored, and
    ``fd_floor = FD(features of n random train images, features of n random test images)``
    with ``n = min(len(train), len(test))`` (all test images when the train split is larger) -
    the distance a perfect sampler of the training distribution would roughly reach. Note that
    train images were seen by the feature network, which tends to make the floor slightly larger
    than the FD of fresh real images.

    Attributes:
      feature_classifier, held_out_classifier: the two `Classifier` s.
      test_features: float32 ``[n_ref, F]`` features of the test images.
      test_spread: `within_class_spread` of the test images.
      fd_floor: see above.
      test_accuracy: ``{'feature': acc, 'held_out': acc}`` of both classifiers on the test set.
    """

    def __init__(
        self,
        train_images: Any,
        train_labels: Any,
        test_images: Any,
        test_labels: Any,
        num_classes: int,
        *,
        seed: int = 0,
        steps: int = 600,
        batch_size: int = 128,
        width: int = 32,
        held_out_width: int | None = None,
        feature_dim: int = 128,
        learning_rate: float = 2e-3,
        augment_shift: int = 1,
        pr_k: int = 3,
        cache_dir: str | None = None,
    ):
        """Train (or load) both classifiers and precompute the real-data statistics.

        Args:
          train_images, train_labels: ``[N, H, W, C]`` floats and ``[N]`` ints.
          test_images, test_labels: ``[M, H, W, C]`` and ``[M]``, the reference set.
          num_classes: K.
          seed: base seed (feature net ``seed``, held-out net ``seed + 1``, floor subset).
          steps, batch_size, learning_rate, augment_shift, feature_dim: `train_classifier`.
          width: first-conv channels of the feature net.
          held_out_width: of the held-out net; default ``width + width // 2``.
          pr_k: neighbour rank of `precision_recall`.
          cache_dir: if given, classifiers are saved there as ``.npz`` keyed by a hash of the
            training data and settings, and loaded instead of retrained on later runs.
        """
        x_train = as_images(train_images, 'train_images')
        y_train = as_labels(train_labels, x_train.shape[0], 'train_labels')
        x_test = as_images(test_images, 'test_images')
        y_test = as_labels(test_labels, x_test.shape[0], 'test_labels')
        if x_train.shape[1:] != x_test.shape[1:]:
            raise ValueError(f'train/test image shapes differ: {x_train.shape} vs {x_test.shape}')
        self.num_classes = num_classes
        self.pr_k = pr_k
        common = dict(
            steps=steps,
            batch_size=batch_size,
            feature_dim=feature_dim,
            learning_rate=learning_rate,
            augment_shift=augment_shift,
        )
        specs = {
            'feature': dict(common, seed=seed, width=width, pool='avg'),
            'held_out': dict(
                common, seed=seed + 1, width=held_out_width or width + width // 2, pool='max'
            ),
        }
        data_key = _fingerprint(x_train, y_train) if cache_dir else ''
        nets = {}
        for name, spec in specs.items():
            nets[name] = self._get_classifier(
                name, spec, x_train, y_train, num_classes, cache_dir, data_key
            )
        self.feature_classifier: Classifier = nets['feature']
        self.held_out_classifier: Classifier = nets['held_out']
        self.test_accuracy = {name: net.accuracy(x_test, y_test) for name, net in nets.items()}

        self.test_features = self.feature_classifier.features(x_test)
        self.test_spread = within_class_spread(x_test, y_test)
        n = min(x_train.shape[0], x_test.shape[0])
        rng = np.random.default_rng(seed)
        train_idx = np.sort(rng.choice(x_train.shape[0], n, replace=False))
        test_idx = (
            np.arange(n)
            if n == x_test.shape[0]
            else np.sort(rng.choice(x_test.shape[0], n, replace=False))
        )
        train_features = self.feature_classifier.features(x_train[train_idx])
        self.fd_floor = frechet_distance(train_features, self.test_features[test_idx])
        logging.info(
            'ImageEvaluator: test accuracy %s, fd_floor %.4g (n=%d)',
            self.test_accuracy,
            self.fd_floor,
            n,
        )

    @staticmethod
    def _get_classifier(
        name: str,
        spec: Mapping[str, Any],
        x: np.ndarray,
        y: np.ndarray,
        num_classes: int,
        cache_dir: str | None,
        data_key: str,
    ) -> Classifier:
        """Load the classifier from the cache if present, else train (and cache) it."""
        path = None
        if cache_dir:
            spec_key = hashlib.sha256(
                json.dumps({**spec, 'num_classes': num_classes}, sort_keys=True).encode()
            ).hexdigest()[:12]
            path = os.path.join(cache_dir, f'classifier_{name}_{data_key}_{spec_key}.npz')
            if os.path.exists(path):
                logging.info('ImageEvaluator: loading %s classifier from %s', name, path)
                return Classifier.load(path)
        net = train_classifier(x, y, num_classes, **spec)
        logging.info(
            'ImageEvaluator: trained %s classifier in %.1f s', name, net.info['train_seconds']
        )
        if path:
            net.save(path)
        return net

    def per_class_accuracy(self, generated_images: Any, generated_labels: Any) -> np.ndarray:
        """Held-out classifier accuracy per intended class, ``[num_classes]`` (NaN if absent)."""
        return per_class_accuracy(
            self.held_out_classifier, generated_images, generated_labels, self.num_classes
        )

    @property
    def num_reference(self) -> int:
        """Number of real test images the generated set is compared with."""
        return int(self.test_features.shape[0])

    def __call__(self, generated_images: Any, generated_labels: Any) -> dict[str, float]:
        """Metrics of generated images against the test set.

        Pass ``num_reference`` images (the test-set size) so that ``fd`` is comparable with
        ``fd_floor``, which is computed with equal set sizes; FD grows as sets shrink.

        Args:
          generated_images: ``[G, H, W, C]`` in the data's value range.
          generated_labels: int ``[G]``, the classes the images were generated for.

        Returns:
          ``fd`` (generated vs test features), ``fd_floor``, ``fd_ratio = fd / fd_floor``,
          ``precision``, ``recall`` (k = ``pr_k``; real = test features), ``class_accuracy``
          (held-out classifier agrees with ``generated_labels``), ``spread_ratio`` (generated
          within-class spread / test within-class spread).
        """
        x = as_images(generated_images, 'generated_images')
        y = as_labels(generated_labels, x.shape[0], 'generated_labels')
        feats = self.feature_classifier.features(x)
        fd = frechet_distance(feats, self.test_features)
        precision, recall = precision_recall(self.test_features, feats, k=self.pr_k)
        return {
            'fd': fd,
            'fd_floor': self.fd_floor,
            'fd_ratio': fd / self.fd_floor if self.fd_floor > 0 else math.inf,
            'precision': precision,
            'recall': recall,
            'class_accuracy': self.held_out_classifier.accuracy(x, y),
            'spread_ratio': within_class_spread(x, y) / self.test_spread,
        }
