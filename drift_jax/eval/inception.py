"""Inception-v3 in Flax, as pytorch-fid runs it for FID: the network, its input pipeline and
its weights.

`InceptionV3` is the FID variant of the network (TensorFlow's 2015 graph as ported by
pytorch-fid: average pools that skip padding, a max pool in the last block, 1008 logits).
`preprocess` resizes and rescales images exactly as pytorch-fid does.
`InceptionExtractor` gives pool features and logits of any number of images in batches.
Its weights (reading, converting, finding and downloading them) are in
`drift_jax.eval.inception_weights`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

#: Input side the network is fed at (pytorch-fid resizes every image to it).
INPUT_SIZE = 299
#: Classes of the FID network's classifier (TensorFlow's 1008-way ImageNet head).
NUM_CLASSES = 1008
#: Channels of the pool features of the full-width network.
POOL_FEATURES = 2048
_BN_EPS = 1e-3


# ----------------------------------------------------------------------------------------------
# The network (NHWC). Module names follow torchvision's Inception3, so that weights map by name.


def _narrow(channels: int, div: int) -> int:
    """``channels / div``; the reduced networks of tests need it exact."""
    if div < 1 or channels % div:
        raise ValueError(f'width_divisor={div} does not divide the {channels} channels of a layer')
    return channels // div


class BasicConv(nn.Module):
    """Convolution without bias, batch norm (running statistics, eps 1e-3), ReLU.

    ``[N, H, W, C] -> [N, H', W', features]``; ``padding`` is ``(pad_h, pad_w)`` on both sides.
    """

    features: int
    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    precision: str = 'highest'

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ph, pw = self.padding
        x = nn.Conv(
            self.features,
            self.kernel,
            strides=self.strides,
            padding=((ph, ph), (pw, pw)),
            use_bias=False,
            precision=self.precision,
            name='conv',
        )(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=_BN_EPS, name='bn')(x)
        return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
    """3x3 stride-1 average that ignores the zero padding (TensorFlow's), same size out."""
    return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array, stride: int, pad: int) -> jax.Array:
    return nn.max_pool(x, (3, 3), (stride, stride), padding=((pad, pad), (pad, pad)))


class InceptionA(nn.Module):
    """Mixed_5b/c/d at 35x35: branches 1x1 | 5x5 | double 3x3 | avg pool + 1x1.

    ``[N, H, W, C] -> [N, H, W, (224 + pool_features) / div]``.
    """

    pool_features: int
    div: int = 1
    precision: str = 'highest'

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def conv(name, c, k, p=(0, 0)):
            return BasicConv(
                _narrow(c, self.div), k, padding=p, precision=self.precision, name=name
            )

        b1 = conv('branch1x1', 64, (1, 1))(x)
        b5 = conv('branch5x5_1', 48, (1, 1))(x)
        b5 = conv('branch5x5_2', 64, (5, 5), (2, 2))(b5)
        b3 = conv('branch3x3dbl_1', 64, (1, 1))(x)
        b3 = conv('branch3x3dbl_2', 96, (3, 3), (1, 1))(b3)
        b3 = conv('branch3x3dbl_3', 96, (3, 3), (1, 1))(b3)
        bp = conv('branch_pool', self.pool_features, (1, 1))(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a, 35x35 -> 17x17: strided 3x3 | double 3x3 (strided) | max pool.

    ``[N, H, W, C] -> [N, (H-3)//2+1, (W-3)//2+1, 480 / div + C]``.
    """

    div: int = 1
    precision: str = 'highest'

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def conv(name, c, k, s=(1, 1), p=(0, 0)):
            return BasicConv(_narrow(c, self.div), k, s, p, precision=self.precision, name=name)

        b3 = conv('branch3x3', 384, (3, 3), (2, 2))(x)
        bd = conv('branch3x3dbl_1', 64, (1, 1))(x)
        bd = conv('branch3x3dbl_2', 96, (3, 3), p=(1, 1))(bd)
        bd = conv('branch3x3dbl_3', 96, (3, 3), (2, 2))(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3(x, 2, 0)], axis=-1)


class InceptionC(nn.Module):
    """Mixed_6b..6e at 17x17: 1x1 | 1x7,7x1 | twice 7x1,1x7 | avg pool + 1x1.

    ``[N, H, W, C] -> [N, H, W, 768 / div]``; ``channels_7x7`` is the factorised branches' width.
    """

    channels_7x7: int
    div: int = 1
    precision: str = 'highest'

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c7 = self.channels_7x7

        def conv(name, c, k, p=(0, 0)):
            return BasicConv(
                _narrow(c, self.div), k, padding=p, precision=self.precision, name=name
            )

        b1 = conv('branch1x1', 192, (1, 1))(x)
        b7 = conv('branch7x7_1', c7, (1, 1))(x)
        b7 = conv('branch7x7_2', c7, (1, 7), (0, 3))(b7)
        b7 = conv('branch7x7_3', 192, (7, 1), (3, 0))(b7)
        bd = conv('branch7x7dbl_1', c7, (1, 1))(x)
        bd = conv('branch7x7dbl_2', c7, (7, 1), (3, 0))(bd)
        bd = conv('branch7x7dbl_3', c7, (1, 7), (0, 3))(bd)
        bd = conv('branch7x7dbl_4', c7, (7, 1), (3, 0))(bd)
        bd = conv('branch7x7dbl_5', 192, (1, 7), (0, 3))(bd)
        bp = conv('branch_pool', 192, (1, 1))(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a, 17x17 -> 8x8: 1x1 + strided 3x3 | 1x1, 1x7, 7x1 + strided 3x3 | max pool.

    ``[N, H, W, C] -> [N, (H-3)//2+1, (W-3)//2+1, 512 / div + C]``.
    """

    div: int = 1
    precision: str = 'highest'

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def conv(name, c, k, s=(1, 1), p=(0, 0)):
            return BasicConv(_narrow(c, self.div), k, s, p, precision=self.precision, name=name)

        b3 = conv('branch3x3_1', 192, (1, 1))(x)
        b3 = conv('branch3x3_2', 320, (3, 3), (2, 2))(b3)
        b7 = conv('branch7x7x3_1', 192, (1, 1))(x)
        b7 = conv('branch7x7x3_2', 192, (1, 7), p=(0, 3))(b7)
        b7 = conv('branch7x7x3_3', 192, (7, 1), p=(3, 0))(b7)
        b7 = conv('branch7x7x3_4', 192, (3, 3), (2, 2))(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3(x, 2, 0)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b/7c at 8x8: 1x1 | 1x1 then (1x3, 3x1) | 3x3 then (1x3, 3x1) | pool + 1x1.

    ``[N, H, W, C] -> [N, H, W, 2048 / div]``. The FID network pools with padding-excluding
    averages in Mixed_7b (``pool='avg'``) and with a max in Mixed_7c (``pool='max'``), as
    TensorFlow's graph does.
    """

    pool: str = 'avg'
    div: int = 1
    precision: str = 'highest'

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.pool not in ('avg', 'max'):
            raise ValueError(f"pool must be 'avg' or 'max', got {self.pool!r}")

        def conv(name, c, k, p=(0, 0)):
            return BasicConv(
                _narrow(c, self.div), k, padding=p, precision=self.precision, name=name
            )

        b1 = conv('branch1x1', 320, (1, 1))(x)
        b3 = conv('branch3x3_1', 384, (1, 1))(x)
        b3 = jnp.concatenate(
            [
                conv('branch3x3_2a', 384, (1, 3), (0, 1))(b3),
                conv('branch3x3_2b', 384, (3, 1), (1, 0))(b3),
            ],
            axis=-1,
        )
        bd = conv('branch3x3dbl_1', 448, (1, 1))(x)
        bd = conv('branch3x3dbl_2', 384, (3, 3), (1, 1))(bd)
        bd = jnp.concatenate(
            [
                conv('branch3x3dbl_3a', 384, (1, 3), (0, 1))(bd),
                conv('branch3x3dbl_3b', 384, (3, 1), (1, 0))(bd),
            ],
            axis=-1,
        )
        pooled = _avg_pool_3x3(x) if self.pool == 'avg' else _max_pool_3x3(x, 1, 1)
        bp = conv('branch_pool', 192, (1, 1))(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


#: The Mixed blocks in order: name -> (class, its argument).
MIXED_BLOCKS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    'Mixed_5b': (InceptionA, {'pool_features': 32}),
    'Mixed_5c': (InceptionA, {'pool_features': 64}),
    'Mixed_5d': (InceptionA, {'pool_features': 64}),
    'Mixed_6a': (InceptionB, {}),
    'Mixed_6b': (InceptionC, {'channels_7x7': 128}),
    'Mixed_6c': (InceptionC, {'channels_7x7': 160}),
    'Mixed_6d': (InceptionC, {'channels_7x7': 160}),
    'Mixed_6e': (InceptionC, {'channels_7x7': 192}),
    'Mixed_7a': (InceptionD, {}),
    'Mixed_7b': (InceptionE, {'pool': 'avg'}),
    'Mixed_7c': (InceptionE, {'pool': 'max'}),
}


def mixed_block(name: str, width_divisor: int = 1, precision: str = 'highest') -> nn.Module:
    """A stand-alone Mixed block (e.g. 'Mixed_6b') for checking it against a reference."""
    cls, kwargs = MIXED_BLOCKS[name]
    return cls(**kwargs, div=width_divisor, precision=precision)


class InceptionV3(nn.Module):
    """The FID Inception-v3: images in [-1, 1] -> pool features and logits.

    Any input side >= 75 runs (the FID protocol feeds 299, see `preprocess`). With
    ``width_divisor = d`` every layer has 1/d of the real channels (d must divide them all:
    1, 2, 4, 8 or 16); this reduced network exists for tests.

    Attributes:
      width_divisor: d above (1 = the real network).
      num_classes: width of the classifier (1008 in the FID weights).
      precision: of convolutions and the classifier ('highest': true float32 on accelerators
        whose default would use reduced-precision matmuls).
    """

    width_divisor: int = 1
    num_classes: int = NUM_CLASSES
    precision: str = 'highest'

    @nn.compact
    def __call__(self, x: jax.Array, *, return_blocks: bool = False) -> dict[str, Any]:
        """Forward pass of ``x [N, H, W, 3]`` (values in [-1, 1], H, W >= 75).

        Returns:
          ``pool [N, 2048 / d]`` (the FID features: spatial mean of Mixed_7c) and
          ``logits [N, num_classes]``; with ``return_blocks``, also ``blocks``: the outputs
          of pytorch-fid's four blocks (after the first max pool ``[N, H1, W1, 64 / d]``, the
          second max pool ``[.., 192 / d]``, Mixed_6e ``[.., 768 / d]``, and the pool features
          as ``[N, 1, 1, 2048 / d]``).
        """
        d, p = self.width_divisor, self.precision

        def conv(name, c, k, s=(1, 1), pad=(0, 0)):
            return BasicConv(_narrow(c, d), k, s, pad, precision=p, name=name)

        blocks = []
        x = conv('Conv2d_1a_3x3', 32, (3, 3), (2, 2))(x)
        x = conv('Conv2d_2a_3x3', 32, (3, 3))(x)
        x = conv('Conv2d_2b_3x3', 64, (3, 3), pad=(1, 1))(x)
        x = _max_pool_3x3(x, 2, 0)
        blocks.append(x)
        x = conv('Conv2d_3b_1x1', 80, (1, 1))(x)
        x = conv('Conv2d_4a_3x3', 192, (3, 3))(x)
        x = _max_pool_3x3(x, 2, 0)
        blocks.append(x)
        for name, (cls, kwargs) in MIXED_BLOCKS.items():
            x = cls(**kwargs, div=d, precision=p, name=name)(x)
            if name == 'Mixed_6e':
                blocks.append(x)
        pool = jnp.mean(x, axis=(1, 2))
        blocks.append(pool[:, None, None, :])
        logits = nn.Dense(self.num_classes, precision=p, name='fc')(pool)
        out = {'pool': pool, 'logits': logits}
        if return_blocks:
            out['blocks'] = blocks
        return out


# ----------------------------------------------------------------------------------------------
# Input pipeline.


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """float32 ``[out_size, in_size]`` matrix of 1-D bilinear resampling, align_corners=False.

    Output pixel ``o`` samples input coordinate ``s = (o + 0.5) in/out - 0.5``, clamped at 0,
    from pixels ``floor(s)`` and ``min(floor(s) + 1, in - 1)`` with weights ``1 - f`` and
    ``f`` (``f = s - floor(s)``). These are torch's ``F.interpolate(mode='bilinear')``
    semantics for a given output size: two taps, no anti-aliasing when shrinking.
    """
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo
    m = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    np.add.at(m, (rows, lo), 1.0 - frac)
    np.add.at(m, (rows, hi), frac)
    return m.astype(np.float32)


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """``x [N, H, W, C] -> [N, size[0], size[1], C]`` by `bilinear_matrix` on each axis."""
    mh = jnp.asarray(bilinear_matrix(x.shape[1], size[0]))
    mw = jnp.asarray(bilinear_matrix(x.shape[2], size[1]))
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum('oh,nhwc->nowc', mh, x, precision=hi)
    return jnp.einsum('pw,nowc->nopc', mw, x, precision=hi)


def preprocess(images: jax.Array, size: int = INPUT_SIZE, quantize: bool = False) -> jax.Array:
    """Images in [0, 1] -> the network's input, as pytorch-fid prepares it.

    Grey images are repeated to 3 channels (an alpha channel is dropped), each image is
    resized bilinearly to ``size x size`` (`resize_bilinear`), then mapped to [-1, 1] by
    ``2x - 1``. With ``quantize`` values are first rounded to the 256 levels of an 8-bit
    image, as if the images had been saved to PNG and read back.

    Args:
      images: float ``[N, H, W, C]``, C in 1, 3 or 4, values in [0, 1].
      size: output side (299 for FID).
      quantize: round to multiples of 1/255 first.

    Returns:
      float32 ``[N, size, size, 3]``.
    """
    x = jnp.asarray(images, jnp.float32)
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise ValueError(f'images must be [N, H, W, C] with C in 1, 3, 4; got {x.shape}')
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    x = x[..., :3]
    if quantize:
        x = jnp.round(jnp.clip(x, 0.0, 1.0) * 255.0) / 255.0
    x = resize_bilinear(x, (size, size))
    return 2.0 * x - 1.0


# ----------------------------------------------------------------------------------------------
# Batched feature extraction.


class InceptionExtractor:
    """Pool features and logits of images in [0, 1], in fixed-size batches (one compile).

    Attributes:
      model, variables: the network and its weights.
      batch_size: images per forward pass (the last batch is padded).
      size: input side images are resized to (299 for FID).
      quantize: round images to 8-bit levels first (see `preprocess`).
    """

    def __init__(
        self,
        model: InceptionV3,
        variables: Mapping,
        *,
        batch_size: int = 200,
        size: int = INPUT_SIZE,
        quantize: bool = True,
    ):
        self.model, self.variables = model, variables
        self.batch_size, self.size, self.quantize = int(batch_size), int(size), quantize

        def forward(variables, x):
            out = model.apply(variables, preprocess(x, size, quantize))
            return out['pool'], out['logits']

        self._forward = jax.jit(forward)

    @classmethod
    def from_file(cls, path: str = '', **kwargs) -> InceptionExtractor:
        """From the weights `inception_weights.find_weights(path)` picks (input size from the
        file, 299 for real weights); ``kwargs`` as the constructor's."""
        from drift_jax.eval import inception_weights

        model, variables, meta = inception_weights.load_weights(
            inception_weights.find_weights(path)
        )
        return cls(model, variables, **{'size': meta['input_size'], **kwargs})

    @property
    def feature_dim(self) -> int:
        """F, the width of the pool features (2048 for the real network)."""
        return POOL_FEATURES // self.model.width_divisor

    def batch(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """One batch ``[B, H, W, C]`` (B <= batch_size) -> float32 pool ``[B, F]`` and logits
        ``[B, K]`` (biased; unbiased = logits - ``variables['params']['fc']['bias']``)."""
        x = np.asarray(images, np.float32)
        b = x.shape[0]
        if b > self.batch_size:
            raise ValueError(f'batch of {b} exceeds batch_size={self.batch_size}')
        if b < self.batch_size:
            x = np.concatenate([x, np.zeros((self.batch_size - b, *x.shape[1:]), x.dtype)])
        pool, logits = self._forward(self.variables, x)
        return np.asarray(pool)[:b], np.asarray(logits)[:b]

    def __call__(self, images: Any, progress: bool = False) -> dict[str, np.ndarray]:
        """All of ``images [N, H, W, C]`` -> ``pool [N, F]``, ``logits [N, K]`` and
        ``logits_unbiased [N, K]`` (without the classifier bias), float32."""
        from tqdm.auto import tqdm

        x = np.asarray(images)
        pools, logits = [], []
        starts = range(0, x.shape[0], self.batch_size)
        for s in tqdm(starts, desc='inception', disable=not progress, leave=False):
            p, lg = self.batch(x[s : s + self.batch_size])
            pools.append(p)
            logits.append(lg)
        k = self.model.num_classes
        pool = np.concatenate(pools) if pools else np.zeros((0, self.feature_dim), np.float32)
        lg = np.concatenate(logits) if logits else np.zeros((0, k), np.float32)
        return {'pool': pool, 'logits': lg, 'logits_unbiased': lg - self.fc_bias}

    @property
    def fc_bias(self) -> np.ndarray:
        """The classifier bias ``[K]``."""
        return np.asarray(self.variables['params']['fc']['bias'])
