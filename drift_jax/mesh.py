"""The device mesh (`data` x `fsdp`), the train state's shardings and the optimiser.

Sharding is declared once here: a mesh from `config.mesh`, batches on `P('data')` and the
parameter rule of `state_shardings`.
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

SCHEDULES = ('cosine', 'constant')


def mesh_shape(mesh_config: Any, num_devices: int | None = None) -> tuple[int, int]:
    """(data, fsdp) sizes from `config.mesh`; -1 takes the remaining devices."""
    n = jax.device_count() if num_devices is None else num_devices
    d, f = int(mesh_config.data), int(mesh_config.fsdp)
    if f == -1 and d == -1:
        raise ValueError('Only one of mesh.data and mesh.fsdp may be -1.')
    if d == -1:
        d = n // f if f > 0 and n % f == 0 else 0
    if f == -1:
        f = n // d if d > 0 and n % d == 0 else 0
    if d <= 0 or f <= 0 or d * f != n:
        raise ValueError(
            f'mesh data={mesh_config.data} x fsdp={mesh_config.fsdp} does not '
            f'match the {n} available devices; their product must be {n} '
            '(use -1 for "the rest").'
        )
    return d, f


def make_mesh(mesh_config: Any) -> jax.sharding.Mesh:
    """A ('data', 'fsdp') mesh over all devices, GSPMD-style (Auto) axes."""
    shape = mesh_shape(mesh_config)
    auto = jax.sharding.AxisType.Auto
    return jax.make_mesh(shape, ('data', 'fsdp'), axis_types=(auto, auto))


def state_shardings(mesh: jax.sharding.Mesh, abstract_state: Any) -> Any:
    """Shardings of a train state (any pytree of arrays).

    Matrices whose first dimension divides by the mesh's `fsdp` size are split along it
    (parameters, EMA and optimiser moments of every network alike); everything else is
    replicated.
    """
    fsdp = mesh.shape['fsdp']

    def rule(x):
        if fsdp > 1 and x.ndim >= 2 and x.shape[0] % fsdp == 0:
            return NamedSharding(mesh, P('fsdp'))
        return NamedSharding(mesh, P())

    return jax.tree.map(rule, abstract_state)


def validate_optim(o: Any, prefix: str = 'optim') -> None:
    """Checks an optimiser block (`config.optim` or a method's own); raises ValueError."""
    lr = o.learning_rate
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        raise ValueError(f'{prefix}.learning_rate must be a positive float, got {lr!r}.')
    if o.schedule not in SCHEDULES:
        raise ValueError(f'{prefix}.schedule={o.schedule!r} is unknown; choose one of {SCHEDULES}.')
    if o.warmup_steps < 0 or o.grad_clip < 0 or o.weight_decay < 0:
        raise ValueError(
            f'{prefix}.warmup_steps, {prefix}.grad_clip and {prefix}.weight_decay '
            f'must be >= 0, got {o.warmup_steps}, {o.grad_clip}, '
            f'{o.weight_decay}.'
        )
    if not 0 <= o.final_lr_fraction <= 1:
        raise ValueError(
            f'{prefix}.final_lr_fraction must be in [0, 1], got {o.final_lr_fraction}.'
        )


def make_optimizer(optim_config: Any, total_steps: int) -> optax.GradientTransformation:
    """AdamW with linear warmup, cosine (or constant) decay and global-norm clipping."""
    o = optim_config
    warmup = int(min(o.warmup_steps, max(total_steps - 1, 0)))
    if o.schedule == 'cosine':
        schedule = optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup else o.learning_rate,
            peak_value=o.learning_rate,
            warmup_steps=warmup,
            decay_steps=max(total_steps, warmup + 1),
            end_value=o.learning_rate * o.final_lr_fraction,
        )
    else:
        schedule = optax.join_schedules(
            [
                optax.linear_schedule(0.0, o.learning_rate, max(warmup, 1)),
                optax.constant_schedule(o.learning_rate),
            ],
            [max(warmup, 1)],
        )
    parts = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip else []
    parts.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay))
    return optax.chain(*parts)
