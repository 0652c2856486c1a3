"""Paired image completion: the conditional GAN with an L1 term, or the L1 term alone.

The task of the lecture's conditional GAN: from an image whose lower rows are hidden
(`complete.keep_rows`: the share of rows kept from the top), produce the whole image. The
generator G(c, z) sees c = [the masked image, the mask] and noise channels z and outputs
the hidden rows (the kept rows are copied from c). With `complete.loss`:

- 'gan_l1':  argmin_G max_D  L_cGAN(G, D) + lambda L1(G), with L_cGAN the non-saturating
  loss of D(c, x) (real pairs: c with its own image; generated: c with G's completion, R1
  on the reals: the `gan` block) and L1 = E abs(x - G(c, z)) over the hidden rows;
- 'l1': the same generator with the L1 term only (the regression baseline).

Sampling completes held-out (test split) images of the requested labels, so the image
evaluator's class accuracy asks whether a completion still shows the digit it was cut
from, and its spread ratio compares the completions' variety with the real images'.
`evaluate` also logs `completion_l1`, the mean absolute error on the hidden rows of
held-out images. NFE = 1.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from drift_jax import mesh as mesh_lib
from drift_jax.methods import adversarial
from drift_jax.methods.base import Method, Update, check_int
from drift_jax.methods.gan import discriminator_optimizer, discriminator_size
from drift_jax.models.denoisers import UNet
from drift_jax.models.discriminators import make_discriminator

LOSSES = ('gan_l1', 'l1')


def keep_mask(image_shape: tuple[int, ...], keep_rows: float) -> np.ndarray:
    """[H, W, 1] float32: 1 on the kept top rows (round(keep_rows * H), at least 1), 0 below."""
    h, w = image_shape[0], image_shape[1]
    rows = min(h - 1, max(1, round(keep_rows * h)))
    mask = np.zeros((h, w, 1), np.float32)
    mask[:rows] = 1.0
    return mask


class Complete(Method):
    """Completing images from their top rows: conditional GAN + L1, or L1 alone."""

    name = 'complete'
    task_kinds = ('images',)

    @staticmethod
    def validate(config: ml_collections.ConfigDict, task_kind: str) -> None:
        if 'complete' not in config:
            raise ValueError(
                "method='complete' needs the config block complete; start from "
                'configs/digits_complete.py.'
            )
        c = config.complete
        if c.loss not in LOSSES:
            raise ValueError(f'complete.loss={c.loss!r} is unknown; choose one of {LOSSES}.')
        if not 0 < c.keep_rows < 1:
            raise ValueError(f'complete.keep_rows must be in (0, 1), got {c.keep_rows}.')
        if not c.l1_weight >= 0 or (c.loss == 'l1' and not c.l1_weight > 0):
            raise ValueError(
                f'complete.l1_weight must be >= 0 (> 0 with loss l1), got {c.l1_weight}.'
            )
        check_int(c.latent_channels, 'complete.latent_channels', 0)
        adversarial.validate_adversarial(config.gan, 'gan')

    def __init__(self, config: ml_collections.ConfigDict, task: Any, mesh):
        super().__init__(config, task, mesh)
        c = config.complete
        self.adversarial = c.loss == 'gan_l1'
        self.image_shape = tuple(task.data_shape)
        self.num_classes = int(task.num_classes)
        self.mask = jnp.asarray(keep_mask(self.image_shape, c.keep_rows))
        self.latent_channels = int(c.latent_channels)
        d = config.denoiser
        self.generator = UNet(
            self.image_shape[-1],
            int(d.base_channels),
            tuple(int(m) for m in d.mults),
            int(d.num_res_blocks),
        )
        self.discriminator = make_discriminator(discriminator_size(config), self.image_shape)
        self.host_batch_size = int(config.train.batch_size)
        self.watch = adversarial.DivergenceWatch(config.gan.stop_patience, 'gan')
        test_split = 'test' if 'test' in task.data.info.split_sizes else 'validation'
        self.held_out = task.data.class_arrays(test_split)
        self._complete = jax.jit(self.complete)

    def condition(self, images: jax.Array) -> jax.Array:
        """c [B, H, W, C + 1]: the images with the hidden rows set to -1, and the mask."""
        m = jnp.broadcast_to(self.mask, (*images.shape[:-1], 1))
        return jnp.concatenate([images * m + (m - 1.0), m], axis=-1)

    def complete(self, g_params, key: jax.Array, images: jax.Array) -> jax.Array:
        """Completions [B, H, W, C] in [-1, 1] of images [B, H, W, C] (only their kept rows
        are read)."""
        c = self.condition(images)
        z = jax.random.normal(key, (*images.shape[:-1], self.latent_channels))
        out = jnp.tanh(self.generator.apply(g_params, jnp.concatenate([c, z], -1), jnp.zeros(1)))
        return images * self.mask + out * (1.0 - self.mask)

    def init(self, key: jax.Array) -> tuple[dict[str, Any], Any]:
        k_g, k_d = jax.random.split(key)
        x = jnp.zeros((1, *self.image_shape))
        inputs = jnp.zeros(
            (1, *self.image_shape[:-1], self.image_shape[-1] + 1 + self.latent_channels)
        )
        params = {'generator': self.generator.init(k_g, inputs, jnp.zeros(1))}
        if self.adversarial:
            params['discriminator'] = self.discriminator.init(k_d, x, context=self.condition(x))
        return params, {}

    def optimizers(self, networks: tuple[str, ...]) -> dict[str, optax.GradientTransformation]:
        out = {'generator': mesh_lib.make_optimizer(self.config.optim, self.config.train.steps)}
        if self.adversarial:
            out['discriminator'] = discriminator_optimizer(self.config, self.config.gan)
        return out

    # -- one step ------------------------------------------------------------------------

    def _logits(self, d_params, x, c):
        return self.discriminator.apply(d_params, x, context=c)

    def _l1(self, fake, real):
        """Mean abs(x - G(c, z)) over the hidden rows."""
        hidden = 1.0 - self.mask
        return jnp.sum(jnp.abs(fake - real) * hidden) / (
            fake.shape[0] * jnp.sum(hidden) * fake.shape[-1]
        )

    def _d_loss(self, params, extra, key, batch):
        real = batch['images']
        c = self.condition(real)
        fake = jax.lax.stop_gradient(self.complete(params['generator'], key, real))
        d = params['discriminator']
        loss, stats = adversarial.discriminator_objective(
            lambda x: self._logits(d, x, c), real, fake, self.config.gan.r1_gamma
        )
        return loss, (stats, extra)

    def _g_loss(self, params, extra, key, batch):
        real = batch['images']
        fake = self.complete(params['generator'], key, real)
        l1 = self._l1(fake, real)
        loss = self.config.complete.l1_weight * l1
        stats = {'l1': l1}
        if self.adversarial:
            adv = adversarial.generator_loss(
                self._logits(params['discriminator'], fake, self.condition(real))
            )
            loss = loss + adv
            stats['adversarial'] = adv
        return loss, (stats, extra)

    def updates(self) -> tuple[Update, ...]:
        g = Update('generator', self._g_loss)
        return (Update('discriminator', self._d_loss), g) if self.adversarial else (g,)

    def diagnose(self, values: dict[str, float]) -> str | None:
        return self.watch(values) if self.adversarial else None

    # -- sampling and evaluation ---------------------------------------------------------

    def _held_out(self, key: jax.Array, labels: np.ndarray) -> np.ndarray:
        """Held-out images [n, H, W, C] of the given labels, drawn with `key`."""
        x, y = self.held_out
        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
        rng = np.random.default_rng(seed)
        idx = np.empty(len(labels), np.int64)
        for c in np.unique(labels):
            pool = np.flatnonzero(y == c)
            where = np.flatnonzero(labels == c)
            idx[where] = rng.choice(pool, size=len(where), replace=len(where) > len(pool))
        return x[idx]

    def sample(
        self, params: dict[str, Any], key: jax.Array, n: int, labels=None, alpha=None
    ) -> np.ndarray:
        """Completions [n, H, W, C] of n held-out images of `labels` (default: cycling)."""
        if alpha not in (None, 1.0):
            raise ValueError('alpha (guidance) does not apply to method complete.')
        from drift_jax.tasks.images import check_labels

        labels = check_labels(labels, n, self.num_classes)
        k_pick, k_noise = jax.random.split(key)
        source = self._held_out(k_pick, labels)
        out = []
        for start in range(0, n, 1000):
            chunk = jnp.asarray(source[start : start + 1000])
            k = jax.random.fold_in(k_noise, start)
            out.append(np.asarray(self._complete(params['generator'], k, chunk)))
        return np.concatenate(out)

    def evaluate(self, params: dict[str, Any], step: int) -> dict[str, float]:
        """`completion_l1`: mean abs(x - G(c, z)) on the hidden rows of every held-out image."""
        del step
        x = jnp.asarray(self.held_out[0])
        fake = self._complete(params['generator'], jax.random.PRNGKey(0), x)
        return {'completion_l1': float(self._l1(fake, x))}
