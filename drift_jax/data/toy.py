"""Pure-JAX samplers for the classic 2-D toy distributions.

Every sampler returns float32 ``[n, 2]`` at roughly unit scale and is jittable
with ``name`` and ``n`` static; the bimodal helpers support the init study.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

TOY_DATASETS: tuple[str, ...] = (
    'spiral',
    'checkerboard',
    'swiss_roll',
    'moons',
    'eight_gaussians',
    'twenty_five_gaussians',
    'rings',
    'bimodal',
)

# Geometry constants (public so tests and plots can check samples against them).
SPIRAL_MAX_ANGLE: float = 3.0 * math.pi  # 1.5 turns
SPIRAL_MAX_RADIUS: float = 2.0  # r = SPIRAL_MAX_RADIUS * angle / SPIRAL_MAX_ANGLE
SPIRAL_NOISE: float = 0.05
SWISS_ROLL_T_RANGE: tuple[float, float] = (1.5 * math.pi, 4.5 * math.pi)
SWISS_ROLL_SCALE: float = 1.0 / 6.0  # x = scale * t * (cos t, sin t)
SWISS_ROLL_NOISE: float = 0.05
MOON_RADIUS: float = 1.2
# (centre, upper half?) for the two arcs, after centring and scaling.
MOON_ARCS: tuple[tuple[tuple[float, float], bool], ...] = (
    ((-0.6, -0.3), True),
    ((0.6, 0.3), False),
)
MOON_NOISE: float = 0.05
EIGHT_GAUSSIANS_RADIUS: float = 2.0
EIGHT_GAUSSIANS_STD: float = 0.1
GRID_GAUSSIANS_STD: float = 0.05
RING_RADII: tuple[float, ...] = (0.5, 1.25, 2.0)
RING_NOISE: float = 0.05
BIMODAL_CENTERS: tuple[tuple[float, float], ...] = ((-1.5, 0.0), (1.5, 0.0))
BIMODAL_STD: float = 0.3

# Generator starting distributions for the bimodal initialisation study:
# init name -> (output offset, initial spread).
_BIMODAL_INITS: dict[str, tuple[tuple[float, float], float]] = {
    'middle': ((0.0, 0.0), 0.2),
    'far': ((0.0, 4.0), 0.2),
    'collapsed': (BIMODAL_CENTERS[0], 0.2),
}


def _spiral(key: jax.Array, n: int) -> jax.Array:
    ku, kn = jax.random.split(key)
    # sqrt makes the density per unit arc length roughly uniform.
    frac = jnp.sqrt(jax.random.uniform(ku, (n,)))
    angle = frac * SPIRAL_MAX_ANGLE
    radius = frac * SPIRAL_MAX_RADIUS
    x = radius[:, None] * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=1)
    return x + SPIRAL_NOISE * jax.random.normal(kn, (n, 2))


def _checkerboard(key: jax.Array, n: int) -> jax.Array:
    krow, kcol, ku = jax.random.split(key, 3)
    # 4x4 board of unit squares over [-2, 2]^2; dark squares have col+row even.
    row = jax.random.randint(krow, (n,), 0, 4)
    col = 2 * jax.random.randint(kcol, (n,), 0, 2) + row % 2
    corner = jnp.stack([col, row], axis=1).astype(jnp.float32) - 2.0
    return corner + jax.random.uniform(ku, (n, 2))


def _swiss_roll(key: jax.Array, n: int) -> jax.Array:
    kt, kn = jax.random.split(key)
    lo, hi = SWISS_ROLL_T_RANGE
    t = jax.random.uniform(kt, (n,), minval=lo, maxval=hi)
    x = SWISS_ROLL_SCALE * t[:, None] * jnp.stack([jnp.cos(t), jnp.sin(t)], axis=1)
    return x + SWISS_ROLL_NOISE * jax.random.normal(kn, (n, 2))


def _moons(key: jax.Array, n: int) -> jax.Array:
    kc, kt, kn = jax.random.split(key, 3)
    which = jax.random.bernoulli(kc, 0.5, (n,))
    t = jax.random.uniform(kt, (n,), minval=0.0, maxval=math.pi)
    centres = jnp.asarray([c for c, _ in MOON_ARCS], dtype=jnp.float32)
    signs = jnp.asarray([1.0 if up else -1.0 for _, up in MOON_ARCS])
    idx = which.astype(jnp.int32)
    # Upper arc goes left-to-right over the top; lower arc mirrors it.
    offset = jnp.stack([jnp.cos(t) * signs[idx], jnp.sin(t) * signs[idx]], axis=1)
    x = centres[idx] + MOON_RADIUS * offset
    return x + MOON_NOISE * jax.random.normal(kn, (n, 2))


def _eight_gaussians(key: jax.Array, n: int) -> jax.Array:
    kc, kn = jax.random.split(key)
    angle = jax.random.randint(kc, (n,), 0, 8).astype(jnp.float32) * (math.pi / 4)
    centres = EIGHT_GAUSSIANS_RADIUS * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=1)
    return centres + EIGHT_GAUSSIANS_STD * jax.random.normal(kn, (n, 2))


def _twenty_five_gaussians(key: jax.Array, n: int) -> jax.Array:
    kc, kn = jax.random.split(key)
    centres = jax.random.randint(kc, (n, 2), -2, 3).astype(jnp.float32)
    return centres + GRID_GAUSSIANS_STD * jax.random.normal(kn, (n, 2))


def _rings(key: jax.Array, n: int) -> jax.Array:
    kr, ka, kn = jax.random.split(key, 3)
    radii = jnp.asarray(RING_RADII, dtype=jnp.float32)
    radius = radii[jax.random.randint(kr, (n,), 0, len(RING_RADII))]
    radius = radius + RING_NOISE * jax.random.normal(kn, (n,))
    angle = jax.random.uniform(ka, (n,), minval=0.0, maxval=2 * math.pi)
    return radius[:, None] * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=1)


def _bimodal(key: jax.Array, n: int) -> jax.Array:
    kc, kn = jax.random.split(key)
    centres = jnp.asarray(BIMODAL_CENTERS, dtype=jnp.float32)
    idx = jax.random.randint(kc, (n,), 0, len(BIMODAL_CENTERS))
    return centres[idx] + BIMODAL_STD * jax.random.normal(kn, (n, 2))


_SAMPLERS: dict[str, Callable[[jax.Array, int], jax.Array]] = {
    'spiral': _spiral,
    'checkerboard': _checkerboard,
    'swiss_roll': _swiss_roll,
    'moons': _moons,
    'eight_gaussians': _eight_gaussians,
    'twenty_five_gaussians': _twenty_five_gaussians,
    'rings': _rings,
    'bimodal': _bimodal,
}
assert tuple(_SAMPLERS) == TOY_DATASETS


def sample_toy(name: str, key: jax.Array, n: int) -> jax.Array:
    """Draws ``n`` points from the toy distribution ``name``.

    Args:
      name: one of ``TOY_DATASETS`` (static under ``jax.jit``).
      key: a JAX PRNG key.
      n: number of samples (static under ``jax.jit``).

    Returns:
      float32 array ``[n, 2]`` with coordinates mostly within [-2.5, 2.5].
    """
    if name not in _SAMPLERS:
        raise ValueError(f'unknown toy dataset {name!r}; valid names: {", ".join(TOY_DATASETS)}')
    return _sample_jit(name, key, int(n))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _sample_jit(name: str, key: jax.Array, n: int) -> jax.Array:
    # One compile per (name, n): called eagerly (evaluation draws) the samplers' dozen small
    # ops took ~0.3 s per call on CPU; inside a caller's jit this is simply inlined.
    return _SAMPLERS[name](key, n).astype(jnp.float32)


def bimodal_mode_fractions(x: jax.Array | np.ndarray) -> tuple[float, float]:
    """Fraction of points closer to each of the two ``BIMODAL_CENTERS``.

    Args:
      x: points ``[n, 2]`` (numpy or JAX, n >= 1).

    Returns:
      ``(fraction nearer centre 0, fraction nearer centre 1)``; sums to 1.
    """
    pts = np.asarray(x, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] == 0:
        raise ValueError(f'expected points of shape [n, 2] with n >= 1, got {pts.shape}')
    centres = np.asarray(BIMODAL_CENTERS, dtype=np.float64)
    dist = np.linalg.norm(pts[:, None, :] - centres[None, :, :], axis=-1)  # [n, 2]
    first = float(np.mean(dist[:, 0] <= dist[:, 1]))
    return first, 1.0 - first


def bimodal_init(init: str) -> tuple[tuple[float, float], float]:
    """Generator starting distribution for the bimodal initialisation study.

    Args:
      init: 'middle' (between the modes), 'far' (away from both modes) or
        'collapsed' (sitting on the first mode).

    Returns:
      ``(offset, spread)``: an output offset ``(x, y)`` and the initial spread
      (std) of the generator's outputs.
    """
    if init not in _BIMODAL_INITS:
        raise ValueError(
            f'unknown bimodal init {init!r}; valid choices: {", ".join(_BIMODAL_INITS)}'
        )
    return _BIMODAL_INITS[init]
