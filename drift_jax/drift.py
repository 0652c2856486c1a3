"""The drifting field V(x) and the drifting loss, as pure JAX functions.

Implements the batch form of the mean-shift drifting field (paper Algorithm 2) in float32
and in log space, with the paper's choices as defaults. See DESIGN.md section 1.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from drift_jax import drift_engine as engine

Array = jax.Array

KERNELS = ('laplace', 'gaussian')
NORMALIZATIONS = ('both', 'targets', 'none')
PAPER_TEMPERATURES = (0.02, 0.05, 0.2)


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
      block_size: targets per block for the blocked (streaming) form, which never builds
        the N x M matrices; 0 or None chooses automatically (`select_block_size`: dense
        while its matrices are small, blocked beyond).
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
    bs = opts.block_size
    if bs is not None and (isinstance(bs, bool) or not isinstance(bs, numbers.Integral)):
        raise ValueError(
            f'drift.block_size={bs!r} must be an integer number of targets per block, or '
            '0/None for the automatic choice.')
    if bs is not None and bs < 0:
        raise ValueError(
            f'drift.block_size={bs} must be a positive number of targets per block, or '
            '0/None for the automatic choice.')


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
    if x_nd.shape[-1] <= engine._EXACT_DIFF_MAX_DIM:
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


def select_block_size(groups: int, n: int, m: int, d: int, num_temps: int,
                      block_size: int | None = None, backend: str | None = None) -> int | None:
    """Targets per block for the blocked form, or None for the dense form.

    An explicit `block_size` wins. Otherwise the blocked form is chosen when the dense
    form's estimated memory (`dense_memory_bytes`) exceeds DENSE_MEMORY_LIMIT_BYTES, and on
    CPU also when it is faster (N * M >= BLOCKED_MIN_ENTRIES and D <= BLOCKED_MAX_DIM).
    """
    if block_size:
        return int(block_size)
    from drift_jax import drift_blocked  # Streaming form (no N x M matrices).

    too_big = dense_memory_bytes(groups, n, m, num_temps) > DENSE_MEMORY_LIMIT_BYTES
    backend = backend or jax.default_backend()
    faster = backend == 'cpu' and n * m >= BLOCKED_MIN_ENTRIES and d <= BLOCKED_MAX_DIM
    if too_big or faster:
        return drift_blocked.auto_block_size(groups * n, num_temps)
    return None


def _field_scaled(x, y_pos, y_neg, weights_pos, weights_neg, opts, form: str = 'auto',
                  chunk_groups: bool = True, one_exp: bool = True):
    """Field in scaled coordinates for all groups: (v [G,N,D], coord_scale [G], stats).

    `form` forces 'dense' or 'blocked' (benchmarks and tests); 'auto' uses
    `select_block_size`. `chunk_groups=False` vectorises every group at once instead of
    running them in chunks of `group_chunk`; `one_exp=False` keeps the blocked form of one
    group on two exponentials per entry (benchmarks).
    """
    # No negatives given: they are the queries themselves, with unit weights.
    neg_is_queries = y_neg is None and weights_neg is None
    x, y_pos, y_neg, w_pos, w_neg, mask_self, grouped = _prepare(
        x, y_pos, y_neg, weights_pos, weights_neg, opts)
    g, n, d = x.shape
    m, num_t = y_pos.shape[1] + y_neg.shape[1], len(opts.temperatures)
    if form == 'dense':
        block = None
    elif form == 'blocked':
        from drift_jax import drift_blocked
        block = opts.block_size or drift_blocked.auto_block_size(g * n, num_t)
    else:
        block = select_block_size(g, n, m, d, num_t, opts.block_size)
    if block:
        from drift_jax import drift_blocked

        def one(xg, pg, ng, wp, wn, one_exp=False):
            return drift_blocked.single_group_field(
                xg, pg, ng, wp, wn, opts, mask_self, block_size=block, one_exp=one_exp,
                neg_is_queries=neg_is_queries)
    else:
        def one(xg, pg, ng, wp, wn):
            return engine._single_group_field(xg, pg, ng, wp, wn, opts, mask_self)

    args = (x, y_pos, y_neg, w_pos, w_neg)
    chunk = group_chunk(g, n, m) if chunk_groups else g
    if block and g == 1:
        # One group is not vmapped, so the blocked form may choose per block (lax.cond)
        # between one and two exponentials per entry.
        single = [a[0] for a in args]
        out = _one_exp_forward(one, single) if one_exp else one(*single)
        v, coord_scale, stats = jax.tree.map(lambda a: a[None], out)
    elif chunk < g:
        v, coord_scale, stats = jax.lax.map(lambda a: one(*a), args, batch_size=chunk)
    else:
        v, coord_scale, stats = jax.vmap(one)(*args)
    return x, v, coord_scale, stats, grouped


def _one_exp_forward(one, args):
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
    field.defjvp(lambda primals, tangents: jax.jvp(lambda *a: one(*a, one_exp=False),
                                                   primals, tangents))
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
        Pass several independent problems grouped rather than vmapping this function: under
        a vmap the blocked form's per-block `lax.cond`s become selects that compute both
        branches. The field is differentiable in x, y_pos, y_neg and the weights; the
        blocked form's derivatives (JVPs, gradients) run its two-exp terms.
      y_pos: positives (data), [M+, D] or [G, M+, D].
      y_neg: negatives, [M-, D] or [G, M-, D]; None uses x itself, self-masked (prefer
        None to passing x: the blocked form then halves its first pass over them by the
        symmetry of their distances).
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
    return _loss_from_field(x, v, coord_scale, stats, grouped)


def _loss_from_field(x: Array, v: Array, coord_scale: Array, stats: dict, grouped: bool):
    """Drifting loss from the scaled field v [G, N, D] and coord_scale [G] (see drift_loss)."""
    sg = jax.lax.stop_gradient
    xg = jnp.asarray(x).astype(jnp.float32)
    if not grouped:
        xg = xg[None]
    x_scaled = xg / coord_scale[:, None, None]
    target = sg(x_scaled + v)
    loss = jnp.mean(jnp.sum(jnp.square(x_scaled - target), axis=-1))
    stats = jax.tree.map(jnp.mean, stats)
    stats['drift_norm'] = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(v), axis=-1)))
    return loss, stats
