"""Labels and classifier-free guidance shared by the multi-step methods (ddpm, ncsn).

In training, labels are replaced by the null label (`num_classes`) at a given rate, so one
network predicts conditionally and unconditionally; at sampling, guidance scale alpha mixes
the two as out_u + alpha (out_c - out_u) (alpha = 1: plain conditional, one evaluation).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def drop_labels(key: jax.Array, labels, rate: float, num_classes: int):
    """labels int [B] with each replaced by the null label with probability `rate`
    (unchanged, e.g. None, on unlabelled data)."""
    if not num_classes:
        return labels
    drop = jax.random.uniform(key, labels.shape) < rate
    return jnp.where(drop, num_classes, labels)


def guidance_scale(alpha, default: float, num_classes: int) -> float:
    """The guidance scale to sample with (`default` when alpha is None); ValueError for a
    negative one, or for guidance on unlabelled data."""
    alpha = float(default if alpha is None else alpha)
    if not num_classes and alpha != 1.0:
        raise ValueError('alpha (guidance) applies to labelled data only.')
    if not alpha >= 0:
        raise ValueError(f'alpha must be >= 0, got {alpha}.')
    return alpha


def sampling_labels(labels, n: int, num_classes: int):
    """Labels [n] for sampling (checked; default: cycling over the classes), or None on
    unlabelled data (where giving labels is a ValueError)."""
    if not num_classes:
        if labels is not None:
            raise ValueError('labels apply to labelled data only.')
        return None
    from drift_jax.tasks.images import check_labels

    return jnp.asarray(check_labels(labels, n, num_classes))


def guided(fn: Callable, labels, alpha: float, num_classes: int):
    """fn(labels) mixed with fn(null labels) by the guidance scale: out_u + alpha (out_c -
    out_u); fn(labels) alone when alpha is 1 (one network evaluation instead of two)."""
    out = fn(labels)
    if alpha == 1.0:
        return out
    out_u = fn(jnp.full(labels.shape, num_classes, jnp.int32))
    return out_u + alpha * (out - out_u)


def guided_nfe(evaluations: int, alpha: float) -> int:
    """Network evaluations per sample: twice `evaluations` with guidance (alpha != 1)."""
    return evaluations * (2 if alpha != 1.0 else 1)
