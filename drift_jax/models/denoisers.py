"""Networks conditioned on a noise level: eps(x, t) for DDPM, s(x, sigma) for NCSN.

`TimeMLP` (points) and `UNet` (images, with skip connections) take samples, a scalar
condition per sample (a timestep or log sigma, embedded with sinusoids; shape [B], or [1]
for one condition shared by the batch, as samplers pass it) and optional labels (label
`num_classes` is the null label of classifier-free guidance).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from drift_jax.models.image import FiLMResBlock
from drift_jax.models.layers import GroupNorm, num_groups

Array = jax.Array


def sinusoidal_embedding(t: Array, dim: int, max_period: float = 10000.0) -> Array:
    """Sinusoidal features of scalars t [B] (any real values): [B, dim] (dim even)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class ConditionMLP(nn.Module):
    """Embedding of the condition t [B] and labels [B] (or None): [B, width]."""

    width: int
    num_classes: int = 0
    features: int = 64

    @nn.compact
    def __call__(self, t: Array, labels: Array | None) -> Array:
        e = sinusoidal_embedding(t, self.features)
        e = nn.Dense(self.width)(nn.silu(nn.Dense(self.width)(e)))
        if self.num_classes:
            if labels is None:
                labels = jnp.full(t.shape, self.num_classes, jnp.int32)
            e = e + nn.Embed(self.num_classes + 1, self.width, name='label')(labels)
        return e


class TimeMLP(nn.Module):
    """MLP f(x [B, D], t [B], labels [B] | None) -> [B, D] for point data.

    `depth` hidden layers of width `width` (as the drifting MLP generator), each adding the
    condition embedding before its activation; the output layer starts at zero.
    """

    out_dim: int
    width: int = 256
    depth: int = 3
    num_classes: int = 0

    @nn.compact
    def __call__(self, x: Array, t: Array, labels: Array | None = None) -> Array:
        e = ConditionMLP(self.width, self.num_classes, name='cond')(t, labels)
        h = x
        for i in range(self.depth):
            h = nn.silu(nn.Dense(self.width, name=f'hidden_{i}')(h) + e)
        out = nn.Dense(self.out_dim, kernel_init=nn.initializers.zeros, name='out')
        return out(h)


class UNet(nn.Module):
    """U-Net f(x [B, H, W, C], t [B], labels [B] | None) -> [B, H, W, C] with skips.

    Levels of `base_channels * mults[i]` channels with `num_res_blocks` FiLM residual
    blocks each (the condition embedding modulates every block), a stride-2 convolution
    between levels, nearest upsampling back and the skip activations concatenated on the
    way up. Odd sizes (7x7) downsample to ceil(H/2) and are cropped on the way up.
    """

    channels: int
    base_channels: int = 32
    mults: Sequence[int] = (1, 2)
    num_res_blocks: int = 1
    num_classes: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, t: Array, labels: Array | None = None) -> Array:
        width = 4 * self.base_channels
        e = ConditionMLP(width, self.num_classes, name='cond')(t, labels)
        h = nn.Conv(self.base_channels, (3, 3), dtype=self.dtype, name='in')(x)
        skips = [h]
        for level, mult in enumerate(self.mults):
            for i in range(self.num_res_blocks):
                h = FiLMResBlock(self.base_channels * mult, self.dtype, name=f'down{level}_{i}')(
                    h, e
                )
                skips.append(h)
            if level < len(self.mults) - 1:
                h = nn.Conv(
                    h.shape[-1], (3, 3), strides=(2, 2), dtype=self.dtype, name=f'pool{level}'
                )(h)
                skips.append(h)
        h = FiLMResBlock(h.shape[-1], self.dtype, name='mid')(h, e)
        for level in reversed(range(len(self.mults))):
            for i in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                c = self.base_channels * self.mults[level]
                h = FiLMResBlock(c, self.dtype, name=f'up{level}_{i}')(h, e)
            if level > 0:
                target = skips[-1].shape[1:3]
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)[:, : target[0], : target[1]]
                h = nn.Conv(h.shape[-1], (3, 3), dtype=self.dtype, name=f'upsample{level}')(h)
        h = nn.silu(GroupNorm(num_groups=num_groups(h.shape[-1]), name='out_norm')(h))
        out = nn.Conv(
            self.channels, (3, 3), kernel_init=nn.initializers.zeros, dtype=self.dtype, name='out'
        )
        return out(h).astype(jnp.float32)


def make_denoiser(model_config: Any, data_shape: Sequence[int], num_classes: int = 0) -> nn.Module:
    """TimeMLP for points ([D]) or UNet for images ([H, W, C]) from a method's `model` block
    (points: width, depth; images: base_channels, mults, num_res_blocks)."""
    if len(data_shape) == 1:
        return TimeMLP(
            int(data_shape[0]), int(model_config.width), int(model_config.depth), num_classes
        )
    return UNet(
        int(data_shape[-1]),
        int(model_config.base_channels),
        tuple(int(m) for m in model_config.mults),
        int(model_config.num_res_blocks),
        num_classes,
    )
