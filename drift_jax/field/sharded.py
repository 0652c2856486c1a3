"""Drifting field and loss with the queries sharded over a mesh axis (`jax.shard_map`).

Each device holds N / P queries and all-gathers the targets; the query-side statistics
(column minima and kernel sums, distance scale, per-temperature RMS) are reduced across
devices, so the result equals the single-device field.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from drift_jax.field import driver
from drift_jax.field.options import DriftOptions

Array = jax.Array


def _pad_rows(a: Array, rows: int) -> Array:
    """Pads axis 1 of a [G, R, ...] array with zeros to `rows` rows."""
    pad = rows - a.shape[1]
    return jnp.pad(a, ((0, 0), (0, pad)) + ((0, 0),) * (a.ndim - 2)) if pad else a


def _sharded_field_scaled(x, y_pos, y_neg, weights_pos, weights_neg, opts, mesh, axis):
    """Field in scaled coordinates: (x [G,N,D], v [G,N,D], coord_scale [G], stats, grouped)."""
    if opts.affinity_floor:
        raise ValueError(
            f'affinity_floor={opts.affinity_floor:g} (the official loss) is computed by the '
            'single-device dense form only; the sharded field does not implement it. Use '
            'compute_drift_field / drift_loss, train on a mesh whose data axis has one '
            'device (--config.mesh.data=1 --config.mesh.fsdp=-1), or set affinity_floor=0.'
        )
    x, y_pos, y_neg, w_pos, w_neg, mask_self, grouped = driver.prepare(
        x, y_pos, y_neg, weights_pos, weights_neg, opts
    )
    g, n, d = x.shape
    p = mesh.shape[axis]

    def up(m):
        return -(-m // p) * p

    # Padding rows: queries are masked by index (>= N), targets by weight 0. Padding at
    # the end keeps every real row's global index, so the self-mask still pairs x_i with
    # the negative y_i.
    xp = _pad_rows(x, up(n))
    pos, neg = _pad_rows(y_pos, up(y_pos.shape[1])), _pad_rows(y_neg, up(y_neg.shape[1]))
    wp, wn = _pad_rows(w_pos, up(w_pos.shape[1])), _pad_rows(w_neg, up(w_neg.shape[1]))
    n_local = xp.shape[1] // p
    m_local = (pos.shape[1] + neg.shape[1]) // p
    block = driver.select_block_size(
        g, n_local, m_local * p, d, len(opts.temperatures), opts.block_size
    )

    def local(x_l, pos_l, neg_l, wp_l, wn_l):
        gather = jax.lax.all_gather
        pos_a, neg_a = (
            gather(pos_l, axis, axis=1, tiled=True),
            gather(neg_l, axis, axis=1, tiled=True),
        )
        wp_a, wn_a = gather(wp_l, axis, axis=1, tiled=True), gather(wn_l, axis, axis=1, tiled=True)
        offset = jax.lax.axis_index(axis) * n_local
        q_valid = offset + jnp.arange(n_local) < n
        kw = dict(q_valid=q_valid, q_offset=offset, n_total=n, axis_name=axis)

        one = driver.group_field_fn(opts, mask_self, block, **kw)
        return jax.vmap(one)(x_l, pos_a, neg_a, wp_a, wn_a)

    rows = P(None, axis)
    explicit = any(t == AxisType.Explicit for t in mesh.axis_types)
    if explicit:
        # Explicit meshes want the inputs already laid out as in_specs says.
        xp, pos, neg, wp, wn = (
            jax.reshard(a, NamedSharding(mesh, rows)) for a in (xp, pos, neg, wp, wn)
        )
    # check_vma=False: the engine's scan carries start replicated and become per-device.
    v, coord_scale, stats = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(rows, rows, rows, rows, rows),
        out_specs=(rows, P(), P()),
        check_vma=False,
    )(xp, pos, neg, wp, wn)
    if explicit:
        # Slicing off the padding (and ungrouping) of an explicitly sharded array is
        # ambiguous; the field is small ([G, N, D]), so it is replicated first.
        v = jax.reshard(v, NamedSharding(mesh, P()))
    return x, v[:, :n] if xp.shape[1] != n else v, coord_scale, stats, grouped


def sharded_drift_field(
    x: Array,
    y_pos: Array,
    y_neg: Array | None = None,
    opts: DriftOptions | None = None,
    mesh: Mesh | None = None,
    *,
    weights_pos: Array | None = None,
    weights_neg: Array | None = None,
    axis: str = 'data',
    return_stats: bool = False,
):
    """`compute_drift_field` with the queries sharded over `mesh` axis `axis`.

    Args:
      x: queries [N, D] or [G, N, D]; N need not divide the axis size (padded, masked).
      y_pos, y_neg, weights_pos, weights_neg: as in `compute_drift_field` ([M, D] /
        [G, M, D] and [M] / [G, M]); they are sharded over the same axis and all-gathered.
      opts: DriftOptions (default: the paper's choices); `block_size` applies per device.
      mesh: the device mesh (required); other mesh axes replicate the work.
      axis: the mesh axis over which the queries are split.
      return_stats: also return the stats dict (distance scale, RMS per temperature).

    Returns:
      V, float32 with the shape of x (equal to the single-device field); and stats.
    """
    if mesh is None:
        raise ValueError("sharded_drift_field needs a mesh, e.g. jax.make_mesh((8,), ('data',)).")
    opts = opts or DriftOptions()
    _, v, coord_scale, stats, grouped = _sharded_field_scaled(
        x, y_pos, y_neg, weights_pos, weights_neg, opts, mesh, axis
    )
    return driver.field_output(v, coord_scale, stats, grouped, return_stats)


def sharded_drift_loss(
    x: Array,
    y_pos: Array,
    y_neg: Array | None = None,
    opts: DriftOptions | None = None,
    mesh: Mesh | None = None,
    *,
    weights_pos: Array | None = None,
    weights_neg: Array | None = None,
    axis: str = 'data',
) -> tuple[Array, dict[str, Array]]:
    """`drift_loss` with the field computed by `sharded_drift_field`.

    x [N, D] or [G, N, D] is differentiable; returns (scalar loss, stats) equal to the
    single-device `drift_loss`.
    """
    if mesh is None:
        raise ValueError("sharded_drift_loss needs a mesh, e.g. jax.make_mesh((8,), ('data',)).")
    opts = opts or DriftOptions()
    sg = jax.lax.stop_gradient
    _, v, coord_scale, stats, grouped = _sharded_field_scaled(
        sg(x),
        sg(y_pos),
        None if y_neg is None else sg(y_neg),
        weights_pos,
        weights_neg,
        opts,
        mesh,
        axis,
    )
    return driver.loss_from_field(x, v, coord_scale, stats, grouped, opts.loss_reduction)
