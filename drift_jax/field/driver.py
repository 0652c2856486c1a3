"""One driver for the three forms of the field: input checks, the choice of form, the groups.

`field_scaled` checks and groups the inputs, chooses the dense or the blocked form
(`select_block_size`; the floored form of `DriftOptions.affinity_floor` is always dense) and
runs it over the groups; `sharded.py` calls the same per-group function (`group_field_fn`)
inside its `shard_map`. `loss_from_field` turns a field into the drifting loss for every
form.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from drift_jax.field import blocked, dense, floored
from drift_jax.field.options import DriftOptions

Array = jax.Array


def prepare(x, y_pos, y_neg, weights_pos, weights_neg, opts):
    """Casts to float32, fills defaults and checks shapes. Returns grouped [G, ...] arrays."""
    x = jnp.asarray(x)
    y_pos = jnp.asarray(y_pos)
    grouped = x.ndim == 3
    if x.ndim not in (2, 3):
        raise ValueError(f'x must be [N, D] or [G, N, D]; got shape {x.shape}.')
    if y_pos.ndim != x.ndim:
        raise ValueError(f'y_pos must have the rank of x {x.shape}; got shape {y_pos.shape}.')
    mask_self = opts.self_mask
    if y_neg is None:
        y_neg = x
        mask_self = True if mask_self is None else mask_self
    else:
        y_neg = jnp.asarray(y_neg)
        mask_self = bool(mask_self)
    if y_neg.ndim != x.ndim:
        raise ValueError(f'y_neg must have the rank of x {x.shape}; got shape {y_neg.shape}.')
    if not grouped:
        x, y_pos, y_neg = x[None], y_pos[None], y_neg[None]
    g, n, d = x.shape
    for name, y in (('y_pos', y_pos), ('y_neg', y_neg)):
        if y.shape[0] != g or y.shape[2] != d:
            raise ValueError(
                f'{name} has shape {y.shape[int(not grouped) :]}; expected '
                f'groups={g} and dim={d} to match x {x.shape[int(not grouped) :]}.'
            )
    if mask_self and y_neg.shape[1] < n:
        raise ValueError(
            f'self_mask needs the first N={n} negatives to be the queries, but '
            f'y_neg has only {y_neg.shape[1]} rows.'
        )

    def _weights(w, m, name):
        if w is None:
            return jnp.ones((g, m), jnp.float32)
        w = jnp.asarray(w, jnp.float32)
        if w.shape == (m,):
            return jnp.broadcast_to(w, (g, m))
        if grouped and w.shape == (g, m):
            return w
        expected = f'[{g}, {m}]' if grouped else f'[{m}]'
        raise ValueError(f'{name} has shape {w.shape}; expected {expected}.')

    w_pos = _weights(weights_pos, y_pos.shape[1], 'weights_pos')
    w_neg = _weights(weights_neg, y_neg.shape[1], 'weights_neg')
    f32 = jnp.float32
    return (x.astype(f32), y_pos.astype(f32), y_neg.astype(f32), w_pos, w_neg, mask_self, grouped)


# ----------------------------------------------------------------------------
# Automatic choice between the dense and the blocked form.

# The dense form is used only while its estimated memory stays below this (bytes).
DENSE_MEMORY_LIMIT_BYTES = 2 * 2**30
# Estimate: 4 bytes x G x N x M x (BASE + PER_TEMP * T) live [N, M] float32 matrices (the
# distances and their validity, u and its two shifted copies; three exponentials per
# temperature).
_DENSE_MATRICES_BASE = 5
_DENSE_MATRICES_PER_TEMP = 3
# Speed (XLA:CPU only): measured on a 2-core CPU (benchmarks/drift_field.py), the blocked
# form is 3-4x faster than the dense one once the matrices outgrow the caches, up to a few
# hundred dimensions; for large D the dense form's single distance matmul wins.
BLOCKED_MIN_ENTRIES = 2**20
BLOCKED_MAX_DIM = 256
# Kernel entries per chunk of groups on CPU (see group_chunk): [chunk, N, M] float32
# matrices of ~1 MiB, measured fastest between 2**16 and 2**19 here.
GROUP_CHUNK_ENTRIES = 2**18


def dense_memory_bytes(groups: int, n: int, m: int, num_temps: int) -> int:
    """Estimated peak bytes of the dense form for G groups of N queries x M targets."""
    per_entry = 4 * (_DENSE_MATRICES_BASE + _DENSE_MATRICES_PER_TEMP * num_temps)
    return groups * n * m * per_entry


def select_block_size(
    groups: int,
    n: int,
    m: int,
    d: int,
    num_temps: int,
    block_size: int | None = None,
    backend: str | None = None,
) -> int | None:
    """Targets per block for the blocked form, or None for the dense form.

    An explicit `block_size` wins. Otherwise the blocked form is chosen when the dense
    form's estimated memory (`dense_memory_bytes`) exceeds DENSE_MEMORY_LIMIT_BYTES, and on
    CPU also when it is faster (N * M >= BLOCKED_MIN_ENTRIES and D <= BLOCKED_MAX_DIM).
    """
    if block_size:
        return int(block_size)
    too_big = dense_memory_bytes(groups, n, m, num_temps) > DENSE_MEMORY_LIMIT_BYTES
    backend = backend or jax.default_backend()
    faster = backend == 'cpu' and n * m >= BLOCKED_MIN_ENTRIES and d <= BLOCKED_MAX_DIM
    if too_big or faster:
        return blocked.auto_block_size(groups * n, num_temps)
    return None


def group_field_fn(
    opts: DriftOptions,
    mask_self: bool,
    block: int | None,
    *,
    neg_is_queries: bool = False,
    **sharded,
) -> Callable:
    """The field of one group, `one(x_nd, y_pos, y_neg, w_pos, w_neg) -> (v, coord_scale,
    stats)`, in the dense form (`block` None) or the blocked form with `block` targets per
    block. Every form runs through here: `field_scaled` maps it over groups and the sharded
    form calls it inside its `shard_map` with `sharded` = (q_valid, q_offset, n_total,
    axis_name). The blocked form also takes `one_exp=True` (one exponential per entry).
    """
    if block:

        def one(xg, pg, ng, wp, wn, one_exp=False):
            return blocked.single_group_field(
                xg,
                pg,
                ng,
                wp,
                wn,
                opts,
                mask_self,
                block_size=block,
                one_exp=one_exp,
                neg_is_queries=neg_is_queries,
                **sharded,
            )
    else:

        def one(xg, pg, ng, wp, wn):
            return dense.single_group_field(xg, pg, ng, wp, wn, opts, mask_self, **sharded)

    return one


def field_scaled(
    x,
    y_pos,
    y_neg,
    weights_pos,
    weights_neg,
    opts,
    form: str = 'auto',
    chunk_groups: bool = True,
    one_exp: bool = True,
):
    """Field in scaled coordinates for all groups: (v [G,N,D], coord_scale [G], stats).

    `form` forces 'dense' or 'blocked' (benchmarks and tests); 'auto' uses
    `select_block_size`. `chunk_groups=False` vectorises every group at once instead of
    running them in chunks of `group_chunk`; `one_exp=False` keeps the blocked form of one
    group on two exponentials per entry (benchmarks). A positive `opts.affinity_floor`
    always takes the floored dense form (`floored.floored_field`, all groups at once since
    they share one scale); `form='blocked'` then raises.
    """
    # No negatives given: they are the queries themselves, with unit weights.
    neg_is_queries = y_neg is None and weights_neg is None
    x, y_pos, y_neg, w_pos, w_neg, mask_self, grouped = prepare(
        x, y_pos, y_neg, weights_pos, weights_neg, opts
    )
    if opts.affinity_floor:
        if form == 'blocked':
            raise ValueError(
                f'affinity_floor={opts.affinity_floor:g} is computed by the dense form only; '
                "use form='auto' or 'dense' (in configs: drift.block_size=0)."
            )
        v, coord_scale, stats = floored.floored_field(
            x, y_pos, y_neg, w_pos, w_neg, opts, mask_self
        )
        return x, v, coord_scale, stats, grouped
    g, n, d = x.shape
    m, num_t = y_pos.shape[1] + y_neg.shape[1], len(opts.temperatures)
    if form == 'dense':
        block = None
    elif form == 'blocked':
        block = opts.block_size or blocked.auto_block_size(g * n, num_t)
    else:
        block = select_block_size(g, n, m, d, num_t, opts.block_size)
    one = group_field_fn(opts, mask_self, block, neg_is_queries=neg_is_queries)

    args = (x, y_pos, y_neg, w_pos, w_neg)
    chunk = group_chunk(g, n, m) if chunk_groups else g
    if block and g == 1:
        # One group is not vmapped, so the blocked form may choose per block (lax.cond)
        # between one and two exponentials per entry.
        single = [a[0] for a in args]
        out = one_exp_forward(one, single) if one_exp else one(*single)
        v, coord_scale, stats = jax.tree.map(lambda a: a[None], out)
    elif chunk < g:
        v, coord_scale, stats = jax.lax.map(lambda a: one(*a), args, batch_size=chunk)
    else:
        v, coord_scale, stats = jax.vmap(one)(*args)
    return x, v, coord_scale, stats, grouped


def one_exp_forward(one, args):
    """`one(*args, one_exp=True)`, differentiated as `one(*args, one_exp=False)`.

    Both compute the same function, but differentiating the one-exp form's per-block
    choice and its fallback attempt carries both forms into the derivative program: at
    2048 x 4096, D=64, its gradient compiled in 7.3 s and ran in 937 ms, against 3.5 s and
    360 ms for the two-exp form's (2026-12-01). So forward calls (the train step: the field
    is computed on stop_gradient inputs, whose tangents are symbolic zeros, so the rule is
    never called) get one exponential per entry, and JVPs and gradients (which JAX builds
    from the JVP) the two-exp form.
    """
    field = jax.custom_jvp(lambda *a: one(*a, one_exp=True))
    field.defjvp(
        lambda primals, tangents: jax.jvp(lambda *a: one(*a, one_exp=False), primals, tangents)
    )
    return field(*args)


def group_chunk(groups: int, n: int, m: int, backend: str | None = None) -> int:
    """Groups computed together (vectorised) by the field; fewer than `groups` means a loop.

    On CPU, many small groups (the feature-space loss: one group per token position and
    class, e.g. 1960 groups of 32 x 128) run ~1.8x faster in chunks whose [chunk, N, M]
    matrices stay in cache (GROUP_CHUNK_ENTRIES entries) than all at once. Accelerators get
    every group at once.
    """
    if (backend or jax.default_backend()) != 'cpu':
        return groups
    return max(1, min(groups, GROUP_CHUNK_ENTRIES // max(1, n * m)))


def field_output(v: Array, coord_scale: Array, stats: dict, grouped: bool, return_stats: bool):
    """The field in the input's coordinates from the scaled field v [G, N, D] and
    coord_scale [G]: [N, D] (ungrouped input) or [G, N, D]; with the mean stats if asked."""
    v = v * coord_scale[:, None, None]
    if not grouped:
        v = v[0]
    if return_stats:
        return v, jax.tree.map(jnp.mean, stats)
    return v


def loss_from_field(
    x: Array,
    v: Array,
    coord_scale: Array,
    stats: dict,
    grouped: bool,
    reduction: str = 'sum',
):
    """Drifting loss from the scaled field v [G, N, D] and coord_scale [G] (see drift_loss);
    `reduction` ('sum' or 'mean') over the D coordinates, then the mean over G and N."""
    sg = jax.lax.stop_gradient
    xg = jnp.asarray(x).astype(jnp.float32)
    if not grouped:
        xg = xg[None]
    x_scaled = xg / coord_scale[:, None, None]
    target = sg(x_scaled + v)
    reduce = jnp.mean if reduction == 'mean' else jnp.sum
    loss = jnp.mean(reduce(jnp.square(x_scaled - target), axis=-1))
    stats = jax.tree.map(jnp.mean, stats)
    stats['drift_norm'] = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(v), axis=-1)))
    return loss, stats
