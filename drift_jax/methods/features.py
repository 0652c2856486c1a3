"""Feature space for drifting: the paper's multi-scale feature sets of a frozen encoder and
the drifting loss summed over them (paper appendix A.5), each set with its own scale
normalisation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from drift_jax import field
from drift_jax.models.encoders import ResNetEncoder

Array = jax.Array

# Kinds of feature sets `feature_sets` can build (names for its `include` argument).
FEATURE_SET_KINDS: tuple[str, ...] = ('locations', 'global', 'patch2', 'patch4', 'raw', 'energy')
DEFAULT_FEATURE_SETS: tuple[str, ...] = FEATURE_SET_KINDS
# Variance floor under the std's square root: keeps d(std) finite for constant windows
# (zero-padded backgrounds); sqrt(1e-8) = 1e-4 is far below feature magnitudes (~1).
STD_EPS = 1e-8


def robust_std(x: Array, axes: tuple[int, ...]) -> Array:
    """Population std over `axes` with a finite gradient for constant inputs (two-pass)."""
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=axes)
    return jnp.sqrt(var + STD_EPS)


def patch_stats(fmap: Array, k: int) -> tuple[Array, Array]:
    """Mean and std over non-overlapping k x k patches: fmap [B, h, w, c] -> 2 x [B, T, c].

    T = (h // k) * (w // k), row-major over the patch grid; a remainder row or column
    (h or w not a multiple of k) is cropped.
    """
    b, h, w, c = fmap.shape
    hk, wk = h // k, w // k
    patches = fmap[:, : hk * k, : wk * k].reshape(b, hk, k, wk, k, c)
    mean = jnp.mean(patches, axis=(2, 4)).reshape(b, hk * wk, c)
    std = robust_std(patches, (2, 4)).reshape(b, hk * wk, c)
    return mean, std


def feature_sets(
    block_maps: Sequence[Array],
    raw_images: Array | None = None,
    *,
    include: Sequence[str] = DEFAULT_FEATURE_SETS,
) -> dict[str, Array]:
    """The paper's multi-scale feature sets (appendix A.5) as token sets [B, T, D].

    For block s with map [B, h, w, c] (float32 outputs, names 'block{s}/...')::

      'locations' -> 'block{s}/locations' [B, h*w, c]: one token per location, row-major.
        Each location is its own drift problem: `feature_drift_loss` moves T into the
        group axis, so the vectors of all samples at location t form one set.
      'global' -> 'block{s}/global_mean', 'block{s}/global_std' [B, 1, c]: over locations.
      'patch2' -> 'block{s}/patch2_mean', 'block{s}/patch2_std' [B, (h//2)*(w//2), c]:
        mean / std over each non-overlapping 2x2 patch (the paper's (H/2)(W/2) vectors; a
        remainder row or column is cropped). 'patch4' likewise with 4x4 patches.

    And on the input images [B, H, W, C] (skipped when raw_images is None)::

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
        raise ValueError(f'Unknown feature set kind(s) {unknown}; choose from {FEATURE_SET_KINDS}.')
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
            feats[f'{name}/global_std'] = robust_std(fmap, (1, 2))[:, None]
        elif 'global' in include and 'locations' not in include:
            feats[f'{name}/global_mean'] = fmap.reshape(b, 1, c)
        for k in (2, 4):
            if f'patch{k}' not in include or h < k or w < k:
                continue
            if 'global' in include and h == k and w == k:
                continue
            mean, std = patch_stats(fmap, k)
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


def to_token_groups(feat: Array, name: str, role: str) -> Array:
    """[N, T, D] or [G, N, T, D] -> [G, T, N, D] (a single group for 3-D input)."""
    feat = jnp.asarray(feat)
    if feat.ndim == 3:
        feat = feat[None]
    if feat.ndim != 4:
        raise ValueError(
            f'{role}[{name!r}] must be [N, T, D] or [G, N, T, D]; got shape {feat.shape}.'
        )
    return jnp.swapaxes(feat, 1, 2)


def expand_weights(w: Array | None, tokens: int) -> Array | None:
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
        raise ValueError(
            'feature_drift_loss needs opts.scale_dist=True: each feature set '
            'is normalised by its own distance scale.'
        )
    if not gen_feats:
        raise ValueError('gen_feats is empty; give at least one feature set.')
    names = list(gen_feats)
    for role, other in (('pos_feats', pos_feats), ('neg_feats', neg_feats)):
        if other is None:
            continue
        missing = [k for k in names if k not in other]
        extra = [k for k in other if k not in gen_feats]
        if missing or extra:
            raise ValueError(
                f'{role} must have the sets of gen_feats; missing {missing}, unexpected {extra}.'
            )
    total = jnp.zeros((), jnp.float32)
    metrics: dict[str, Array] = {}
    for name in names:
        x = to_token_groups(gen_feats[name], name, 'gen_feats')
        g, t, n, d = x.shape
        y_pos = to_token_groups(pos_feats[name], name, 'pos_feats')
        y_neg = None if neg_feats is None else to_token_groups(neg_feats[name], name, 'neg_feats')
        for role, y in (('pos_feats', y_pos), ('neg_feats', y_neg)):
            if y is not None and (y.shape[0], y.shape[1], y.shape[3]) != (g, t, d):
                raise ValueError(
                    f'{role}[{name!r}] has groups/tokens/dim {y.shape[0]}, '
                    f'{y.shape[1]}, {y.shape[3]}; gen_feats has {g}, {t}, {d}.'
                )
        loss, stats = field.drift_loss(
            x.reshape(g * t, n, d),
            y_pos.reshape(g * t, -1, d),
            None if y_neg is None else y_neg.reshape(g * t, -1, d),
            opts,
            weights_pos=expand_weights(weights_pos, t),
            weights_neg=expand_weights(weights_neg, t),
        )
        total = total + loss
        metrics[f'{name}/loss'] = loss
        for k, v in stats.items():
            metrics[f'{name}/{k}'] = v
    metrics['loss'] = total
    return total, metrics


# ----------------------------------------------------------------------------
# The frozen encoder of a finished MAE run.


class FrozenEncoder:
    """A trained MAE encoder held fixed; the drifting loss is summed over its feature sets."""

    def __init__(self, encoder, encoder_params, feature_sets: tuple[str, ...]):
        self.encoder, self.params, self.feature_sets = encoder, encoder_params, feature_sets

    def features(self, images):
        """Feature sets of images [B, H, W, C]: dict name -> [B, T, D]."""
        return extract_feature_sets(self.encoder, self.params, images, include=self.feature_sets)

    def loss(self, x, y_pos, y_unc, w_neg, opts, real_are_features: bool = False):
        """Sum over feature sets of the drifting loss.

        Args:
          x: generated images [G, N, H, W, C] (differentiable).
          y_pos, y_unc: real images [G, N+, H, W, C] and [G, Nu, H, W, C]; or, with
            `real_are_features`, their feature sets already computed, dicts name ->
            [G, N+, T, D] and [G, Nu, T, D].
          w_neg: weights of the negatives [G, N + Nu] (generated first).
          opts: drift options.
        """
        g = x.shape[0]
        flat = lambda a: a.reshape(-1, *a.shape[2:])  # noqa: E731

        def grouped(a):
            return {
                k: v.reshape(g, a.shape[1], *v.shape[1:]) for k, v in self.features(flat(a)).items()
            }

        gen = grouped(x)
        pos, unc = (y_pos, y_unc) if real_are_features else (grouped(y_pos), grouped(y_unc))
        neg = {k: jnp.concatenate([jax.lax.stop_gradient(gen[k]), unc[k]], axis=1) for k in gen}
        loss, stats = feature_drift_loss(gen, pos, neg, opts, weights_neg=w_neg)
        keep = {k: v for k, v in stats.items() if '/' not in k}  # per-set stats: too many
        return loss, keep


def load_frozen_encoder(config: ml_collections.ConfigDict, image_shape) -> FrozenEncoder | None:
    """Loads the MAE encoder named by `config.encoder.workdir` (None for pixel space)."""
    if config.encoder.name == 'none':
        return None
    from drift_jax import train

    workdir = config.encoder.workdir
    path = os.path.join(workdir, 'config.json')
    if not os.path.exists(path):
        raise FileNotFoundError(
            f'encoder.workdir={workdir!r} has no config.json: train the '
            'encoder first (python -m drift_jax.main '
            '--config=configs/mae_mnist.py --workdir=...).'
        )
    with open(path) as f:
        enc_cfg = json.load(f)
    kind = 'mae' if enc_cfg.get('task') == 'mae' else enc_cfg.get('method', 'drifting')
    if kind != 'mae' or enc_cfg['data']['name'] != config.data.name:
        raise ValueError(
            f'encoder.workdir={workdir!r} holds a {kind!r} run on '
            f'{enc_cfg["data"]["name"]!r}; expected an MAE run on '
            f'{config.data.name!r}.'
        )
    run, state, _ = train.load_run(workdir)
    if tuple(run.method.image_shape) != tuple(image_shape):
        raise ValueError(
            f'The encoder in {workdir!r} was trained on images of shape '
            f'{run.method.image_shape}, not {tuple(image_shape)}.'
        )
    return FrozenEncoder(
        run.method.model.encoder,
        state.ema_params['mae']['params']['encoder'],
        tuple(config.encoder.feature_sets),
    )
