"""Classifier-free guidance in training: the guidance scale alpha drawn from a power law on
[1, alpha_max] and the weight of the unconditional real samples among the negatives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp


def power_law_alpha(
    key: jax.Array, shape: Sequence[int], alpha_max: float, exponent: float = 1.0
) -> jax.Array:
    """Guidance scales alpha in [1, alpha_max] with density p(alpha) ∝ alpha^(-exponent).

    Inverse CDF with u ~ U[0, 1) and s = exponent::

        s != 1: alpha = (1 + u (alpha_max^(1-s) - 1))^(1/(1-s))
        s == 1: alpha = alpha_max^u                     (log-uniform)

    evaluated as exp(log1p(u expm1(c)) / (1-s)), c = (1-s) log(alpha_max), which stays
    accurate for s near 1. s = 0 is uniform; larger s puts more mass near alpha = 1 (weak
    guidance). alpha_max = 1 returns ones. alpha_max and exponent are Python floats (static
    under jit); key is traced.

    Returns:
      float32 array of `shape`.
    """
    if alpha_max < 1:
        raise ValueError(f'alpha_max must be >= 1, got {alpha_max}.')
    shape = tuple(shape)
    if alpha_max == 1:
        return jnp.ones(shape, jnp.float32)
    u = jax.random.uniform(key, shape, jnp.float32)
    log_max = math.log(alpha_max)
    if exponent == 1:
        alpha = jnp.exp(u * log_max)
    else:
        one_minus_s = 1.0 - float(exponent)
        alpha = jnp.exp(jnp.log1p(u * math.expm1(one_minus_s * log_max)) / one_minus_s)
    return jnp.clip(alpha, 1.0, alpha_max)


def power_law_cdf(alpha, alpha_max: float, exponent: float = 1.0):
    """CDF of `power_law_alpha` at alpha (float or array), for checks and plots."""
    alpha = jnp.asarray(alpha, jnp.float32)
    if alpha_max == 1:
        return jnp.where(alpha >= 1, 1.0, 0.0)
    if exponent == 1:
        return jnp.log(alpha) / math.log(alpha_max)
    one_minus_s = 1.0 - float(exponent)
    return jnp.expm1(one_minus_s * jnp.log(alpha)) / math.expm1(one_minus_s * math.log(alpha_max))


def cfg_negative_weight(alpha, n_gen: int, n_uncond: int):
    """Weight of each unconditional real sample among the negatives (classifier-free guidance).

    w = (alpha - 1) (n_gen - 1) / n_uncond: the n_uncond unconditional samples together weigh
    (alpha - 1) times the n_gen - 1 generated negatives (self excluded). alpha: float or [G].
    """
    if n_uncond <= 0:
        raise ValueError(f'n_uncond must be positive, got {n_uncond}.')
    return (alpha - 1.0) * (n_gen - 1) / n_uncond
