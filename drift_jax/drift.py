"""The drifting field V(x) and the drifting loss, as pure JAX functions.

Implements the batch form of the mean-shift drifting field (paper Algorithm 2) in float32
and in log space, with the paper's choices as defaults. See DESIGN.md section 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array

KERNELS = ('laplace', 'gaussian')
NORMALIZATIONS = ('both', 'targets', 'none')
PAPER_TEMPERATURES = (0.02, 0.05, 0.2)
_MIN_SCALE = 1e-8
# Floor of squared distances under the Laplace kernel's sqrt: keeps its gradient finite at
# zero distance; sqrt(1e-30) = 1e-15 is far below any distance that matters.
_MIN_SQ = 1e-30
# Up to this dimension distances use explicit differences (exact); above, the matmul form.
_EXACT_DIFF_MAX_DIM = 8
# Largest integer ratio between temperature rates computed by repeated products of one exp.
_MAX_POWER = 32


@dataclasses.dataclass(frozen=True)
class DriftOptions:
    """Options of the drifting field (hashable, so it can be a static jit argument).

    Attributes:
      temperatures: kernel temperatures tau; one field per temperature, summed. Paper:
        (0.02, 0.05, 0.2) with scale normalisation; the simple 2-D form uses (0.05,).
      kernel: 'laplace' k = exp(-d / tau) (paper) or 'gaussian' k = exp(-d^2 / (2 tau^2)).
      normalize: 'both' (paper: geometric mean of the softmax over targets and the softmax
        over queries), 'targets' (softmax over targets only) or 'none' (raw kernel).
      self_mask: mask x_i against y_neg_i, so a generated sample does not repel itself.
        None means True when the negatives are the generated batch (y_neg=None), else
        False. With explicit negatives, True masks pairs (i, i) for i < N (the first N
        negatives must then be the queries, as in classifier-free guidance batches).
      scale_dist: divide distances by their weighted mean over the batch and express the
        field in coordinates scaled so that the mean distance is sqrt(D) (paper: on).
      normalize_drift: divide each temperature's field by its RMS before summing (paper:
        on). Off with a single temperature gives the plain mean-shift field.
      block_size: queries per block for the streaming implementation; 0 or None means
        dense (the full N x M matrices are built).
    """

    temperatures: tuple[float, ...] = PAPER_TEMPERATURES
    kernel: str = 'laplace'
    normalize: str = 'both'
    self_mask: bool | None = None
    scale_dist: bool = True
    normalize_drift: bool = True
    block_size: int | None = None

    def __post_init__(self):
        temps = self.temperatures
        if isinstance(temps, (int, float)):
            temps = (temps,)
        temps = tuple(float(t) for t in temps)
        object.__setattr__(self, 'temperatures', temps)
        validate_options(self)


def validate_options(opts: DriftOptions) -> None:
    """Raises ValueError naming the bad value and the valid choices."""
    if not opts.temperatures:
        raise ValueError('drift.temperatures is empty; give at least one, e.g. (0.05,).')
    for t in opts.temperatures:
        if not t > 0 or t != t or t == float('inf'):
            raise ValueError(
                f'drift.temperatures must all be positive and finite, got {opts.temperatures}.')
    if opts.kernel not in KERNELS:
        raise ValueError(f'drift.kernel={opts.kernel!r} is unknown; choose one of {KERNELS}.')
    if opts.normalize not in NORMALIZATIONS:
        raise ValueError(
            f'drift.normalize={opts.normalize!r} is unknown; choose one of {NORMALIZATIONS}.')
    if opts.block_size is not None and opts.block_size < 0:
        raise ValueError(
            f'drift.block_size={opts.block_size} must be a positive number of queries per '
            'block, or 0/None for the dense form.')


def options_from_config(drift_config: Any) -> DriftOptions:
    """Builds DriftOptions from a `config.drift` ConfigDict (or a dict)."""
    cfg = dict(drift_config)
    known = {f.name for f in dataclasses.fields(DriftOptions)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f'Unknown drift option(s) {unknown}; valid options: {sorted(known)}.')
    if 'temperatures' in cfg and not isinstance(cfg['temperatures'], (int, float)):
        cfg['temperatures'] = tuple(cfg['temperatures'])
    return DriftOptions(**cfg)


def _squared_distances(x_nd: Array, y_md: Array) -> Array:
    """Squared Euclidean distances ||x_i - y_j||^2, shape [N, M], float32, >= 0.

    D <= 8 uses explicit differences (exact for near-duplicates); larger D uses the matmul
    expansion |x|^2 + |y|^2 - 2 x.y clamped at 0.
    """
    x_nd = x_nd.astype(jnp.float32)
    y_md = y_md.astype(jnp.float32)
    if x_nd.shape[-1] <= _EXACT_DIFF_MAX_DIM:
        # Unrolled over D: elementwise [N, M] work vectorises far better on CPU than a
        # reduction over a tiny trailing axis of an [N, M, D] broadcast (~17x here).
        sq = jnp.zeros((x_nd.shape[0], y_md.shape[0]), jnp.float32)
        for k in range(x_nd.shape[-1]):
            sq = sq + jnp.square(x_nd[:, k, None] - y_md[None, :, k])
        return sq
    sq = (jnp.sum(jnp.square(x_nd), -1)[:, None] + jnp.sum(jnp.square(y_md), -1)[None, :]
          - 2.0 * jnp.dot(x_nd, y_md.T, precision=jax.lax.Precision.HIGHEST))
    return jnp.maximum(sq, 0.0)


def pairwise_distances(x_nd: Array, y_md: Array) -> Array:
    """Euclidean distances d_ij = ||x_i - y_j||, shape [N, M], float32.

    Small D uses explicit differences (exact for near-duplicates); large D uses the
    matmul expansion |x|^2 + |y|^2 - 2 x.y clamped at 0. The square root has a safe
    gradient at zero distance.
    """
    sq = _squared_distances(x_nd, y_md)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


# ----------------------------------------------------------------------------
# The field engine. The dense form below runs it with one block per target set (the full
# N x M matrices); drift_blocked scans it over blocks of targets; drift_sharded adds the
# cross-device reductions (`axis_name`). Per group, with u_ij = d_ij (Laplace) or d_ij^2
# (Gaussian), the logits are l_ij = -k u_ij with k = 1 / (s tau) or 1 / (2 s^2 tau^2).
# Shifting by the exact row and column minima of u,
#     e_ij = exp(-k/2 (u_ij - min_j' u_ij')),   f_ij = exp(-k/2 (u_ij - min_i' u_i'j)),
# gives exp(0.5 (log_softmax_j l + log_softmax_i l))_ij = e_ij f_ij / sqrt(R_i C_j) with
# R_i = sum_j e_ij^2 and C_j = sum_i f_ij^2: two exps per entry and temperature, every
# exponent <= 0 (no overflow at any tau; an entry underflows only when it is below ~1e-38
# of its row's or column's peak, where the exact value is negligible too). The column
# factor and the weight fold into the matmul operand, the row factor is applied at the
# end: V_i = (S-_i P_i - S+_i Q_i) / R_i with [Q | S-] = G- [y- | 1], [P | S+] = G+ [y+ | 1]
# and G_ij = e_ij f_ij w_j / sqrt(C_j). All temperatures share one distance matrix and
# one matmul ([T N, b] x [b, D + 1]).


def _kappas(opts: DriftOptions) -> tuple[float, ...]:
    """Static per-temperature rates: l = -kappa * u / s (Laplace) or / s^2 (Gaussian)."""
    if opts.kernel == 'laplace':
        return tuple(1.0 / t for t in opts.temperatures)
    return tuple(1.0 / (2.0 * t * t) for t in opts.temperatures)


def _kernel_u(sq: Array, kernel: str) -> Array:
    """The kernel's distance measure u: d (Laplace, with a finite-gradient sqrt) or d^2."""
    if kernel == 'laplace':
        return jnp.sqrt(jnp.maximum(sq, _MIN_SQ))
    return sq


def _power_plan(kappas: Sequence[float]) -> tuple[float, tuple[int, ...]] | None:
    """(base, n_t) with kappa_t = n_t * base for small integers n_t, else None.

    Then exp(-kappa_t x) = exp(-base x) ** n_t: one exp per entry for all temperatures
    (the paper's 0.02, 0.05, 0.2 give 10, 4, 1). Repeated products add ~n_t ulps.
    """
    if len(kappas) < 2:
        return None
    lo = min(kappas)
    for div in (1, 2, 3, 4):
        base = lo / div
        ratios = [k / base for k in kappas]
        ints = [round(r) for r in ratios]
        if all(abs(r - i) <= 1e-6 * i and i <= _MAX_POWER for r, i in zip(ratios, ints)):
            return base, tuple(ints)
    return None


def _neg_exps(delta: Array, rate: Array, kappas: Sequence[float]) -> list[Array]:
    """[exp(-rate * kappa_t * delta) for each t], sharing one exp when the rates allow."""
    plan = _power_plan(kappas)
    if plan is None:
        return [jnp.exp(delta * (-rate * k)) for k in kappas]
    base, ints = plan
    powers = {1: jnp.exp(delta * (-rate * base))}

    def power(n):
        if n not in powers:
            half = power(n // 2)
            sq = half * half
            powers[n] = sq if n % 2 == 0 else sq * powers[1]
        return powers[n]

    return [power(n) for n in ints]


def _block_valid(n: int, w_b: Array, q_valid: Array | None, q_index: Array | None,
                 t_index: Array | None) -> Array:
    """Valid pairs of a block, bool [N, b]: positive weight, real query, not a self pair.

    q_index/t_index (global query and negative indices) are given only with self-masking.
    """
    valid = jnp.broadcast_to((w_b > 0)[None, :], (n, w_b.shape[0]))
    if q_valid is not None:
        valid = valid & q_valid[:, None]
    if q_index is not None:
        valid = valid & (q_index[:, None] != t_index[None, :])
    return valid


def _pass1_block(sq: Array, valid: Array, w_b: Array, scale_dist: bool):
    """First-pass statistics of a block: (row min [N], col min [b]) of sq, sum d w, sum w."""
    sq_valid = jnp.where(valid, sq, jnp.inf)
    row_min = jnp.min(sq_valid, axis=1)
    col_min = jnp.min(sq_valid, axis=0)
    if scale_dist:
        d = jnp.where(valid, jnp.sqrt(jnp.maximum(sq, _MIN_SQ)), 0.0)
        sum_dw = jnp.dot(jnp.sum(d, axis=0), w_b)
        sum_w = jnp.dot(jnp.sum(valid, axis=0, dtype=jnp.float32), w_b)
    else:
        sum_dw = sum_w = jnp.zeros((), jnp.float32)
    return row_min, col_min, sum_dw, sum_w


def _shift(sq_min: Array, kernel: str) -> Array:
    """Log-sum-exp shift in u units from a minimum of sq (0 where nothing is valid)."""
    u = _kernel_u(sq_min, kernel)
    return jax.lax.stop_gradient(jnp.where(jnp.isfinite(u), u, 0.0))


def _scales(sum_dw: Array, sum_w: Array, d: int, opts: DriftOptions):
    """(s, coordinate scale, logit rate 1/s or 1/s^2) from the pass-1 weighted sums."""
    if opts.scale_dist:
        scale = sum_dw / jnp.maximum(sum_w, _MIN_SCALE)
        scale = jax.lax.stop_gradient(jnp.maximum(scale, _MIN_SCALE))
        coord_scale = scale / jnp.sqrt(jnp.float32(d))
    else:
        scale = coord_scale = jnp.ones((), jnp.float32)
    rate = 1.0 / scale if opts.kernel == 'laplace' else 1.0 / jnp.square(scale)
    return scale, coord_scale, rate


def _pass2_block(sq: Array, valid: Array, y_b: Array, w_b: Array, row_shift: Array,
                 col_shift: Array, rate: Array, opts: DriftOptions, axis_name=None):
    """Second-pass terms of a block of b targets.

    Args:
      sq, valid: squared distances and valid pairs, [N, b].
      y_b, w_b: the block's (centred) targets [b, D] and weights [b].
      row_shift, col_shift: exact row minima [N] and column minima [b] of u.
      rate: 1/s (Laplace) or 1/s^2 (Gaussian); axis_name: devices holding other queries.

    Returns:
      (row sums R [T, N] of this block, accumulators [T, N, D + 1] = G [y | 1]).
    """
    n, b = sq.shape
    kappas = _kappas(opts)
    u = jnp.where(valid, _kernel_u(sq, opts.kernel), jnp.inf)
    if opts.normalize == 'none':
        gs = [g * w_b for g in _neg_exps(u, rate, kappas)]
        row_sums = jnp.zeros((len(kappas), n), jnp.float32)
    elif opts.normalize == 'targets':
        es = _neg_exps(u - row_shift[:, None], rate, kappas)
        row_sums = jnp.stack([jnp.sum(e, axis=1) for e in es])
        gs = [e * w_b for e in es]
    else:
        es = _neg_exps(u - row_shift[:, None], 0.5 * rate, kappas)
        fs = _neg_exps(u - col_shift[None, :], 0.5 * rate, kappas)
        row_sums = jnp.stack([jnp.sum(e * e, axis=1) for e in es])
        col_sums = jnp.stack([jnp.sum(f * f, axis=0) for f in fs])       # [T, b]
        if axis_name is not None:
            col_sums = jax.lax.psum(col_sums, axis_name)
        col_factor = _safe_pow(col_sums, -0.5) * w_b                      # [T, b]
        gs = [e * f * c for e, f, c in zip(es, fs, col_factor)]
    y_aug = jnp.concatenate([y_b, jnp.ones((b, 1), jnp.float32)], axis=1)
    g = jnp.stack(gs).reshape(len(kappas) * n, b)
    acc = jnp.dot(g, y_aug, precision=jax.lax.Precision.HIGHEST)
    return row_sums, acc.reshape(len(kappas), n, -1)


def _safe_pow(x: Array, p: float) -> Array:
    """x ** p for x > 0, else 0 (finite gradients)."""
    pos = x > 0
    return jnp.where(pos, jnp.power(jnp.where(pos, x, 1.0), p), 0.0)


def _finish(row_sums: Array, acc_neg: Array, acc_pos: Array, scale: Array,
            coord_scale: Array, n_total: int, opts: DriftOptions, axis_name=None):
    """Field [N, D] in scaled coordinates and stats from the accumulated terms.

    row_sums [T, N], acc_neg/acc_pos [T, N, D + 1]; n_total counts the real queries over
    all devices (for the RMS of each temperature's field).
    """
    d = acc_neg.shape[-1] - 1
    if opts.normalize == 'both':
        row_factor = _safe_pow(row_sums, -1.0)
    elif opts.normalize == 'targets':
        row_factor = _safe_pow(row_sums, -2.0)
    else:
        row_factor = jnp.ones_like(row_sums)
    q, s_neg = acc_neg[..., :d], acc_neg[..., d:]
    p, s_pos = acc_pos[..., :d], acc_pos[..., d:]
    # The two terms' coefficients sum to zero, so V is translation invariant; the
    # explicit "- x" terms of the mean-shift form cancel and are omitted.
    v_t = row_factor[..., None] * (s_neg * p - s_pos * q) / coord_scale     # [T, N, D]
    rms, v_unit = _rms_normalize(v_t, n_total * d, axis_name)
    stats = {'scale': scale}
    for tau, r in zip(opts.temperatures, rms):
        stats[f'rms_tau_{tau:g}'] = r
    return jnp.sum(v_unit if opts.normalize_drift else v_t, axis=0), coord_scale, stats


def _rms_normalize(v_t: Array, count: int, axis_name=None) -> tuple[Array, Array]:
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


def _target_center(y_pos: Array, y_neg: Array) -> Array:
    """Mean of all targets [D]; V is translation invariant, centring only helps rounding."""
    total = jnp.sum(y_neg, axis=0) + jnp.sum(y_pos, axis=0)
    return jax.lax.stop_gradient(total / max(y_neg.shape[0] + y_pos.shape[0], 1))


def _single_group_field(x_nd, y_pos, y_neg, w_pos, w_neg, opts: DriftOptions, mask_self,
                        *, q_valid=None, q_offset=0, n_total=None, axis_name=None):
    """Dense field for one group in scaled coordinates: (v [N, D], coord_scale, stats).

    x_nd [N, D]; y_pos [M+, D]; y_neg [M-, D]; w_pos [M+]; w_neg [M-]. Builds the full
    [N, M-] and [N, M+] matrices. For the sharded form, x_nd holds this device's queries:
    q_valid [N] marks real (not padding) rows, q_offset is the first row's global index,
    n_total the global number of real queries, and axis_name the query mesh axis.
    """
    n, d = x_nd.shape
    n_total = n if n_total is None else n_total
    center = _target_center(y_pos, y_neg)
    q_index = q_offset + jnp.arange(n) if mask_self else None
    sets = ((y_neg, w_neg, jnp.arange(y_neg.shape[0]) if mask_self else None),
            (y_pos, w_pos, None))
    sqs, valids, firsts = [], [], []
    for y, w, t_index in sets:
        sq = _squared_distances(x_nd, y)
        valid = _block_valid(n, w, q_valid, q_index if t_index is not None else None,
                             t_index)
        sqs.append(sq)
        valids.append(valid)
        firsts.append(_pass1_block(sq, valid, w, opts.scale_dist))
    row_min = jnp.minimum(firsts[0][0], firsts[1][0])
    col_mins = [f[1] for f in firsts]
    sum_dw = firsts[0][2] + firsts[1][2]
    sum_w = firsts[0][3] + firsts[1][3]
    if axis_name is not None:
        col_mins = [jax.lax.pmin(c, axis_name) for c in col_mins]
        sum_dw, sum_w = jax.lax.psum((sum_dw, sum_w), axis_name)
    scale, coord_scale, rate = _scales(sum_dw, sum_w, d, opts)
    row_shift = _shift(row_min, opts.kernel)
    outs = []
    for (y, w, _), sq, valid, col_min in zip(sets, sqs, valids, col_mins):
        outs.append(_pass2_block(sq, valid, y - center, w, row_shift,
                                 _shift(col_min, opts.kernel), rate, opts, axis_name))
    return _finish(outs[0][0] + outs[1][0], outs[0][1], outs[1][1], scale, coord_scale,
                   n_total, opts, axis_name)


def _prepare(x, y_pos, y_neg, weights_pos, weights_neg, opts):
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
            raise ValueError(f'{name} has shape {y.shape[int(not grouped):]}; expected '
                             f'groups={g} and dim={d} to match x {x.shape[int(not grouped):]}.')
    if mask_self and y_neg.shape[1] < n:
        raise ValueError(f'self_mask needs the first N={n} negatives to be the queries, but '
                         f'y_neg has only {y_neg.shape[1]} rows.')

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
    return (x.astype(f32), y_pos.astype(f32), y_neg.astype(f32), w_pos, w_neg, mask_self,
            grouped)


def _field_scaled(x, y_pos, y_neg, weights_pos, weights_neg, opts):
    """Field in scaled coordinates for all groups: (v [G,N,D], coord_scale [G], stats)."""
    x, y_pos, y_neg, w_pos, w_neg, mask_self, grouped = _prepare(
        x, y_pos, y_neg, weights_pos, weights_neg, opts)
    if opts.block_size:
        from drift_jax import drift_blocked  # Streaming form (no N x M matrices).
        fn = drift_blocked.single_group_field
    else:
        fn = _single_group_field

    def one(xg, pg, ng, wp, wn):
        return fn(xg, pg, ng, wp, wn, opts, mask_self)

    v, coord_scale, stats = jax.vmap(one)(x, y_pos, y_neg, w_pos, w_neg)
    return x, v, coord_scale, stats, grouped


def compute_drift_field(
    x: Array,
    y_pos: Array,
    y_neg: Array | None = None,
    *,
    weights_pos: Array | None = None,
    weights_neg: Array | None = None,
    temperatures: float | Sequence[float] = PAPER_TEMPERATURES,
    kernel: str = 'laplace',
    normalize: str = 'both',
    self_mask: bool | None = None,
    scale_dist: bool = True,
    normalize_drift: bool = True,
    block_size: int | None = None,
    return_stats: bool = False,
):
    """Drifting field V_{p,q}(x): where each query should move (toward y_pos, away from y_neg).

    With targets Y = [y_neg; y_pos] and logits l_ij = -d(x_i, Y_j) / tau (d divided by its
    batch mean when `scale_dist`), a_ij = exp(0.5 (log_softmax_j l + log_softmax_i l)) * w_j
    and, with A- = a[:, :M-], A+ = a[:, M-:],

        V_i = (sum_k A-_ik) sum_j A+_ij y+_j - (sum_j A+_ij) sum_k A-_ik y-_k,

    summed over temperatures (each divided by its RMS when `normalize_drift`).

    Args:
      x: queries (the generated samples), [N, D] or grouped [G, N, D]; any float dtype.
      y_pos: positives (data), [M+, D] or [G, M+, D].
      y_neg: negatives, [M-, D] or [G, M-, D]; None uses x itself, self-masked.
      weights_pos: per-positive weights, [M+] or [G, M+] (default ones).
      weights_neg: per-negative weights, [M-] or [G, M-] (default ones); classifier-free
        guidance gives unconditional reals the weight (alpha - 1)(N_gen - 1) / N_uncond.
      temperatures, kernel, normalize, self_mask, scale_dist, normalize_drift, block_size:
        see `DriftOptions` (defaults are the paper's choices).
      return_stats: also return a dict of diagnostics (distance scale, RMS per temperature).

    Returns:
      V, float32 with the shape of x, in the coordinates of x; and stats if requested.
    """
    opts = DriftOptions(temperatures=temperatures, kernel=kernel, normalize=normalize,
                        self_mask=self_mask, scale_dist=scale_dist,
                        normalize_drift=normalize_drift, block_size=block_size)
    return compute_drift_field_with(x, y_pos, y_neg, opts, weights_pos=weights_pos,
                                    weights_neg=weights_neg, return_stats=return_stats)


def compute_drift_field_with(x, y_pos, y_neg, opts: DriftOptions, *, weights_pos=None,
                             weights_neg=None, return_stats: bool = False):
    """`compute_drift_field` with a `DriftOptions` object (shapes as there)."""
    _, v, coord_scale, stats, grouped = _field_scaled(x, y_pos, y_neg, weights_pos,
                                                      weights_neg, opts)
    v = v * coord_scale[:, None, None]
    if not grouped:
        v = v[0]
    if return_stats:
        return v, jax.tree.map(jnp.mean, stats)
    return v


def drift_loss(
    x: Array,
    y_pos: Array,
    y_neg: Array | None = None,
    opts: DriftOptions | None = None,
    *,
    weights_pos: Array | None = None,
    weights_neg: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Drifting loss L = mean_i || x_i - stop_gradient(x_i + V_i) ||^2 (sum over D).

    The field is computed on stop_gradient inputs. With `scale_dist` the loss is measured
    in the scaled coordinates (x / s, s = mean distance / sqrt(D)), as in the paper, so
    feature sets of different magnitudes contribute comparably. Without it,
    dL/dtheta = -(2/N) sum_i V_i . dx_i/dtheta exactly.

    Args:
      x: generated samples [N, D] or [G, N, D], differentiable.
      y_pos, y_neg, weights_pos, weights_neg: as in `compute_drift_field`.
      opts: DriftOptions (default: the paper's choices).

    Returns:
      (scalar float32 loss averaged over groups and samples, stats dict).
    """
    opts = opts or DriftOptions()
    sg = jax.lax.stop_gradient
    _, v, coord_scale, stats, grouped = _field_scaled(
        sg(x), sg(y_pos), None if y_neg is None else sg(y_neg), weights_pos, weights_neg,
        opts)
    xg = jnp.asarray(x).astype(jnp.float32)
    if not grouped:
        xg = xg[None]
    x_scaled = xg / coord_scale[:, None, None]
    target = sg(x_scaled + v)
    loss = jnp.mean(jnp.sum(jnp.square(x_scaled - target), axis=-1))
    stats = jax.tree.map(jnp.mean, stats)
    stats['drift_norm'] = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(v), axis=-1)))
    return loss, stats
