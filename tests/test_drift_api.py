"""drift_jax.field's public API around the field: the grouped form against each group alone
(also in cache-sized chunks), the loss value, refused inputs with their messages, options
from a config, and the log-space affinity against the official floored one. The float64
reference and the cases come from `_drift_reference`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from _drift_reference import (
    CASES,
    M_POS,
    PAPER_TEMPS,
    Case,
    D,
    N,
    _f32,
    _full_opts,
    _make_inputs,
    _weights,
    assert_field_close,
    reference,
    reference_field,
)

from drift_jax import field as field_lib
from drift_jax.field import DriftOptions, compute_drift_field, drift_loss, options_from_config

# ----------------------------------------------------------------------------
# 3. Grouped form == each group separately.


def test_grouped_equals_separate_groups() -> None:
    case = Case(N, M_POS, D, m_neg=N, groups=3, weights='both')
    x, y_pos, y_neg, kwargs = _make_inputs(case, seed=8)
    kwargs['weights_neg'] = np.stack(
        [_weights(np.random.default_rng(k), N, zero_at=k) for k in range(3)]
    )
    v = np.asarray(compute_drift_field(x, y_pos, y_neg, **kwargs))
    loss, _ = drift_loss(x, y_pos, y_neg, **kwargs)
    assert v.shape == x.shape
    losses = []
    for g in range(3):
        per = {k: w[g] for k, w in kwargs.items()}
        v_g = np.asarray(compute_drift_field(x[g], y_pos[g], y_neg[g], **per))
        np.testing.assert_allclose(v[g], v_g, rtol=1e-5, atol=1e-6 * np.abs(v_g).max())
        losses.append(float(drift_loss(x[g], y_pos[g], y_neg[g], **per)[0]))
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
        v, stats = compute_drift_field(x, y_pos, y_neg, return_stats=True, **kwargs)
        return np.asarray(v), stats, float(drift_loss(x, y_pos, y_neg, **kwargs)[0])

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
    loss, stats = drift_loss(x, y_pos, y_neg, DriftOptions(self_mask=self_mask, **opts), **kwargs)
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
    v = np.asarray(compute_drift_field(x, y_pos, y_neg, self_mask=self_mask, **kwargs, **opts))
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

    v = np.asarray(compute_drift_field(x, y_pos))
    assert_field_close(v, exact)
    assert np.linalg.norm(v - floored) > 0.5 * np.linalg.norm(floored)
    assert np.mean(v[:, 0] > 0) > 0.9

    # Directly: on raw coordinates (fixed scale), giving the far cluster weight 0 leaves the
    # library's field unchanged (its far affinities are ~0), unlike the floored form's.
    raw = dict(temperatures=(0.5,), scale_dist=False, normalize_drift=False)
    w_near = np.concatenate([np.ones(96), np.zeros(32)]).astype(np.float32)
    v_all = np.asarray(compute_drift_field(x, y_pos, **raw))
    v_near = np.asarray(compute_drift_field(x, y_pos, weights_pos=w_near, **raw))
    np.testing.assert_allclose(v_all, v_near, rtol=1e-5, atol=1e-6 * np.abs(v_near).max())
    ref_kw = dict(
        temperatures=(0.5,), self_mask=True, scale_dist=False, normalize_drift=False, floor=1e-6
    )
    f_all = reference_field(*args, **ref_kw)[0]
    f_near = reference_field(x, y_pos, x, w_near, np.ones(n), **ref_kw)[0]
    assert np.linalg.norm(f_all - f_near) > 0.5 * np.linalg.norm(f_near)
