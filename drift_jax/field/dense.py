"""The dense form of the field: the engine's two passes over whole target sets.

Builds the full [N, M] matrices of one group; fastest for small problems and for large
feature dimensions (one distance matmul). `blocked.py` streams the same passes over blocks.
"""

from __future__ import annotations

import jax.numpy as jnp

from drift_jax.field.engine import (
    combine_pass1,
    finish_field,
    make_queries,
    make_targets,
    pass1_block,
    pass2_block,
    target_center,
    valid_weight_sum,
)
from drift_jax.field.options import DriftOptions


def single_group_field(
    x_nd,
    y_pos,
    y_neg,
    w_pos,
    w_neg,
    opts: DriftOptions,
    mask_self,
    *,
    q_valid=None,
    q_offset=0,
    n_total=None,
    axis_name=None,
):
    """Dense field for one group in scaled coordinates: (v [N, D], coord_scale, stats).

    x_nd [N, D]; y_pos [M+, D]; y_neg [M-, D]; w_pos [M+]; w_neg [M-]. Builds the full
    [N, M-] and [N, M+] matrices. For the sharded form, x_nd holds this device's queries:
    q_valid [N] marks real (not padding) rows, q_offset is the first row's global index,
    n_total the global number of real queries, and axis_name the query mesh axis.
    """
    n, d = x_nd.shape
    center = target_center(y_pos, y_neg)
    q = make_queries(x_nd, q_valid, q_offset + jnp.arange(n) if mask_self else None)
    sets = (
        make_targets(y_neg, w_neg, jnp.arange(y_neg.shape[0]) if mask_self else None, center),
        make_targets(y_pos, w_pos, None, center),
    )
    first = [pass1_block(q, t, opts.scale_dist) for t in sets]
    scale, coord_scale, unit, row_shift, col_shifts = combine_pass1(
        jnp.minimum(first[0][0], first[1][0]),
        [f[1] for f in first],
        first[0][2] + first[1][2],
        valid_weight_sum(q, w_pos, w_neg),
        d,
        opts,
        axis_name,
    )
    outs = [
        pass2_block(q, t, row_shift, c, unit, opts, axis_name)
        for t, c in zip(sets, col_shifts, strict=True)
    ]
    return finish_field(
        outs[0][0] + outs[1][0],
        outs[0][1],
        outs[1][1],
        scale,
        coord_scale,
        n if n_total is None else n_total,
        opts,
        axis_name,
    )
