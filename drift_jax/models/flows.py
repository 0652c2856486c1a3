"""Invertible networks of RealNVP-style coupling flows (method='flow').

Every layer and flow has `forward(x, labels) -> (z, logdet [B])`, with logdet =
log abs(det dz/dx) per example, and `inverse(z, labels) -> x`. `PointFlow` maps points [B, D]
to z [B, D]; `ImageFlow` maps images [B, H, W, C] to z [B, H * W * C] through squeezes and
factored-out halves (multi-scale, as in RealNVP).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from drift_jax.models.layers import GroupNorm, num_groups

Array = jax.Array


def bounded_log_scale(raw: Array, bound: float) -> Array:
    """log s = bound * tanh(raw / bound): abs(log s) < bound, slope 1 (identity) near raw = 0."""
    return bound * jnp.tanh(raw / bound)


def squeeze(x: Array) -> Array:
    """Space to depth: [B, H, W, C] -> [B, H/2, W/2, 4C], each 2x2 patch into the channels
    (a permutation of the entries, so log abs(det) = 0)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // 2, w // 2, 4 * c)


def unsqueeze(x: Array) -> Array:
    """Depth to space, the inverse of `squeeze`: [B, H, W, 4C] -> [B, 2H, 2W, C]."""
    b, h, w, c4 = x.shape
    c = c4 // 4
    x = x.reshape(b, h, w, 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, 2 * h, 2 * w, c)


def pass_mask(mask: str, parity: int, shape: Sequence[int]) -> Array:
    """1 where a coupling passes x through (and conditions on it), 0 where it transforms x.

    'alternate' on points (shape [D]): coordinates i with (i + parity) even pass, so for D = 2
    the two layers of a pair transform the second, then the first coordinate.
    'checkerboard' on images (shape [H, W, C]): pixels with (i + j + parity) even pass,
    [H, W, 1].
    """
    if mask == 'alternate':
        return ((jnp.arange(shape[-1]) + parity) % 2 == 0).astype(jnp.float32)
    i = jnp.arange(shape[0])[:, None]
    j = jnp.arange(shape[1])[None, :]
    return ((i + j + parity) % 2 == 0).astype(jnp.float32)[:, :, None]


def _sum_per_example(a: Array) -> Array:
    return a.reshape(a.shape[0], -1).sum(-1)


class ActNorm(nn.Module):
    """Learned affine per channel (last axis), y = x * exp(log_scale) + bias.

    Initialised at the identity (log_scale = bias = 0), not with Glow's data-dependent
    initialisation: the toys are at unit scale and images in [-1, 1], and an identity start
    keeps `init` a pure function of the key (no data pass before step 1).
    """

    features: int

    def setup(self):
        self.log_scale = self.param('log_scale', nn.initializers.zeros, (self.features,))
        self.bias = self.param('bias', nn.initializers.zeros, (self.features,))

    def _logdet(self, x: Array) -> Array:
        positions = math.prod(x.shape[1:-1])  # H * W for images, 1 for points
        return jnp.full((x.shape[0],), positions * jnp.sum(self.log_scale))

    def forward(self, x: Array, labels: Array | None = None) -> tuple[Array, Array]:
        """x [B, ..., C] -> (y [B, ..., C], logdet [B])."""
        del labels
        return x * jnp.exp(self.log_scale) + self.bias, self._logdet(x)

    def inverse(self, y: Array, labels: Array | None = None) -> Array:
        """y [B, ..., C] -> x [B, ..., C]."""
        del labels
        return (y - self.bias) * jnp.exp(-self.log_scale)


class MLPConditioner(nn.Module):
    """x [B, D] -> [B, out]: `depth` SiLU hidden layers of `width`, output layer at zero."""

    out: int
    width: int
    depth: int

    @nn.compact
    def __call__(self, x: Array, labels: Array | None = None) -> Array:
        if labels is not None:
            raise ValueError('labels apply to image flows only (point data carry none).')
        h = x
        for i in range(self.depth):
            h = nn.silu(nn.Dense(self.width, name=f'hidden_{i}')(h))
        return nn.Dense(self.out, kernel_init=nn.initializers.zeros, name='out')(h)


class ConvConditioner(nn.Module):
    """x [B, H, W, C] (+ labels [B]) -> [B, H, W, out]: a 3x3 convolution to `width`
    channels, `depth` residual blocks (two of GroupNorm, FiLM by the label's embedding,
    SiLU, 3x3 convolution) and a last GroupNorm, FiLM, SiLU and 3x3 output convolution that
    starts at zero.

    The label enters through FiLM after every normalisation (h * (1 + scale) + shift, both
    from the embedding): an embedding added once would be a per-channel constant, which the
    next GroupNorm removes.
    """

    out: int
    width: int
    depth: int
    num_classes: int = 0

    @nn.compact
    def __call__(self, x: Array, labels: Array | None = None) -> Array:
        groups = num_groups(self.width, 8)  # few groups: the deepest level may be 2x2 or 1x1
        e = None
        if self.num_classes:
            if labels is None:
                raise ValueError('This image flow is class-conditional: give labels.')
            e = nn.Embed(self.num_classes, self.width, name='label')(labels)

        def norm_act(h, name):
            h = GroupNorm(groups, name=f'{name}_norm')(h)
            if e is not None:
                film = nn.Dense(2 * self.width, name=f'{name}_film')(e)[:, None, None]
                scale, shift = jnp.split(film, 2, axis=-1)
                h = h * (1.0 + scale) + shift
            return nn.silu(h)

        h = nn.Conv(self.width, (3, 3), name='in')(x)
        for i in range(self.depth):
            r = nn.Conv(self.width, (3, 3), name=f'block{i}_a')(norm_act(h, f'block{i}_a'))
            h = h + nn.Conv(self.width, (3, 3), name=f'block{i}_b')(norm_act(r, f'block{i}_b'))
        out = nn.Conv(self.out, (3, 3), kernel_init=nn.initializers.zeros, name='out')
        return out(norm_act(h, 'out'))


class AffineCoupling(nn.Module):
    """y_b = x_b * exp(log s(x_a)) + t(x_a), y_a = x_a, log abs(det) = sum log s.

    x_a are the entries that pass (`pass_mask` for 'alternate' and 'checkerboard'; the first
    half of the channels for 'channel', the second half when parity is 1), x_b the rest.
    `net(inputs, labels)` gives [raw log s, t] stacked on the last axis; log s is bounded by
    `bounded_log_scale`. Checkerboard inputs are [x * mask, mask], so the network sees which
    pixels it is given.
    """

    net: nn.Module
    mask: str
    parity: int
    bound: float

    def _channel_halves(self, x: Array) -> tuple[Array, Array]:
        c = x.shape[-1] // 2
        a, b = x[..., :c], x[..., c:]
        return (b, a) if self.parity else (a, b)

    def _channel_merge(self, a: Array, b: Array) -> Array:
        return jnp.concatenate([b, a] if self.parity else [a, b], axis=-1)

    def _log_s_t(self, x_a: Array, labels: Array | None) -> tuple[Array, Array]:
        raw = self.net(x_a, labels)
        raw_s, t = jnp.split(raw, 2, axis=-1)
        return bounded_log_scale(raw_s, self.bound), t

    def _masked_log_s_t(self, x: Array, labels: Array | None) -> tuple[Array, Array, Array]:
        m = pass_mask(self.mask, self.parity, x.shape[1:])
        inputs = x * m
        if self.mask == 'checkerboard':
            inputs = jnp.concatenate([inputs, jnp.broadcast_to(m, x.shape[:-1] + (1,))], -1)
        log_s, t = self._log_s_t(inputs, labels)
        return m, log_s * (1.0 - m), t * (1.0 - m)

    def forward(self, x: Array, labels: Array | None = None) -> tuple[Array, Array]:
        """x [B, ...] -> (y [B, ...], logdet [B])."""
        if self.mask == 'channel':
            a, b = self._channel_halves(x)
            log_s, t = self._log_s_t(a, labels)
            return self._channel_merge(a, b * jnp.exp(log_s) + t), _sum_per_example(log_s)
        _, log_s, t = self._masked_log_s_t(x, labels)
        return x * jnp.exp(log_s) + t, _sum_per_example(log_s)

    def inverse(self, y: Array, labels: Array | None = None) -> Array:
        """y [B, ...] -> x [B, ...]; y_a = x_a, so log s and t are those of the forward pass."""
        if self.mask == 'channel':
            a, b = self._channel_halves(y)
            log_s, t = self._log_s_t(a, labels)
            return self._channel_merge(a, (b - t) * jnp.exp(-log_s))
        _, log_s, t = self._masked_log_s_t(y, labels)
        return (y - t) * jnp.exp(-log_s)


class PointFlow(nn.Module):
    """`layers` affine couplings on points [B, D] with alternating masks, each preceded by
    an ActNorm when `actnorm`; each coupling's conditioner is an MLP of `depth` hidden
    layers of `width`."""

    dim: int
    layers: int
    width: int
    depth: int
    bound: float
    actnorm: bool = True

    def setup(self):
        steps = []
        for i in range(self.layers):
            if self.actnorm:
                steps.append(ActNorm(self.dim))
            net = MLPConditioner(2 * self.dim, self.width, self.depth)
            steps.append(AffineCoupling(net, 'alternate', i % 2, self.bound))
        self.steps = steps

    def forward(self, x: Array, labels: Array | None = None) -> tuple[Array, Array]:
        """x [B, D] -> (z [B, D], logdet [B])."""
        logdet = jnp.zeros((x.shape[0],))
        for step in self.steps:
            x, ld = step.forward(x, labels)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: Array, labels: Array | None = None) -> Array:
        """z [B, D] -> x [B, D]."""
        for step in reversed(self.steps):
            z = step.inverse(z, labels)
        return z


def check_levels(image_shape: Sequence[int], levels: int) -> None:
    """ValueError unless `levels` squeezes can halve H and W (both divisible by 2**levels)."""
    h, w = int(image_shape[0]), int(image_shape[1])
    if h % 2**levels or w % 2**levels:
        fit = 0
        while h % 2 ** (fit + 1) == 0 and w % 2 ** (fit + 1) == 0:
            fit += 1
        raise ValueError(
            f'flow.levels={levels} squeezes {h}x{w} images {levels} times, but height and '
            f'width must then be divisible by 2**{levels} = {2**levels}; use flow.levels <= '
            f'{fit} for this dataset.'
        )


def image_flow_layout(
    image_shape: Sequence[int], levels: int, blocks: int
) -> list[tuple[str, int, int]]:
    """The ops of `ImageFlow` in forward order: ('checkerboard' | 'channel', channels,
    parity) for a coupling on that many channels, ('squeeze', 0, 0), or ('split', k, 0) to
    factor out the first k channels."""
    ops: list[tuple[str, int, int]] = []
    c = int(image_shape[-1])
    for level in range(levels):
        ops += [('checkerboard', c, i % 2) for i in range(blocks)]
        ops.append(('squeeze', 0, 0))
        c *= 4
        ops += [('channel', c, i % 2) for i in range(blocks)]
        if level < levels - 1:
            ops.append(('split', c // 2, 0))
            c -= c // 2
    ops += [('checkerboard', c, i % 2) for i in range(blocks)]
    return ops


class ImageFlow(nn.Module):
    """Multi-scale coupling flow on images [B, H, W, C] (RealNVP's architecture).

    Each of `levels` levels: `blocks` checkerboard couplings (alternating parity), a squeeze
    ([H, W, C] -> [H/2, W/2, 4C]), `blocks` channel couplings (alternating halves) and,
    except at the last level, half of the channels factored out to the base distribution.
    Then `blocks` checkerboard couplings at the final size (`image_flow_layout`). With
    `actnorm`, an ActNorm before every coupling. Conditioners are `ConvConditioner`s
    (`width`, `depth`) that see the label embedding when `num_classes` > 0. z is
    [B, H * W * C]: the factored-out parts, then the last level's output, each flattened.
    """

    image_shape: tuple[int, int, int]
    levels: int
    blocks: int
    width: int
    depth: int
    bound: float
    actnorm: bool = True
    num_classes: int = 0

    def _layout(self) -> list[tuple[str, int, int]]:
        return image_flow_layout(self.image_shape, self.levels, self.blocks)

    def setup(self):
        check_levels(self.image_shape, self.levels)
        steps = []
        for op, c, parity in self._layout():
            if op not in ('checkerboard', 'channel'):
                continue
            if self.actnorm:
                steps.append(ActNorm(c))
            out = 2 * (c if op == 'checkerboard' else c // 2)
            net = ConvConditioner(out, self.width, self.depth, self.num_classes)
            steps.append(AffineCoupling(net, op, parity, self.bound))
        self.steps = steps

    def _shapes(self) -> tuple[list[tuple[int, int, int]], tuple[int, int, int]]:
        """Shapes (h, w, c) of the factored-out parts, in order, and of the last output."""
        h, w, c = self.image_shape
        parts = []
        for op, k, _ in self._layout():
            if op == 'squeeze':
                h, w, c = h // 2, w // 2, 4 * c
            elif op == 'split':
                parts.append((h, w, k))
                c -= k
        return parts, (h, w, c)

    def forward(self, x: Array, labels: Array | None = None) -> tuple[Array, Array]:
        """x [B, H, W, C] -> (z [B, H * W * C], logdet [B])."""
        b = x.shape[0]
        logdet = jnp.zeros((b,))
        out, steps = [], iter(self.steps)
        for op, k, _ in self._layout():
            if op == 'squeeze':
                x = squeeze(x)
            elif op == 'split':
                out.append(x[..., :k].reshape(b, -1))
                x = x[..., k:]
            else:
                for _ in range(2 if self.actnorm else 1):
                    x, ld = next(steps).forward(x, labels)
                    logdet = logdet + ld
        out.append(x.reshape(b, -1))
        return jnp.concatenate(out, axis=-1), logdet

    def inverse(self, z: Array, labels: Array | None = None) -> Array:
        """z [B, H * W * C] -> x [B, H, W, C]."""
        b = z.shape[0]
        parts, last = self._shapes()
        pieces, start = [], 0
        for shape in parts:
            size = math.prod(shape)
            pieces.append(z[:, start : start + size].reshape(b, *shape))
            start += size
        x = z[:, start:].reshape(b, *last)
        steps = reversed(self.steps)
        for op, _, _ in reversed(self._layout()):
            if op == 'squeeze':
                x = unsqueeze(x)
            elif op == 'split':
                x = jnp.concatenate([pieces.pop(), x], axis=-1)
            else:
                for _ in range(2 if self.actnorm else 1):
                    x = next(steps).inverse(x, labels)
        return x


def make_flow(flow_config: Any, data_shape: Sequence[int], num_classes: int = 0) -> nn.Module:
    """PointFlow for points ([D]) or ImageFlow for images ([H, W, C]) from `config.flow`
    (points: layers, width, depth; images: levels, blocks, width, depth; both: scale,
    actnorm)."""
    f = flow_config
    if len(data_shape) == 1:
        return PointFlow(
            int(data_shape[0]),
            int(f.layers),
            int(f.width),
            int(f.depth),
            float(f.scale),
            bool(f.actnorm),
        )
    return ImageFlow(
        tuple(int(s) for s in data_shape),
        int(f.levels),
        int(f.blocks),
        int(f.width),
        int(f.depth),
        float(f.scale),
        bool(f.actnorm),
        num_classes,
    )
