"""Specification tests for drift_jax.field: the drifting field and the drifting loss.

The field is checked against a float64 NumPy reference written straight from its definition
in docs/field.md (explicit loop over temperatures, masked log-sum-exp softmaxes), then
against the properties the field guarantees: anti-symmetry, zero field for equal sets, attraction
to an isolated cluster, the loss gradient, finiteness in degenerate cases, the grouped form,
bad-input errors, and the difference from the floored affinity of the official code.

Inputs are small and most tests share shapes, so the whole file stays fast on 2 CPU cores.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drift_jax import field as field_lib
from drift_jax.field import (
    DriftOptions,
    compute_drift_field,
    drift_loss,
    options_from_config,
    pairwise_distances,
)

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
# 1. Agreement with the reference.


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


@pytest.mark.parametrize('name', list(CASES))
def test_field_matches_reference(name: str) -> None:
    case = CASES[name]
    x, y_pos, y_neg, kwargs = _make_inputs(case, seed=len(name))
    opts = _full_opts(case.opts)
    got = field(x, y_pos, y_neg, **kwargs, **opts)
    assert got.dtype == jnp.float32 and got.shape == x.shape
    want, _ = reference(
        x,
        y_pos,
        y_neg,
        kwargs.get('weights_pos'),
        kwargs.get('weights_neg'),
        self_mask=kwargs.get('self_mask'),
        **opts,
    )
    assert np.abs(want).max() > 1e-6  # A non-trivial field.
    assert_field_close(got, want)


def test_pairwise_distances_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    for d in (2, 16):
        x, y = _f32(rng.normal(size=(5, d))), _f32(rng.normal(size=(6, d)))
        y[0] = x[0]  # An exact zero distance.
        want = np.sqrt(((x[:, None].astype(np.float64) - y[None]) ** 2).sum(-1))
        got = np.asarray(pairwise_distances(x, y))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert got[0, 0] == 0.0


# ----------------------------------------------------------------------------
# 2. Properties the field guarantees.


@pytest.mark.parametrize(
    'opts',
    [
        dict(),
        dict(normalize='targets', kernel='gaussian', temperatures=(0.3,)),
        dict(normalize='none', temperatures=(0.2, 0.5), scale_dist=False, normalize_drift=False),
    ],
    ids=['default', 'targets-gauss', 'none-raw'],
)
def test_anti_symmetry(opts) -> None:
    rng = np.random.default_rng(1)
    x = _f32(rng.normal(size=(N, D)))
    y_a = _f32(rng.normal(size=(M_POS, D)) + 0.5)
    y_b = _f32(rng.normal(size=(N, D)) - 0.5)
    w_a, w_b = _weights(rng, M_POS), _weights(rng, N, zero_at=4)
    v = np.asarray(field(x, y_a, y_b, weights_pos=w_a, weights_neg=w_b, self_mask=False, **opts))
    v_swapped = np.asarray(
        field(x, y_b, y_a, weights_pos=w_b, weights_neg=w_a, self_mask=False, **opts)
    )
    assert np.abs(v).max() > 1e-3
    np.testing.assert_allclose(v_swapped, -v, rtol=1e-5, atol=1e-6 * np.abs(v).max())


@pytest.mark.parametrize(
    'normalize_drift,scale_dist',
    [
        (False, True),
        (False, False),
        (True, True),
        (True, False),
    ],
)
def test_zero_field_for_equal_sets(normalize_drift: bool, scale_dist: bool) -> None:
    rng = np.random.default_rng(2)
    x = _f32(rng.normal(size=(N, D)))
    z = _f32(rng.normal(size=(M_POS, D)) + 0.3)
    z_perm = z[rng.permutation(M_POS)]  # The same set, another order.
    kw = dict(self_mask=False, normalize_drift=normalize_drift, scale_dist=scale_dist)
    v = np.asarray(field(x, z, z_perm, **kw))
    # Size of a genuine field on the same queries, for the tolerance.
    typical = np.abs(np.asarray(field(x, z + 1.0, z_perm, **kw))).max()
    assert typical > 1e-3
    np.testing.assert_allclose(v, 0.0, atol=1e-5 * typical)


@pytest.mark.parametrize(
    'opts',
    [
        dict(),
        dict(
            normalize='targets',
            kernel='gaussian',
            temperatures=(1.0,),
            scale_dist=False,
            normalize_drift=False,
        ),
        dict(normalize='none', temperatures=(0.2,)),
    ],
    ids=['default', 'targets-gauss-raw', 'none-scaled'],
)
def test_field_points_toward_isolated_positive_cluster(opts) -> None:
    rng = np.random.default_rng(3)
    x = _f32(rng.normal(size=(N, D)) * 0.3)
    center = np.array([5.0, 5.0])
    y_pos = _f32(rng.normal(size=(M_POS, D)) * 0.5 + center)
    v = np.asarray(field(x, y_pos, **opts), np.float64)
    direction = center - x
    dots = np.sum(v * direction, axis=1)
    assert np.all(dots > 0), dots
    cos = dots / (np.linalg.norm(v, axis=1) * np.linalg.norm(direction, axis=1))
    assert np.all(cos > 0.5), cos


@pytest.mark.parametrize('scale_dist', [False, True])
def test_loss_gradient_is_minus_field(scale_dist: bool) -> None:
    """dL/dW = -(2/N) sum_i V_i dx_i/dW for x = eps @ W (with 1/c^2 in scaled coordinates)."""
    rng = np.random.default_rng(4)
    n, k, d = N, 3, D
    eps = jnp.asarray(_f32(rng.normal(size=(n, k))))
    w = jnp.asarray(_f32(rng.normal(size=(k, d))))
    y_pos = _f32(rng.normal(size=(M_POS, d)) + 1.0)
    opts = DriftOptions(temperatures=(0.05, 0.2), scale_dist=scale_dist)

    grad = jax.grad(lambda w_: loss_fn(eps @ w_, y_pos, opts=opts)[0])(w)
    x = eps @ w
    v = np.asarray(field(x, y_pos, temperatures=(0.05, 0.2), scale_dist=scale_dist), np.float64)
    _, c = reference(np.asarray(x), y_pos, temperatures=(0.05, 0.2), scale_dist=scale_dist)
    want = -(2.0 / n) * np.asarray(eps, np.float64).T @ v / c**2
    assert np.abs(want).max() > 1e-3
    np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def _degenerate_inputs(kind: str):
    """(x, y_pos, options) for the degenerate cases the field must handle."""
    rng = np.random.default_rng(5)
    if kind == 'duplicates':
        x = _f32(rng.normal(size=(N, D)))
        x[4:] = x[:3]
        y_pos = np.concatenate([x[:3], x[:3], _f32(rng.normal(size=(M_POS - 6, D)))])
        return x, y_pos, {}
    if kind == 'identical':
        return np.ones((N, D), np.float32), np.ones((M_POS, D), np.float32), {}
    if kind == 'identical-origin':  # Zero distances and zero coordinates: V_tau is exactly 0.
        return np.zeros((N, D), np.float32), np.zeros((M_POS, D), np.float32), {}
    if kind == 'far-tau0.01':
        # Queries on a circle of radius 8, positives on one of radius 16: all distances are
        # 6 to 24, so with tau = 0.01 on raw coordinates the logits are ~ -600 to -2400, and
        # the exact field is 1e-37 to 1e-23 (float32 normals, but their squares underflow).
        ang_x = np.arange(N) * 2 * np.pi / N
        ang_y = np.arange(M_POS) * 2 * np.pi / M_POS + 0.2
        x = _f32(np.stack([np.cos(ang_x), np.sin(ang_x)], 1) * 8)
        y_pos = _f32(np.stack([np.cos(ang_y), np.sin(ang_y)], 1) * 16)
        return x, y_pos, dict(temperatures=(0.01,), scale_dist=False)
    raise ValueError(kind)


@pytest.mark.parametrize(
    'kind,normalize_drift',
    [
        ('duplicates', True),
        ('duplicates', False),
        ('identical', False),
        ('identical', True),
        ('identical-origin', False),
        ('identical-origin', True),  # Every V_tau is exactly 0: RMS normalisation is 0 / 0.
        ('far-tau0.01', False),
        ('far-tau0.01', True),  # V_tau ~ 1e-23: its squares underflow float32.
    ],
)
def test_finite_values_and_gradients(kind: str, normalize_drift: bool) -> None:
    x, y_pos, opts = _degenerate_inputs(kind)
    opts['normalize_drift'] = normalize_drift
    probe = jnp.asarray(np.random.default_rng(6).normal(size=x.shape), jnp.float32)

    v = field(x, y_pos, **opts)
    assert np.isfinite(np.asarray(v)).all()
    if kind.startswith('identical'):
        # Zero up to float32 rounding of the coordinates (|y| <= 1).
        np.testing.assert_allclose(np.asarray(v), 0.0, atol=1e-6)
    field_grad = jax.grad(lambda x_: jnp.sum(field(x_, y_pos, **opts) * probe))(jnp.asarray(x))
    assert np.isfinite(np.asarray(field_grad)).all()
    loss, stats = loss_fn(x, y_pos, opts=DriftOptions(**opts))
    assert np.isfinite(float(loss)) and all(np.isfinite(float(s)) for s in stats.values())
    loss_grad = jax.grad(lambda x_: loss_fn(x_, y_pos, opts=DriftOptions(**opts))[0])(
        jnp.asarray(x)
    )
    assert np.isfinite(np.asarray(loss_grad)).all()


def test_tau_0p01_far_points_log_space_field_matches_reference() -> None:
    """Raw kernel values ~exp(-1000) underflow; the log-space field must not.

    Logits of magnitude ~1000 carry ~6e-5 absolute float32 rounding, hence rtol 2e-4.
    """
    x, y_pos, opts = _degenerate_inputs('far-tau0.01')
    opts['normalize_drift'] = False
    v = np.asarray(field(x, y_pos, **opts))
    want, _ = reference(x, y_pos, **opts)
    assert np.abs(want).max() > 1e-30  # Tiny, but far above float32's smallest normal.
    assert_field_close(v, want, rtol=2e-4, atol_frac=1e-5)


def test_tau_0p01_far_points_normalized_field_matches_reference() -> None:
    """The same field, RMS-normalised: V_tau ~ 1e-23 must become a unit-RMS field.

    (Squaring V_tau in float32 underflows to 0, which once returned ~4e-11 here.)
    """
    x, y_pos, opts = _degenerate_inputs('far-tau0.01')
    v = np.asarray(field(x, y_pos, **opts))
    want, _ = reference(x, y_pos, **opts)
    np.testing.assert_allclose(np.sqrt(np.mean(want**2)), 1.0, rtol=1e-9)
    assert_field_close(v, want, rtol=2e-4, atol_frac=1e-5)


def test_bf16_inputs() -> None:
    rng = np.random.default_rng(7)
    x32 = jnp.asarray(_f32(rng.normal(size=(N, D))))
    y32 = jnp.asarray(_f32(rng.normal(size=(M_POS, D)) + 0.5))
    x16, y16 = x32.astype(jnp.bfloat16), y32.astype(jnp.bfloat16)
    v16 = field(x16, y16)
    assert v16.dtype == jnp.float32 and v16.shape == (N, D)
    # Computed in float32: identical to feeding the bf16-rounded values as float32.
    v_rounded = field(x16.astype(jnp.float32), y16.astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(v16), np.asarray(v_rounded), rtol=1e-6, atol=1e-6)
    # Close to the unrounded float32 result (a broad temperature keeps logits well-conditioned).
    v16_broad = np.asarray(field(x16, y16, temperatures=(0.5,)))
    v32_broad = np.asarray(field(x32, y32, temperatures=(0.5,)))
    np.testing.assert_allclose(v16_broad, v32_broad, atol=0.03 * np.abs(v32_broad).max())
    grad = jax.grad(lambda x_: jnp.sum(field(x_, y16) ** 2))(x16)
    assert grad.dtype == jnp.bfloat16
    assert np.isfinite(np.asarray(grad, np.float32)).all()
    loss_grad = jax.grad(lambda x_: loss_fn(x_, y16)[0])(x16)
    assert np.isfinite(np.asarray(loss_grad, np.float32)).all()


# ----------------------------------------------------------------------------
# 3. Grouped form == each group separately.


def test_grouped_equals_separate_groups() -> None:
    case = Case(N, M_POS, D, m_neg=N, groups=3, weights='both')
    x, y_pos, y_neg, kwargs = _make_inputs(case, seed=8)
    kwargs['weights_neg'] = np.stack(
        [_weights(np.random.default_rng(k), N, zero_at=k) for k in range(3)]
    )
    v = np.asarray(field(x, y_pos, y_neg, **kwargs))
    loss, _ = loss_fn(x, y_pos, y_neg, **kwargs)
    assert v.shape == x.shape
    losses = []
    for g in range(3):
        per = {k: w[g] for k, w in kwargs.items()}
        v_g = np.asarray(field(x[g], y_pos[g], y_neg[g], **per))
        np.testing.assert_allclose(v[g], v_g, rtol=1e-5, atol=1e-6 * np.abs(v_g).max())
        losses.append(float(loss_fn(x[g], y_pos[g], y_neg[g], **per)[0]))
    np.testing.assert_allclose(float(loss), np.mean(losses), rtol=1e-5)
    # Scale and RMS are per group: the groups' spreads differ 10x, and so do their fields.
    rms = np.sqrt(np.mean(v**2, axis=(1, 2)))
    assert rms[2] > 5 * rms[0]


def test_groups_in_chunks_equal_all_groups_at_once(monkeypatch) -> None:
    """On CPU many small groups run in chunks (lax.map); 5 groups in chunks of 2 (one left
    over) give the vectorised result, field, loss and stats, with CFG-style weights."""
    case = Case(N, M_POS, 16, m_neg=N + 4, groups=5, weights='both')
    x, y_pos, y_neg, kwargs = _make_inputs(case, seed=21)
    kwargs['weights_neg'] = np.stack(
        [_weights(np.random.default_rng(k), N + 4, zero_at=k) for k in range(5)]
    )
    m = M_POS + N + 4
    assert field_lib.group_chunk(5, N, m, backend='gpu') == 5

    def run():
        v, stats = field(x, y_pos, y_neg, return_stats=True, **kwargs)
        return np.asarray(v), stats, float(loss_fn(x, y_pos, y_neg, **kwargs)[0])

    monkeypatch.setattr(field_lib.driver, 'GROUP_CHUNK_ENTRIES', 10**9)
    assert field_lib.group_chunk(5, N, m, backend='cpu') == 5
    v_all, stats_all, loss_all = run()
    monkeypatch.setattr(field_lib.driver, 'GROUP_CHUNK_ENTRIES', 2 * N * m)
    assert field_lib.group_chunk(5, N, m, backend='cpu') == 2
    v_chunked, stats_chunked, loss_chunked = run()
    np.testing.assert_allclose(v_chunked, v_all, rtol=1e-6, atol=1e-7 * np.abs(v_all).max())
    assert loss_chunked == pytest.approx(loss_all, rel=1e-6)
    for k in stats_all:
        assert float(stats_chunked[k]) == pytest.approx(float(stats_all[k]), rel=1e-6), k


# ----------------------------------------------------------------------------
# 4. drift_loss value.


@pytest.mark.parametrize(
    'name',
    [
        'small-default',
        'd16-targets-1t-wpos',
        'small-none-gauss-raw-3t',
        'grouped-default-wpos',
        'cfg-selfmask-default',
    ],
)
def test_loss_value_is_mean_squared_scaled_field(name: str) -> None:
    case = CASES[name]
    x, y_pos, y_neg, kwargs = _make_inputs(case, seed=len(name))
    opts = _full_opts(case.opts)
    self_mask = kwargs.pop('self_mask', None)
    loss, stats = loss_fn(x, y_pos, y_neg, DriftOptions(self_mask=self_mask, **opts), **kwargs)
    assert loss.shape == () and loss.dtype == jnp.float32
    want_v, c = reference(
        x,
        y_pos,
        y_neg,
        kwargs.get('weights_pos'),
        kwargs.get('weights_neg'),
        self_mask=self_mask,
        **opts,
    )
    c = np.asarray(c)[..., None, None] if case.groups else c
    want = np.mean(np.sum((want_v / c) ** 2, axis=-1))
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    v = np.asarray(field(x, y_pos, y_neg, self_mask=self_mask, **kwargs, **opts))
    np.testing.assert_allclose(float(loss), np.mean(np.sum((v / c) ** 2, axis=-1)), rtol=1e-5)
    assert np.isfinite(float(stats['drift_norm']))


# ----------------------------------------------------------------------------
# 5. Bad input.


def _field(**kw):
    x = np.zeros((5, 2), np.float32)
    y = np.ones((6, 2), np.float32)
    args = dict(x=x, y_pos=y)
    args.update(kw)
    return compute_drift_field(args.pop('x'), args.pop('y_pos'), args.pop('y_neg', None), **args)


@pytest.mark.parametrize(
    'call,match',
    [
        (lambda: _field(temperatures=(0.05, 0.0)), r'temperatures.*0\.0'),
        (lambda: _field(temperatures=(-0.1,)), r'temperatures.*-0\.1'),
        (lambda: _field(temperatures=()), 'temperatures'),
        (lambda: _field(kernel='cauchy'), "'cauchy'.*laplace.*gaussian"),
        (lambda: _field(normalize='rows'), "'rows'.*both.*targets.*none"),
        (lambda: _field(block_size=-2), 'block_size=-2'),
        (lambda: DriftOptions(kernel='cosine'), "'cosine'"),
        (lambda: options_from_config({'temperatures': (0.05,), 'bogus': 1}), 'bogus'),
        (lambda: _field(y_pos=np.ones((6, 3), np.float32)), r'y_pos.*\(6, 3\)'),
        (lambda: _field(y_neg=np.ones((4, 3), np.float32)), r'y_neg.*\(4, 3\)'),
        (lambda: _field(y_pos=np.ones((6,), np.float32)), r'y_pos.*\(6,\)'),
        (lambda: _field(weights_pos=np.ones(5, np.float32)), r'weights_pos.*\(5,\).*\[6\]'),
        (lambda: _field(weights_neg=np.ones((2, 5), np.float32)), r'weights_neg.*\(2, 5\)'),
        (lambda: _field(y_neg=np.ones((3, 2), np.float32), self_mask=True), r'self_mask.*N=5'),
    ],
    ids=[
        'tau-zero',
        'tau-negative',
        'tau-empty',
        'kernel',
        'normalize',
        'block-size',
        'options-kernel',
        'config-unknown',
        'dim-y-pos',
        'dim-y-neg',
        'rank-y-pos',
        'weights-pos-shape',
        'weights-neg-shape',
        'self-mask-too-few',
    ],
)
def test_bad_input_raises(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_options_from_config() -> None:
    opts = options_from_config({'temperatures': [0.05], 'kernel': 'gaussian'})
    assert opts == DriftOptions(temperatures=(0.05,), kernel='gaussian')
    assert options_from_config({'temperatures': 0.1}).temperatures == (0.1,)
    hash(opts)  # Usable as a static jit argument.


# ----------------------------------------------------------------------------
# 6. Log-space geometric mean vs the official floored affinity.


def test_log_space_affinity_is_not_floored() -> None:
    """At 128 x 256 in 2-D, sqrt(max(row * col, 1e-6)) gives far pairs 1e-3 instead of ~0.

    Queries around the origin, positives: 96 near (2, 0) and 32 far around (-25, 0), in the
    opposite direction. The exact field pulls the queries to the near cluster; the floored one
    (same formula, only the floor added) drags most of them toward the far one. The library
    must equal the exact reference, which differs materially from the floored one.
    """
    rng = np.random.default_rng(9)
    n = 128
    x = _f32(rng.normal(size=(n, 2)))
    near = rng.normal(size=(96, 2)) * 0.7 + np.array([2.0, 0.0])
    far = rng.normal(size=(32, 2)) * 0.5 + np.array([-25.0, 0.0])
    y_pos = _f32(np.concatenate([near, far]))
    args = (x, y_pos, x, np.ones(n), np.ones(n))
    kw = dict(temperatures=PAPER_TEMPS, self_mask=True)
    exact, _, a_exact = reference_field(*args, **kw)
    floored, _, a_floor = reference_field(*args, floor=1e-6, **kw)
    far_cols = slice(n + 96, n + 128)  # Targets are [x; near; far].
    for a_e, a_f in zip(a_exact, a_floor, strict=True):
        assert a_e[:, far_cols].max() < 1e-5  # ~0 (2e-6 at tau=0.2, 1e-45 at tau=0.02).
        assert a_f[:, far_cols].min() >= 1e-3 - 1e-12
    # The floor changes the field materially, not just in the last digits.
    assert np.linalg.norm(floored - exact) > 0.5 * np.linalg.norm(exact)
    assert np.mean(exact[:, 0] > 0) > 0.9  # Toward the near cluster.
    assert np.mean(floored[:, 0] < 0) > 0.6  # Toward the far cluster.

    v = np.asarray(field(x, y_pos))
    assert_field_close(v, exact)
    assert np.linalg.norm(v - floored) > 0.5 * np.linalg.norm(floored)
    assert np.mean(v[:, 0] > 0) > 0.9

    # Directly: on raw coordinates (fixed scale), giving the far cluster weight 0 leaves the
    # library's field unchanged (its far affinities are ~0), unlike the floored form's.
    raw = dict(temperatures=(0.5,), scale_dist=False, normalize_drift=False)
    w_near = np.concatenate([np.ones(96), np.zeros(32)]).astype(np.float32)
    v_all = np.asarray(field(x, y_pos, **raw))
    v_near = np.asarray(field(x, y_pos, weights_pos=w_near, **raw))
    np.testing.assert_allclose(v_all, v_near, rtol=1e-5, atol=1e-6 * np.abs(v_near).max())
    ref_kw = dict(
        temperatures=(0.5,), self_mask=True, scale_dist=False, normalize_drift=False, floor=1e-6
    )
    f_all = reference_field(*args, **ref_kw)[0]
    f_near = reference_field(x, y_pos, x, w_near, np.ones(n), **ref_kw)[0]
    assert np.linalg.norm(f_all - f_near) > 0.5 * np.linalg.norm(f_near)
