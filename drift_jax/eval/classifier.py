"""The classifier behind the image metrics: a small ConvNet, its training and its inference.

`image_eval` trains two of these per dataset (one for features, one held out for class
accuracy) and caches them; they are usable on their own for any labelled image set.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

POOLS = ('avg', 'max')
# Inference batch size; the last batch is padded to it so the forward pass compiles once.
_EVAL_BATCH = 1024
# Version of the saved classifier files (`Classifier.save` / `load`).
_CACHE_FORMAT = 1


# ----------------------------------------------------------------------------------------------
# The classifier network.


def _even_crop(h: jax.Array) -> jax.Array:
    """Drop the last row/column of ``h [B, H, W, C]`` where H/W are odd."""
    return h[:, : h.shape[1] // 2 * 2, : h.shape[2] // 2 * 2]


def _space_to_depth(h: jax.Array) -> jax.Array:
    """Lossless 2x downsampling: ``[B, H, W, C] -> [B, H/2, W/2, 4C]`` (odd edges cropped)."""
    h = _even_crop(h)
    b, hh, ww, c = h.shape
    h = h.reshape(b, hh // 2, 2, ww // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return h.reshape(b, hh // 2, ww // 2, 4 * c)


def _pool2x2(h: jax.Array, kind: str) -> jax.Array:
    """2x2 mean or max pooling of ``h [B, H, W, C] -> [B, H/2, W/2, C]`` by reshaping.

    Reshaping instead of ``reduce_window`` keeps the backward pass cheap on CPU.
    """
    h = _even_crop(h)
    b, hh, ww, c = h.shape
    blocks = h.reshape(b, hh // 2, 2, ww // 2, 2, c)
    return blocks.mean(axis=(2, 4)) if kind == 'avg' else blocks.max(axis=(2, 4))


class ConvNet(nn.Module):
    """Small LeNet-like classifier: conv stages with 2x2 pooling, one hidden dense layer.

    Inputs larger than 16 pixels per side are first folded by space-to-depth (lossless 2x
    downsampling; 28x28x1 -> 14x14x4), which makes full-resolution convs unnecessary and keeps
    CPU training fast. Stage ``i`` is a 3x3 conv with ``min(width * 2**i, 4 * width)`` channels
    and ReLU, then a 2x2 pooling while the spatial size is at least 8. There are at least two
    stages, more while the size is still >= 8 (8x8 input: conv at 8, pool, conv at 4; 28x28:
    fold to 14, conv, pool, conv at 7). The flattened map goes through ``Dense(feature_dim) +
    ReLU`` (the *features*) and a linear layer to the logits.

    Attributes:
      num_classes: number of output classes.
      width: channels of the first conv.
      feature_dim: size F of the penultimate (feature) layer.
      pool: 'avg' or 'max' pooling.
    """

    num_classes: int
    width: int = 32
    feature_dim: int = 128
    pool: str = 'avg'

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Logits and features of a batch.

        Args:
          x: images, float ``[B, H, W, C]``.

        Returns:
          ``(logits [B, num_classes], features [B, feature_dim])``.
        """
        if self.pool not in POOLS:
            raise ValueError(f'pool must be one of {POOLS}, got {self.pool!r}')
        h = x
        while min(h.shape[1], h.shape[2]) > 16:
            h = _space_to_depth(h)
        stage = 0
        while stage < 2 or min(h.shape[1], h.shape[2]) >= 8:
            channels = min(self.width * 2**stage, 4 * self.width)
            h = nn.relu(nn.Conv(channels, (3, 3), padding='SAME', name=f'conv{stage}')(h))
            if min(h.shape[1], h.shape[2]) >= 8:
                h = _pool2x2(h, self.pool)
            stage += 1
        h = h.reshape(h.shape[0], -1)
        features = nn.relu(nn.Dense(self.feature_dim, name='features')(h))
        logits = nn.Dense(self.num_classes, name='logits')(features)
        return logits, features


def as_images(images: Any, name: str = 'images') -> np.ndarray:
    """float32 ``[N, H, W, C]`` from ``[N, H, W, C]`` or ``[N, H, W]`` (a channel is added).

    Raises ValueError, naming the argument ``name``, for any other shape.
    """
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f'{name} must have shape [N, H, W, C] or [N, H, W], got {x.shape}')
    return x


def as_labels(labels: Any, n: int, name: str = 'labels') -> np.ndarray:
    """int32 ``[N]`` labels, checked against the number of images ``n``.

    Raises ValueError, naming the argument ``name``, unless ``labels`` is ``[n]`` and
    integer-valued.
    """
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f'{name} must have shape [{n}], got {y.shape}')
    if not np.issubdtype(y.dtype, np.integer) and not np.all(np.mod(y, 1) == 0):
        raise ValueError(f'{name} must be integers')
    return y.astype(np.int32)


@dataclasses.dataclass
class Classifier:
    """A trained `ConvNet` and its parameters; inference runs jitted in fixed-size batches.

    Attributes:
      module: the network.
      params: its variables (``{'params': ...}``).
      image_shape: ``(H, W, C)`` the network was trained on.
      info: training settings and statistics (seed, steps, final loss, seconds, ...).
    """

    module: ConvNet
    params: Any
    image_shape: tuple[int, int, int]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image_shape = tuple(int(s) for s in self.image_shape)
        self._forward = jax.jit(self.module.apply)

    def _run(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
        """Logits ``[N, K]`` and features ``[N, F]`` as float32 numpy, in padded batches."""
        x = as_images(x)
        if x.shape[1:] != self.image_shape:
            raise ValueError(f'images have shape {x.shape[1:]}, expected {self.image_shape}')
        n = x.shape[0]
        batch = min(_EVAL_BATCH, max(n, 1))
        logits, feats = [], []
        for start in range(0, n, batch):
            chunk = x[start : start + batch]
            pad = batch - chunk.shape[0]
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            lo, fe = self._forward(self.params, jnp.asarray(chunk))
            logits.append(np.asarray(lo)[: batch - pad])
            feats.append(np.asarray(fe)[: batch - pad])
        if not logits:
            k, f = self.module.num_classes, self.module.feature_dim
            return np.zeros((0, k), np.float32), np.zeros((0, f), np.float32)
        return np.concatenate(logits), np.concatenate(feats)

    def logits(self, x: Any) -> np.ndarray:
        """Class logits, float32 ``[N, num_classes]``, of images ``x [N, H, W, C]``."""
        return self._run(x)[0]

    def features(self, x: Any) -> np.ndarray:
        """Penultimate-layer activations (post-ReLU), float32 ``[N, F]``, of ``x [N, H, W, C]``."""
        return self._run(x)[1]

    def predict(self, x: Any) -> np.ndarray:
        """Predicted class ids, int ``[N]``, of images ``x [N, H, W, C]``."""
        return np.argmax(self.logits(x), axis=-1)

    def accuracy(self, x: Any, y: Any) -> float:
        """Fraction of images ``x [N, H, W, C]`` classified as their labels ``y [N]``."""
        x = as_images(x)
        y = as_labels(y, x.shape[0])
        if x.shape[0] == 0:
            return float('nan')
        return float(np.mean(self.predict(x) == y))

    # -- persistence -------------------------------------------------------------------------

    def save(self, path: str) -> None:
        """Write params and settings to one ``.npz`` file (atomically: temp file + rename)."""
        flat = traverse_util.flatten_dict(jax.device_get(self.params), sep='/')
        arrays = {f'p/{k}': np.asarray(v) for k, v in flat.items()}
        meta = {
            'format': _CACHE_FORMAT,
            'module': {
                'num_classes': self.module.num_classes,
                'width': self.module.width,
                'feature_dim': self.module.feature_dim,
                'pool': self.module.pool,
            },
            'image_shape': list(self.image_shape),
            'info': self.info,
        }
        arrays['meta'] = np.array(json.dumps(meta, default=str))
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f'{path}.tmp{os.getpid()}.npz'
        np.savez(tmp, **arrays)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> Classifier:
        """Read a classifier written by `save`."""
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data['meta']))
            if meta.get('format') != _CACHE_FORMAT:
                raise ValueError(f'{path}: unknown classifier file format {meta.get("format")}')
            flat = {k[2:]: jnp.asarray(data[k]) for k in data.files if k.startswith('p/')}
        params = traverse_util.unflatten_dict(flat, sep='/')
        return cls(ConvNet(**meta['module']), params, tuple(meta['image_shape']), meta['info'])


# ----------------------------------------------------------------------------------------------
# Training.


def _random_shift(key: jax.Array, x: jax.Array, max_shift: int) -> jax.Array:
    """Translate each image of ``x [B, H, W, C]`` by up to ``max_shift`` pixels (edge padding)."""
    b, h, w, c = x.shape
    s = max_shift
    padded = jnp.pad(x, ((0, 0), (s, s), (s, s), (0, 0)), mode='edge')
    offsets = jax.random.randint(key, (b, 2), 0, 2 * s + 1)

    def crop(img: jax.Array, off: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


def train_classifier(
    images: Any,
    labels: Any,
    num_classes: int,
    *,
    seed: int = 0,
    steps: int = 600,
    batch_size: int = 128,
    width: int = 32,
    feature_dim: int = 128,
    pool: str = 'avg',
    learning_rate: float = 2e-3,
    augment_shift: int = 1,
) -> Classifier:
    """Train a `ConvNet` with Adam (warm-up + cosine decay) on labelled images.

    Every step draws ``batch_size`` examples uniformly with replacement (key from ``seed``) and,
    if ``augment_shift > 0``, translates each by up to that many pixels. The whole dataset is
    moved to the default device once; the step is jitted.

    Args:
      images: float ``[N, H, W, C]`` (or ``[N, H, W]``), e.g. scaled to [-1, 1].
      labels: int ``[N]`` in ``[0, num_classes)``.
      num_classes: number of classes K.
      seed: initialisation and batch-order seed.
      steps: optimiser steps.
      batch_size: examples per step.
      width: channels of the first conv (see `ConvNet`).
      feature_dim: feature size F.
      pool: 'avg' or 'max'.
      learning_rate: peak Adam learning rate.
      augment_shift: maximal random translation in pixels; 0 turns augmentation off.

    Returns:
      The trained `Classifier`; ``info`` holds the settings, final loss and seconds taken.
    """
    x_np = as_images(images)
    y_np = as_labels(labels, x_np.shape[0])
    if x_np.shape[0] == 0:
        raise ValueError('no training images')
    if y_np.min() < 0 or y_np.max() >= num_classes:
        raise ValueError(f'labels must lie in [0, {num_classes}), got [{y_np.min()}, {y_np.max()}]')
    start = time.perf_counter()
    module = ConvNet(num_classes=num_classes, width=width, feature_dim=feature_dim, pool=pool)
    key = jax.random.PRNGKey(seed)
    init_key, data_key = jax.random.split(key)
    params = module.init(init_key, jnp.zeros((1, *x_np.shape[1:]), jnp.float32))
    warmup = max(1, min(100, steps // 20))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, warmup, max(steps, warmup + 1), end_value=learning_rate * 0.01
    )
    tx = optax.adam(schedule)
    opt_state = tx.init(params)
    x_all, y_all = jnp.asarray(x_np), jnp.asarray(y_np)
    n = x_np.shape[0]

    def loss_fn(p: Any, xb: jax.Array, yb: jax.Array) -> jax.Array:
        logits, _ = module.apply(p, xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(p: Any, o: Any, x: jax.Array, y: jax.Array, k: jax.Array) -> tuple[Any, Any, Any]:
        k_idx, k_aug = jax.random.split(k)
        idx = jax.random.randint(k_idx, (batch_size,), 0, n)
        xb, yb = x[idx], y[idx]
        if augment_shift > 0:
            xb = _random_shift(k_aug, xb, augment_shift)
        loss, grads = jax.value_and_grad(loss_fn)(p, xb, yb)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o, loss

    loss = jnp.array(float('nan'))
    for i in range(steps):
        params, opt_state, loss = step(
            params, opt_state, x_all, y_all, jax.random.fold_in(data_key, i)
        )
    final_loss = float(loss)
    info = {
        'seed': seed,
        'steps': steps,
        'batch_size': batch_size,
        'learning_rate': learning_rate,
        'augment_shift': augment_shift,
        'num_train': n,
        'final_loss': final_loss,
        'train_seconds': time.perf_counter() - start,
    }
    return Classifier(module, params, x_np.shape[1:], info)
