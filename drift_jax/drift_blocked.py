"""Blocked (streaming) drifting field: never builds the full N x M matrices.

Two scans over blocks of targets (pass 1: distance scale and exact row/column minima;
pass 2: kernel sums and the field's matmuls), so memory is O(N * (block + T * D)).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from drift_jax import drift

Array = jax.Array

# Working-set budget of one block in the automatic block size (bytes of [N, b] float32
# matrices alive at once, about 3 + 3 T of them).
BLOCK_BYTES = 32 * 2**20
_MIN_BLOCK = 16


def auto_block_size(num_queries: int, num_temps: int, groups: int = 1) -> int:
    """Targets per block so that one block's matrices take about BLOCK_BYTES."""
    per_target = 4 * max(groups, 1) * max(num_queries, 1) * (3 + 3 * num_temps)
    b = BLOCK_BYTES // per_target
    if b >= 128:
        return int(b // 128 * 128)
    return int(max(_MIN_BLOCK, 2 ** int(math.log2(max(b, 1)))))


def _pad_blocks(y: Array, w: Array, b: int, index_base: int | None):
    """Splits targets into [nb, b, ...] blocks; padding rows get weight 0 (masked).

    Returns (y [nb, b, D], w [nb, b], global index [nb, b] or None).
    """
    m, d = y.shape
    nb = max(1, -(-m // b))
    pad = nb * b - m
    y = jnp.pad(y, ((0, pad), (0, 0))).reshape(nb, b, d)
    w = jnp.pad(w, (0, pad)).reshape(nb, b)
    idx = None if index_base is None else (index_base + jnp.arange(nb * b)).reshape(nb, b)
    return y, w, idx


def single_group_field(x_nd: Array, y_pos: Array, y_neg: Array, w_pos: Array, w_neg: Array,
                       opts: drift.DriftOptions, mask_self: bool, *,
                       q_valid: Array | None = None, q_offset: Array | int = 0,
                       n_total: int | None = None, axis_name: str | None = None,
                       block_size: int | None = None):
    """Field for one group in scaled coordinates, streaming over blocks of targets.

    Same arguments and result as `drift._single_group_field`: x_nd [N, D], y_pos [M+, D],
    y_neg [M-, D], w_pos [M+], w_neg [M-]; returns (v [N, D], coord_scale [], stats).
    block_size (default `opts.block_size`, else automatic) is the number of targets per
    block; sets that are not a multiple of it are padded with zero-weight targets.
    q_valid, q_offset, n_total and axis_name serve the sharded form (see drift_sharded).
    """
    n, d = x_nd.shape
    n_total = n if n_total is None else n_total
    b = block_size or opts.block_size or auto_block_size(n, len(opts.temperatures))
    b = max(1, min(b, max(y_neg.shape[0], y_pos.shape[0])))
    center = drift._target_center(y_pos, y_neg)
    q_index = q_offset + jnp.arange(n) if mask_self else None

    # Both sets in one scan: a flag per block says which accumulator it feeds. Positives
    # get index -1 so that they never match a query in the self-mask.
    yn, wn, tn = _pad_blocks(y_neg, w_neg, b, 0 if mask_self else None)
    yp, wp, tp = _pad_blocks(y_pos, w_pos, b, None)
    ys = jnp.concatenate([yn, yp])
    ws = jnp.concatenate([wn, wp])
    flags = jnp.concatenate([jnp.zeros(yn.shape[0], jnp.int32), jnp.ones(yp.shape[0],
                                                                          jnp.int32)])
    if mask_self:
        ts = jnp.concatenate([tn, jnp.full(wp.shape, -1, tn.dtype)])
    else:
        ts = jnp.zeros(ws.shape, jnp.int32)  # Unused.

    def block(y_b, w_b, t_b):
        sq = drift._squared_distances(x_nd, y_b)
        valid = drift._block_valid(n, w_b, q_valid, q_index, t_b if mask_self else None)
        return sq, valid

    def pass1(carry, blk):
        row_min, sum_dw, sum_w = carry
        y_b, w_b, t_b = blk
        sq, valid = block(y_b, w_b, t_b)
        r, c, sdw, sw = drift._pass1_block(sq, valid, w_b, opts.scale_dist)
        return (jnp.minimum(row_min, r), sum_dw + sdw, sum_w + sw), c

    zero = jnp.zeros((), jnp.float32)
    init = (jnp.full((n,), jnp.inf, jnp.float32), zero, zero)
    (row_min, sum_dw, sum_w), col_min = jax.lax.scan(pass1, init, (ys, ws, ts))
    if axis_name is not None:
        col_min = jax.lax.pmin(col_min, axis_name)
        sum_dw, sum_w = jax.lax.psum((sum_dw, sum_w), axis_name)
    scale, coord_scale, rate = drift._scales(sum_dw, sum_w, d, opts)
    row_shift = drift._shift(row_min, opts.kernel)
    col_shift = drift._shift(col_min, opts.kernel)

    num_t = len(opts.temperatures)

    def pass2(carry, blk):
        row_sums, acc = carry
        y_b, w_b, t_b, c_b, flag = blk
        sq, valid = block(y_b, w_b, t_b)
        r, a = drift._pass2_block(sq, valid, y_b - center, w_b, row_shift, c_b, rate, opts,
                                  axis_name)
        return (row_sums + r, acc.at[flag].add(a)), None

    init = (jnp.zeros((num_t, n), jnp.float32), jnp.zeros((2, num_t, n, d + 1), jnp.float32))
    (row_sums, acc), _ = jax.lax.scan(pass2, init, (ys, ws, ts, col_shift, flags))
    return drift._finish(row_sums, acc[0], acc[1], scale, coord_scale, n_total, opts,
                         axis_name)
