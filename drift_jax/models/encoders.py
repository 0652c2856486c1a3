"""Feature encoders: a small ResNet (the frozen encoder of feature-space drifting) and the
masked autoencoder that trains it (`mae_loss`; the `mae` method runs it in the trainer).
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


class ResidualBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm, SiLU, conv3x3) x 2 plus a skip.

    x [B, H, W, Cin] -> [B, ceil(H / stride), ceil(W / stride), channels]. The first conv
    carries the stride; the skip is a strided 1x1 conv when the shape changes.
    """

    channels: int
    stride: int = 1
    norm_groups: int = 8
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = x
        for i in range(2):
            h = GroupNorm(
                num_groups=num_groups(h.shape[-1], self.norm_groups),
                dtype=self.dtype,
                name=f'norm_{i}',
            )(h)
            stride = self.stride if i == 0 else 1
            h = nn.Conv(
                self.channels, (3, 3), strides=(stride, stride), dtype=self.dtype, name=f'conv_{i}'
            )(nn.silu(h))
        if x.shape[-1] != self.channels or self.stride != 1:
            x = nn.Conv(
                self.channels,
                (1, 1),
                strides=(self.stride, self.stride),
                dtype=self.dtype,
                name='skip',
            )(x)
        return x + h


class ResNetEncoder(nn.Module):
    """Small ResNet for images [B, H, W, C]: a 3x3 stem conv, then one stage per width.

    Stage s has `blocks_per_stage` residual blocks (GroupNorm + SiLU, so outputs do not
    depend on the batch: no train/eval mode). Stage 0 keeps the input resolution; each
    later stage halves it with a stride-2 first block (SAME padding: 28 -> 14 -> 7 -> 4).
    Widths (32, 64, 128) on 32x32 images give maps 32x32x32, 16x16x64, 8x8x128.
    With `stem_stride` 2 the stem already halves the resolution (28x28 -> 14x14), which
    cuts the cost of every later layer by about 4x (what the MNIST encoder uses on a CPU).

    Attributes:
      widths: channels of each stage (the number of stages is len(widths)).
      blocks_per_stage: residual blocks per stage.
      stem_stride: stride of the 3x3 stem conv (1 keeps the input resolution).
      norm_groups: GroupNorm groups (gcd with the channel count).
      dtype: computation dtype (parameters stay float32).
    """

    widths: Sequence[int] = (32, 64, 128)
    blocks_per_stage: int = 2
    norm_groups: int = 8
    stem_stride: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, return_blocks: bool = True) -> list[Array] | Array:
        """Encodes images x [B, H, W, C].

        Returns:
          With return_blocks, the list of per-stage feature maps [B, h_s, w_s, widths[s]]
          (h_0 = ceil(H / stem_stride), h_s = ceil(h_{s-1} / 2)); otherwise only the last map.
        """
        if x.ndim != 4:
            raise ValueError(f'ResNetEncoder expects images [B, H, W, C]; got shape {x.shape}.')
        if not self.widths:
            raise ValueError('ResNetEncoder.widths is empty; give at least one stage width.')
        h = nn.Conv(
            self.widths[0],
            (3, 3),
            strides=(self.stem_stride, self.stem_stride),
            dtype=self.dtype,
            name='stem',
        )(x.astype(self.dtype))
        maps = []
        for s, width in enumerate(self.widths):
            for b in range(self.blocks_per_stage):
                stride = 2 if (s > 0 and b == 0) else 1
                h = ResidualBlock(
                    width, stride, self.norm_groups, self.dtype, name=f'stage{s}_block{b}'
                )(h)
            maps.append(h)
        return maps if return_blocks else maps[-1]


# ----------------------------------------------------------------------------
# Masked-autoencoder objective.


class MAE(nn.Module):
    """Masked autoencoder: `encoder` plus a light conv decoder back to pixels.

    The encoder sees images whose masked patches were set to 0 (see `mask_images`); for a
    conv encoder, zeroing the pixels is the simple equivalent of dropping tokens (0 is mid
    grey for images in [-1, 1]). The decoder starts from the last encoder map and upsamples
    (nearest, then conv3x3 + GroupNorm + SiLU) through the resolutions of the earlier
    stages; with `decoder_skips` each step also adds a 1x1 projection of that stage's map.
    A final conv3x3 predicts the `channels` pixel values (no output activation).

    The encoder's parameters are the subtree `params['encoder']`: use them with the same
    `ResNetEncoder` (`mae.encoder.apply({'params': params['encoder']}, images)`).

    Attributes:
      encoder: the ResNetEncoder to train.
      channels: image channels C to reconstruct.
      decoder_width: channels of the decoder's conv layers.
      decoder_skips: decode from all encoder stages instead of the last one only.
    """

    encoder: ResNetEncoder
    channels: int
    decoder_width: int = 64
    decoder_skips: bool = False

    @nn.compact
    def __call__(self, images: Array) -> Array:
        """Reconstruction [B, H, W, channels] of (masked) images [B, H, W, C]."""
        maps = self.encoder(images, return_blocks=True)
        groups = num_groups(self.decoder_width, self.encoder.norm_groups)
        h = nn.Conv(self.decoder_width, (3, 3), name='dec_in')(maps[-1])
        h = nn.silu(GroupNorm(num_groups=groups, name='dec_in_norm')(h))
        for s in reversed(range(len(maps) - 1)):
            b, hs, ws, _ = maps[s].shape
            h = jax.image.resize(h, (b, hs, ws, h.shape[-1]), 'nearest')
            h = nn.Conv(self.decoder_width, (3, 3), name=f'dec_conv{s}')(h)
            if self.decoder_skips:
                h = h + nn.Conv(self.decoder_width, (1, 1), name=f'dec_skip{s}')(maps[s])
            h = nn.silu(GroupNorm(num_groups=groups, name=f'dec_norm{s}')(h))
        if h.shape[1:3] != images.shape[1:3]:
            h = jax.image.resize(h, images.shape[:3] + (h.shape[-1],), 'nearest')
        return nn.Conv(self.channels, (3, 3), name='dec_out')(h).astype(jnp.float32)


def _check_mask_args(image_shape: Sequence[int], mask_ratio: float, patch_size: int) -> int:
    """Validates the masking arguments; returns the number of masked patches per image."""
    if int(patch_size) != patch_size or patch_size < 1:
        raise ValueError(f'patch_size must be a positive integer; got {patch_size}.')
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f'mask_ratio must be in (0, 1); got {mask_ratio}.')
    num_patches = math.ceil(image_shape[1] / patch_size) * math.ceil(image_shape[2] / patch_size)
    num_masked = round(mask_ratio * num_patches)
    if not 0 < num_masked < num_patches:
        raise ValueError(
            f'mask_ratio={mask_ratio} masks {num_masked} of {num_patches} patches of size '
            f'{patch_size} on {image_shape[1]}x{image_shape[2]} images; need at least one '
            'masked and one visible patch (use smaller patches or another ratio).'
        )
    return num_masked


def random_patch_mask(
    key: Array, image_shape: Sequence[int], mask_ratio: float, patch_size: int
) -> Array:
    """Random patch mask as pixels: float32 [B, H, W, 1], 1 on masked pixels.

    The image is cut into a ceil(H / p) x ceil(W / p) grid of p x p patches (the last row
    and column may be cropped); exactly round(mask_ratio * num_patches) patches are masked
    in each image, chosen uniformly.
    """
    num_masked = _check_mask_args(image_shape, mask_ratio, patch_size)
    b, height, width = image_shape[:3]
    gh, gw = math.ceil(height / patch_size), math.ceil(width / patch_size)
    scores = jax.random.uniform(key, (b, gh * gw))
    ranks = jnp.argsort(jnp.argsort(scores, axis=1), axis=1)
    patch_mask = (ranks < num_masked).astype(jnp.float32).reshape(b, gh, gw)
    pixels = jnp.repeat(jnp.repeat(patch_mask, patch_size, axis=1), patch_size, axis=2)
    return pixels[:, :height, :width, None]


def mae_loss(
    params: Any,
    module: MAE,
    images: Array,
    key: Array,
    mask_ratio: float = 0.6,
    patch_size: int = 2,
) -> tuple[Array, dict[str, Array]]:
    """MAE loss: mean squared error of the reconstruction on the masked pixels.

    Pure: jit it with `module`, `mask_ratio` and `patch_size` static
    (`jax.jit(mae_loss, static_argnames=('module', 'mask_ratio', 'patch_size'))`).

    Args:
      params: the MAE parameters (the 'params' collection).
      module: the MAE module.
      images: [B, H, W, C] float images in [-1, 1].
      key: PRNG key for the patch mask.
      mask_ratio: fraction of patches masked, in (0, 1) (MAE papers: 0.5-0.75).
      patch_size: side of the square patches masked together, in pixels.

    Returns:
      (loss, metrics): metrics hold 'loss', 'mse_visible' (on the unmasked pixels) and
      'mse_zero' (the masked-pixel MSE of predicting 0: the baseline to beat).
    """
    images = jnp.asarray(images, jnp.float32)
    mask = random_patch_mask(key, images.shape, mask_ratio, patch_size)
    recon = module.apply({'params': params}, images * (1.0 - mask))
    sq = jnp.square(recon - images)
    channels = images.shape[-1]
    n_masked = jnp.sum(mask) * channels
    n_visible = jnp.sum(1.0 - mask) * channels
    loss = jnp.sum(sq * mask) / n_masked
    metrics = {
        'loss': loss,
        'mse_visible': jnp.sum(sq * (1.0 - mask)) / jnp.maximum(n_visible, 1.0),
        'mse_zero': jnp.sum(jnp.square(images) * mask) / n_masked,
    }
    return loss, metrics


def make_mae(
    channels: int,
    *,
    widths: Sequence[int] = (32, 64, 128),
    blocks_per_stage: int = 2,
    decoder_width: int = 64,
    decoder_skips: bool = False,
    stem_stride: int = 1,
) -> MAE:
    """The MAE module over images with `channels` channels (ResNet encoder + decoder)."""
    if int(stem_stride) != stem_stride or stem_stride < 1:
        raise ValueError(f'stem_stride must be a positive integer; got {stem_stride!r}.')
    encoder = ResNetEncoder(
        widths=tuple(widths), blocks_per_stage=blocks_per_stage, stem_stride=int(stem_stride)
    )
    return MAE(
        encoder=encoder, channels=channels, decoder_width=decoder_width, decoder_skips=decoder_skips
    )
