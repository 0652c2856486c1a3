"""Masked autoencoder: trains the ResNet feature encoder that feature-space drifting freezes.

Not a generator (`generative = False`): its evaluation is the masked-reconstruction loss of
the EMA encoder on held-out images with a fixed mask. Images only.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from drift_jax.methods.base import Method, Update
from drift_jax.models import encoders


class MAE(Method):
    """`mae_loss` of `models.encoders.MAE` on batches of real images."""

    name = 'mae'
    task_kinds = ('images',)
    generative = False

    @staticmethod
    def validate(config: ml_collections.ConfigDict, task_kind: str) -> None:
        if task_kind != 'images':
            raise ValueError(
                "method='mae' trains an image encoder; use an image config "
                '(configs/mae_digits.py, configs/mae_mnist.py).'
            )
        if 'mae' not in config:
            raise ValueError(
                "method='mae' needs a config.mae block; start from configs/mae_digits.py."
            )
        if not 0 < config.mae.mask_ratio < 1:
            raise ValueError(f'mae.mask_ratio must be in (0, 1), got {config.mae.mask_ratio}.')
        stride = config.mae.get('stem_stride', 1)
        if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
            raise ValueError(f'mae.stem_stride must be a positive integer, got {stride!r}.')

    def __init__(self, config: ml_collections.ConfigDict, task: Any, mesh):
        super().__init__(config, task, mesh)
        self.image_shape = tuple(task.image_shape)
        m = config.mae
        self.model = encoders.make_mae(
            self.image_shape[-1],
            widths=tuple(m.widths),
            blocks_per_stage=m.blocks_per_stage,
            decoder_width=m.decoder_width,
            stem_stride=m.get('stem_stride', 1),
        )
        self.host_batch_size = int(config.train.batch_size)
        self._eval_loss = None

    def init(self, key: jax.Array) -> tuple[dict[str, Any], Any]:
        return {'mae': self.model.init(key, jnp.zeros((1, *self.image_shape)))}, {}

    def _loss(self, params, extra, key, batch):
        m = self.config.mae
        loss, stats = encoders.mae_loss(
            params['mae']['params'], self.model, batch['images'], key, m.mask_ratio, m.patch_size
        )
        return loss, (dict(stats), extra)

    def updates(self) -> tuple[Update, ...]:
        return (Update('mae', self._loss),)

    def sample(self, params, key, n, labels=None, **options):
        raise ValueError('An MAE workdir holds a feature encoder, not a generator.')

    def evaluate(self, params: dict[str, Any], step: int) -> dict[str, float]:
        """Masked-reconstruction loss of the EMA encoder on held-out images (fixed mask)."""
        if self._eval_loss is None:
            data = self.task.data
            split = 'test' if 'test' in data.info.split_sizes else 'validation'
            images = data.class_arrays(split)[0][: self.config.eval.num_samples]
            m = self.config.mae
            key = jax.random.PRNGKey(self.config.train.seed)
            self._eval_loss = jax.jit(
                lambda p: encoders.mae_loss(p, self.model, images, key, m.mask_ratio, m.patch_size)[
                    0
                ]
            )
        return {'mae_test_loss': float(self._eval_loss(params['mae']['params']))}
