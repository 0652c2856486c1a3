"""NCSN: a noise-conditional score network sampled by annealed Langevin dynamics.

Noise levels: sigma_1 > ... > sigma_L geometric, sigma_1 the largest pairwise distance of a
data sample (computed from the data unless `ncsn.sigma_max` is set), sigma_L = sigma_min.
The score network is s(x, sigma) = f(x, log sigma) / sigma (labels optional, with a null
label for guidance). Loss, with sigma drawn uniformly from the levels and lambda(sigma) =
sigma^2:

- denoising score matching: x~ = x + sigma z, target -(x~ - x) / sigma^2, so
  lambda ||s(x~, sigma) - target||^2 / 2 = ||sigma s(x~, sigma) + z||^2 / 2;
- sliced score matching (`ncsn.loss = 'ssm'`, for low-dimensional data): on x~, with random
  directions v, sigma^2 (v^T (d s / d x) v + (v^T s)^2 / 2).

Annealed Langevin dynamics from x ~ N(0, sigma_1^2 I): for each level i, `steps` updates
x <- x + (a_i / 2) s(x, sigma_i) + sqrt(a_i) z with a_i = eps sigma_i^2 / sigma_L^2; then,
optionally, one denoising step x <- x + sigma_L^2 s(x, sigma_L).
NFE = levels x steps (+1 for the denoising step; twice that with guidance, alpha != 1).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from drift_jax.methods.base import Method, Update
from drift_jax.methods.conditioning import (
    drop_labels,
    guidance_scale,
    guided,
    guided_nfe,
    sampling_labels,
)
from drift_jax.models.denoisers import make_denoiser

LOSSES = ('dsm', 'ssm')


def geometric_sigmas(sigma_max: float, sigma_min: float, levels: int) -> np.ndarray:
    """sigma_1 = sigma_max > ... > sigma_L = sigma_min, geometric, [levels] float64."""
    if levels == 1:
        return np.asarray([sigma_max], np.float64)
    return np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), levels))


def max_pairwise_distance(x: np.ndarray, chunk: int = 512) -> float:
    """Largest Euclidean distance between rows of x [N, ...] (flattened), float64."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    sq = np.sum(x * x, axis=1)
    best = 0.0
    for i in range(0, len(x), chunk):
        d2 = sq[i : i + chunk, None] + sq[None, :] - 2.0 * x[i : i + chunk] @ x.T
        best = max(best, float(np.max(d2)))
    return float(np.sqrt(max(best, 0.0)))


def dsm_loss(score_fn, x: jax.Array, sigma: jax.Array, z: jax.Array) -> jax.Array:
    """Denoising score matching with lambda = sigma^2: mean_b ||sigma s(x + sigma z) + z||^2 / 2.

    x, z [B, ...]; sigma [B]; score_fn(x~, sigma) -> [B, ...].
    """
    sb = sigma.reshape((-1,) + (1,) * (x.ndim - 1))
    s = score_fn(x + sb * z, sigma)
    return jnp.mean(0.5 * jnp.sum(jnp.square(sb * s + z).reshape(len(x), -1), axis=1))


def ssm_loss(score_fn, x: jax.Array, sigma: jax.Array, z: jax.Array, v: jax.Array) -> jax.Array:
    """Sliced score matching on x~ = x + sigma z with directions v [B, ...], weighted by
    sigma^2: mean_b sigma^2 (v^T J_s v + (v^T s)^2 / 2)."""
    sb = sigma.reshape((-1,) + (1,) * (x.ndim - 1))
    s, jv = jax.jvp(lambda a: score_fn(a, sigma), (x + sb * z,), (v,))
    flat = lambda a: a.reshape(len(x), -1)  # noqa: E731
    per = jnp.sum(flat(v) * flat(jv), axis=1) + 0.5 * jnp.sum(flat(v) * flat(s), axis=1) ** 2
    return jnp.mean(sigma**2 * per)


class NCSN(Method):
    """Noise-conditional score network (Song and Ermon) with annealed Langevin sampling."""

    name = 'ncsn'

    @staticmethod
    def validate(config: ml_collections.ConfigDict, task_kind: str) -> None:
        if 'ncsn' not in config or 'denoiser' not in config:
            raise ValueError(
                "method='ncsn' needs the config blocks ncsn and denoiser; start "
                'from drift_jax.defaults (toy_config or image_config).'
            )
        c = config.ncsn
        if not isinstance(c.levels, int) or c.levels < 1:
            raise ValueError(f'ncsn.levels must be a positive integer, got {c.levels!r}.')
        if not c.sigma_min > 0:
            raise ValueError(f'ncsn.sigma_min must be positive, got {c.sigma_min}.')
        if c.sigma_max and not c.sigma_min < c.sigma_max:
            raise ValueError(
                f'ncsn.sigma_min={c.sigma_min} must be below ncsn.sigma_max={c.sigma_max}.'
            )
        if c.loss not in LOSSES:
            raise ValueError(f'ncsn.loss={c.loss!r} is unknown; choose one of {LOSSES}.')
        if not c.step_eps > 0:
            raise ValueError(f'ncsn.step_eps must be positive, got {c.step_eps}.')
        if not 0 <= c.label_dropout < 1:
            raise ValueError(f'ncsn.label_dropout must be in [0, 1), got {c.label_dropout}.')
        steps = config.eval.get('sample_steps', 0)
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise ValueError(f'eval.sample_steps must be a non-negative integer, got {steps!r}.')
        if not isinstance(c.steps_per_level, int) or c.steps_per_level < 1:
            raise ValueError(
                f'ncsn.steps_per_level must be a positive integer, got {c.steps_per_level!r}.'
            )

    def __init__(self, config: ml_collections.ConfigDict, task: Any, mesh):
        super().__init__(config, task, mesh)
        c = config.ncsn
        self.data_shape = tuple(task.data_shape)
        self.num_classes = int(task.num_classes)
        self.images = task.kind == 'images'
        sigma_max = float(c.sigma_max) or max_pairwise_distance(self._data_sample(2000))
        if not c.sigma_min < sigma_max:
            raise ValueError(
                f'ncsn.sigma_min={c.sigma_min} must be below sigma_1={sigma_max:.4g}'
                ' (the largest pairwise distance of the data).'
            )
        self.sigmas = jnp.asarray(geometric_sigmas(sigma_max, c.sigma_min, c.levels), jnp.float32)
        self.model = make_denoiser(config.denoiser, self.data_shape, self.num_classes)
        if self.images:
            self.host_batch_size = int(config.train.batch_size)

    def _data_sample(self, n: int) -> np.ndarray:
        """n training examples (training coordinates), fixed by the seed."""
        if self.images:
            rng = np.random.default_rng((self.config.train.seed, 0x51C))
            return self.task.data.sample(rng, n)[0]
        key = jax.random.fold_in(jax.random.PRNGKey(self.config.train.seed), 0x51C)
        return np.asarray(self.task.draw(key, n))

    def score(self, params, x, sigma, labels=None):
        """s(x, sigma) = f(x, log sigma) / sigma: x [B, ...], sigma [B] -> [B, ...]."""
        out = self.model.apply(params, x, jnp.log(sigma), labels)
        return out / sigma.reshape((-1,) + (1,) * (x.ndim - 1))

    def init(self, key: jax.Array) -> tuple[dict[str, Any], Any]:
        x = jnp.zeros((1, *self.data_shape))
        labels = jnp.zeros((1,), jnp.int32) if self.num_classes else None
        return {'score': self.model.init(key, x, jnp.zeros((1,)), labels)}, {}

    def _loss(self, params, extra, key, batch):
        c = self.config.ncsn
        k_data, k_level, k_z, k_v, k_drop = jax.random.split(key, 5)
        if self.images:
            x, labels = batch['images'], batch['labels']
        else:
            x, labels = self.task.draw(k_data, self.config.train.batch_size), None
        labels = drop_labels(k_drop, labels, c.label_dropout, self.num_classes)
        sigma = self.sigmas[jax.random.randint(k_level, (x.shape[0],), 0, len(self.sigmas))]
        z = jax.random.normal(k_z, x.shape)

        def score_fn(a, s):
            return self.score(params['score'], a, s, labels)

        if c.loss == 'ssm':
            v = jax.random.normal(k_v, x.shape)
            return ssm_loss(score_fn, x, sigma, z, v), ({}, extra)
        return dsm_loss(score_fn, x, sigma, z), ({}, extra)

    def updates(self) -> tuple[Update, ...]:
        return (Update('score', self._loss),)

    def _options(self, steps, alpha):
        steps = int(
            steps or self.config.eval.get('sample_steps', 0) or self.config.ncsn.steps_per_level
        )
        if steps < 1:
            raise ValueError(f'steps must be a positive integer, got {steps}.')
        alpha = guidance_scale(alpha, self.config.eval.get('alpha', 1.0), self.num_classes)
        return steps, alpha

    def nfe(self, steps: int | None = None, alpha: float | None = None) -> int:
        steps, alpha = self._options(steps, alpha)
        n = len(self.sigmas) * steps + int(self.config.ncsn.final_denoise)
        return guided_nfe(n, alpha)

    def sample(self, params, key, n, labels=None, steps=None, alpha=None):
        """n samples by annealed Langevin dynamics with `steps` per noise level."""
        steps, alpha = self._options(steps, alpha)
        labels = sampling_labels(labels, n, self.num_classes)
        return np.asarray(self._sample_jit(params['score'], key, n, labels, steps, alpha))

    @functools.partial(jax.jit, static_argnums=(0, 3, 5, 6))
    def _sample_jit(self, params, key, n, labels, steps, alpha):
        c = self.config.ncsn
        sigmas = self.sigmas
        k_init, k_run = jax.random.split(key)
        x = sigmas[0] * jax.random.normal(k_init, (n, *self.data_shape))

        def score(x, sigma):
            # One noise level for the whole batch: its embedding is computed once.
            s = jnp.full((1,), sigma)
            return guided(
                lambda lab: self.score(params, x, s, lab), labels, alpha, self.num_classes
            )

        def level(x, inputs):
            sigma, k = inputs
            a = c.step_eps * (sigma / sigmas[-1]) ** 2

            def langevin(x, kk):
                z = jax.random.normal(kk, x.shape)
                return x + 0.5 * a * score(x, sigma) + jnp.sqrt(a) * z, None

            x, _ = jax.lax.scan(langevin, x, jax.random.split(k, steps))
            return x, None

        x, _ = jax.lax.scan(level, x, (sigmas, jax.random.split(k_run, len(sigmas))))
        if c.final_denoise:
            x = x + sigmas[-1] ** 2 * score(x, sigmas[-1])
        return x
