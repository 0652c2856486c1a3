"""Class-conditional one-step image generators: (noise, label, alpha) -> images [B, H, W, C].

A convolutional generator (upsampling ResNet with FiLM conditioning), a small DiT (patch
tokens, optional noise style tokens, adaLN-zero) and a residual MLP (cheapest: what the MNIST
configs use on a CPU). All read the guidance scale alpha.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from drift_jax.models.layers import GroupNorm, num_groups

IMAGE_MODEL_NAMES = ('conv', 'dit', 'mlp')


class ConditionEmbedding(nn.Module):
    """Label + guidance-scale embedding: labels int [B], alpha float [B] -> [B, dim].

    The label table has num_classes + 1 rows: label == num_classes is the null
    (unconditional) class. alpha enters as log(alpha) (0 for no guidance) through fixed
    Fourier features followed by a two-layer MLP; the two embeddings are summed.
    """

    num_classes: int
    dim: int
    num_freqs: int = 16
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, labels: jax.Array, alpha: jax.Array) -> jax.Array:
        label_emb = nn.Embed(self.num_classes + 1, self.dim, name='label_embed')(labels)
        log_alpha = jnp.log(jnp.maximum(alpha.astype(jnp.float32), 1e-6))[:, None]
        # Frequencies 0.5 .. 64 cover log(alpha) in roughly [0, 3] coarse to fine.
        freqs = jnp.exp(jnp.linspace(math.log(0.5), math.log(64.0), self.num_freqs))
        angles = log_alpha * freqs[None, :]
        feats = jnp.concatenate([jnp.sin(angles), jnp.cos(angles), log_alpha], axis=-1)
        h = nn.silu(nn.Dense(self.dim, dtype=self.dtype, name='alpha_dense_0')(feats))
        alpha_emb = nn.Dense(self.dim, dtype=self.dtype, name='alpha_dense_1')(h)
        return (label_emb + alpha_emb).astype(self.dtype)


class FiLMResBlock(nn.Module):
    """Residual block: (GroupNorm, FiLM from cond, SiLU, conv3x3) x 2 + skip.

    x [B, H, W, Cin], cond [B, D] -> [B, H, W, channels]. FiLM: h * (1 + scale) + shift.
    """

    channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
        h = x
        for i in range(2):
            h = GroupNorm(num_groups=num_groups(h.shape[-1]), dtype=self.dtype, name=f'norm_{i}')(h)
            film = nn.Dense(2 * h.shape[-1], dtype=self.dtype, name=f'film_{i}')(nn.silu(cond))
            scale, shift = jnp.split(film[:, None, None, :], 2, axis=-1)
            h = nn.silu(h * (1 + scale) + shift)
            h = nn.Conv(self.channels, (3, 3), dtype=self.dtype, name=f'conv_{i}')(h)
        if x.shape[-1] != self.channels:
            x = nn.Conv(self.channels, (1, 1), dtype=self.dtype, name='skip')(x)
        return x + h


def conv_start_size(image_shape: Sequence[int]) -> tuple[int, int, int]:
    """(start_h, start_w, num_upsamplings) for the conv generator.

    Halve H while it is even and > 4: 8 -> 4 (1 upsampling), 28 -> 7 (2), 32 -> 4 (3),
    64 -> 4 (4). W must divide by the same power of two.
    """
    h, w = int(image_shape[0]), int(image_shape[1])
    start_h, ups = h, 0
    while start_h % 2 == 0 and start_h > 4:
        start_h //= 2
        ups += 1
    if w % (2**ups):
        raise ValueError(f'image width {w} must be divisible by 2**{ups} (from height {h}).')
    return start_h, w // 2**ups, ups


class ConvGenerator(nn.Module):
    """Upsampling ResNet: noise [B, noise_dim], labels int [B], alpha [B] -> [B, H, W, C].

    concat(noise, cond) -> dense to a start map of `conv_start_size(image_shape)` (4x4 for
    8/32/64-pixel images, 7x7 for 28) -> per resolution `num_res_blocks` FiLM res blocks, then
    nearest x2 upsampling + conv3x3, until H x W -> GroupNorm, SiLU, conv3x3 to C channels.
    Channels at a resolution with `j` upsamplings still to go: base_channels *
    min(2**j, max_channel_mult). Output is tanh-squashed to [-1, 1] when `tanh_output`,
    otherwise unconstrained (data are expected in [-1, 1] either way).
    labels == num_classes is the null (unconditional) class; alpha >= 1 is the guidance scale.
    """

    image_shape: Sequence[int]
    num_classes: int
    noise_dim: int = 64
    base_channels: int = 64
    num_res_blocks: int = 1
    max_channel_mult: int = 4
    cond_dim: int = 128
    tanh_output: bool = True
    dtype: Any = jnp.float32

    @property
    def noise_shape(self) -> tuple[int, ...]:
        """Shape of one noise sample (without batch): (noise_dim,)."""
        return (self.noise_dim,)

    def _channels(self, to_go: int) -> int:
        return self.base_channels * min(2**to_go, self.max_channel_mult)

    @nn.compact
    def __call__(self, noise: jax.Array, labels: jax.Array, alpha: jax.Array) -> jax.Array:
        start_h, start_w, ups = conv_start_size(self.image_shape)
        cond = ConditionEmbedding(self.num_classes, self.cond_dim, dtype=self.dtype, name='cond')(
            labels, alpha
        )
        ch = self._channels(ups)
        h = jnp.concatenate([noise.astype(self.dtype), cond], axis=-1)
        h = nn.Dense(start_h * start_w * ch, dtype=self.dtype, name='stem')(h)
        h = h.reshape(noise.shape[0], start_h, start_w, ch)
        for level in range(ups + 1):
            ch = self._channels(ups - level)
            for i in range(self.num_res_blocks):
                h = FiLMResBlock(ch, dtype=self.dtype, name=f'block_{level}_{i}')(h, cond)
            if level < ups:
                b, hh, ww, c = h.shape
                h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), 'nearest')
                h = nn.Conv(
                    self._channels(ups - level - 1), (3, 3), dtype=self.dtype, name=f'up_{level}'
                )(h)
        h = nn.silu(
            GroupNorm(num_groups=num_groups(h.shape[-1]), dtype=self.dtype, name='out_norm')(h)
        )
        h = nn.Conv(int(self.image_shape[2]), (3, 3), dtype=self.dtype, name='out_conv')(h)
        h = h.astype(jnp.float32)
        return jnp.tanh(h) if self.tanh_output else h


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """x [B, T, D] * (1 + scale[:, None]) + shift[:, None]."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class DiTBlock(nn.Module):
    """Pre-LN transformer block with adaLN-zero: x [B, T, D], cond [B, D] -> [B, T, D].

    Shift, scale and gate of both sublayers come from cond through a zero-initialised dense
    layer, so every block starts as the identity.
    """

    hidden: int
    heads: int
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
        mod = nn.Dense(
            6 * self.hidden, kernel_init=nn.initializers.zeros, dtype=self.dtype, name='adaln'
        )(nn.silu(cond))
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)
        ln = lambda name: nn.LayerNorm(use_scale=False, use_bias=False, dtype=self.dtype, name=name)
        h = _modulate(ln('norm_1')(x), shift1, scale1)
        h = nn.MultiHeadDotProductAttention(num_heads=self.heads, dtype=self.dtype, name='attn')(
            h, h
        )
        x = x + gate1[:, None, :] * h
        h = _modulate(ln('norm_2')(x), shift2, scale2)
        h = nn.gelu(nn.Dense(int(self.hidden * self.mlp_ratio), dtype=self.dtype, name='mlp_0')(h))
        h = nn.Dense(self.hidden, dtype=self.dtype, name='mlp_1')(h)
        return x + gate2[:, None, :] * h


class DiTGenerator(nn.Module):
    """Small DiT generator: noise tokens [B, T, P*P*C], labels int [B], alpha [B] -> [B,H,W,C].

    The noise is a sequence of T = (H/P)(W/P) + num_style_tokens tokens of size P*P*C (see
    `noise_shape`): the first (H/P)(W/P) are the patches of an image-shaped Gaussian (row
    major), the rest are extra "style" noise tokens. Patch and style tokens have their own
    linear embeddings and learned position embeddings; after `depth` adaLN-zero blocks
    conditioned on the label + alpha embedding, the style tokens are dropped and the patch
    tokens go through a final adaLN-modulated LayerNorm and a linear layer, then are
    unpatchified. The final linear layer keeps a standard (non-zero) init so the initial
    samples already vary with the noise. tanh output as in `ConvGenerator`.
    labels == num_classes is the null (unconditional) class; alpha >= 1 is the guidance scale.
    """

    image_shape: Sequence[int]
    num_classes: int
    patch_size: int = 4
    hidden: int = 256
    depth: int = 6
    heads: int = 4
    num_style_tokens: int = 0
    mlp_ratio: float = 4.0
    tanh_output: bool = True
    dtype: Any = jnp.float32

    @property
    def grid(self) -> tuple[int, int]:
        """Patches along height and width."""
        return (
            int(self.image_shape[0]) // self.patch_size,
            int(self.image_shape[1]) // self.patch_size,
        )

    @property
    def patch_dim(self) -> int:
        return self.patch_size**2 * int(self.image_shape[2])

    @property
    def noise_shape(self) -> tuple[int, ...]:
        """Shape of one noise sample: (num_patches + num_style_tokens, patch_dim)."""
        gh, gw = self.grid
        return (gh * gw + self.num_style_tokens, self.patch_dim)

    @nn.compact
    def __call__(self, noise: jax.Array, labels: jax.Array, alpha: jax.Array) -> jax.Array:
        gh, gw = self.grid
        num_patches = gh * gw
        cond = ConditionEmbedding(self.num_classes, self.hidden, dtype=self.dtype, name='cond')(
            labels, alpha
        )
        pos_init = nn.initializers.normal(0.02)
        noise = noise.astype(self.dtype)
        x = nn.Dense(self.hidden, dtype=self.dtype, name='patch_embed')(noise[:, :num_patches])
        x = x + self.param('pos_embed', pos_init, (num_patches, self.hidden))
        if self.num_style_tokens:
            s = nn.Dense(self.hidden, dtype=self.dtype, name='style_embed')(noise[:, num_patches:])
            s = s + self.param('style_pos_embed', pos_init, (self.num_style_tokens, self.hidden))
            x = jnp.concatenate([x, s], axis=1)
        for i in range(self.depth):
            x = DiTBlock(
                self.hidden, self.heads, self.mlp_ratio, dtype=self.dtype, name=f'block_{i}'
            )(x, cond)
        x = x[:, :num_patches]
        mod = nn.Dense(
            2 * self.hidden, kernel_init=nn.initializers.zeros, dtype=self.dtype, name='final_adaln'
        )(nn.silu(cond))
        shift, scale = jnp.split(mod, 2, axis=-1)
        x = nn.LayerNorm(use_scale=False, use_bias=False, dtype=self.dtype, name='final_norm')(x)
        x = nn.Dense(self.patch_dim, dtype=self.dtype, name='out')(_modulate(x, shift, scale))
        p, c = self.patch_size, int(self.image_shape[2])
        x = x.reshape(-1, gh, gw, p, p, c).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(-1, gh * p, gw * p, c).astype(jnp.float32)
        return jnp.tanh(x) if self.tanh_output else x


class MLPImageGenerator(nn.Module):
    """Residual MLP: noise [B, noise_dim], labels int [B], alpha [B] -> images [B, H, W, C].

    concat(noise, cond) -> Dense(hidden) -> `depth` residual blocks (LayerNorm, FiLM from
    the label + alpha embedding, SiLU, Dense) -> Dense(H*W*C), reshaped, tanh-squashed when
    `tanh_output`. No spatial prior at all, so it is the fastest generator per step and
    suits small images (8x8 digits, 28x28 MNIST) on a CPU.
    labels == num_classes is the null (unconditional) class; alpha >= 1 is the guidance scale.
    """

    image_shape: Sequence[int]
    num_classes: int
    noise_dim: int = 64
    hidden: int = 512
    depth: int = 3
    cond_dim: int = 128
    tanh_output: bool = True
    dtype: Any = jnp.float32

    @property
    def noise_shape(self) -> tuple[int, ...]:
        """Shape of one noise sample (without batch): (noise_dim,)."""
        return (self.noise_dim,)

    @nn.compact
    def __call__(self, noise: jax.Array, labels: jax.Array, alpha: jax.Array) -> jax.Array:
        cond = ConditionEmbedding(self.num_classes, self.cond_dim, dtype=self.dtype, name='cond')(
            labels, alpha
        )
        h = jnp.concatenate([noise.astype(self.dtype), cond], axis=-1)
        h = nn.Dense(self.hidden, dtype=self.dtype, name='stem')(h)
        for i in range(self.depth):
            film = nn.Dense(2 * self.hidden, dtype=self.dtype, name=f'film_{i}')(nn.silu(cond))
            scale, shift = jnp.split(film, 2, axis=-1)
            r = nn.LayerNorm(dtype=self.dtype, name=f'norm_{i}')(h)
            r = nn.silu(r * (1 + scale) + shift)
            h = h + nn.Dense(self.hidden, dtype=self.dtype, name=f'dense_{i}')(r)
        h = nn.silu(nn.LayerNorm(dtype=self.dtype, name='out_norm')(h))
        size = int(np.prod(self.image_shape))
        h = nn.Dense(size, dtype=self.dtype, name='out')(h).astype(jnp.float32)
        h = h.reshape(noise.shape[0], *(int(s) for s in self.image_shape))
        return jnp.tanh(h) if self.tanh_output else h


def _positive_int(model_config: Any, field: str, default: int) -> int:
    value = model_config.get(field, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f'model.{field} must be a positive integer, got {value!r}.')
    return value


def make_image_generator(
    model_config: Any, image_shape: Sequence[int], num_classes: int
) -> ConvGenerator | DiTGenerator | MLPImageGenerator:
    """Builds the image generator named by `model_config.name` ('conv', 'dit' or 'mlp').

    Fields read (missing ones take the module defaults): conv: noise_dim, base_channels,
    num_res_blocks, max_channel_mult, cond_dim, tanh_output; dit: patch_size, hidden, depth,
    heads, num_style_tokens, mlp_ratio, tanh_output; mlp: noise_dim, hidden, depth, cond_dim,
    tanh_output. Raises ValueError naming an unknown name or a bad size.
    """
    name = model_config.get('name', None)
    if name not in IMAGE_MODEL_NAMES:
        raise ValueError(
            f'model.name={name!r} is unknown for images; choose one of {IMAGE_MODEL_NAMES}.'
        )
    given = image_shape
    try:  # Accept NumPy integers too (shapes read from dataset metadata).
        image_shape = tuple(operator.index(s) for s in image_shape)
    except TypeError:
        image_shape = ()
    if len(image_shape) != 3 or min(image_shape) <= 0:
        raise ValueError(f'image_shape must be three positive ints (H, W, C), got {given!r}.')
    if not isinstance(num_classes, int | np.integer) or num_classes <= 0:
        raise ValueError(f'num_classes must be a positive integer, got {num_classes!r}.')
    num_classes = int(num_classes)
    tanh_output = bool(model_config.get('tanh_output', True))
    if name == 'conv':
        conv_start_size(image_shape)  # Raises for an incompatible width.
        return ConvGenerator(
            image_shape=image_shape,
            num_classes=num_classes,
            noise_dim=_positive_int(model_config, 'noise_dim', 64),
            base_channels=_positive_int(model_config, 'base_channels', 64),
            num_res_blocks=_positive_int(model_config, 'num_res_blocks', 1),
            max_channel_mult=_positive_int(model_config, 'max_channel_mult', 4),
            cond_dim=_positive_int(model_config, 'cond_dim', 128),
            tanh_output=tanh_output,
        )
    if name == 'mlp':
        return MLPImageGenerator(
            image_shape=image_shape,
            num_classes=num_classes,
            noise_dim=_positive_int(model_config, 'noise_dim', 64),
            hidden=_positive_int(model_config, 'hidden', 512),
            depth=_positive_int(model_config, 'depth', 3),
            cond_dim=_positive_int(model_config, 'cond_dim', 128),
            tanh_output=tanh_output,
        )
    patch_size = _positive_int(model_config, 'patch_size', 4)
    hidden = _positive_int(model_config, 'hidden', 256)
    heads = _positive_int(model_config, 'heads', 4)
    depth = _positive_int(model_config, 'depth', 6)
    if image_shape[0] % patch_size or image_shape[1] % patch_size:
        raise ValueError(
            f'model.patch_size={patch_size} must divide the image size {image_shape[:2]}.'
        )
    if hidden % heads:
        raise ValueError(f'model.hidden={hidden} must be divisible by model.heads={heads}.')
    num_style_tokens = model_config.get('num_style_tokens', 0)
    if not isinstance(num_style_tokens, int) or num_style_tokens < 0:
        raise ValueError(
            f'model.num_style_tokens must be a non-negative integer, got {num_style_tokens!r}.'
        )
    mlp_ratio = model_config.get('mlp_ratio', 4.0)
    if not mlp_ratio > 0:
        raise ValueError(f'model.mlp_ratio must be positive, got {mlp_ratio!r}.')
    return DiTGenerator(
        image_shape=image_shape,
        num_classes=num_classes,
        patch_size=patch_size,
        hidden=hidden,
        depth=depth,
        heads=heads,
        num_style_tokens=num_style_tokens,
        mlp_ratio=float(mlp_ratio),
        tanh_output=tanh_output,
    )
