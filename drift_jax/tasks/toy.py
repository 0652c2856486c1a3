"""The toy task: low-dimensional data (2-D toys, a user's point cloud) and its evaluator.

Data are drawn inside the jitted step (`draw`); the evaluator scores any sampler by the
energy distance to held-out data next to its noise floor.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import ml_collections
import numpy as np

from drift_jax import data
from drift_jax.eval import points as metrics

# sampler(key, n, labels=None) -> samples [n, D] in training coordinates.
Sampler = Callable[..., np.ndarray]
EXTRA_METRICS = ('mmd', 'sliced_wasserstein')


def _positive_int(value, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f'{name} must be a positive integer, got {value!r}.')


class ToyTask:
    """Points in D dimensions: a named toy distribution or a `.npy`/`.csv` point cloud."""

    kind = 'points'

    @staticmethod
    def validate(config: ml_collections.ConfigDict) -> None:
        """Data and evaluation checks (before anything is built or compiled)."""
        data.validate_data_config(config.data)
        if 'draws' in config.eval:
            _positive_int(config.eval.draws, 'eval.draws')
        unknown = set(config.eval.get('extra_metrics', ())) - set(EXTRA_METRICS)
        if unknown:
            raise ValueError(
                f'eval.extra_metrics has unknown {sorted(unknown)}; choose from {EXTRA_METRICS}.'
            )

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.dataset = data.make_dataset(config.data)
        self.data_shape = (self.dataset.dim,)
        self.num_classes = 0

    def draw(self, key: jax.Array, n: int) -> jax.Array:
        """n training samples [n, D] in training coordinates (pure JAX, inside the step)."""
        return self.dataset.sample(key, n)

    def host_batch(self, step: int, n: int | None) -> None:
        """Toy data are drawn inside the step: no host data."""
        del step, n

    def to_user(self, x) -> np.ndarray:
        """Training coordinates [n, D] -> the user's data coordinates [n, D]."""
        return np.asarray(self.dataset.to_data_space(np.asarray(x)))

    def make_evaluator(self, seed: int) -> ToyEvaluator:
        return ToyEvaluator(self, seed)


class ToyEvaluator:
    """Energy distance of samples against held-out data, next to its noise floor.

    Fixed keys, so figures from different steps (and methods) are comparable.
    `energy_distance` is the mean over `eval.draws` pairs (generated draw k, held-out data
    draw k) of the V-statistic between `eval.num_samples` points each; `energy_floor` is the
    expected value of that same statistic between two independent data draws of that size
    (`metrics.expected_energy_floor`, from min(10000, max(2000, 2n)) further held-out
    points). A single pair of draws scatters too widely to divide by, so both sides are
    averaged; a generator that samples the data distribution scores ~1.
    `eval.extra_metrics` adds MMD (RBF kernels) and the sliced Wasserstein-2 distance of
    the first draw.
    """

    def __init__(self, task: ToyTask, seed: int):
        self.task = task
        cfg = task.config.eval
        n, draws = cfg.num_samples, cfg.get('draws', 1)
        base = jax.random.fold_in(jax.random.PRNGKey(seed), 0x5EED)
        k_gen, k_ref, k_floor = jax.random.split(base, 3)
        self.gen_keys = list(jax.random.split(k_gen, draws))
        self.extra_key = jax.random.fold_in(base, 1)
        ds = task.dataset
        self.references = [
            np.asarray(ds.sample(k, n, split='eval')) for k in jax.random.split(k_ref, draws)
        ]
        self.reference = self.references[0]
        pool = np.asarray(ds.sample(k_floor, min(10000, max(2000, 2 * n)), split='eval'))
        self.floor = metrics.expected_energy_floor(pool, n, n)

    def score(self, generated: list[np.ndarray]) -> dict[str, float]:
        """ED (mean over draws), floor and ratio of generated draws [eval.draws][n, D]."""
        if len(generated) != len(self.references):
            raise ValueError(
                f'Expected {len(self.references)} generated draws, got {len(generated)}.'
            )
        ed = float(
            np.mean(
                [
                    metrics.energy_distance(g, r, unbiased=False)
                    for g, r in zip(generated, self.references, strict=True)
                ]
            )
        )
        return {
            'energy_distance': ed,
            'energy_floor': self.floor,
            'energy_ratio': ed / max(self.floor, 1e-12),
        }

    def __call__(
        self, sampler: Sampler, step: int, sample_dir: str | None = None
    ) -> dict[str, float]:
        """Metrics of `sampler`'s draws; also plots samples over data into `sample_dir`."""
        cfg = self.task.config
        draws = [np.asarray(sampler(k, cfg.eval.num_samples)) for k in self.gen_keys]
        if not all(np.all(np.isfinite(g)) for g in draws):
            raise FloatingPointError(f'The model produced NaN/inf samples at step {step}.')
        gen = draws[0]
        out = self.score(draws)
        extra = cfg.eval.get('extra_metrics', ())
        if 'mmd' in extra:
            out['mmd'] = float(metrics.mmd_rbf(gen, self.reference))
        if 'sliced_wasserstein' in extra:
            out['sliced_wasserstein'] = float(
                metrics.sliced_wasserstein(gen, self.reference, self.extra_key)
            )
        if cfg.data.name == 'bimodal':
            f0, f1 = data.bimodal_mode_fractions(gen)
            out.update(mode_fraction_0=float(f0), mode_fraction_1=float(f1))
        if sample_dir is not None:
            from drift_jax import plotting

            k, to_user = cfg.eval.plot_points, self.task.to_user
            plotting.plot_samples(
                os.path.join(sample_dir, f'step_{step:07d}.png'),
                to_user(gen[:k]),
                to_user(self.reference[:k]),
                title=f'{cfg.data.name}, step {step}, ED/floor {out["energy_ratio"]:.2f}',
            )
        return out
