"""Layers shared by the networks: the library's GroupNorm and its group-count rule."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def num_groups(channels: int, max_groups: int = 32) -> int:
    """GroupNorm group count: the largest divisor of `channels` that divides max_groups."""
    return math.gcd(channels, max_groups)


class GroupNorm(nn.Module):
    """Group normalisation of [B, H, W, C], the same function and parameters as
    `flax.linen.GroupNorm` (its defaults: epsilon 1e-6, fast variance E[x^2] - E[x]^2).

    Sums over H and W per channel first, then over the channels of each group: on XLA:CPU
    this runs ~5x faster forward (~2x with the backward pass) than flax's single reduction
    over [H, W, C / G] (measured on [640, 14, 14, 16], 8 groups: 14.5 -> 2.6 ms), and the
    frozen encoder's norms are on every feature-space training step. Every GroupNorm of
    the library (encoder, MAE decoder, image generators) is this one.
    """

    num_groups: int
    epsilon: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, h, w, c = x.shape
        if c % self.num_groups:
            raise ValueError(f'{c} channels do not split into {self.num_groups} groups.')
        scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
        bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
        xf = x.astype(jnp.float32)
        per = c // self.num_groups
        count = h * w * per
        mean = jnp.sum(xf, axis=(1, 2)).reshape(b, self.num_groups, per).sum(-1) / count
        mean_sq = (
            jnp.sum(jnp.square(xf), axis=(1, 2)).reshape(b, self.num_groups, per).sum(-1) / count
        )
        inv = jax.lax.rsqrt(jnp.maximum(mean_sq - jnp.square(mean), 0.0) + self.epsilon)
        mean = jnp.repeat(mean, per, axis=1)[:, None, None, :]
        mul = (jnp.repeat(inv, per, axis=1) * scale)[:, None, None, :]
        return ((xf - mean) * mul + bias).astype(self.dtype)
