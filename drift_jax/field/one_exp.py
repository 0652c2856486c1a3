"""One exponential per kernel entry: the blocked form's cheaper block terms.

Where a block's row and column shifts lie close to its smallest u (`ONE_EXP_MAX_SPREAD`),
exp(-k (u - m)) of one block serves as both the row and the column factor, halving the
exponentials per entry; `one_exp_block` also reports whether that holds, so the blocked
form falls back to `engine.block_terms` per block.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from drift_jax.field.engine import (
    TargetSet,
    block_terms,
    exp_family,
    finite_shift,
    safe_pow,
    temperature_rates,
)
from drift_jax.field.options import DriftOptions

Array = jax.Array


# The one-exp form is exact when k (shift - m) is at most this for every row and column
# shift (m: the block's smallest u). Then every entry within e^-30 of its row's or column's
# peak has H >= e^-87, float32's smallest normal: nothing that matters underflows.
ONE_EXP_MAX_SPREAD = 57.0


def one_exp_block(
    u: Array,
    t: TargetSet,
    row_shift: Array,
    block_min: Array,
    unit: Array,
    opts: DriftOptions,
    two_exp_only: Array | bool = False,
):
    """`block_terms` ('both', one device, not under vmap: a `lax.cond` under vmap runs both
    branches) with one exponential per entry where the block's shifts allow it.

    Args: as `block_terms`, but the block's smallest u [] instead of its column minima.

    Returns (row sums [T, N], unscaled accumulators [T, N, D + 1], their factor [T, N],
    exact []). The rows are checked before (their shifts are known): blocks whose rows do
    not fit take the two-exp terms (with column minima of their own). The columns are
    checked after, from the column sums of H: column j's peak is at least its sum / N, so
    a sum of at least N e^-57 means k (c_j - m) <= 57 (`ONE_EXP_MAX_SPREAD`) without
    the column minima c. Where a column fails, `exact` is False and the caller must
    compute the field again without one-exp terms (rare: it takes a column whose
    nearest query is far beyond the block's nearest pair): two_exp_only (a traced bool,
    so that both attempts share one compiled body) makes every block take the two-exp
    terms.
    """
    k_max = unit * max(temperature_rates(opts))
    rows_fit = k_max * (jnp.max(row_shift) - block_min) <= ONE_EXP_MAX_SPREAD
    rows_fit = rows_fit & jnp.logical_not(two_exp_only)
    col_floor = u.shape[0] * math.exp(-ONE_EXP_MAX_SPREAD)

    def two_exp():
        col_shift = finite_shift(jnp.min(u, axis=0))
        row_sums, accs = block_terms(u, t, row_shift, col_shift, unit, opts)
        return row_sums, accs, jnp.ones(row_sums.shape, row_sums.dtype), jnp.array(True)

    def one_exp():
        row_sums, accs, scales, col_sums = one_exp_terms(u, t, row_shift, block_min, unit, opts)
        return row_sums, accs, scales, jnp.all((col_sums >= col_floor) | (t.w <= 0))

    return jax.lax.cond(rows_fit, one_exp, two_exp)


def one_exp_terms(
    u: Array, t: TargetSet, row_shift: Array, block_min: Array, unit: Array, opts: DriftOptions
):
    """`block_terms` ('both') with one exponential per entry (and temperature family).

    With m the block's smallest u and H_ij = exp(-k (u_ij - m)),
        exp(-k (u_ij - r_i)) = H_ij a_i^2,   a_i = exp(k (r_i - m) / 2),
    and in the column-normalised term the column shift cancels:
        exp(-k (u_ij - (r_i + c_j) / 2)) / sqrt(C_j) = H_ij a_i / sqrt(sum_i' H_i'j).
    So R_i = a_i^2 sum_j H_ij, and the field's matmul is H [y | 1] with the rows of [y | 1]
    scaled by w_j / sqrt(sum_i H_ij), its [N, D + 1] result by a_i (returned as acc_scale
    for the caller to fold into its accumulation). The caller checks that no entry that
    matters underflows (`one_exp_block`). Also returns the column sums of H [T, b].
    """
    hp = jax.lax.Precision.HIGHEST
    kappas = temperature_rates(opts)
    # The barrier keeps H materialised once: XLA would otherwise recompute the exp inside
    # each of its three consumers (row sum, column sum, matmul operand).
    hs = jax.lax.optimization_barrier(exp_family(u - block_min, unit, kappas))
    row_sums, accs, scales, col_sums = [], [], [], []
    for h, kappa in zip(hs, kappas, strict=True):
        # Capped so that this branch stays finite where it does not fit: under a user's
        # vmap the cond becomes a select that evaluates it there too.
        a_sq = jnp.exp(jnp.minimum((unit * kappa) * (row_shift - block_min), 80.0))  # [N]
        col_sums.append(jnp.sum(h, axis=0))  # [b]
        col_vec = safe_pow(col_sums[-1], -0.5) * t.w
        row_sums.append(a_sq * jnp.sum(h, axis=1))
        # The column factor scales the matmul's [b, D + 1] right operand, not H [N, b].
        accs.append(jnp.dot(h, col_vec[:, None] * t.aug, precision=hp))
        scales.append(jnp.sqrt(a_sq))
    return jnp.stack(row_sums), jnp.stack(accs), jnp.stack(scales), jnp.stack(col_sums)
