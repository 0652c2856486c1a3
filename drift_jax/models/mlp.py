"""Generators: networks mapping noise eps to samples x = f(eps).

Flax Linen modules, so parameters are plain pytrees that flow through jit, shardings,
optax and orbax unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS = {'silu': nn.silu, 'relu': nn.relu, 'gelu': nn.gelu, 'tanh': jnp.tanh}
MODEL_NAMES = ('mlp',)


class MLPGenerator(nn.Module):
    """MLP generator: noise [B, noise_dim] -> samples [B, out_dim].

    The output layer starts with weights scaled by `out_scale` and bias `out_offset`, so the
    initial generated distribution is centred at `out_offset` with a spread of roughly
    `out_scale` (used for the paper's initialisation study; defaults give a standard init).
    """

    out_dim: int
    width: int = 256
    depth: int = 3
    activation: str = 'silu'
    out_offset: Sequence[float] | None = None
    out_scale: float = 1.0

    @nn.compact
    def __call__(self, eps: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        h = eps
        for i in range(self.depth):
            h = act(nn.Dense(self.width, name=f'hidden_{i}')(h))
        offset = (
            jnp.zeros((self.out_dim,))
            if self.out_offset is None
            else jnp.asarray(self.out_offset, jnp.float32)
        )
        kernel_init = nn.initializers.variance_scaling(self.out_scale**2, 'fan_in', 'normal')
        return nn.Dense(
            self.out_dim, kernel_init=kernel_init, bias_init=lambda *_: offset, name='out'
        )(h)


def validate_model_config(model_config: Any) -> None:
    """Raises ValueError for an unknown model or a non-positive size, naming the value."""
    if model_config.name not in MODEL_NAMES:
        raise ValueError(
            f'model.name={model_config.name!r} is unknown; choose one of {MODEL_NAMES}.'
        )
    for field in ('noise_dim', 'width', 'depth'):
        value = model_config[field]
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f'model.{field} must be a positive integer, got {value!r}.')
    if model_config.activation not in ACTIVATIONS:
        raise ValueError(
            f'model.activation={model_config.activation!r} is unknown; choose '
            f'one of {tuple(ACTIVATIONS)}.'
        )
    if not model_config.out_scale > 0:
        raise ValueError(f'model.out_scale must be positive, got {model_config.out_scale}.')


def make_generator(model_config: Any, out_dim: int, out_offset=None) -> nn.Module:
    """Builds the generator named by `model_config.name` for samples of size `out_dim`."""
    validate_model_config(model_config)
    return MLPGenerator(
        out_dim=out_dim,
        width=model_config.width,
        depth=model_config.depth,
        activation=model_config.activation,
        out_offset=None if out_offset is None else tuple(out_offset),
        out_scale=float(model_config.out_scale),
    )
