"""Denoising diffusion GAN: a GAN models each of a few large reverse-diffusion steps.

A short forward process of T steps (`ddgan.steps`, default 4) with the variance-preserving
discretisation beta_t = 1 - exp(-beta_min / T - (beta_max - beta_min)(2t - 1) / (2 T^2)),
t = 1..T. With T this small the reverse q(x_{t-1} | x_t) is far from Gaussian, so it is
modelled implicitly: the generator G(x_t, z, t) predicts x_0 and

    x_{t-1} ~ q(x_{t-1} | x_t, x_0 = G(x_t, z, t))      (the Gaussian posterior; x_0 at t = 1).

The discriminator D(x_{t-1}, x_t, t) tells real pairs (x_{t-1} ~ q(x_{t-1} | x_0), x_t ~
q(x_t | x_{t-1})) from generated ones (x_{t-1} drawn as above), with the non-saturating loss
and R1 on the real x_{t-1}; the generator is trained against it. Sampling runs the T steps
from x_T ~ N(0, I): NFE = T.

Networks: G is the multi-step methods' denoiser (`denoiser`: an MLP with a condition
embedding for points, the U-Net for images) taking [x_t, z] (z: `ddgan.latent_dim`
coordinates for points, channels for images); D is the GAN's discriminator with x_t as
context and the timestep as condition. Conditional on labelled data.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from drift_jax import mesh as mesh_lib
from drift_jax.methods import adversarial
from drift_jax.methods.base import Method, Update, check_int
from drift_jax.methods.conditioning import sampling_labels
from drift_jax.methods.ddpm import Diffusion
from drift_jax.methods.gan import discriminator_optimizer, discriminator_size
from drift_jax.models.denoisers import make_denoiser
from drift_jax.models.discriminators import make_discriminator

MAX_STEPS = 8


def ddgan_betas(steps: int, beta_min: float = 0.1, beta_max: float = 20.0) -> np.ndarray:
    """betas [T] (float64) of the variance-preserving process discretised into T steps:
    beta_t = 1 - exp(-beta_min / T - (beta_max - beta_min)(2t - 1) / (2 T^2)), t = 1..T."""
    t = np.arange(1, steps + 1, dtype=np.float64)
    return 1.0 - np.exp(-beta_min / steps - 0.5 * (beta_max - beta_min) * (2 * t - 1) / steps**2)


def _b(a: jax.Array, x: jax.Array) -> jax.Array:
    """a [B] reshaped to broadcast against x [B, ...]."""
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


class DDGAN(Method):
    """Denoising diffusion GAN (Xiao et al.): T = 1..8 GAN-modelled reverse steps."""

    name = 'ddgan'

    @staticmethod
    def validate(config: ml_collections.ConfigDict, task_kind: str) -> None:
        if 'ddgan' not in config or 'denoiser' not in config or 'gan' not in config:
            raise ValueError(
                "method='ddgan' needs the config blocks ddgan, gan and denoiser; start "
                'from drift_jax.defaults (toy_config or image_config).'
            )
        d = config.ddgan
        check_int(d.steps, 'ddgan.steps', 1, MAX_STEPS)
        if not 0 < d.beta_min < d.beta_max:
            raise ValueError(
                'ddgan.beta_min and ddgan.beta_max must satisfy 0 < beta_min < beta_max, '
                f'got {d.beta_min} and {d.beta_max}.'
            )
        check_int(d.latent_dim, 'ddgan.latent_dim')
        adversarial.validate_adversarial(config.gan, 'gan')

    def __init__(self, config: ml_collections.ConfigDict, task: Any, mesh):
        super().__init__(config, task, mesh)
        d = config.ddgan
        self.steps = int(d.steps)
        self.diffusion = Diffusion(ddgan_betas(self.steps, d.beta_min, d.beta_max))
        self.images = task.kind == 'images'
        self.data_shape = tuple(task.data_shape)
        self.num_classes = int(task.num_classes) if self.images else 0
        self.latent_shape = (*self.data_shape[:-1], int(d.latent_dim))
        self.generator = make_denoiser(config.denoiser, self.data_shape, self.num_classes)
        self.discriminator = make_discriminator(
            discriminator_size(config), self.data_shape, self.num_classes
        )
        if self.images:
            self.host_batch_size = int(config.train.batch_size)
        self.watch = adversarial.DivergenceWatch(config.gan.stop_patience, 'gan')

    def init(self, key: jax.Array) -> tuple[dict[str, Any], Any]:
        k_g, k_d = jax.random.split(key)
        x = jnp.zeros((1, *self.data_shape))
        z = jnp.zeros((1, *self.latent_shape))
        t = jnp.zeros((1,))
        labels = jnp.zeros((1,), jnp.int32) if self.num_classes else None
        g = self.generator.init(k_g, jnp.concatenate([x, z], -1), t, labels)
        d = self.discriminator.init(k_d, x, context=x, t=t, labels=labels)
        return {'generator': g, 'discriminator': d}, {}

    def optimizers(self, networks: tuple[str, ...]) -> dict[str, optax.GradientTransformation]:
        return {
            'generator': mesh_lib.make_optimizer(self.config.optim, self.config.train.steps),
            'discriminator': discriminator_optimizer(self.config, self.config.gan),
        }

    # -- the process ---------------------------------------------------------------------

    def predict_x0(self, g_params, x_t, t, z, labels):
        """G(x_t, z, t): the generator's x_0 [B, ...] for x_t [B, ...], t int [B] or [1]."""
        x0 = self.generator.apply(
            g_params, jnp.concatenate([x_t, z], -1), t.astype(jnp.float32), labels
        )
        return jnp.clip(x0, -1.0, 1.0) if self.images else x0

    def posterior_sample(self, x_t, t, x0, noise):
        """x_{t-1} ~ q(x_{t-1} | x_t, x_0) for index t [B] (0-based; no noise at t = 0)."""
        d, b = self.diffusion, _b
        mean = b(d.coef_x0[t], x_t) * x0 + b(d.coef_xt[t], x_t) * x_t
        return mean + b(jnp.sqrt(d.posterior_var[t]) * (t > 0), x_t) * noise

    def real_pair(self, key, x0, t):
        """(x_{t-1}, x_t) for data x0 [B, ...] at index t [B]: x_{t-1} ~ q(x_{t-1} | x_0)
        (x_0 itself at t = 0) and x_t ~ q(x_t | x_{t-1})."""
        k1, k2 = jax.random.split(key)
        d, b = self.diffusion, _b
        a_prev = d.abar_prev[t]
        x_prev = b(jnp.sqrt(a_prev), x0) * x0 + b(jnp.sqrt(1 - a_prev), x0) * jax.random.normal(
            k1, x0.shape
        )
        beta = d.betas[t]
        x_t = b(jnp.sqrt(1 - beta), x0) * x_prev + b(jnp.sqrt(beta), x0) * jax.random.normal(
            k2, x0.shape
        )
        return x_prev, x_t

    # -- one step ------------------------------------------------------------------------

    def _pairs(self, params, key, batch):
        """Real and generated (x_{t-1}, x_t) pairs at random t: (real_prev, fake_prev,
        x_t, t, labels)."""
        k_data, k_t, k_pair, k_z, k_post = jax.random.split(key, 5)
        if self.images:
            x0, labels = batch['images'], batch['labels']
        else:
            x0, labels = self.task.draw(k_data, self.config.train.batch_size), None
        n = x0.shape[0]
        t = jax.random.randint(k_t, (n,), 0, self.steps)
        real_prev, x_t = self.real_pair(k_pair, x0, t)
        z = jax.random.normal(k_z, (n, *self.latent_shape))
        x0_hat = self.predict_x0(params['generator'], x_t, t, z, labels)
        fake_prev = self.posterior_sample(x_t, t, x0_hat, jax.random.normal(k_post, x0.shape))
        return real_prev, fake_prev, x_t, t, labels

    def _logits(self, d_params, x_prev, x_t, t, labels):
        return self.discriminator.apply(
            d_params, x_prev, context=x_t, t=t.astype(jnp.float32), labels=labels
        )

    def _d_loss(self, params, extra, key, batch):
        real_prev, fake_prev, x_t, t, labels = self._pairs(params, key, batch)
        fake_prev = jax.lax.stop_gradient(fake_prev)
        d = params['discriminator']
        loss, stats = adversarial.discriminator_objective(
            lambda x: self._logits(d, x, x_t, t, labels),
            real_prev,
            fake_prev,
            self.config.gan.r1_gamma,
        )
        return loss, (stats, extra)

    def _g_loss(self, params, extra, key, batch):
        _, fake_prev, x_t, t, labels = self._pairs(params, key, batch)
        logits = self._logits(params['discriminator'], fake_prev, x_t, t, labels)
        return adversarial.generator_loss(logits), ({}, extra)

    def updates(self) -> tuple[Update, ...]:
        return (Update('discriminator', self._d_loss), Update('generator', self._g_loss))

    def diagnose(self, values: dict[str, float]) -> str | None:
        return self.watch(values)

    # -- sampling ------------------------------------------------------------------------

    def nfe(self, **options) -> int:
        del options
        return self.steps

    def sample(self, params, key, n, labels=None, alpha=None, steps=None) -> np.ndarray:
        """n samples by the T reverse steps from x_T ~ N(0, I) (labels [n]: images).

        `steps` may only repeat T (0 or None: T): the generator is trained for its T steps.
        """
        if alpha not in (None, 1.0):
            raise ValueError('alpha (guidance) does not apply to method ddgan.')
        if steps not in (None, 0, self.steps):
            raise ValueError(
                f'steps={steps}: a denoising diffusion GAN samples with the {self.steps} steps '
                f'it was trained with (ddgan.steps); train with ddgan.steps={steps} instead.'
            )
        labels = sampling_labels(labels, n, self.num_classes)
        return np.asarray(self._sample_jit(params['generator'], key, n, labels))

    @functools.partial(jax.jit, static_argnums=(0, 3))
    def _sample_jit(self, g_params, key, n, labels):
        k_init, k_steps = jax.random.split(key)
        x = jax.random.normal(k_init, (n, *self.data_shape))
        for t in reversed(range(self.steps)):
            k_z, k_noise = jax.random.split(jax.random.fold_in(k_steps, t))
            z = jax.random.normal(k_z, (n, *self.latent_shape))
            tt = jnp.full((n,), t, jnp.int32)
            x0 = self.predict_x0(g_params, x, tt, z, labels)
            x = self.posterior_sample(x, tt, x0, jax.random.normal(k_noise, x.shape))
        return x
