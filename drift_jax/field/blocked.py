"""Blocked (streaming) drifting field: never builds the full N x M matrices.

A scan over blocks of targets computes the kernel sums and the field's matmuls; each
block holds every query, so its column statistics are exact. Row shifts come from a first
scan (with the distance scale) or, without scale normalisation, are running minima
(online softmax). When the negatives are the queries themselves, the first scan over them
uses the symmetry of their distances (`symmetric_pass1`). Memory is O(N * (block + T * D)).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from drift_jax.field import engine
from drift_jax.field.one_exp import one_exp_block
from drift_jax.field.options import DriftOptions

Array = jax.Array

# Automatic block size: about BLOCK_BYTES of [N, b] float32 matrices alive at once (about
# 2 + 2 T of them) keeps a block in cache; at least 128 targets keep the matmuls efficient
# (for large N the cache budget cannot be met anyway); at most MAX_BLOCK_BYTES of them.
BLOCK_BYTES = 8 * 2**20
MAX_BLOCK_BYTES = 2**30
_MIN_BLOCK = 16
_MAX_BLOCK = 4096
# Independent scans over the blocks (single device): XLA:CPU runs them concurrently.
STREAMS = 2


def auto_block_size(num_queries: int, num_temps: int) -> int:
    """Targets per block for num_queries (all groups) and num_temps temperatures.

    A multiple of 128 (or a power of two below 128), between 16 and 4096.
    """
    per_target = 4 * max(num_queries, 1) * (2 + 2 * num_temps)
    b = max(BLOCK_BYTES // per_target, 128)
    b = max(min(b, MAX_BLOCK_BYTES // per_target, _MAX_BLOCK), 1)
    if b >= 128:
        return int(b // 128 * 128)
    return int(max(_MIN_BLOCK, 1 << (b.bit_length() - 1)))


def split_blocks(y: Array, w: Array, b: int) -> tuple[Array, Array, Array]:
    """Targets [M, D] and weights [M] -> [nb, b, D], [nb, b] and global index [nb, b].

    Padding rows (to a multiple of b) get weight 0, which masks them everywhere.
    """
    m, d = y.shape
    nb = max(1, -(-m // b))
    pad = nb * b - m
    y = jnp.pad(y, ((0, pad), (0, 0))).reshape(nb, b, d)
    w = jnp.pad(w, (0, pad)).reshape(nb, b)
    return y, w, jnp.arange(nb * b).reshape(nb, b)


def stream_ranges(num_blocks: int, streams: int) -> list[tuple[int, int]]:
    """Contiguous [lo, hi) ranges of blocks, one per stream, sizes differing by at most 1."""
    bounds = [num_blocks * s // streams for s in range(streams + 1)]
    return [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True) if hi > lo]


def stream_segments(lo: int, hi: int, num_neg: int) -> list[tuple[int, int, int]]:
    """Blocks [lo, hi) cut at the sets' boundary: (set 0 negatives / 1 positives, lo, hi)."""
    cuts = [(0, lo, min(hi, num_neg)), (1, max(lo, num_neg), hi)]
    return [(k, a, b) for k, a, b in cuts if b > a]


def symmetric_pass1(x_nd: Array, b: int, mask_self: bool, scale_dist: bool):
    """First pass over the negatives when they are the queries themselves, with unit weights.

    The [N, N] distances are symmetric. With the queries cut into nb tiles of b (padded),
    the tile pairs (J - k mod nb, J) for k = 0 .. nb // 2 hold every pair (i, j) or its
    mirror (j, i): for each column tile J, the rows of the nb // 2 + 1 tiles ending at J (a
    cyclic window), about half the entries of the whole matrix in [rows, b] blocks like
    the other passes'. A block's row minima belong to its rows, its column minima (by
    symmetry) to the rows of tile J; its distance sum counts twice, except for the tiles
    k = 0 and k = nb / 2, whose mirrors are in the blocks already.

    Args:
      x_nd: the queries (= the negatives) [N, D]; b: the negative blocks' size.
      mask_self, scale_dist: as in `single_group_field` / the options.

    Returns:
      (row minima of sq over the negatives [nb * b] (+inf on padding), sum of d over the
      valid negative pairs []).
    """
    n, d = x_nd.shape
    nb = -(-n // b)
    p, span = nb * b, (nb // 2 + 1) * b
    index = jnp.arange(p)
    xp = jnp.pad(x_nd, ((0, p - n), (0, 0)))
    # The rows twice over, so that every cyclic window is one contiguous slice; padding
    # rows are not real queries and padding columns have weight 0.
    twice = jnp.concatenate([index, index])
    q = engine.make_queries(jnp.concatenate([xp, xp]), twice < n, twice if mask_self else None)
    t = engine.make_targets(
        xp, (index < n).astype(jnp.float32), index if mask_self else None, jnp.zeros((d,))
    )
    t = jax.tree.map(lambda a: a.reshape((nb, b) + a.shape[1:]), t)
    # Tile k of the window (k = nb // 2 - its position) counts once or twice.
    k = nb // 2 - jnp.arange(span) // b
    weight = jnp.where((k == 0) | (2 * k == nb), 1.0, 2.0)

    def window(a, start):
        return jax.lax.dynamic_slice_in_dim(a, start, span) if a is not None else None

    def step(row_min, blk):
        tile, col = blk
        start = (col - nb // 2) % nb * b
        rows = jax.tree.map(lambda a: window(a, start), q)
        sq = engine.pair_sq(rows, tile)  # [span, b]
        valid = engine.pair_valid(rows, tile)
        sq_valid = jnp.where(valid, sq, jnp.inf)
        # Row minima go to the window's rows (in the doubled index), column minima to
        # the rows of tile `col`.
        seen = jax.lax.dynamic_slice_in_dim(row_min, start, span)
        row_min = jax.lax.dynamic_update_slice_in_dim(
            row_min, jnp.minimum(seen, jnp.min(sq_valid, axis=1)), start, 0
        )
        seen = jax.lax.dynamic_slice_in_dim(row_min, col * b, b)
        row_min = jax.lax.dynamic_update_slice_in_dim(
            row_min, jnp.minimum(seen, jnp.min(sq_valid, axis=0)), col * b, 0
        )
        if scale_dist:
            dist = jnp.where(valid, jnp.sqrt(jnp.maximum(sq, engine.MIN_SQ)), 0.0)
            return row_min, jnp.dot(weight, jnp.sum(dist, axis=1))
        return row_min, jnp.zeros((), jnp.float32)

    init = jnp.full((2 * p,), jnp.inf, jnp.float32)
    row_min, sums = jax.lax.scan(step, init, (t, jnp.arange(nb)))
    return jnp.minimum(row_min[:p], row_min[p:]), jnp.sum(sums)


def single_group_field(
    x_nd: Array,
    y_pos: Array,
    y_neg: Array,
    w_pos: Array,
    w_neg: Array,
    opts: DriftOptions,
    mask_self: bool,
    *,
    q_valid: Array | None = None,
    q_offset: Array | int = 0,
    n_total: int | None = None,
    axis_name: str | None = None,
    block_size: int | None = None,
    one_exp: bool = False,
    neg_is_queries: bool = False,
):
    """Field for one group in scaled coordinates, streaming over blocks of targets.

    Same arguments and result as `dense.single_group_field`: x_nd [N, D], y_pos [M+, D],
    y_neg [M-, D], w_pos [M+], w_neg [M-]; returns (v [N, D], coord_scale [], stats).
    block_size (default `opts.block_size`, else automatic) is the number of targets per
    block; sets that are not a multiple of it are padded with zero-weight targets, which
    are masked. q_valid, q_offset, n_total and axis_name serve the sharded form (see
    sharded.py): real rows [N], global index of row 0, global real rows, mesh axis.
    one_exp: let blocks use one exponential per entry where their shifts allow it
    (`one_exp.one_exp_terms`; a `lax.cond` per block, so only for calls that are not
    vmapped). neg_is_queries: y_neg is x_nd itself with unit weights (the caller passed no
    negatives); with one_exp the first pass then uses the symmetry of the negatives'
    distances (`symmetric_pass1`).
    """
    n, d = x_nd.shape
    n_total = n if n_total is None else n_total
    b = block_size or opts.block_size or auto_block_size(n, len(opts.temperatures))
    b = max(1, min(b, max(y_neg.shape[0], y_pos.shape[0])))
    center = engine.target_center(y_pos, y_neg)
    q = engine.make_queries(x_nd, q_valid, q_offset + jnp.arange(n) if mask_self else None)

    # Both sets in one list of blocks, cut into contiguous streams; a stream's part of each
    # set is one segment (a static slice), so every scan feeds one set's accumulator.
    # Positives get index -1 so that they never match a query in the self-mask.
    yn, wn, tn = split_blocks(y_neg, w_neg, b)
    yp, wp, tp = split_blocks(y_pos, w_pos, b)
    ys, ws = jnp.concatenate([yn, yp]), jnp.concatenate([wn, wp])
    index = jnp.concatenate([tn, jnp.full(tp.shape, -1, tn.dtype)]) if mask_self else None
    # Independent streams of blocks (one chain of scans each) let XLA:CPU run them on
    # different cores; collectives (sharded form) need one stream to keep their order.
    streams = 1 if axis_name is not None else min(STREAMS, ys.shape[0])
    segments = [
        stream_segments(lo, hi, yn.shape[0]) for lo, hi in stream_ranges(ys.shape[0], streams)
    ]
    targets = [
        [
            engine.make_targets(ys[lo:hi], ws[lo:hi], index[lo:hi] if mask_self else None, center)
            for _, lo, hi in stream
        ]
        for stream in segments
    ]

    num_t = len(opts.temperatures)
    # Log-sum-exp shifts. With a first pass (needed for the distance scale): its exact row
    # and column minima (for one-exp blocks, each block's smallest u). Without scale
    # normalisation and with one temperature the first pass is skipped: row shifts are
    # running minima, and what was accumulated under an older (larger) shift is rescaled
    # when a block lowers it (online softmax); a block holds every query, so its column
    # minima are exact. (With several temperatures the per-block rescaling of
    # [T, N, D + 1] accumulators costs more than a first pass.)
    online = not opts.scale_dist and num_t == 1 and opts.normalize != 'none'
    # One-exp block terms need each block's smallest u, not its column minima (see
    # `one_exp.one_exp_block`): the first pass gathers only that.
    one_exp = one_exp and opts.normalize == 'both' and axis_name is None
    if not online and (opts.scale_dist or opts.normalize != 'none'):

        def pass1(carry, t):
            row_min, sum_dw = carry
            r, c, sdw = engine.pass1_block(q, t, opts.scale_dist, col_minima=not one_exp)
            return (jnp.minimum(row_min, r), sum_dw + sdw), c

        init = (jnp.full((n,), jnp.inf, jnp.float32), jnp.zeros((), jnp.float32))
        carries, col_mins = [init], []
        if one_exp and neg_is_queries:
            # The negatives' part from the symmetric tiles; a negative block's smallest
            # distance is the smallest row minimum among its own rows (by symmetry).
            neg_row_min, neg_sum = symmetric_pass1(x_nd, b, mask_self, opts.scale_dist)
            carries.append((neg_row_min[:n], neg_sum))
            neg_block_min = jnp.min(neg_row_min.reshape(-1, b), axis=1)  # [nb-]
        for stream, stream_targets in zip(segments, targets, strict=True):
            carry = init
            for (set_id, lo, hi), t in zip(stream, stream_targets, strict=True):
                if set_id == 0 and one_exp and neg_is_queries:
                    col_mins.append(neg_block_min[lo:hi])
                    continue
                carry, c = jax.lax.scan(pass1, carry, t)
                col_mins.append(c)
            carries.append(carry)
        row_min = functools.reduce(jnp.minimum, [c[0] for c in carries])
        sum_dw = sum(c[1] for c in carries)
        sum_w = engine.valid_weight_sum(q, w_pos, w_neg)
        scale, coord_scale, unit, row_shift, col_mins = engine.combine_pass1(
            row_min, col_mins, sum_dw, sum_w, d, opts, axis_name
        )
        col_mins = iter(col_mins)
        col_shifts = [[next(col_mins) for _ in stream] for stream in targets]
    else:
        zero = jnp.zeros((), jnp.float32)
        scale, coord_scale, unit = engine.distance_scales(zero, zero, d, opts)
        row_shift = jnp.full((n,), jnp.inf if online else 0.0, jnp.float32)
        col_shifts = [[None] * len(stream) for stream in targets]
    # Terms accumulated under row shift r carry exp(-rate k (u - r)) with rate 1/2 (the
    # geometric mean, 'both') or 1 ('targets'); the row sums carry exp(-k (u - r)).
    acc_rate = 0.5 if opts.normalize == 'both' else 1.0
    rates = unit * jnp.asarray(engine.temperature_rates(opts), jnp.float32)  # [T]

    def rescale(shift, new_shift):
        """Factors ([T, N] for the accumulators, [T, N] for the row sums) that move terms
        from row shift `shift` to the lower `new_shift`."""
        delta = jnp.where(jnp.isfinite(shift), shift - new_shift, 0.0)
        return jnp.exp(-acc_rate * rates[:, None] * delta), jnp.exp(-rates[:, None] * delta)

    def block(set_id, two_exp_only, carry, blk):
        shift, row_sums, accs, exact = carry
        t, col_shift = blk
        u = engine.block_u(q, t, opts.kernel)
        if online:
            block_row_min = jax.lax.stop_gradient(jnp.min(u, axis=1))
            new_shift = jnp.minimum(shift, block_row_min)
            f_acc, f_row = rescale(shift, new_shift)
            row_sums = row_sums * f_row
            accs = tuple(a * f_acc[:, :, None] for a in accs)
            shift = new_shift
        if col_shift is None and one_exp:
            # Online (one-exp blocks have a first pass otherwise): the block's smallest u.
            col_shift = jnp.min(block_row_min)
        elif col_shift is None:
            col_shift = jnp.min(u, axis=0)
            if axis_name is not None:
                col_shift = jax.lax.pmin(col_shift, axis_name)
        if one_exp:
            r, a, a_scale, fit = one_exp_block(
                u,
                t,
                engine.finite_shift(shift),
                engine.finite_shift(col_shift),
                unit,
                opts,
                two_exp_only,
            )
            a, exact = a_scale[..., None] * a, exact & fit
        else:
            r, a = engine.block_terms(
                u,
                t,
                engine.finite_shift(shift),
                engine.finite_shift(col_shift),
                unit,
                opts,
                axis_name,
            )
        accs = tuple(acc + a if k == set_id else acc for k, acc in enumerate(accs))
        return (shift, row_sums + r, accs, exact), None

    def pass2(two_exp_only=False):
        """(row sums [T, N], accumulators [T, N, D + 1] of both sets, exact [])."""
        outs = []
        for stream, stream_targets, stream_shifts in zip(
            segments, targets, col_shifts, strict=True
        ):
            carry = (
                row_shift,
                jnp.zeros((num_t, n), jnp.float32),
                (jnp.zeros((num_t, n, d + 1), jnp.float32),) * 2,
                jnp.array(True),
            )
            for (set_id, _, _), t, c in zip(stream, stream_targets, stream_shifts, strict=True):
                carry = jax.lax.scan(functools.partial(block, set_id, two_exp_only), carry, (t, c))[
                    0
                ]
            outs.append(carry)
        if online:
            # Bring every stream to the common (lowest) row shift before adding.
            shift = functools.reduce(jnp.minimum, [o[0] for o in outs])
            factors = [rescale(o[0], shift) for o in outs]
            outs = [
                (None, rows * f_row, tuple(a * f_acc[:, :, None] for a in accs), ok)
                for (_, rows, accs, ok), (f_acc, f_row) in zip(outs, factors, strict=True)
            ]
        return (
            sum(o[1] for o in outs),
            sum(o[2][0] for o in outs),
            sum(o[2][1] for o in outs),
            functools.reduce(jnp.logical_and, [o[3] for o in outs]),
        )

    if one_exp:
        # Where a block's one-exp terms were not exact, all blocks again with two-exp terms
        # (their column minima, which the first pass skipped, come from each block). Two
        # attempts in a scan share one compiled pass; the second runs only when needed.
        def attempt(carry, second):
            def run():
                out = pass2(two_exp_only=second)
                return out[:3], out[3]

            return jax.lax.cond(second & carry[1], lambda: carry, run), None

        zeros = (jnp.zeros((num_t, n), jnp.float32),) + (
            jnp.zeros((num_t, n, d + 1), jnp.float32),
        ) * 2
        (row_sums, acc_neg, acc_pos), _ = jax.lax.scan(
            attempt, (zeros, jnp.array(False)), jnp.array([False, True])
        )[0]
    else:
        row_sums, acc_neg, acc_pos, _ = pass2()
    return engine.finish_field(
        row_sums, acc_neg, acc_pos, scale, coord_scale, n_total, opts, axis_name
    )
