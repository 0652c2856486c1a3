"""GAN and conditional GAN: the drifting generator trained against a discriminator.

Two networks, two optimisers, alternating updates inside one jitted step: first the
discriminator on real and generated samples (non-saturating loss, optional R1 penalty on
the reals), then the generator against the updated discriminator. Samples come from the
generator's EMA (`train.ema_decay`, as for drifting); one network evaluation (NFE = 1).

The generator is the same network drifting trains on the config (`config.model`); the
discriminator is sized like it (points: an MLP of the same width and depth; images: a
downsampling ResNet with the conv generator's channels). On labelled data (every image
task) both are conditional: the generator takes the label as drifting's does (guidance
scale fixed at 1), the discriminator projects it (`models/discriminators.py`), and the
generated batch uses the labels of the real batch.
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
from drift_jax.methods.base import Method, Update
from drift_jax.methods.drifting import generate
from drift_jax.models import image as image_models
from drift_jax.models import mlp
from drift_jax.models.discriminators import make_discriminator

_generate_points = jax.jit(generate, static_argnums=(0, 3, 4))


def discriminator_optimizer(config: ml_collections.ConfigDict, block: Any):
    """`config.optim` with the learning rate `block.disc_learning_rate` (0: the same)."""
    optim = ml_collections.ConfigDict(config.optim.to_dict())
    if block.disc_learning_rate:
        optim.learning_rate = float(block.disc_learning_rate)
    return mesh_lib.make_optimizer(optim, config.train.steps)


def discriminator_size(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The discriminator's size fields, read from the generator's `config.model`."""
    m = config.model
    return {
        'width': m.get('width', 256),
        'depth': m.get('depth', 3),
        'base_channels': m.get('base_channels', 32),
        'num_res_blocks': m.get('num_res_blocks', 1),
        'max_channel_mult': m.get('max_channel_mult', 4),
    }


class GAN(Method):
    """Non-saturating GAN with R1 and generator EMA; conditional on labelled data."""

    name = 'gan'

    @staticmethod
    def validate(config: ml_collections.ConfigDict, task_kind: str) -> None:
        if 'gan' not in config:
            raise ValueError(
                "method='gan' needs the config block gan; start from drift_jax.defaults "
                '(toy_config or image_config).'
            )
        adversarial.validate_adversarial(config.gan, 'gan')
        if task_kind == 'points':
            mlp.validate_model_config(config.model)

    def __init__(self, config: ml_collections.ConfigDict, task: Any, mesh):
        super().__init__(config, task, mesh)
        self.images = task.kind == 'images'
        self.data_shape = tuple(task.data_shape)
        self.num_classes = int(task.num_classes) if self.images else 0
        if self.images:
            self.generator = image_models.make_image_generator(
                config.model, self.data_shape, self.num_classes
            )
            self.noise_shape = tuple(self.generator.noise_shape)
            self.host_batch_size = int(config.train.batch_size)
            self._generate = jax.jit(self._generate_images)
        else:
            self.generator = mlp.make_generator(config.model, self.data_shape[0])
            self.noise_shape = (int(config.model.noise_dim),)
        self.discriminator = make_discriminator(
            discriminator_size(config), self.data_shape, self.num_classes
        )
        self.watch = adversarial.DivergenceWatch(config.gan.stop_patience, 'gan')

    def init(self, key: jax.Array) -> tuple[dict[str, Any], Any]:
        k_g, k_d = jax.random.split(key)
        x = jnp.zeros((1, *self.data_shape))
        noise = jnp.zeros((1, *self.noise_shape))
        if self.images:
            labels = jnp.zeros((1,), jnp.int32)
            g = self.generator.init(k_g, noise, labels, jnp.ones((1,)))
            d = self.discriminator.init(k_d, x, labels=labels)
        else:
            g, d = self.generator.init(k_g, noise), self.discriminator.init(k_d, x)
        return {'generator': g, 'discriminator': d}, {}

    def optimizers(self, networks: tuple[str, ...]) -> dict[str, optax.GradientTransformation]:
        return {
            'generator': mesh_lib.make_optimizer(self.config.optim, self.config.train.steps),
            'discriminator': discriminator_optimizer(self.config, self.config.gan),
        }

    # -- one step ------------------------------------------------------------------------

    def _generate_images(self, params, key: jax.Array, labels: jax.Array) -> jax.Array:
        noise = jax.random.normal(key, (labels.shape[0], *self.noise_shape))
        return self.generator.apply(params, noise, labels, jnp.ones(labels.shape))

    def _real_and_fake(self, params, key: jax.Array, batch):
        """(real [B, ...], fake [B, ...], labels [B] or None) for one update."""
        k_data, k_noise = jax.random.split(key)
        n = self.config.train.batch_size
        if self.images:
            real, labels = batch['images'], batch['labels']
            return real, self._generate_images(params['generator'], k_noise, labels), labels
        real = self.task.draw(k_data, n)
        noise = jax.random.normal(k_noise, (n, *self.noise_shape))
        return real, self.generator.apply(params['generator'], noise), None

    def _logits(self, d_params, x, labels):
        return self.discriminator.apply(d_params, x, labels=labels)

    def _d_loss(self, params, extra, key, batch):
        real, fake, labels = self._real_and_fake(params, key, batch)
        fake = jax.lax.stop_gradient(fake)
        d = params['discriminator']
        loss, stats = adversarial.discriminator_objective(
            lambda x: self._logits(d, x, labels), real, fake, self.config.gan.r1_gamma
        )
        return loss, (stats, extra)

    def _g_loss(self, params, extra, key, batch):
        _, fake, labels = self._real_and_fake(params, key, batch)
        loss = adversarial.generator_loss(self._logits(params['discriminator'], fake, labels))
        return loss, ({}, extra)

    def updates(self) -> tuple[Update, ...]:
        return (Update('discriminator', self._d_loss), Update('generator', self._g_loss))

    def diagnose(self, values: dict[str, float]) -> str | None:
        return self.watch(values)

    # -- sampling ------------------------------------------------------------------------

    def sample(
        self, params: dict[str, Any], key: jax.Array, n: int, labels=None, alpha=None
    ) -> np.ndarray:
        """n samples in training coordinates (images: labels [n], default cycling)."""
        if alpha not in (None, 1.0):
            raise ValueError('alpha (guidance) does not apply to method gan.')
        gen = params['generator']
        if not self.images:
            if labels is not None:
                raise ValueError('labels apply to labelled data only.')
            return np.asarray(_generate_points(self.generator, gen, key, n, self.noise_shape[0]))
        from drift_jax.tasks.images import check_labels

        labels = check_labels(labels, n, self.num_classes)
        out = []
        for start in range(0, n, 1000):
            lab = jnp.asarray(labels[start : start + 1000])
            out.append(np.asarray(self._generate(gen, jax.random.fold_in(key, start), lab)))
        return np.concatenate(out)
