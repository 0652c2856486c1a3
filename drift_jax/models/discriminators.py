"""Discriminators of the adversarial methods (gan, ddgan): samples -> one logit each.

Both take an optional `context` (concatenated to the input along the last axis: the noisy
x_t a denoising diffusion GAN's discriminator is conditioned on), an optional scalar
condition t [B] (a timestep, embedded with sinusoids) and optional labels [B]. Labels enter
by projection (Miyato & Koyama): logit = psi(h) + <embed(label), h>, h the final features.
No normalisation layers, so the R1 penalty (a gradient of D at single real samples) is well
defined per sample.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from drift_jax.models.denoisers import sinusoidal_embedding

Array = jax.Array


def _leaky(x: Array) -> Array:
    return nn.leaky_relu(x, 0.2)


class _Condition(nn.Module):
    """Embedding of the scalar condition t [B] (or [1], shared): [B or 1, width]."""

    width: int

    @nn.compact
    def __call__(self, t: Array) -> Array:
        e = sinusoidal_embedding(t, 64)
        return nn.Dense(self.width)(_leaky(nn.Dense(self.width)(e)))


def _project(h: Array, labels: Array | None, num_classes: int) -> Array:
    """The logit [B] from features h [B, F]: a linear head plus the label projection."""
    out = nn.Dense(1, name='head')(h)[:, 0]
    if num_classes and labels is not None:
        emb = nn.Embed(num_classes, h.shape[-1], name='label_proj')(labels)
        out = out + jnp.sum(emb * h, axis=-1)
    return out


class MLPDiscriminator(nn.Module):
    """MLP D(x [B, D], context [B, Dc] | None, t [B] | None, labels [B] | None) -> [B].

    `depth` hidden layers of `width` with leaky ReLU (0.2), the condition embedding added
    before each activation, as wide and deep as the generator it judges.
    """

    width: int = 256
    depth: int = 3
    num_classes: int = 0

    @nn.compact
    def __call__(
        self,
        x: Array,
        context: Array | None = None,
        t: Array | None = None,
        labels: Array | None = None,
    ) -> Array:
        h = x if context is None else jnp.concatenate([x, context], axis=-1)
        e = None if t is None else _Condition(self.width, name='cond')(t)
        for i in range(self.depth):
            h = nn.Dense(self.width, name=f'hidden_{i}')(h)
            if e is not None:
                h = h + e
            h = _leaky(h)
        return _project(h, labels, self.num_classes)


class ConvDiscriminator(nn.Module):
    """Downsampling ResNet D(x [B, H, W, C], context [B, H, W, Cc] | None, t, labels) -> [B].

    A 3x3 stem of `base_channels`, then per resolution `num_res_blocks` residual blocks
    (leaky ReLU, two 3x3 convolutions, the condition embedding added as a per-channel bias)
    and a stride-2 convolution, the channels doubling up to `base_channels *
    max_channel_mult`, while the map is larger than 4x4; then a sum over positions and the
    projection head. Mirrors the conv generator's widths.
    """

    base_channels: int = 32
    num_res_blocks: int = 1
    max_channel_mult: int = 4
    num_classes: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: Array,
        context: Array | None = None,
        t: Array | None = None,
        labels: Array | None = None,
    ) -> Array:
        h = x if context is None else jnp.concatenate([x, context], axis=-1)
        h = nn.Conv(self.base_channels, (3, 3), dtype=self.dtype, name='stem')(h)
        e = None if t is None else _Condition(4 * self.base_channels, name='cond')(t)
        level, mult = 0, 1
        while True:
            channels = self.base_channels * mult
            for i in range(self.num_res_blocks):
                r = nn.Conv(channels, (3, 3), dtype=self.dtype, name=f'block{level}_{i}_0')(
                    _leaky(h)
                )
                if e is not None:
                    bias = nn.Dense(channels, name=f'block{level}_{i}_cond')(e)
                    r = r + bias[:, None, None, :]
                r = nn.Conv(channels, (3, 3), dtype=self.dtype, name=f'block{level}_{i}_1')(
                    _leaky(r)
                )
                if h.shape[-1] != channels:
                    h = nn.Conv(channels, (1, 1), dtype=self.dtype, name=f'skip{level}_{i}')(h)
                h = h + r
            if min(h.shape[1:3]) <= 4:
                break
            mult = min(2 * mult, self.max_channel_mult)
            h = nn.Conv(
                self.base_channels * mult,
                (3, 3),
                strides=(2, 2),
                dtype=self.dtype,
                name=f'down{level}',
            )(_leaky(h))
            level += 1
        h = jnp.sum(_leaky(h), axis=(1, 2)).astype(jnp.float32)
        return _project(h, labels, self.num_classes)


def make_discriminator(
    config: Any, data_shape: tuple[int, ...], num_classes: int = 0
) -> MLPDiscriminator | ConvDiscriminator:
    """The discriminator for data of shape `data_shape` ([D] points or [H, W, C] images),
    sized like the method's generator: width/depth (points) or base_channels,
    num_res_blocks, max_channel_mult (images) from `config` (a ConfigDict or dict)."""
    if len(data_shape) == 1:
        return MLPDiscriminator(int(config['width']), int(config['depth']), num_classes)
    return ConvDiscriminator(
        int(config['base_channels']),
        int(config['num_res_blocks']),
        int(config['max_channel_mult']),
        num_classes,
    )
