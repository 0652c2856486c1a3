"""Shared by the field's tests: a float64 NumPy reference of the drifting field written from
its definition in docs/field.md (not from the library), and the cases (shapes, weights,
options) it is compared on."""

from __future__ import annotations

import dataclasses

import numpy as np

from drift_jax.field import compute_drift_field, drift_loss

PAPER_TEMPS = (0.02, 0.05, 0.2)
# Most tests share these shapes (and the [N, N] / [N, M_POS] distance matrices they make):
# eager JAX compiles each primitive once per shape, so reusing shapes keeps the file fast
# (faster than jit, which compiles every option set and gradient afresh).
N, M_POS, D = 7, 11, 2
field = compute_drift_field
loss_fn = drift_loss

# ----------------------------------------------------------------------------
# Float64 reference, written from the formula (not from the library).


def _masked_log_softmax(logits: np.ndarray, valid: np.ndarray, axis: int) -> np.ndarray:
    """log_softmax over `axis` of the valid entries; -inf on masked ones."""
    masked = np.where(valid, logits, -np.inf)
    peak = np.max(masked, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)  # A fully masked line: any shift works.
    with np.errstate(divide='ignore', invalid='ignore'):
        lse = peak + np.log(np.sum(np.exp(masked - peak), axis=axis, keepdims=True))
        return np.where(valid, masked - lse, -np.inf)


def reference_field(
    x,
    y_pos,
    y_neg,
    w_pos,
    w_neg,
    *,
    temperatures,
    kernel='laplace',
    normalize='both',
    self_mask=False,
    scale_dist=True,
    normalize_drift=True,
    floor=None,
):
    """One group of the drifting field in float64. Returns (V [N, D], c, affinities).

    `floor` switches to the official code's form a = sqrt(max(row * col, floor)) on the
    valid pairs (masked pairs stay at 0, so only the floor differs).
    """
    x, y_pos, y_neg = (np.asarray(a, np.float64) for a in (x, y_pos, y_neg))
    n, d = x.shape
    m_neg = y_neg.shape[0]
    y = np.concatenate([y_neg, y_pos], axis=0)
    w = np.concatenate([np.asarray(w_neg, np.float64), np.asarray(w_pos, np.float64)])
    dist = np.sqrt(np.sum((x[:, None, :] - y[None, :, :]) ** 2, axis=-1))
    valid = np.broadcast_to(w[None, :] > 0, dist.shape).copy()
    if self_mask:
        for i in range(n):
            valid[i, i] = False
    if scale_dist:
        wv = np.where(valid, w[None, :], 0.0)
        s = np.sum(dist * wv) / np.sum(wv)
        c = s / np.sqrt(d)
    else:
        s = c = 1.0
    dist = dist / s
    y_scaled = y / c
    v = np.zeros((n, d))
    affinities = []
    for tau in temperatures:
        logits = -dist / tau if kernel == 'laplace' else -(dist**2) / (2.0 * tau**2)
        if normalize == 'none':
            log_a = np.where(valid, logits, -np.inf)
        elif normalize == 'targets':
            log_a = _masked_log_softmax(logits, valid, axis=1)
        else:
            log_a = 0.5 * (
                _masked_log_softmax(logits, valid, axis=1)
                + _masked_log_softmax(logits, valid, axis=0)
            )
        a = np.exp(log_a) if floor is None else np.sqrt(np.maximum(np.exp(2 * log_a), floor))
        a = np.where(valid, a * w[None, :], 0.0)
        affinities.append(a)
        a_neg, a_pos = a[:, :m_neg], a[:, m_neg:]
        v_tau = a_neg.sum(axis=1, keepdims=True) * (a_pos @ y_scaled[m_neg:]) - a_pos.sum(
            axis=1, keepdims=True
        ) * (a_neg @ y_scaled[:m_neg])
        if normalize_drift:
            v_tau = v_tau / np.sqrt(np.mean(v_tau**2))
        v = v + v_tau
    return v * c, c, affinities


def reference(x, y_pos, y_neg=None, weights_pos=None, weights_neg=None, *, self_mask=None, **opts):
    """Reference with the library's calling convention ([N, D] or [G, N, D]): (V, c)."""
    x, y_pos = np.asarray(x, np.float64), np.asarray(y_pos, np.float64)
    if y_neg is None:
        y_neg, mask = x, (True if self_mask is None else self_mask)
    else:
        y_neg, mask = np.asarray(y_neg, np.float64), bool(self_mask)
    grouped = x.ndim == 3
    if not grouped:
        x, y_pos, y_neg = x[None], y_pos[None], y_neg[None]
    g = x.shape[0]

    def per_group(w, m):
        if w is None:
            return np.ones((g, m))
        w = np.asarray(w, np.float64)
        return np.broadcast_to(w, (g, m)) if w.ndim == 1 else w

    w_pos = per_group(weights_pos, y_pos.shape[1])
    w_neg = per_group(weights_neg, y_neg.shape[1])
    out = [
        reference_field(x[k], y_pos[k], y_neg[k], w_pos[k], w_neg[k], self_mask=mask, **opts)[:2]
        for k in range(g)
    ]
    v = np.stack([o[0] for o in out])
    c = np.array([o[1] for o in out])
    return (v, c) if grouped else (v[0], c[0])


def assert_field_close(got, want, rtol=1e-5, atol_frac=1e-5):
    """Elementwise relative agreement, with an absolute floor relative to the field size."""
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol_frac * np.abs(want).max())


def _f32(a) -> np.ndarray:
    return np.asarray(a, np.float32)


def _weights(rng, m, zero_at=1):
    w = rng.uniform(0.5, 2.0, size=m)
    w[zero_at] = 0.0
    return _f32(w)


# ----------------------------------------------------------------------------
# Cases: shapes, weights and options the field is checked on.


@dataclasses.dataclass(frozen=True)
class Case:
    n: int
    m_pos: int
    d: int
    m_neg: int | None = None  # None: y_neg=None (the queries, self-masked).
    groups: int | None = None
    weights: str = ''  # 'pos', 'neg', 'both' or ''.
    cfg: int = 0  # > 0: explicit y_neg = [x; cfg unconditional rows], self_mask=True.
    opts: dict = dataclasses.field(default_factory=dict)


CASES = {
    'small-default': Case(N, M_POS, D),
    'small-targets-gauss-raw': Case(
        N,
        M_POS,
        D,
        opts=dict(
            normalize='targets',
            kernel='gaussian',
            temperatures=(0.5,),
            scale_dist=False,
            normalize_drift=False,
        ),
    ),
    'small-none-laplace-scaled': Case(
        N, M_POS, D, opts=dict(normalize='none', temperatures=(0.2,))
    ),
    'small-none-gauss-raw-3t': Case(
        N,
        M_POS,
        D,
        opts=dict(
            normalize='none',
            kernel='gaussian',
            temperatures=(0.5, 1.0, 2.0),
            scale_dist=False,
            normalize_drift=False,
        ),
    ),
    'small-weights-1t': Case(
        N, M_POS, D, weights='both', opts=dict(temperatures=(0.05,), normalize_drift=False)
    ),
    'd16-default-neg': Case(N, M_POS, 16, m_neg=N),
    'd16-targets-1t-wpos': Case(
        N,
        M_POS,
        16,
        m_neg=N,
        weights='pos',
        opts=dict(normalize='targets', temperatures=(0.1,), normalize_drift=False),
    ),
    'd16-gauss-3t-weights': Case(
        N,
        M_POS,
        16,
        m_neg=N,
        weights='both',
        opts=dict(kernel='gaussian', temperatures=(0.1, 0.2, 0.5)),
    ),
    'd16-none-raw': Case(
        N, M_POS, 16, m_neg=N, opts=dict(normalize='none', temperatures=(2.0,), scale_dist=False)
    ),
    'grouped-default-wpos': Case(N, M_POS, D, groups=3, weights='pos'),
    'cfg-selfmask-default': Case(N, N, D, cfg=M_POS - N, weights='neg'),
    'cfg-selfmask-targets-1t': Case(
        N,
        N,
        D,
        cfg=M_POS - N,
        weights='neg',
        opts=dict(normalize='targets', temperatures=(0.05,), normalize_drift=False),
    ),
}


def _make_inputs(case: Case, seed: int):
    """Random float32 inputs and kwargs for one case."""
    rng = np.random.default_rng(seed)
    lead = () if case.groups is None else (case.groups,)
    # Different offsets and spreads per group, so per-group scales really differ.
    spread = (
        np.ones(lead + (1, 1)) if not lead else np.geomspace(0.3, 3.0, case.groups)[:, None, None]
    )
    x = _f32(rng.normal(size=lead + (case.n, case.d)) * spread)
    y_pos = _f32((rng.normal(size=lead + (case.m_pos, case.d)) + 0.7) * spread)
    y_neg = None
    kwargs = {}
    if case.m_neg is not None:
        y_neg = _f32(rng.normal(size=lead + (case.m_neg, case.d)) * spread - 0.3)
    if case.cfg:
        extra = _f32(rng.normal(size=(case.cfg, case.d)) + 0.4)
        y_neg = np.concatenate([x, extra], axis=0)
        kwargs['self_mask'] = True
    m_neg = case.n if y_neg is None else y_neg.shape[-2]
    if case.weights in ('pos', 'both'):
        w = [_weights(rng, case.m_pos, zero_at=k + 1) for k in range(case.groups or 1)]
        kwargs['weights_pos'] = np.stack(w) if case.groups else w[0]
    if case.weights in ('neg', 'both'):
        if case.cfg:
            # Classifier-free guidance: unconditional reals get (alpha - 1)(N - 1) / N_uncond.
            w_neg = np.ones(m_neg, np.float32)
            w_neg[case.n :] = (1.5 - 1.0) * (case.n - 1) / case.cfg
            w_neg[case.n + 2] = 0.0
        else:
            w_neg = _weights(rng, m_neg, zero_at=2)
        kwargs['weights_neg'] = w_neg
    return x, y_pos, y_neg, kwargs


def _full_opts(opts) -> dict:
    full = dict(
        temperatures=PAPER_TEMPS,
        kernel='laplace',
        normalize='both',
        scale_dist=True,
        normalize_drift=True,
    )
    full.update(opts)
    return full


def max_rel_error(got, want) -> float:
    """max |got - want| / max |want| in float64; fails if `got` is not finite."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert np.isfinite(got).all()
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))
