"""DDPM: denoising diffusion with an epsilon-prediction network, ancestral and DDIM sampling.

Forward process (beta_t linear from beta_start to beta_end over T steps, or cosine):

    q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I),   abar_t = prod_{s <= t} (1 - beta_s).

Loss (the simple loss): E_{t, x_0, eps} || eps - eps_theta(sqrt(abar_t) x_0 +
sqrt(1 - abar_t) eps, t) ||^2, averaged over coordinates. On labelled data the label is
replaced by the null label with probability `ddpm.label_dropout`, so one network gives
conditional and unconditional predictions (classifier-free guidance at sampling:
eps = eps_u + alpha (eps_c - eps_u), alpha = 1 is plain conditional sampling).

Samplers, from x_T ~ N(0, I), with x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t):

- ancestral (all T steps): x_{t-1} = c0_t x0_hat + ct_t x_t + sqrt(beta~_t) z, the posterior
  q(x_{t-1} | x_t, x0_hat) with beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t);
- DDIM on a subsequence t_S > ... > t_1 (any number of steps; eta = 0 deterministic):
  x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - s^2) eps + s z with
  s = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev).

NFE = steps (twice that with guidance, alpha != 1).
"""

from __future__ import annotations

import functools
import math
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

SCHEDULES = ('linear', 'cosine')


def beta_schedule(
    kind: str, timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
    """betas [T] in float64: linear from beta_start to beta_end, or the cosine schedule
    (abar(t) = cos^2(((t / T) + 0.008) / 1.008 * pi / 2), betas clipped at 0.999)."""
    if kind == 'linear':
        return np.linspace(beta_start, beta_end, timesteps, dtype=np.float64)
    s = 0.008
    f = np.cos((np.arange(timesteps + 1) / timesteps + s) / (1 + s) * math.pi / 2) ** 2
    return np.clip(1.0 - f[1:] / f[:-1], 0.0, 0.999)


class Diffusion:
    """The schedule's arrays (float32) and the forward and reverse updates. Index t = 0..T-1."""

    def __init__(self, betas: np.ndarray):
        self.timesteps = len(betas)
        abar = np.cumprod(1.0 - betas)
        abar_prev = np.concatenate([[1.0], abar[:-1]])
        f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
        self.betas, self.abar, self.abar_prev = f32(betas), f32(abar), f32(abar_prev)
        self.posterior_var = f32(betas * (1.0 - abar_prev) / (1.0 - abar))
        self.coef_x0 = f32(np.sqrt(abar_prev) * betas / (1.0 - abar))
        self.coef_xt = f32(np.sqrt(1.0 - betas) * (1.0 - abar_prev) / (1.0 - abar))

    @staticmethod
    def _b(a: jax.Array, x: jax.Array) -> jax.Array:
        return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))

    def q_sample(self, x0: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps; x0, eps [B, ...], t int [B]."""
        a = self.abar[t]
        return self._b(jnp.sqrt(a), x0) * x0 + self._b(jnp.sqrt(1.0 - a), x0) * eps

    def x0_from_eps(self, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
        a = self._b(self.abar[t], x_t)
        return (x_t - jnp.sqrt(1.0 - a) * eps) / jnp.sqrt(a)

    def ancestral_step(self, x_t, t, eps, z, clip: bool = False):
        """x_{t-1} from the posterior q(x_{t-1} | x_t, x0_hat) (no noise at t = 0)."""
        x0 = self.x0_from_eps(x_t, t, eps)
        if clip:
            x0 = jnp.clip(x0, -1.0, 1.0)
        mean = self._b(self.coef_x0[t], x_t) * x0 + self._b(self.coef_xt[t], x_t) * x_t
        std = self._b(jnp.sqrt(self.posterior_var[t]) * (t > 0), x_t)
        return mean + std * z

    def ddim_step(self, x_t, t, t_prev, eps, z, eta: float, clip: bool = False):
        """One DDIM step from t to t_prev (t_prev = -1: to x_0)."""
        a = self._b(self.abar[t], x_t)
        a_prev = self._b(jnp.where(t_prev >= 0, self.abar[jnp.maximum(t_prev, 0)], 1.0), x_t)
        x0 = self.x0_from_eps(x_t, t, eps)
        if clip:
            x0 = jnp.clip(x0, -1.0, 1.0)
            eps = (x_t - jnp.sqrt(a) * x0) / jnp.sqrt(1.0 - a)
        sigma = eta * jnp.sqrt((1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev))
        direction = jnp.sqrt(jnp.maximum(1.0 - a_prev - sigma**2, 0.0)) * eps
        return jnp.sqrt(a_prev) * x0 + direction + sigma * z


def ddim_timesteps(timesteps: int, steps: int) -> np.ndarray:
    """`steps` distinct timesteps from T - 1 down to 0, evenly spaced, descending."""
    return np.unique(np.linspace(0, timesteps - 1, steps).round().astype(np.int32))[::-1]


class DDPM(Method):
    """Denoising diffusion (Ho et al.) with DDIM sampling and classifier-free guidance."""

    name = 'ddpm'

    @staticmethod
    def validate(config: ml_collections.ConfigDict, task_kind: str) -> None:
        if 'ddpm' not in config or 'denoiser' not in config:
            raise ValueError(
                "method='ddpm' needs the config blocks ddpm and denoiser; start "
                'from drift_jax.defaults (toy_config or image_config).'
            )
        d = config.ddpm
        if not isinstance(d.timesteps, int) or d.timesteps < 2:
            raise ValueError(f'ddpm.timesteps must be an integer >= 2, got {d.timesteps!r}.')
        if d.schedule not in SCHEDULES:
            raise ValueError(f'ddpm.schedule={d.schedule!r} is unknown; choose one of {SCHEDULES}.')
        if not 0 < d.beta_start < d.beta_end < 1:
            raise ValueError(
                'ddpm.beta_start and ddpm.beta_end must satisfy 0 < beta_start < '
                f'beta_end < 1, got {d.beta_start} and {d.beta_end}.'
            )
        if not 0 <= d.eta <= 1:
            raise ValueError(f'ddpm.eta must be in [0, 1], got {d.eta}.')
        if not 0 <= d.label_dropout < 1:
            raise ValueError(f'ddpm.label_dropout must be in [0, 1), got {d.label_dropout}.')
        check_steps(config.eval.get('sample_steps', 0), d.timesteps, 'eval.sample_steps')

    def __init__(self, config: ml_collections.ConfigDict, task: Any, mesh):
        super().__init__(config, task, mesh)
        d = config.ddpm
        self.diffusion = Diffusion(beta_schedule(d.schedule, d.timesteps, d.beta_start, d.beta_end))
        self.data_shape = tuple(task.data_shape)
        self.num_classes = int(task.num_classes)
        self.model = make_denoiser(config.denoiser, self.data_shape, self.num_classes)
        self.images = task.kind == 'images'
        if self.images:
            self.host_batch_size = int(config.train.batch_size)

    def init(self, key: jax.Array) -> tuple[dict[str, Any], Any]:
        x = jnp.zeros((1, *self.data_shape))
        labels = jnp.zeros((1,), jnp.int32) if self.num_classes else None
        return {'denoiser': self.model.init(key, x, jnp.zeros((1,)), labels)}, {}

    def _loss(self, params, extra, key, batch):
        n = self.config.train.batch_size
        k_data, k_t, k_eps, k_drop = jax.random.split(key, 4)
        if self.images:
            x0, labels = batch['images'], batch['labels']
        else:
            x0, labels = self.task.draw(k_data, n), None
        labels = drop_labels(k_drop, labels, self.config.ddpm.label_dropout, self.num_classes)
        t = jax.random.randint(k_t, (x0.shape[0],), 0, self.diffusion.timesteps)
        eps = jax.random.normal(k_eps, x0.shape)
        x_t = self.diffusion.q_sample(x0, t, eps)
        pred = self.model.apply(params['denoiser'], x_t, t.astype(jnp.float32), labels)
        loss = jnp.mean(jnp.square(pred - eps))
        return loss, ({}, extra)

    def updates(self) -> tuple[Update, ...]:
        return (Update('denoiser', self._loss),)

    def _options(self, steps, alpha, eta):
        """(steps, alpha, eta, ancestral): all T steps without an explicit eta run the
        ancestral sampler; anything else DDIM."""
        t_max = self.diffusion.timesteps
        steps = int(steps or self.config.eval.get('sample_steps', 0) or t_max)
        check_steps(steps, t_max, 'steps')
        alpha = guidance_scale(alpha, self.config.eval.get('alpha', 1.0), self.num_classes)
        ancestral = steps == t_max and eta is None
        eta = float(self.config.ddpm.eta if eta is None else eta)
        if not 0 <= eta <= 1:
            raise ValueError(f'eta must be in [0, 1], got {eta}.')
        return steps, alpha, eta, ancestral

    def nfe(self, steps: int | None = None, alpha: float | None = None, eta=None) -> int:
        steps, alpha, _, _ = self._options(steps, alpha, eta)
        return guided_nfe(steps, alpha)

    def sample(self, params, key, n, labels=None, steps=None, alpha=None, eta=None):
        """n samples: `steps` = T runs the ancestral sampler, fewer DDIM with `eta`
        (default `ddpm.eta`); `alpha` is the guidance scale (labelled data)."""
        steps, alpha, eta, ancestral = self._options(steps, alpha, eta)
        labels = sampling_labels(labels, n, self.num_classes)
        out = self._sample_jit(params['denoiser'], key, n, labels, steps, alpha, eta, ancestral)
        return np.asarray(out)

    @functools.partial(jax.jit, static_argnums=(0, 3, 5, 6, 7, 8))
    def _sample_jit(self, params, key, n, labels, steps, alpha, eta, ancestral):
        d, clip = self.diffusion, self.images
        ts = np.arange(d.timesteps)[::-1] if ancestral else ddim_timesteps(d.timesteps, steps)
        prev = np.concatenate([ts[1:], [-1]]).astype(np.int32)
        k_init, k_steps = jax.random.split(key)
        x = jax.random.normal(k_init, (n, *self.data_shape))

        def eps_of(x, t):
            # One condition for the whole batch: its embedding is computed once, not n times.
            tt = jnp.full((1,), t, jnp.float32)
            return guided(
                lambda lab: self.model.apply(params, x, tt, lab), labels, alpha, self.num_classes
            )

        def step(x, inputs):
            t, t_prev, k = inputs
            eps = eps_of(x, t)
            z = jax.random.normal(k, x.shape)
            tb = jnp.full((n,), t)
            if ancestral:
                return d.ancestral_step(x, tb, eps, z, clip), None
            return d.ddim_step(x, tb, jnp.full((n,), t_prev), eps, z, eta, clip), None

        keys = jax.random.split(k_steps, len(ts))
        x, _ = jax.lax.scan(step, x, (jnp.asarray(ts, jnp.int32), jnp.asarray(prev), keys))
        return x


def check_steps(steps, timesteps: int, name: str) -> None:
    """Sampling steps: 0 (the default) or an integer in [1, T]; ValueError naming the value."""
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f'{name} must be a non-negative integer, got {steps!r}.')
    if steps > timesteps:
        raise ValueError(
            f'{name}={steps} is more than the {timesteps} diffusion steps (ddpm.timesteps).'
        )
