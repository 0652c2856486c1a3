"""The official release's floored affinity, selected by `DriftOptions.affinity_floor > 0`.

Reproduces the field of the reference code's loss: a_ij = w_j sqrt(max(row softmax * column
softmax, floor)), with its self-mask, one distance scale for all groups and one RMS per
temperature. Dense only: every [G, N, M] matrix is built at once, as there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from drift_jax.field import engine
from drift_jax.field.options import DriftOptions

Array = jax.Array

# Constants of the official code, kept so that its training can be matched exactly.
# Distances are sqrt(max(squared distance, MIN_SQ)) in input units, so at least 1e-4.
MIN_SQ = 1e-8
# Floor of the distance scale s (kernel distances are d / max(s, MIN_SCALE)) and of the
# coordinate scale max(s / sqrt(D), MIN_SCALE).
MIN_SCALE = 1e-3
# Added to the scaled distance of each self pair (x_i, y-_i): its logit becomes about
# -100 / tau, so its softmaxes vanish, but the floor still gives it sqrt(floor) w_i.
SELF_MASK_DISTANCE = 100.0
# Each temperature's field is divided by sqrt(max(mean(V^2), MIN_MEAN_SQUARE)).
MIN_MEAN_SQUARE = 1e-8


def _squared_distances(x_gnd: Array, y_gmd: Array) -> Array:
    """||x_i - y_j||^2 per group, [G, N, M], float32 >= 0 (explicit differences for small D,
    the matmul expansion otherwise, as in the other forms)."""
    d = x_gnd.shape[-1]
    if engine.small_dim(d):
        sq = jnp.zeros(x_gnd.shape[:2] + (y_gmd.shape[1],), jnp.float32)
        for k in range(d):
            sq = sq + jnp.square(x_gnd[:, :, None, k] - y_gmd[:, None, :, k])
        return sq
    hp = jax.lax.Precision.HIGHEST
    sq = (
        jnp.sum(jnp.square(x_gnd), -1)[:, :, None]
        + jnp.sum(jnp.square(y_gmd), -1)[:, None, :]
        - 2.0 * jnp.einsum('gnd,gmd->gnm', x_gnd, y_gmd, precision=hp)
    )
    return jnp.maximum(sq, 0.0)


def floored_field(
    x: Array,
    y_pos: Array,
    y_neg: Array,
    w_pos: Array,
    w_neg: Array,
    opts: DriftOptions,
    mask_self: bool,
) -> tuple[Array, Array, dict[str, Array]]:
    """The official release's field for all groups at once, in scaled coordinates.

    With targets Y = [y-; y+] (M = M- + M+), weights w and d_ij = sqrt(max(sum((x_i - Y_j)^2),
    1e-8)), one scale for every group, s = sum_{g,i,j} w_j d_ij / (N sum_{g,j} w_j) (self
    pairs included), kernel distances d / max(s, 1e-3) (+100 on self pairs) and
    coordinates y / c with c = max(s / sqrt(D), 1e-3). Per temperature tau, with logits
    l = -distance / tau and softmaxes over all targets and all queries (whatever the
    weights),

        a_ij = w_j sqrt(max(softmax_j(l)_ij softmax_i(l)_ij, floor)),
        V_i = (sum_k A-_ik) sum_j A+_ij y+_j - (sum_j A+_ij) sum_k A-_ik y-_k,

    and, with `normalize_drift`, V_tau / sqrt(max(mean_{g,i,d} V_tau^2, 1e-8)) summed over
    temperatures. Without `scale_dist`, s = c = 1.

    Args:
      x: queries [G, N, D]; y_pos [G, M+, D]; y_neg [G, M-, D]; w_pos [G, M+]; w_neg
        [G, M-] (float32, as `driver.prepare` returns them).
      opts: the options (affinity_floor > 0, kernel 'laplace', normalize 'both').
      mask_self: mask the pairs (x_i, y-_i), i < N (y-'s first N rows are the queries).

    Returns:
      (V [G, N, D] in scaled coordinates, coordinate scale [G], stats of [G] arrays).
    """
    sg = jax.lax.stop_gradient
    g, n, d = x.shape
    m_neg = y_neg.shape[1]
    y = jnp.concatenate([y_neg, y_pos], axis=1)  # [G, M, D]
    w = jnp.concatenate([w_neg, w_pos], axis=1)  # [G, M]
    dist = jnp.sqrt(jnp.maximum(_squared_distances(x, y), MIN_SQ))  # [G, N, M]
    if opts.scale_dist:
        total_w = jnp.sum(w)
        total_w = jnp.where(total_w != 0, total_w, 1.0)
        scale = sg(jnp.sum(dist * w[:, None, :]) / (n * total_w))
        coord_scale = jnp.maximum(scale / jnp.sqrt(jnp.float32(d)), MIN_SCALE)
        dist = dist / jnp.maximum(scale, MIN_SCALE)
    else:
        scale = coord_scale = jnp.ones((), jnp.float32)
    if mask_self:
        self_pairs = jnp.arange(n)[:, None] == jnp.arange(y.shape[1])[None, :]  # [N, M]
        dist = dist + SELF_MASK_DISTANCE * self_pairs
    # Centred coordinates: V is translation invariant (its coefficients sum to zero), and
    # centring keeps the two cancelling terms small.
    center = sg(jnp.mean(y, axis=1, keepdims=True))
    y_scaled = (y - center) / coord_scale  # [G, M, D]
    log_floor = jnp.log(jnp.float32(opts.affinity_floor))
    hp = jax.lax.Precision.HIGHEST
    fields, terms = [], []
    for tau in opts.temperatures:
        logits = -dist / tau
        # sqrt(max(p, floor)) computed as exp(max(log p, log floor) / 2): the same value
        # without underflow in the product of two small softmaxes.
        log_p = jax.nn.log_softmax(logits, axis=2) + jax.nn.log_softmax(logits, axis=1)
        a = jnp.exp(0.5 * jnp.maximum(log_p, log_floor)) * w[:, None, :]  # [G, N, M]
        a_neg, a_pos = a[..., :m_neg], a[..., m_neg:]
        s_neg = jnp.sum(a_neg, axis=-1, keepdims=True)
        s_pos = jnp.sum(a_pos, axis=-1, keepdims=True)
        p = jnp.einsum('gnm,gmd->gnd', a_pos, y_scaled[:, m_neg:], precision=hp)
        q = jnp.einsum('gnm,gmd->gnd', a_neg, y_scaled[:, :m_neg], precision=hp)
        fields.append(s_neg * p - s_pos * q)
        terms.append(jnp.abs(s_neg * p) + jnp.abs(s_pos * q))
    v_t = jnp.stack(fields)  # [T, G, N, D]
    # A field that is only float32 rounding of two cancelling terms (positives and
    # negatives the same set) is zero, as in the other forms; the official code would
    # divide that rounding by its RMS.
    flat = (len(fields), g * n, d)
    zero = engine.cancelled(v_t.reshape(flat), jnp.stack(terms).reshape(flat))
    v_t = jnp.where(zero[:, None, None, None], 0.0, v_t)
    mean_sq = jnp.mean(jnp.square(v_t), axis=(1, 2, 3))  # [T]
    if opts.normalize_drift:
        v_t = v_t / jnp.sqrt(jnp.maximum(mean_sq, MIN_MEAN_SQUARE))[:, None, None, None]
    v = jnp.sum(v_t, axis=0)
    stats = {'scale': jnp.broadcast_to(scale, (g,))}
    for tau, ms in zip(opts.temperatures, mean_sq, strict=True):
        stats[f'rms_tau_{tau:g}'] = jnp.broadcast_to(jnp.sqrt(ms), (g,))
    return v, jnp.broadcast_to(coord_scale, (g,)), stats
