"""The image task: a labelled TFDS image dataset and its evaluator.

Real images reach the step as host batches (`host_batch`, seeded by the step so runs
resume exactly); the evaluator scores any sampler by the Frechet distance in the features
of a classifier trained on the same dataset (next to its real-vs-real floor),
precision/recall, class accuracy and spread.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import ml_collections
import numpy as np

from drift_jax.data import images as image_data

# sampler(key, n, labels) -> images [n, H, W, C] in training coordinates ([-1, 1]).
Sampler = Callable[..., np.ndarray]


def open_data(config: ml_collections.ConfigDict) -> image_data.ImageData:
    """Opens `config.data` (fails at once, with the command to prepare it, when missing)."""
    d = config.data
    if not d.name:
        raise ValueError('data.name is empty; give a TFDS image dataset name, e.g. digits.')
    return image_data.load_image_dataset(d.name, d.data_dir or None, download=d.download)


class ImageTask:
    """Labelled images [H, W, C] in [-1, 1] for training, [0, 1] for users."""

    kind = 'images'

    @staticmethod
    def validate(config: ml_collections.ConfigDict) -> None:
        """Opens the dataset and checks the FID files if asked for (a missing one fails here,
        before any compile)."""
        open_data(config)
        if config.eval.get('fid_stats', ''):
            from drift_jax.eval import fid as fid_eval

            fid_eval.validate_config_paths(config.eval)

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.data = open_data(config)
        self.image_shape = tuple(self.data.info.image_shape)
        self.data_shape = self.image_shape
        self.num_classes = self.data.info.num_classes

    def draw(self, key, n: int):
        raise ValueError('Image data come from host batches (host_batch), not from draw().')

    def host_batch(self, step: int, n: int | None) -> dict[str, np.ndarray] | None:
        """n real images and labels for `step` (seeded by (train.seed, step): resumable)."""
        if not n:
            return None
        rng = np.random.default_rng((self.config.train.seed, step))
        x, y = self.data.sample(rng, n)
        return {'images': x, 'labels': y}

    def to_user(self, x) -> np.ndarray:
        """Training images in [-1, 1] -> [0, 1] (clipped), [n, H, W, C]."""
        return np.clip((np.asarray(x) + 1.0) / 2.0, 0.0, 1.0)

    def make_evaluator(self, seed: int) -> ImageTaskEvaluator:
        return ImageTaskEvaluator(self, seed)


def upscale(images: np.ndarray, min_side: int = 32) -> np.ndarray:
    """Nearest-neighbour upscaling of [N, H, W, C] so small images stay visible in grids."""
    f = max(1, min_side // images.shape[1])
    return images.repeat(f, axis=1).repeat(f, axis=2) if f > 1 else images


def check_labels(labels, n: int, num_classes: int) -> np.ndarray:
    """Labels [n] as int32, checked against the class count (default: 0, 1, 2, ... cycling)."""
    if labels is None:
        return (np.arange(n) % num_classes).astype(np.int32)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ValueError(
            f'labels {sorted(set(bad.tolist()))[:10]} are outside the '
            f'{num_classes} classes [0, {num_classes - 1}].'
        )
    if labels.size != n:
        labels = np.resize(labels, n)
    return labels.astype(np.int32)


class ImageTaskEvaluator:
    """FD (with its train-vs-test floor), precision/recall and class accuracy of samples;
    with ``eval.fid_stats``, also Inception ``fid`` and ``inception_score``."""

    def __init__(self, task: ImageTask, seed: int):
        import jax

        from drift_jax.eval import images as image_eval

        self.task = task
        cfg = task.config
        train_x, train_y = task.data.class_arrays('train')
        test_split = 'test' if 'test' in task.data.info.split_sizes else 'validation'
        test_x, test_y = task.data.class_arrays(test_split)
        cache = os.path.join(task.data.data_dir, 'drift_jax_eval_cache')
        self.evaluator = image_eval.ImageEvaluator(
            train_x,
            train_y,
            test_x,
            test_y,
            task.num_classes,
            seed=seed,
            steps=cfg.eval.classifier_steps,
            cache_dir=cache,
        )
        self.key = jax.random.fold_in(jax.random.PRNGKey(seed), 0xE7A1)
        # Inception FID / IS only where the config names reference statistics.
        self.inception = None
        if cfg.eval.get('fid_stats', ''):
            from drift_jax.eval import fid as fid_eval

            self.inception = fid_eval.metrics_for_config(cfg.eval)

    def __call__(
        self, sampler: Sampler, step: int, sample_dir: str | None = None
    ) -> dict[str, float]:
        """Metrics of `sampler`'s images (labels cycling over classes); a grid per class."""
        cfg, task = self.task.config, self.task
        n = cfg.eval.num_samples
        labels = (np.arange(n) % task.num_classes).astype(np.int32)
        x01 = task.to_user(sampler(self.key, n, labels))
        if not np.all(np.isfinite(x01)):
            raise FloatingPointError(f'The model produced NaN/inf images at step {step}.')
        out = self.evaluator(x01 * 2.0 - 1.0, labels)
        if self.inception is not None:
            scores = self.inception(x01)
            out['fid'], out['inception_score'] = scores['fid'], scores['inception_score']
        if sample_dir is not None:
            from drift_jax import plotting

            k = cfg.eval.grid_per_class
            order = np.argsort(labels, kind='stable')
            grid = np.concatenate(
                [x01[order][labels[order] == c][:k] for c in range(task.num_classes)]
            )
            os.makedirs(sample_dir, exist_ok=True)
            plotting.image_grid(
                upscale(grid), os.path.join(sample_dir, f'step_{step:07d}.png'), nrow=k
            )
        return out
