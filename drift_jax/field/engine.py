"""The drifting field's engine: the passes, block terms and finish shared by every form.

`dense.py` runs it on whole target sets, `blocked.py` scans it over blocks of targets and
`sharded.py` adds the cross-device reductions. These helpers are public inside the
subpackage; users call `drift_jax.field.compute_drift_field` and `drift_loss`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
    from drift_jax.field.options import DriftOptions

Array = jax.Array

MIN_SCALE = 1e-8
# Floor of squared distances under the Laplace kernel's sqrt: keeps its gradient finite at
# zero distance; sqrt(1e-30) = 1e-15 is far below any distance that matters.
MIN_SQ = 1e-30
# Up to this dimension distances use explicit differences (exact); above, the matmul form.
EXACT_DIFF_MAX_DIM = 8
# Largest integer ratio between temperatures' rates served by products of one exp.
MAX_POWER = 32

# ----------------------------------------------------------------------------
# The field engine. The dense form (`single_group_field`, at the end) runs it on whole
# target sets (the full N x M matrices); drift_blocked scans it over blocks of targets;
# drift_sharded adds the cross-device reductions (`axis_name`). Per group, with
# u_ij = d_ij (Laplace) or d_ij^2 (Gaussian), the logits are l_ij = -k u_ij with
# k = 1 / (s tau) or 1 / (2 s^2 tau^2).
# With the exact row and column minima r_i = min_j u_ij and c_j = min_i u_ij,
#     R_i = sum_j exp(-k (u_ij - r_i)),   C_j = sum_i exp(-k (u_ij - c_j)),
#     exp(0.5 (log_softmax_j l + log_softmax_i l))_ij = exp(-k (u_ij - (r_i + c_j) / 2))
#                                                        / sqrt(R_i C_j),
# and every exponent is <= 0: no overflow at any tau, and an entry underflows only when it
# is below ~1e-38 of its row's or column's peak (where the exact value is negligible too).
# The column factor and the weight fold into the matmul's left operand, the row factor is
# applied at the end: V_i = (S-_i P_i - S+_i Q_i) / R_i with [Q | S-] = G- [y- | 1],
# [P | S+] = G+ [y+ | 1], G_ij = exp(-k (u_ij - (r_i + c_j) / 2)) w_j / sqrt(C_j).
# All temperatures share one distance matrix (and, when their rates are small integer
# multiples of one another, one exp per entry: see exp_family); per temperature there is
# one matmul per target set, [N, b] x [b, D + 1].
# XLA:CPU notes (measured here): elementwise fusions that contain a `slice` are not
# vectorised (~7x slower), so small-D coordinates travel as separate per-dimension
# vectors; reductions run fastest when their operands are full arrays (no broadcasts),
# so the shifted copies of u are formed before reducing.


class QuerySet(NamedTuple):
    """One group's queries in the layouts the engine uses (N rows)."""

    cols: tuple[Array, ...]  # D vectors [N] (D <= EXACT_DIFF_MAX_DIM), else ().
    x: Array | None  # [N, D + 2] = [x, |x|^2, 1] (larger D), else None.
    valid: Array | None  # [N] bool: real rows (None: all real).
    index: Array | None  # [N] global query index (self-mask only), else None.


class TargetSet(NamedTuple):
    """A set or block of targets (b rows; leading block axes allowed)."""

    cols: tuple[Array, ...]  # D vectors [b] (small D), else ().
    y: Array | None  # [b, D + 2] = [-2 y, 1, |y|^2] (larger D), else None.
    aug: Array  # [b, D + 1]: centred coordinates and a column of ones.
    w: Array  # [b] weights; 0 masks the target (also padding).
    index: Array | None  # [b] global negative index for the self-mask, else None.


def small_dim(d: int) -> bool:
    return d <= EXACT_DIFF_MAX_DIM


def make_queries(x_nd: Array, valid: Array | None, index: Array | None) -> QuerySet:
    """Queries [N, D] -> QuerySet."""
    if small_dim(x_nd.shape[-1]):
        cols = tuple(x_nd[:, k] for k in range(x_nd.shape[-1]))
        return QuerySet(cols, None, valid, index)
    # |x - y|^2 = [x, |x|^2, 1] . [-2 y, 1, |y|^2]: one matmul, no reduction in its epilogue
    # (XLA:CPU would otherwise fuse the norms into the matmul and recompute them per tile).
    sq_norm = jnp.sum(jnp.square(x_nd), -1, keepdims=True)
    return QuerySet((), jnp.concatenate([x_nd, sq_norm, jnp.ones_like(sq_norm)], -1), valid, index)


def make_targets(y: Array, w: Array, index: Array | None, center: Array) -> TargetSet:
    """Targets [..., b, D] with weights [..., b] -> TargetSet (same leading axes)."""
    aug = jnp.concatenate([y - center, jnp.ones(y.shape[:-1] + (1,), y.dtype)], axis=-1)
    if small_dim(y.shape[-1]):
        cols = tuple(y[..., k] for k in range(y.shape[-1]))
        return TargetSet(cols, None, aug, w, index)
    sq_norm = jnp.sum(jnp.square(y), -1, keepdims=True)
    return TargetSet(
        (), jnp.concatenate([-2.0 * y, jnp.ones_like(sq_norm), sq_norm], -1), aug, w, index
    )


def pair_sq(q: QuerySet, t: TargetSet) -> Array:
    """Squared distances [N, b]: explicit differences (small D) or the matmul expansion."""
    if q.x is None:
        sq = jnp.square(q.cols[0][:, None] - t.cols[0][None, :])
        for qc, tc in zip(q.cols[1:], t.cols[1:], strict=True):
            sq = sq + jnp.square(qc[:, None] - tc[None, :])
        return sq
    sq = jax.lax.dot_general(
        q.x, t.y, (((1,), (1,)), ((), ())), precision=jax.lax.Precision.HIGHEST
    )
    return jnp.maximum(sq, 0.0)


def pair_valid(q: QuerySet, t: TargetSet) -> Array:
    """Valid pairs [N, b]: positive weight, real query, not a self pair."""
    n = q.cols[0].shape[0] if q.x is None else q.x.shape[0]
    valid = jnp.broadcast_to((t.w > 0)[None, :], (n, t.w.shape[0]))
    if q.valid is not None:
        valid = valid & q.valid[:, None]
    if q.index is not None and t.index is not None:
        valid = valid & (q.index[:, None] != t.index[None, :])
    return valid


def temperature_rates(opts: DriftOptions) -> tuple[float, ...]:
    """Static per-temperature rates: l = -kappa * u / s (Laplace) or / s^2 (Gaussian)."""
    if opts.kernel == 'laplace':
        return tuple(1.0 / t for t in opts.temperatures)
    return tuple(1.0 / (2.0 * t * t) for t in opts.temperatures)


def kernel_u(sq: Array, kernel: str) -> Array:
    """The kernel's distance measure u: d (Laplace, with a finite-gradient sqrt) or d^2."""
    if kernel == 'laplace':
        return jnp.sqrt(jnp.maximum(sq, MIN_SQ))
    return sq


def pass1_block(q: QuerySet, t: TargetSet, scale_dist: bool, col_minima: bool = True):
    """First-pass statistics of a block of b targets.

    Returns (row minima of sq [N], column minima of sq [b], sum of w d), all over valid
    pairs only (minima are +inf where nothing is valid). Without col_minima, the block's
    smallest sq [] takes the place of the column minima (the one-exp block terms need
    only that).
    """
    sq = pair_sq(q, t)
    valid = pair_valid(q, t)
    sq_valid = jnp.where(valid, sq, jnp.inf)
    row_min = jnp.min(sq_valid, axis=1)
    if col_minima:
        col_min = jnp.min(sq_valid, axis=0)
    else:
        # The barrier keeps XLA from turning this into a second reduction over sq_valid.
        col_min = jnp.min(jax.lax.optimization_barrier(row_min))
    if scale_dist:
        d = jnp.where(valid, jnp.sqrt(jnp.maximum(sq, MIN_SQ)), 0.0)
        sum_dw = jnp.dot(jnp.sum(d, axis=0), t.w)
    else:
        sum_dw = jnp.zeros((), jnp.float32)
    return row_min, col_min, sum_dw


def valid_weight_sum(q: QuerySet, w_pos: Array, w_neg: Array) -> Array:
    """Sum of w_j over the valid pairs (i, j), without building them.

    Every real query pairs with every positive-weight target, except its self pair (the
    negative with its own global index, when self-masking).
    """
    n = q.cols[0].shape[0] if q.x is None else q.x.shape[0]
    n_real = n if q.valid is None else jnp.sum(q.valid, dtype=jnp.float32)
    w_pos = jnp.where(w_pos > 0, w_pos, 0.0)
    w_neg = jnp.where(w_neg > 0, w_neg, 0.0)
    total = n_real * (jnp.sum(w_pos) + jnp.sum(w_neg))
    if q.index is not None:
        own = (q.index >= 0) & (q.index < w_neg.shape[0])
        if q.valid is not None:
            own = own & q.valid
        own_w = w_neg[jnp.clip(q.index, 0, w_neg.shape[0] - 1)]
        total = total - jnp.sum(jnp.where(own, own_w, 0.0))
    return total


def finite_shift(u_min: Array) -> Array:
    """Log-sum-exp shift from a minimum of u: 0 where it is +inf (nothing valid, so every
    term there is 0 anyway); held constant for differentiation."""
    return jax.lax.stop_gradient(jnp.where(jnp.isfinite(u_min), u_min, 0.0))


def shift_from_sq_min(sq_min: Array, kernel: str) -> Array:
    """Log-sum-exp shift in u units from a minimum of sq (0 where nothing is valid)."""
    return finite_shift(kernel_u(sq_min, kernel))


def distance_scales(sum_dw: Array, sum_w: Array, d: int, opts: DriftOptions):
    """(s, coordinate scale, unit) from the pass-1 weighted sums; k_t = unit * kappa_t."""
    if opts.scale_dist:
        scale = sum_dw / jnp.maximum(sum_w, MIN_SCALE)
        scale = jax.lax.stop_gradient(jnp.maximum(scale, MIN_SCALE))
        coord_scale = scale / jnp.sqrt(jnp.float32(d))
    else:
        scale = coord_scale = jnp.ones((), jnp.float32)
    unit = 1.0 / scale if opts.kernel == 'laplace' else 1.0 / jnp.square(scale)
    return scale, coord_scale, jax.lax.stop_gradient(unit)


def power_plan(kappas: Sequence[float]) -> tuple[float, tuple[int, ...]] | None:
    """(base, n_t) with kappa_t = n_t * base for small integers n_t, else None.

    Then exp(-kappa_t x) = exp(-base x) ** n_t: one exp per entry serves every temperature
    (the paper's 0.02, 0.05, 0.2 give 10, 4, 1); the repeated products add ~n_t ulps.
    """
    if len(kappas) < 2:
        return None
    lo = min(kappas)
    for div in (1, 2, 3, 4):
        base = lo / div
        ints = [round(k / base) for k in kappas]
        if all(
            abs(k / base - i) <= 1e-6 * i and i <= MAX_POWER
            for k, i in zip(kappas, ints, strict=True)
        ):
            return base, tuple(ints)
    return None


def exp_family(delta: Array, unit: Array, kappas: Sequence[float]) -> list[Array]:
    """[exp(-unit * kappa_t * delta) for each temperature t], sharing exps when possible."""
    plan = power_plan(kappas)
    if plan is None:
        return [jnp.exp(delta * (-unit * k)) for k in kappas]
    base, ints = plan
    # The barrier keeps XLA's algebraic simplifier from rewriting the products of the exp
    # back into exps (exp(a) * exp(b) -> exp(a + b)).
    powers = {1: jax.lax.optimization_barrier(jnp.exp(delta * (-unit * base)))}

    def power(k):
        if k not in powers:
            half = power(k // 2)
            powers[k] = half * half if k % 2 == 0 else half * half * powers[1]
        return powers[k]

    return [power(k) for k in ints]


def block_u(q: QuerySet, t: TargetSet, kernel: str) -> Array:
    """The kernel's distance measure u [N, b] of a block, +inf on invalid pairs."""
    return jnp.where(pair_valid(q, t), kernel_u(pair_sq(q, t), kernel), jnp.inf)


def pass2_block(
    q: QuerySet,
    t: TargetSet,
    row_shift: Array,
    col_shift: Array,
    unit: Array,
    opts: DriftOptions,
    axis_name=None,
):
    """Second-pass terms of a block of b targets.

    Args:
      q, t: the queries (N) and the block's targets (b).
      row_shift, col_shift: row minima [N] and column minima [b] of u (any finite shifts
        give the same field; minima keep every exponent <= 0).
      unit: 1/s (Laplace) or 1/s^2 (Gaussian), so that k_t = unit * kappa_t.
      opts: the options; axis_name: the mesh axis over which queries are sharded.

    Returns:
      (row sums R [T, N] of this block, accumulators [T, N, D + 1] = G [y | 1]).
    """
    return block_terms(block_u(q, t, opts.kernel), t, row_shift, col_shift, unit, opts, axis_name)


def block_terms(
    u: Array,
    t: TargetSet,
    row_shift: Array,
    col_shift: Array,
    unit: Array,
    opts: DriftOptions,
    axis_name=None,
):
    """`pass2_block`'s terms from the block's u [N, b] (+inf on invalid pairs).

    Returns (row sums R [T, N], accumulators [T, N, D + 1]).
    """
    kappas = temperature_rates(opts)
    hp = jax.lax.Precision.HIGHEST
    if opts.normalize == 'none':
        row_sums = jnp.zeros((len(kappas), u.shape[0]), jnp.float32)
        accs = [jnp.dot(g * t.w, t.aug, precision=hp) for g in exp_family(u, unit, kappas)]
        return row_sums, jnp.stack(accs)
    # Shifted copies of u; the reductions below see no broadcasts (XLA:CPU hands such
    # reductions to its fast library kernels only when every operand is a full array).
    d_row = u - row_shift[:, None]
    if opts.normalize == 'targets':
        es = exp_family(d_row, unit, kappas)
        row_sums = jnp.stack([jnp.sum(e, axis=1) for e in es])
        accs = [jnp.dot(e * t.w, t.aug, precision=hp) for e in es]
        return row_sums, jnp.stack(accs)
    d_col = u - col_shift[None, :]
    # Half-rate exps e = exp(-k d_row / 2), f = exp(-k d_col / 2): R = sum e^2,
    # C = sum f^2 and G = e f, two exps per entry instead of three.
    # (The barrier stops XLA from rewriting e * f back into exp(a + b).)
    es, fs = jax.lax.optimization_barrier(
        (exp_family(d_row, 0.5 * unit, kappas), exp_family(d_col, 0.5 * unit, kappas))
    )
    row_sums = jnp.stack([jnp.sum(e * e, axis=1) for e in es])
    col_sums = jnp.stack([jnp.sum(f * f, axis=0) for f in fs])
    gs = [e * f for e, f in zip(es, fs, strict=True)]
    if axis_name is not None:
        col_sums = jax.lax.psum(col_sums, axis_name)  # [T, b]
    col_factor = safe_pow(col_sums, -0.5) * t.w  # [T, b]
    if u.size <= STACKED_DOT_MAX_ENTRIES:
        # Small blocks (many small groups): one [T N, b] x [b, D + 1] product instead of T.
        weighted = jnp.stack([g * c for g, c in zip(gs, col_factor, strict=True)])
        return row_sums, jnp.einsum('tnb,bk->tnk', weighted, t.aug, precision=hp)
    accs = [jnp.dot(g * c, t.aug, precision=hp) for g, c in zip(gs, col_factor, strict=True)]
    return row_sums, jnp.stack(accs)


# Blocks of up to this many [N, b] entries stack their temperatures into one field matmul
# (tiny per-temperature matmuls run far below the matmul rate; larger ones would only pay
# for the copy).
STACKED_DOT_MAX_ENTRIES = 2**16


def safe_pow(x: Array, p: float) -> Array:
    """x ** p for x > 0, else 0 (finite gradients)."""
    pos = x > 0
    safe = jnp.where(pos, x, 1.0)
    # rsqrt and reciprocals instead of a general power: ~5x cheaper on XLA:CPU.
    if p == -0.5:
        out = jax.lax.rsqrt(safe)
    elif p == -1.0:
        out = 1.0 / safe
    elif p == -2.0:
        out = 1.0 / jnp.square(safe)
    else:
        out = jnp.power(safe, p)
    return jnp.where(pos, out, 0.0)


def combine_pass1(
    row_min: Array,
    col_mins: Sequence[Array],
    sum_dw: Array,
    sum_w: Array,
    d: int,
    opts: DriftOptions,
    axis_name=None,
):
    """Scales, rates and log-sum-exp shifts from the pass-1 statistics (all devices).

    Returns (scale, coord_scale, unit, row_shift [N], col_shifts like col_mins).
    """
    if axis_name is not None:
        col_mins = [jax.lax.pmin(c, axis_name) for c in col_mins]
        sum_dw, sum_w = jax.lax.psum((sum_dw, sum_w), axis_name)
    scale, coord_scale, unit = distance_scales(sum_dw, sum_w, d, opts)
    row_shift = shift_from_sq_min(row_min, opts.kernel)
    col_shifts = [shift_from_sq_min(c, opts.kernel) for c in col_mins]
    return scale, coord_scale, unit, row_shift, col_shifts


def finish_field(
    row_sums: Array,
    acc_neg: Array,
    acc_pos: Array,
    scale: Array,
    coord_scale: Array,
    n_total: int,
    opts: DriftOptions,
    axis_name=None,
):
    """Field [N, D] in scaled coordinates and stats from the accumulated terms.

    row_sums [T, N], acc_neg/acc_pos [T, N, D + 1]; n_total counts the real queries over
    all devices (for the RMS of each temperature's field).
    """
    d = acc_neg.shape[-1] - 1
    if opts.normalize == 'both':
        row_factor = safe_pow(row_sums, -1.0)
    elif opts.normalize == 'targets':
        row_factor = safe_pow(row_sums, -2.0)
    else:
        row_factor = jnp.ones_like(row_sums)
    q, s_neg = acc_neg[..., :d], acc_neg[..., d:]
    p, s_pos = acc_pos[..., :d], acc_pos[..., d:]
    # The two terms' coefficients sum to zero, so V is translation invariant; the
    # explicit "- x" terms of the mean-shift form cancel and are omitted.
    v_t = row_factor[..., None] * (s_neg * p - s_pos * q) / coord_scale  # [T, N, D]
    # When attraction and repulsion cancel (y_pos and y_neg the same set), what is left is
    # float32 rounding of the two terms; RMS normalisation would blow it up to unit size.
    # Call a temperature's field zero when it is below the rounding level of its terms.
    terms = row_factor[..., None] * (jnp.abs(s_neg * p) + jnp.abs(s_pos * q))
    v_t = jnp.where(cancelled(v_t * coord_scale, terms, axis_name)[:, None, None], 0.0, v_t)
    rms, v_unit = rms_normalize(v_t, n_total * d, axis_name)
    stats = {'scale': scale}
    for tau, r in zip(opts.temperatures, rms, strict=True):
        stats[f'rms_tau_{tau:g}'] = r
    # The sum over temperatures as a product with ones: XLA:CPU reduces a small leading
    # axis ~20x slower than it runs this dot (measured on [3, 64, 32, 16]).
    fields = v_unit if opts.normalize_drift else v_t
    total = jnp.tensordot(
        jnp.ones((fields.shape[0],), fields.dtype),
        fields,
        axes=1,
        precision=jax.lax.Precision.HIGHEST,
    )
    return total, coord_scale, stats


CANCEL_RTOL = 64 * float(jnp.finfo(jnp.float32).eps)  # ~7.6e-6


def cancelled(v_t: Array, terms: Array, axis_name=None) -> Array:
    """[T] bools: max |V_t| is within float32 rounding (relative) of max of its terms."""
    v_peak = jax.lax.stop_gradient(jnp.max(jnp.abs(v_t), axis=(1, 2)))
    t_peak = jax.lax.stop_gradient(jnp.max(terms, axis=(1, 2)))
    if axis_name is not None:
        v_peak = jax.lax.pmax(v_peak, axis_name)
        t_peak = jax.lax.pmax(t_peak, axis_name)
    return v_peak <= CANCEL_RTOL * t_peak


def rms_normalize(v_t: Array, count: int, axis_name=None) -> tuple[Array, Array]:
    """RMS of each temperature's field [T] over `count` entries, and V_t / RMS [T, N, D].

    Measured relative to the largest |V| (held constant for differentiation; V / RMS does
    not depend on it) so that tiny fields (tau = 0.01 on far points, V ~ 1e-24) neither
    underflow when squared nor give infinite gradients; an all-zero field stays 0.
    """
    peak = jax.lax.stop_gradient(jnp.max(jnp.abs(v_t), axis=(1, 2)))
    if axis_name is not None:
        peak = jax.lax.pmax(peak, axis_name)
    nonzero = peak > 0
    unit = v_t / jnp.where(nonzero, peak, 1.0)[:, None, None]
    sum_sq = jnp.sum(jnp.square(unit), axis=(1, 2))
    if axis_name is not None:
        sum_sq = jax.lax.psum(sum_sq, axis_name)
    root = jnp.sqrt(jnp.where(nonzero, sum_sq / count, 1.0))
    rms = jnp.where(nonzero, peak * root, 0.0)
    return rms, unit / root[:, None, None]


def target_center(y_pos: Array, y_neg: Array) -> Array:
    """Mean of all targets [D]; V is translation invariant, centring only helps rounding."""
    total = jnp.sum(y_neg, axis=0) + jnp.sum(y_pos, axis=0)
    return jax.lax.stop_gradient(total / max(y_neg.shape[0] + y_pos.shape[0], 1))
