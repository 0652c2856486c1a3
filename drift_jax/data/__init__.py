"""Datasets for drifting-model training: 2-D toys and a user's own point cloud.

``make_dataset(config.data)`` is the single entry point used by the trainer;
``validate_data_config`` fails fast (before any compile) on a bad data config.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from drift_jax.data.points import Standardizer, load_points, parse_columns
from drift_jax.data.toy import (
    BIMODAL_CENTERS,
    TOY_DATASETS,
    bimodal_init,
    bimodal_mode_fractions,
    sample_toy,
)

__all__ = [
    'BIMODAL_CENTERS',
    'DATASET_NAMES',
    'SPLITS',
    'Dataset',
    'PointsDataset',
    'Standardizer',
    'TOY_DATASETS',
    'ToyDataset',
    'bimodal_init',
    'bimodal_mode_fractions',
    'load_points',
    'make_dataset',
    'parse_columns',
    'sample_toy',
    'validate_data_config',
]

DATASET_NAMES: tuple[str, ...] = TOY_DATASETS + ('points',)
SPLITS: tuple[str, ...] = ('train', 'eval')
EVAL_FRACTION: float = 0.2
SPLIT_SEED: int = 0  # fixed seed of the train/eval row permutation for 'points'
_EVAL_FOLD: int = 0x5EED  # folded into the key for 'eval' draws


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f'unknown split {split!r}; valid splits: {", ".join(SPLITS)}')


class Dataset:
    """A sampleable dataset in *training* coordinates.

    Attributes:
      name: dataset name (one of ``DATASET_NAMES``).
      dim: dimension ``d`` of each point.
    """

    name: str
    dim: int

    def sample(self, key: jax.Array, n: int, split: str = 'train') -> jax.Array:
        """Draws ``n`` points, float32 ``[n, dim]``; jittable with ``n``/``split`` static."""
        raise NotImplementedError

    def to_data_space(self, x: Any) -> Any:
        """Maps training coordinates ``[..., dim]`` to the user's coordinates ``[..., dim]``."""
        raise NotImplementedError


class ToyDataset(Dataset):
    """One of the 2-D toy distributions; 'train' and 'eval' are independent streams."""

    def __init__(self, name: str):
        if name not in TOY_DATASETS:
            raise ValueError(
                f'unknown toy dataset {name!r}; valid names: {", ".join(TOY_DATASETS)}'
            )
        self.name = name
        self.dim = 2

    def sample(self, key: jax.Array, n: int, split: str = 'train') -> jax.Array:
        """Draws ``n`` toy points, float32 ``[n, 2]``.

        'train' uses ``key`` as is (same numbers as ``sample_toy``); 'eval' folds a
        constant into the key so the two splits never share draws.
        """
        _check_split(split)
        if split == 'eval':
            key = jax.random.fold_in(key, _EVAL_FOLD)
        return sample_toy(self.name, key, n)

    def to_data_space(self, x: Any) -> Any:
        """Identity: toys are trained in their own coordinates (``[..., 2]``)."""
        return x

    def __repr__(self) -> str:
        return f'ToyDataset(name={self.name!r})'


class PointsDataset(Dataset):
    """A user's point cloud, split 80/20 into train/eval and standardised.

    Attributes:
      path: the source file.
      standardizer: fitted on the train split; maps user -> training coordinates.
      train_points: float32 device array ``[n_train, dim]`` (training coordinates).
      eval_points: float32 device array ``[n_eval, dim]`` (training coordinates).
    """

    def __init__(self, points: np.ndarray, path: str = ''):
        """Builds the dataset from ``points [n, d]`` (already checked by ``load_points``)."""
        points = np.asarray(points, dtype=np.float32)
        n = points.shape[0]
        n_eval = min(max(1, int(round(EVAL_FRACTION * n))), n - 1)
        perm = np.random.default_rng(SPLIT_SEED).permutation(n)
        train_np = points[perm[n_eval:]]
        eval_np = points[perm[:n_eval]]
        self.name = 'points'
        self.path = path
        self.dim = int(points.shape[1])
        self.standardizer = Standardizer.fit(train_np)
        self.train_points = jnp.asarray(self.standardizer.transform(train_np), dtype=jnp.float32)
        self.eval_points = jnp.asarray(self.standardizer.transform(eval_np), dtype=jnp.float32)

    def sample(self, key: jax.Array, n: int, split: str = 'train') -> jax.Array:
        """Draws ``n`` rows with replacement from a split, float32 ``[n, dim]``."""
        _check_split(split)
        pool = self.train_points if split == 'train' else self.eval_points
        if split == 'eval':
            key = jax.random.fold_in(key, _EVAL_FOLD)
        idx = jax.random.randint(key, (n,), 0, pool.shape[0])
        return pool[idx]

    def to_data_space(self, x: Any) -> Any:
        """Undoes the standardisation: ``[..., dim]`` -> user coordinates."""
        return self.standardizer.inverse(x)

    def __repr__(self) -> str:
        return (
            f'PointsDataset(path={self.path!r}, dim={self.dim}, '
            f'n_train={self.train_points.shape[0]}, n_eval={self.eval_points.shape[0]})'
        )


def _get(data_config: Any, field: str, default: Any) -> Any:
    if hasattr(data_config, 'get'):
        return data_config.get(field, default)
    return getattr(data_config, field, default)


def _check(data_config: Any) -> np.ndarray | None:
    """Validates the config; returns the loaded points for 'points', else None."""
    name = _get(data_config, 'name', None)
    path = _get(data_config, 'path', '') or ''
    columns = parse_columns(_get(data_config, 'columns', ()))
    if not isinstance(name, str) or name not in DATASET_NAMES:
        raise ValueError(f'unknown dataset name {name!r}; valid names: {", ".join(DATASET_NAMES)}')
    if name != 'points':
        if path:
            raise ValueError(
                f'data.path={path!r} is set but data.name={name!r} is a built-in toy dataset; '
                'set --config.data.name=points to train on the file, or clear data.path'
            )
        if columns:
            raise ValueError(
                f'data.columns={",".join(map(str, columns))!r} is set but data.name={name!r} '
                'is a built-in toy dataset; data.columns picks columns of a data.path file'
            )
        return None
    if not path:
        raise ValueError(
            "data.name='points' needs a file: set --config.data.path=FILE "
            '(a .npy or .csv of shape [num_points, dim])'
        )
    return load_points(path, columns)


def validate_data_config(data_config: Any) -> None:
    """Raises ``ValueError``/``FileNotFoundError`` at once for a bad data config.

    Checks ``data_config.name`` is one of ``DATASET_NAMES``; for 'points' that
    ``data_config.path`` is set and the file (its ``data_config.columns``, if set)
    passes all ``load_points`` checks; for a toy that ``path`` and ``columns`` are empty.
    """
    _check(data_config)


def make_dataset(data_config: Any) -> Dataset:
    """Builds the dataset described by ``data_config`` (fields ``name``, ``path``, ``columns``)."""
    points = _check(data_config)
    name = _get(data_config, 'name', None)
    if points is None:
        return ToyDataset(name)
    return PointsDataset(points, path=_get(data_config, 'path', ''))
