"""Frozen feature encoders for feature-space drifting: a small ResNet, its MAE objective,
and the paper's multi-scale feature sets (DESIGN.md section 1, paper appendix A.5), whose
drifting loss sums `field.drift_loss` over the sets, each with its own scale normalisation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from drift_jax import field

Array = jax.Array

# Kinds of feature sets `feature_sets` can build (names for its `include` argument).
FEATURE_SET_KINDS: tuple[str, ...] = ('locations', 'global', 'patch2', 'patch4', 'raw',
                                      'energy')
DEFAULT_FEATURE_SETS: tuple[str, ...] = FEATURE_SET_KINDS
# Variance floor under the std's square root: keeps d(std) finite for constant windows
# (zero-padded backgrounds); sqrt(1e-8) = 1e-4 is far below feature magnitudes (~1).
_STD_EPS = 1e-8


def _num_groups(channels: int, max_groups: int) -> int:
    """GroupNorm group count: the largest divisor of `channels` that divides max_groups."""
    return math.gcd(channels, max_groups)


# ----------------------------------------------------------------------------
# Encoder.


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
        mean_sq = jnp.sum(jnp.square(xf), axis=(1, 2)).reshape(b, self.num_groups, per
                                                               ).sum(-1) / count
        inv = jax.lax.rsqrt(jnp.maximum(mean_sq - jnp.square(mean), 0.0) + self.epsilon)
        mean = jnp.repeat(mean, per, axis=1)[:, None, None, :]
        mul = (jnp.repeat(inv, per, axis=1) * scale)[:, None, None, :]
        return ((xf - mean) * mul + bias).astype(self.dtype)


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
            h = GroupNorm(num_groups=_num_groups(h.shape[-1], self.norm_groups),
                          dtype=self.dtype, name=f'norm_{i}')(h)
            stride = self.stride if i == 0 else 1
            h = nn.Conv(self.channels, (3, 3), strides=(stride, stride), dtype=self.dtype,
                        name=f'conv_{i}')(nn.silu(h))
        if x.shape[-1] != self.channels or self.stride != 1:
            x = nn.Conv(self.channels, (1, 1), strides=(self.stride, self.stride),
                        dtype=self.dtype, name='skip')(x)
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
        h = nn.Conv(self.widths[0], (3, 3), strides=(self.stem_stride, self.stem_stride),
                    dtype=self.dtype, name='stem')(x.astype(self.dtype))
        maps = []
        for s, width in enumerate(self.widths):
            for b in range(self.blocks_per_stage):
                stride = 2 if (s > 0 and b == 0) else 1
                h = ResidualBlock(width, stride, self.norm_groups, self.dtype,
                                  name=f'stage{s}_block{b}')(h)
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
        groups = _num_groups(self.decoder_width, self.encoder.norm_groups)
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
            'masked and one visible patch (use smaller patches or another ratio).')
    return num_masked


def random_patch_mask(key: Array, image_shape: Sequence[int], mask_ratio: float,
                      patch_size: int) -> Array:
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


def mae_loss(params: Any, module: MAE, images: Array, key: Array, mask_ratio: float = 0.6,
             patch_size: int = 2) -> tuple[Array, dict[str, Array]]:
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


def make_mae(channels: int, *, widths: Sequence[int] = (32, 64, 128), blocks_per_stage: int = 2,
             decoder_width: int = 64, decoder_skips: bool = False, stem_stride: int = 1) -> MAE:
    """The MAE module `train_mae` trains (same arguments), for applying its params."""
    if int(stem_stride) != stem_stride or stem_stride < 1:
        raise ValueError(f'stem_stride must be a positive integer; got {stem_stride!r}.')
    encoder = ResNetEncoder(widths=tuple(widths), blocks_per_stage=blocks_per_stage,
                            stem_stride=int(stem_stride))
    return MAE(encoder=encoder, channels=channels, decoder_width=decoder_width,
               decoder_skips=decoder_skips)


def train_mae(
    images: Any,
    *,
    widths: Sequence[int] = (32, 64, 128),
    blocks_per_stage: int = 2,
    decoder_width: int = 64,
    decoder_skips: bool = False,
    steps: int = 1000,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    mask_ratio: float = 0.6,
    patch_size: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """Trains an MAE on images [N, H, W, C] (float, in [-1, 1]) with AdamW; returns params.

    A convenience for tests and notebooks (no checkpoints). Batches are drawn uniformly
    with replacement inside the jitted step. `steps=0` returns the initial parameters
    (the same `seed` gives the same initialisation). The returned dict is the MAE's
    'params' collection; `params['encoder']` is the encoder's, for
    `ResNetEncoder(widths=widths, blocks_per_stage=blocks_per_stage)` (or
    `make_mae(C, ...).encoder`).
    """
    images = jnp.asarray(images, jnp.float32)
    if images.ndim != 4 or images.shape[0] < 1:
        raise ValueError(f'train_mae expects images [N, H, W, C]; got shape {images.shape}.')
    if steps < 0 or batch_size < 1:
        raise ValueError(f'steps must be >= 0 and batch_size >= 1; got {steps}, {batch_size}.')
    _check_mask_args(images.shape, mask_ratio, patch_size)
    module = make_mae(images.shape[-1], widths=widths, blocks_per_stage=blocks_per_stage,
                      decoder_width=decoder_width, decoder_skips=decoder_skips)
    init_key, train_key = jax.random.split(jax.random.key(seed))
    params = jax.jit(module.init)(init_key, images[:1])['params']  # Eager init: ~100 compiles.
    if steps == 0:
        return params
    tx = optax.adamw(lr, weight_decay=weight_decay)
    opt_state = tx.init(params)

    @jax.jit
    def step_fn(params, opt_state, key):
        batch_key, mask_key = jax.random.split(key)
        idx = jax.random.randint(batch_key, (batch_size,), 0, images.shape[0])
        grads, _ = jax.grad(mae_loss, has_aux=True)(params, module, images[idx], mask_key,
                                                   mask_ratio, patch_size)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for step in range(steps):
        params, opt_state = step_fn(params, opt_state, jax.random.fold_in(train_key, step))
    return params


# ----------------------------------------------------------------------------
# Feature sets.


def _std(x: Array, axes: tuple[int, ...]) -> Array:
    """Population std over `axes` with a finite gradient for constant inputs (two-pass)."""
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=axes)
    return jnp.sqrt(var + _STD_EPS)


def _patch_stats(fmap: Array, k: int) -> tuple[Array, Array]:
    """Mean and std over non-overlapping k x k patches: fmap [B, h, w, c] -> 2 x [B, T, c].

    T = (h // k) * (w // k), row-major over the patch grid; a remainder row or column
    (h or w not a multiple of k) is cropped.
    """
    b, h, w, c = fmap.shape
    hk, wk = h // k, w // k
    patches = fmap[:, :hk * k, :wk * k].reshape(b, hk, k, wk, k, c)
    mean = jnp.mean(patches, axis=(2, 4)).reshape(b, hk * wk, c)
    std = _std(patches, (2, 4)).reshape(b, hk * wk, c)
    return mean, std


def feature_sets(
    block_maps: Sequence[Array],
    raw_images: Array | None = None,
    *,
    include: Sequence[str] = DEFAULT_FEATURE_SETS,
) -> dict[str, Array]:
    """The paper's multi-scale feature sets (appendix A.5) as token sets [B, T, D].

    For block s with map [B, h, w, c] (float32 outputs, names 'block{s}/...'):
      'locations' -> 'block{s}/locations' [B, h*w, c]: one token per location, row-major.
        Each location is its own drift problem: `feature_drift_loss` moves T into the
        group axis, so the vectors of all samples at location t form one set.
      'global' -> 'block{s}/global_mean', 'block{s}/global_std' [B, 1, c]: over locations.
      'patch2' -> 'block{s}/patch2_mean', 'block{s}/patch2_std' [B, (h//2)*(w//2), c]:
        mean / std over each non-overlapping 2x2 patch (the paper's (H/2)(W/2) vectors; a
        remainder row or column is cropped). 'patch4' likewise with 4x4 patches.
    And on the input images [B, H, W, C] (skipped when raw_images is None):
      'raw' -> 'raw' [B, 1, H*W*C]: the plain data-space drift term.
      'energy' -> 'energy' [B, 1, C]: per-channel mean of squared pixels.

    Sets that carry nothing new are skipped: patch sets of a map smaller than the patch,
    patch sets whose single patch is the whole map (when 'global' is included: they equal
    it), the global std of a 1x1 map (always 0) and its global mean when 'locations' is
    included (equal). std is the population std, sqrt(var + 1e-8) for finite gradients.

    Args:
      block_maps: per-stage encoder maps [B, h_s, w_s, c_s] (ResNetEncoder output).
      raw_images: the encoder's input images [B, H, W, C], or None.
      include: which kinds to build, from FEATURE_SET_KINDS.

    Returns:
      Dict name -> [B, T, D] float32, in a deterministic order.
    """
    include = tuple(include)
    unknown = [k for k in include if k not in FEATURE_SET_KINDS]
    if unknown:
        raise ValueError(f'Unknown feature set kind(s) {unknown}; choose from '
                         f'{FEATURE_SET_KINDS}.')
    batch = None
    for s, fmap in enumerate(block_maps):
        if fmap.ndim != 4:
            raise ValueError(f'block_maps[{s}] must be [B, h, w, c]; got shape {fmap.shape}.')
        if batch is not None and fmap.shape[0] != batch:
            raise ValueError(f'block_maps[{s}] has batch {fmap.shape[0]}, expected {batch}.')
        batch = fmap.shape[0]
    feats: dict[str, Array] = {}
    for s, fmap in enumerate(block_maps):
        fmap = fmap.astype(jnp.float32)
        b, h, w, c = fmap.shape
        name = f'block{s}'
        if 'locations' in include:
            feats[f'{name}/locations'] = fmap.reshape(b, h * w, c)
        if 'global' in include and h * w > 1:
            feats[f'{name}/global_mean'] = jnp.mean(fmap, axis=(1, 2))[:, None]
            feats[f'{name}/global_std'] = _std(fmap, (1, 2))[:, None]
        elif 'global' in include and 'locations' not in include:
            feats[f'{name}/global_mean'] = fmap.reshape(b, 1, c)
        for k in (2, 4):
            if f'patch{k}' not in include or h < k or w < k:
                continue
            if 'global' in include and h == k and w == k:
                continue
            mean, std = _patch_stats(fmap, k)
            feats[f'{name}/patch{k}_mean'] = mean
            feats[f'{name}/patch{k}_std'] = std
    if raw_images is not None:
        raw = jnp.asarray(raw_images).astype(jnp.float32)
        if raw.ndim != 4:
            raise ValueError(f'raw_images must be [B, H, W, C]; got shape {raw.shape}.')
        if batch is not None and raw.shape[0] != batch:
            raise ValueError(f'raw_images has batch {raw.shape[0]}; block maps have {batch}.')
        if 'raw' in include:
            feats['raw'] = raw.reshape(raw.shape[0], 1, -1)
        if 'energy' in include:
            feats['energy'] = jnp.mean(jnp.square(raw), axis=(1, 2))[:, None]
    return feats


def extract_feature_sets(
    encoder: ResNetEncoder,
    encoder_params: Any,
    images: Array,
    *,
    include: Sequence[str] = DEFAULT_FEATURE_SETS,
) -> dict[str, Array]:
    """Feature sets [B, T, D] of images [B, H, W, C] under a frozen encoder.

    The parameters are wrapped in stop_gradient (never trained through here); gradients
    flow to `images`, so generated images get the feature-space field.
    """
    params = jax.lax.stop_gradient(encoder_params)
    maps = encoder.apply({'params': params}, images, return_blocks=True)
    return feature_sets(maps, images, include=include)


def _to_groups(feat: Array, name: str, role: str) -> Array:
    """[N, T, D] or [G, N, T, D] -> [G, T, N, D] (a single group for 3-D input)."""
    feat = jnp.asarray(feat)
    if feat.ndim == 3:
        feat = feat[None]
    if feat.ndim != 4:
        raise ValueError(f'{role}[{name!r}] must be [N, T, D] or [G, N, T, D]; got shape '
                         f'{feat.shape}.')
    return jnp.swapaxes(feat, 1, 2)


def _expand_weights(w: Array | None, tokens: int) -> Array | None:
    """Per-sample weights [M] or [G, M] -> [G * T, M] (each group's row repeated T times)."""
    if w is None:
        return None
    w = jnp.asarray(w, jnp.float32)
    if w.ndim == 1:
        return w
    return jnp.repeat(w, tokens, axis=0)


def feature_drift_loss(
    gen_feats: Mapping[str, Array],
    pos_feats: Mapping[str, Array],
    neg_feats: Mapping[str, Array] | None = None,
    opts: field.DriftOptions | None = None,
    weights_pos: Array | None = None,
    weights_neg: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Drifting loss summed over feature sets, each set with its own scale normalisation.

    For each set, the inputs [G, N, T, D] (class groups G, N samples, T tokens; [N, T, D]
    means G = 1) become the groups [G * T, N, D] (group g * T + t holds the samples' tokens
    t of class group g), so every token position is its own drift problem with its own
    distance scale, and `field.drift_loss` averages over those groups and samples:

        loss = sum_sets drift_loss(gen[G*T, N, D], pos[G*T, N+, D], neg[G*T, N-, D]).

    Each set counts equally whatever its token count (the mean over tokens, not the sum).

    Args:
      gen_feats: set name -> generated features [G, N, T, D] (differentiable).
      pos_feats: set name -> positives [G, N+, T, D]; same names as gen_feats.
      neg_feats: set name -> negatives [G, N-, T, D], or None (the generated batch,
        self-masked, as in `drift_loss`).
      opts: drift options (default DriftOptions()); scale_dist must be True: it is what
        makes sets of different dimension and magnitude comparable.
      weights_pos, weights_neg: per-sample weights [N+] / [N-] or [G, N+] / [G, N-],
        shared by all sets and tokens.

    Returns:
      (scalar loss, metrics): '{set}/loss' and '{set}/{stat}' for each drift stat.
    """
    opts = opts or field.DriftOptions()
    if not opts.scale_dist:
        raise ValueError('feature_drift_loss needs opts.scale_dist=True: each feature set '
                         'is normalised by its own distance scale.')
    if not gen_feats:
        raise ValueError('gen_feats is empty; give at least one feature set.')
    names = list(gen_feats)
    for role, other in (('pos_feats', pos_feats), ('neg_feats', neg_feats)):
        if other is None:
            continue
        missing = [k for k in names if k not in other]
        extra = [k for k in other if k not in gen_feats]
        if missing or extra:
            raise ValueError(f'{role} must have the sets of gen_feats; missing {missing}, '
                             f'unexpected {extra}.')
    total = jnp.zeros((), jnp.float32)
    metrics: dict[str, Array] = {}
    for name in names:
        x = _to_groups(gen_feats[name], name, 'gen_feats')
        g, t, n, d = x.shape
        y_pos = _to_groups(pos_feats[name], name, 'pos_feats')
        y_neg = None if neg_feats is None else _to_groups(neg_feats[name], name, 'neg_feats')
        for role, y in (('pos_feats', y_pos), ('neg_feats', y_neg)):
            if y is not None and (y.shape[0], y.shape[1], y.shape[3]) != (g, t, d):
                raise ValueError(f'{role}[{name!r}] has groups/tokens/dim {y.shape[0]}, '
                                 f'{y.shape[1]}, {y.shape[3]}; gen_feats has {g}, {t}, {d}.')
        loss, stats = field.drift_loss(
            x.reshape(g * t, n, d), y_pos.reshape(g * t, -1, d),
            None if y_neg is None else y_neg.reshape(g * t, -1, d), opts,
            weights_pos=_expand_weights(weights_pos, t),
            weights_neg=_expand_weights(weights_neg, t))
        total = total + loss
        metrics[f'{name}/loss'] = loss
        for k, v in stats.items():
            metrics[f'{name}/{k}'] = v
    metrics['loss'] = total
    return total, metrics
