"""Specification tests for drift_jax.field: the drifting field checked against a float64
NumPy reference written straight from its definition in docs/field.md (explicit loop over
temperatures, masked log-sum-exp softmaxes; `_drift_reference`), then the properties the
field guarantees: anti-symmetry, zero field for equal sets, attraction to an isolated
cluster, the loss gradient, finiteness in degenerate cases and reduced precision.

Inputs are small and most tests share shapes, so the whole file stays fast on 2 CPU cores.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _drift_reference import (
    CASES,
    M_POS,
    D,
    N,
    _f32,
    _full_opts,
    _make_inputs,
    _weights,
    assert_field_close,
    field,
    loss_fn,
    reference,
)

from drift_jax.field import DriftOptions, pairwise_distances

# ----------------------------------------------------------------------------
# 1. Agreement with the reference.


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
