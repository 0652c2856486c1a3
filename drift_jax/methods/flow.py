"""RealNVP: a coupling flow trained by exact maximum likelihood, sampled by its inverse.

The flow f (`models.flows`) maps data x to z = f(x) with log abs(det df/dx) summed over its
layers; under the standard normal base, change of variables gives the exact likelihood

    -log p(x) = ||f(x)||^2 / 2 + (D / 2) log(2 pi) - log abs(det df/dx).

Loss: the mean of -log p(x) / D (nats per dimension) over a batch. Points use training
coordinates. Images (8-bit pixels y in {0..255} stored as x = lo + b y in training
coordinates, bin width b = (hi - lo) / 255) are dequantised first, x~ = x + b (u - 1/2)
with u ~ U[0, 1)^D (y~ = y + u - 1/2 is uniform dequantisation in pixel units), and their
loss is in pixel units: -log p(y~) = -log p(x~) - D log b, so bits/dim = that / (D ln 2).

Sampling: x = f^{-1}(T z), z ~ N(0, I), T the temperature (1: the model's distribution),
one inverse pass (NFE 1). Images are class-conditional: every coupling's conditioner sees
the label's embedding. Evaluation: held-out NLL (points, nats per example) or bits/dim
(images, test split), beside the task's sample metrics.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from drift_jax.methods.base import Method, Update, check_int
from drift_jax.methods.conditioning import sampling_labels
from drift_jax.models.flows import check_levels, make_flow

PIXEL_LEVELS = 256  # 8-bit images: the quantisation of every image dataset here
EVAL_CHUNK = 500  # held-out images per jitted evaluation call
_EVAL_FOLD = 0xF10E  # folded into the seed's key for the held-out draws and noise


def standard_normal_nll(z: jax.Array) -> jax.Array:
    """-log N(z; 0, I) per example: z [B, D] -> [B] = ||z||^2 / 2 + (D / 2) log(2 pi)."""
    return 0.5 * jnp.sum(jnp.square(z), axis=-1) + 0.5 * z.shape[-1] * math.log(2 * math.pi)


def dequantise(key: jax.Array, x: jax.Array, bin_width: float) -> jax.Array:
    """x + bin_width (u - 1/2), u ~ U[0, 1) per entry: x [B, ...] on a grid of `bin_width`."""
    return x + bin_width * (jax.random.uniform(key, x.shape) - 0.5)


def bits_per_dim(nll: jax.Array, dim: int, bin_width: float) -> jax.Array:
    """Bits per dimension of pixels from -log p(x~) in training coordinates, nll [B] -> [B].

    x~ = lo + bin_width * y~ with y~ in pixel units (one unit per grey level), so
    -log p(y~) = -log p(x~) - D log(bin_width), divided by D ln 2. (The same figure as the
    common (-log p(v) + D log 256) / (D ln 2) for v = y~ / 256 in [0, 1).)
    """
    return (nll - dim * math.log(bin_width)) / (dim * math.log(2.0))


class Flow(Method):
    """RealNVP affine coupling flow (Dinh et al.), exact likelihood, NFE 1."""

    name = 'flow'

    @staticmethod
    def validate(config: ml_collections.ConfigDict, task_kind: str) -> None:
        if 'flow' not in config:
            raise ValueError(
                "method='flow' needs the config block flow; start from drift_jax.defaults "
                '(toy_config or image_config).'
            )
        f = config.flow
        if task_kind == 'points':
            sizes = ('layers', 'width', 'depth')
        else:
            sizes = ('levels', 'blocks', 'width', 'depth')
        for name in sizes:
            if name not in f:
                raise ValueError(f'flow.{name} is missing; start from drift_jax.defaults.')
            check_int(f[name], f'flow.{name}')
        if isinstance(f.scale, bool) or not isinstance(f.scale, (int, float)) or not f.scale > 0:
            raise ValueError(f'flow.scale (the bound on log s) must be positive, got {f.scale!r}.')
        if not isinstance(f.actnorm, bool):
            raise ValueError(f'flow.actnorm must be True or False, got {f.actnorm!r}.')
        if task_kind == 'images':
            from drift_jax.tasks.images import open_data

            check_levels(open_data(config).info.image_shape, f.levels)

    def __init__(self, config: ml_collections.ConfigDict, task: Any, mesh):
        super().__init__(config, task, mesh)
        self.data_shape = tuple(task.data_shape)
        self.dim = math.prod(self.data_shape)
        self.num_classes = int(task.num_classes)
        self.images = task.kind == 'images'
        if not self.images and self.dim < 2:
            raise ValueError(
                "method='flow' needs points of at least 2 dimensions (a coupling conditions one "
                f'part on the other); these have {self.dim}.'
            )
        self.model = make_flow(config.flow, self.data_shape, self.num_classes)
        if self.images:
            self.host_batch_size = int(config.train.batch_size)
            lo, hi = task.data.value_range
            self.bin_width = (hi - lo) / (PIXEL_LEVELS - 1)
        self._eval_fn = None

    # ------------------------------------------------------------------ likelihood

    def init(self, key: jax.Array) -> tuple[dict[str, Any], Any]:
        x = jnp.zeros((1, *self.data_shape))
        labels = jnp.zeros((1,), jnp.int32) if self.num_classes else None
        return {'flow': self.model.init(key, x, labels, method=self.model.forward)}, {}

    def nll(self, params: Any, x: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        """-log p(x) in nats per example, x [B, ...] in training coordinates -> [B]."""
        z, logdet = self.model.apply(params, x, labels, method=self.model.forward)
        return standard_normal_nll(z.reshape(z.shape[0], -1)) - logdet

    def _loss(self, params, extra, key, batch):
        k_data, k_noise = jax.random.split(key)
        if self.images:
            x = dequantise(k_noise, batch['images'], self.bin_width)
            nll = self.nll(params['flow'], x, batch['labels'])
            bpd = jnp.mean(bits_per_dim(nll, self.dim, self.bin_width))
            return bpd * math.log(2.0), ({'bits_per_dim': bpd}, extra)
        x = self.task.draw(k_data, self.config.train.batch_size)
        return jnp.mean(self.nll(params['flow'], x)) / self.dim, ({}, extra)

    def updates(self) -> tuple[Update, ...]:
        return (Update('flow', self._loss),)

    # ------------------------------------------------------------------ sampling

    def sample(
        self,
        params: dict[str, Any],
        key: jax.Array,
        n: int,
        labels=None,
        alpha: float | None = None,
        temperature: float | None = None,
    ) -> np.ndarray:
        """n samples [n, D] or [n, H, W, C] in training coordinates, x = f^{-1}(T z).

        `labels` [n] (images; default: cycling over the classes); `temperature` T scales the
        base noise (default 1). `alpha` is accepted for the CLI's sake and must be 1 (this
        flow is trained without a null label, so it has no guidance).
        """
        if alpha not in (None, 1.0):
            raise ValueError(f"alpha={alpha}: method='flow' has no guidance; use alpha=1.")
        t = 1.0 if temperature is None else float(temperature)
        if not t > 0:
            raise ValueError(f'temperature must be positive, got {temperature!r}.')
        labels = sampling_labels(labels, n, self.num_classes)
        return np.asarray(self._sample_jit(params['flow'], key, n, labels, jnp.float32(t)))

    @functools.partial(jax.jit, static_argnums=(0, 3))
    def _sample_jit(self, params, key, n, labels, temperature):
        z = temperature * jax.random.normal(key, (n, self.dim))
        return self.model.apply(params, z, labels, method=self.model.inverse)

    # ------------------------------------------------------------------ evaluation

    def _held_out(self) -> tuple[np.ndarray, np.ndarray | None]:
        """`eval.num_samples` held-out examples (and labels): the toys' 'eval' stream with a
        fixed key (never drawn in training), or the first ones of the images' test split."""
        n = int(self.config.eval.num_samples)
        if not self.images:
            key = jax.random.fold_in(jax.random.PRNGKey(self.config.train.seed), _EVAL_FOLD)
            return np.asarray(self.task.dataset.sample(key, n, split='eval')), None
        data = self.task.data
        split = 'test' if 'test' in data.info.split_sizes else 'validation'
        x, y = data.class_arrays(split)
        return x[:n], y[:n]

    def evaluate(self, params: dict[str, Any], step: int) -> dict[str, float]:
        """Held-out 'nll' (points: nats per example, training coordinates) or
        'bits_per_dim' (images: -log p(x | label) of the test split, dequantised with fixed
        noise, in bits per pixel dimension)."""
        del step
        if self._eval_fn is None:
            self._eval_fn = self._make_eval()
        return self._eval_fn(params['flow'])

    def _make_eval(self):
        x, y = self._held_out()
        key = jax.random.fold_in(jax.random.PRNGKey(self.config.train.seed), _EVAL_FOLD)
        if not self.images:
            fn = jax.jit(lambda p, x: jnp.mean(self.nll(p, x)))
            xd = jnp.asarray(x)
            return lambda p: {'nll': float(fn(p, xd))}
        # Fixed dequantisation noise for the whole held-out set, drawn once: every
        # evaluation (and any chunk size) scores the same points.
        x = np.asarray(dequantise(jax.random.fold_in(key, 1), jnp.asarray(x), self.bin_width))
        chunk = min(EVAL_CHUNK, len(x))

        @jax.jit
        def chunk_sum(p, x, y, mask):
            bpd = bits_per_dim(self.nll(p, x, y), self.dim, self.bin_width)
            return jnp.sum(bpd * mask)

        def fn(p):
            total = 0.0
            for start in range(0, len(x), chunk):
                xs, ys = x[start : start + chunk], y[start : start + chunk]
                pad = chunk - len(xs)  # the last chunk is padded to one compiled shape
                mask = np.concatenate([np.ones(len(xs)), np.zeros(pad)]).astype(np.float32)
                xs = np.concatenate([xs, np.zeros((pad, *xs.shape[1:]), xs.dtype)])
                ys = np.concatenate([ys, np.zeros(pad, ys.dtype)])
                total += float(chunk_sum(p, xs, ys, mask))
            return {'bits_per_dim': total / len(x)}

        return fn
