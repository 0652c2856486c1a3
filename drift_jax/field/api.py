"""The public field functions: `compute_drift_field`, `drift_loss`, `pairwise_distances`.

The batch form of the mean-shift drifting field (paper Algorithm 2), computed in float32 and
in log space with the paper's choices as defaults. The forms (dense, blocked) are chosen by
`driver.py`; the sharded form is in `sharded.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from drift_jax.field import driver, engine
from drift_jax.field.options import PAPER_TEMPERATURES, DriftOptions

Array = jax.Array


def _squared_distances(x_nd: Array, y_md: Array) -> Array:
    """Squared Euclidean distances ||x_i - y_j||^2, shape [N, M], float32, >= 0.

    D <= 8 uses explicit differences (exact for near-duplicates); larger D uses the matmul
    expansion |x|^2 + |y|^2 - 2 x.y clamped at 0.
    """
    x_nd = x_nd.astype(jnp.float32)
    y_md = y_md.astype(jnp.float32)
    if x_nd.shape[-1] <= engine.EXACT_DIFF_MAX_DIM:
        # Unrolled over D: elementwise [N, M] work vectorises far better on CPU than a
        # reduction over a tiny trailing axis of an [N, M, D] broadcast (~17x here).
        sq = jnp.zeros((x_nd.shape[0], y_md.shape[0]), jnp.float32)
        for k in range(x_nd.shape[-1]):
            sq = sq + jnp.square(x_nd[:, k, None] - y_md[None, :, k])
        return sq
    sq = (
        jnp.sum(jnp.square(x_nd), -1)[:, None]
        + jnp.sum(jnp.square(y_md), -1)[None, :]
        - 2.0 * jnp.dot(x_nd, y_md.T, precision=jax.lax.Precision.HIGHEST)
    )
    return jnp.maximum(sq, 0.0)


def pairwise_distances(x_nd: Array, y_md: Array) -> Array:
    """Euclidean distances d_ij = ||x_i - y_j||, shape [N, M], float32.

    Small D uses explicit differences (exact for near-duplicates); large D uses the
    matmul expansion ``|x|^2 + |y|^2 - 2 x.y`` clamped at 0. The square root has a safe
    gradient at zero distance.
    """
    sq = _squared_distances(x_nd, y_md)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


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
    affinity_floor: float = 0.0,
    return_stats: bool = False,
):
    """Drifting field V_{p,q}(x): where each query should move (toward y_pos, away from y_neg).

    With targets Y = [y_neg; y_pos] and logits l_ij = -d(x_i, Y_j) / tau (d divided by its
    batch mean when `scale_dist`), a_ij = exp(0.5 (log_softmax_j l + log_softmax_i l)) * w_j
    and, with A- = a[:, :M-], A+ = a[:, M-:],

        V_i = (sum_k A-_ik) sum_j A+_ij y+_j - (sum_j A+_ij) sum_k A-_ik y-_k,

    summed over temperatures (each divided by its RMS when `normalize_drift`).

    `affinity_floor > 0` computes the official release's loss instead (dense form only):
    a_ij = w_j sqrt(max(softmax_j(l)_ij softmax_i(l)_ij, affinity_floor)) (it uses 1e-6),
    its self-mask (+100 on the scaled self distance, so masked pairs get the floor too),
    one distance scale over all pairs and groups, self pairs included, and each
    temperature's field divided by its RMS over all groups. On low-dimensional data the
    floor flattens the weights: see docs/field.md.

    Args:
      x: queries (the generated samples), [N, D] or grouped [G, N, D]; any float dtype.
        Pass several independent problems grouped rather than vmapping this function: under
        a vmap the blocked form's per-block ``lax.cond`` calls become selects that compute both
        branches. The field is differentiable in x, y_pos, y_neg and the weights; the
        blocked form's derivatives (JVPs, gradients) run its two-exp terms.
      y_pos: positives (data), [M+, D] or [G, M+, D].
      y_neg: negatives, [M-, D] or [G, M-, D]; None uses x itself, self-masked (prefer
        None to passing x: the blocked form then halves its first pass over them by the
        symmetry of their distances).
      weights_pos: per-positive weights, [M+] or [G, M+] (default ones).
      weights_neg: per-negative weights, [M-] or [G, M-] (default ones); classifier-free
        guidance gives unconditional reals the weight (alpha - 1)(N_gen - 1) / N_uncond.
      temperatures: see `DriftOptions`, for it and the other options (kernel, normalize,
        self_mask, scale_dist, normalize_drift, block_size, affinity_floor). Defaults are
        the paper's choices; the floor defaults to 0, the exact field.
      return_stats: also return a dict of diagnostics (distance scale, RMS per temperature).

    Returns:
      V, float32 with the shape of x, in the coordinates of x; and stats if requested.
    """
    opts = DriftOptions(
        temperatures=temperatures,
        kernel=kernel,
        normalize=normalize,
        self_mask=self_mask,
        scale_dist=scale_dist,
        normalize_drift=normalize_drift,
        block_size=block_size,
        affinity_floor=affinity_floor,
    )
    return compute_drift_field_with(
        x,
        y_pos,
        y_neg,
        opts,
        weights_pos=weights_pos,
        weights_neg=weights_neg,
        return_stats=return_stats,
    )


def compute_drift_field_with(
    x,
    y_pos,
    y_neg,
    opts: DriftOptions,
    *,
    weights_pos=None,
    weights_neg=None,
    return_stats: bool = False,
):
    """`compute_drift_field` with a `DriftOptions` object (shapes as there)."""
    _, v, coord_scale, stats, grouped = driver.field_scaled(
        x, y_pos, y_neg, weights_pos, weights_neg, opts
    )
    return driver.field_output(v, coord_scale, stats, grouped, return_stats)


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

    With `opts.loss_reduction='mean'` (the official release's) the squared error is
    averaged over D instead of summed, so L and its gradient are 1/D as large.

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
    _, v, coord_scale, stats, grouped = driver.field_scaled(
        sg(x), sg(y_pos), None if y_neg is None else sg(y_neg), weights_pos, weights_neg, opts
    )
    return driver.loss_from_field(x, v, coord_scale, stats, grouped, opts.loss_reduction)
