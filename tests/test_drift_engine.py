"""Tests of the drift-field engine: blocked == dense, automatic form choice, sharded form.

The blocked (streaming) form must equal the dense one for every option; the sharded form
(8 fake CPU devices, in a subprocess because XLA_FLAGS must precede the jax import) must
equal the single-device field. Functions are jitted once per case to keep the file fast.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _drift_reference import max_rel_error as _rel

from drift_jax import field
from drift_jax.field import DriftOptions, blocked, compute_drift_field, engine, one_exp

PAPER = (0.02, 0.05, 0.2)
TOL = 1e-5


@functools.partial(jax.jit, static_argnames=('opts', 'form'))
def _field(x, y_pos, y_neg, w_pos, w_neg, opts, form):
    """(V [G, N, D] in the input's coordinates, stats) of the forced form."""
    _, v, scale, stats, _ = field.driver.field_scaled(
        x, y_pos, y_neg, w_pos, w_neg, opts, form=form
    )
    return v * scale[:, None, None], stats


def _f32(a):
    return np.asarray(a, np.float32)


def _inputs(case: str):
    """(x, y_pos, y_neg, w_pos, w_neg, options) for one named case."""
    rng = np.random.default_rng(len(case))
    x = _f32(rng.normal(size=(37, 2)))  # 37 and 29: not multiples of 8.
    y = _f32(rng.normal(size=(29, 2)) + 0.5)
    if case == 'default-odd-sizes':
        return x, y, None, None, None, dict(block_size=8)
    if case == 'targets-gauss-d16-weights':
        x16, y16 = _f32(rng.normal(size=(21, 16))), _f32(rng.normal(size=(30, 16)) + 0.3)
        w = _f32(rng.uniform(0.5, 2.0, size=30))
        w[3] = 0.0
        return (
            x16,
            y16,
            _f32(rng.normal(size=(18, 16)) - 0.3),
            w,
            None,
            dict(
                normalize='targets',
                kernel='gaussian',
                temperatures=(0.3, 0.6),
                scale_dist=False,
                self_mask=False,
                block_size=7,
            ),
        )
    if case == 'none-laplace-d3':
        return (
            _f32(rng.normal(size=(19, 3))),
            _f32(rng.normal(size=(23, 3))),
            None,
            None,
            None,
            dict(normalize='none', temperatures=(0.2, 0.5), block_size=16),
        )
    if case in ('tau0.01-far', 'tau0.01-far-normalized'):
        # Raw coordinates, distances 4 to 20: logits -400 to -2000 at tau = 0.01.
        ang = np.arange(11) * 2 * np.pi / 11
        xf = _f32(np.stack([np.cos(ang), np.sin(ang)], 1) * 8)
        yf = _f32(np.stack([np.cos(ang + 0.2), np.sin(ang + 0.2)], 1) * 12)
        return (
            xf,
            yf,
            None,
            None,
            None,
            dict(
                temperatures=(0.01,),
                scale_dist=False,
                block_size=3,
                normalize_drift=case.endswith('normalized'),
            ),
        )
    if case == 'groups-cfg-selfmask':
        g, n = 3, 13
        xg = _f32(rng.normal(size=(g, n, 3)) * np.array([0.3, 1.0, 3.0])[:, None, None])
        neg = np.concatenate([xg, _f32(rng.normal(size=(g, 6, 3)))], axis=1)
        w_neg = np.ones((g, n + 6), np.float32)
        w_neg[:, n:] = 0.5 * (n - 1) / 6
        w_neg[1, n + 2] = 0.0
        w_pos = _f32(rng.uniform(0.5, 2.0, size=(g, 17)))
        return (
            xg,
            _f32(rng.normal(size=(g, 17, 3)) + 0.4),
            neg,
            w_pos,
            w_neg,
            dict(self_mask=True, block_size=4),
        )
    if case == 'block-larger-than-n-and-m':
        return x, y, None, None, None, dict(block_size=1000)
    if case == 'paper-temps-block-1':
        return x[:9], y[:7], None, None, None, dict(temperatures=PAPER, block_size=1)
    if case == 'no-power-plan-temps':
        return x, y, None, None, None, dict(temperatures=(0.03, 0.07, 0.11), block_size=8)
    # One temperature without scale normalisation: the blocked form skips its first pass
    # and rescales running row shifts (online softmax).
    if case == 'online-block-1-selfmask':
        # Block 1: every query's first block is empty or its own (masked) self pair.
        return (
            x[:9],
            y[:7],
            None,
            None,
            None,
            dict(temperatures=(0.05,), scale_dist=False, block_size=1),
        )
    if case == 'online-targets-weights':
        w = _f32(rng.uniform(0.5, 2.0, size=29))
        w[:6] = 0.0
        return (
            x,
            y,
            _f32(rng.normal(size=(25, 2)) - 1.0),
            w,
            None,
            dict(temperatures=(0.1,), normalize='targets', scale_dist=False, block_size=5),
        )
    if case == 'online-groups-cfg-normalized':
        xg = _f32(rng.normal(size=(2, 11, 5)) * np.array([0.2, 4.0])[:, None, None])
        neg = np.concatenate([xg, _f32(rng.normal(size=(2, 5, 5)))], axis=1)
        w_neg = np.ones((2, 16), np.float32)
        w_neg[:, 11:] = 2.0
        return (
            xg,
            _f32(rng.normal(size=(2, 14, 5)) + 0.4),
            neg,
            None,
            w_neg,
            dict(temperatures=(0.02,), scale_dist=False, self_mask=True, block_size=3),
        )
    raise ValueError(case)


CASES = [
    'default-odd-sizes',
    'targets-gauss-d16-weights',
    'none-laplace-d3',
    'tau0.01-far',
    'tau0.01-far-normalized',
    'groups-cfg-selfmask',
    'block-larger-than-n-and-m',
    'paper-temps-block-1',
    'no-power-plan-temps',
    'online-block-1-selfmask',
    'online-targets-weights',
    'online-groups-cfg-normalized',
]


@pytest.mark.parametrize('case', CASES)
def test_blocked_equals_dense(case: str) -> None:
    x, y_pos, y_neg, w_pos, w_neg, kw = _inputs(case)
    opts = DriftOptions(**kw)
    dense, dense_stats = _field(x, y_pos, y_neg, w_pos, w_neg, opts, 'dense')
    blocked, blocked_stats = _field(x, y_pos, y_neg, w_pos, w_neg, opts, 'blocked')
    assert blocked.shape[-2:] == np.shape(x)[-2:]
    assert np.abs(np.asarray(dense)).max() > 0
    assert _rel(blocked, dense) < TOL
    for key, value in dense_stats.items():
        np.testing.assert_allclose(blocked_stats[key], value, rtol=TOL)


def test_blocked_bf16_inputs_equal_dense() -> None:
    x, y_pos, _, _, _, _ = _inputs('default-odd-sizes')
    xb, yb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(y_pos, jnp.bfloat16)
    opts = DriftOptions(block_size=8)
    blocked = _field(xb, yb, None, None, None, opts, 'blocked')[0]
    dense = _field(xb, yb, None, None, None, opts, 'dense')[0]
    assert blocked.dtype == jnp.float32
    assert _rel(blocked, dense) < TOL


def test_public_api_block_size_matches_default() -> None:
    """compute_drift_field(block_size=...) == the automatic (here dense) result."""
    x, y_pos, _, _, _, _ = _inputs('default-odd-sizes')
    # Jitted: run eagerly, the blocked loop dispatched op by op took ~17 s.
    want = jax.jit(compute_drift_field)(x, y_pos)
    got = jax.jit(lambda a, b: compute_drift_field(a, b, block_size=5))(x, y_pos)
    assert _rel(got, want) < TOL


# Forcing the blocked form's terms: one exponential per entry in every block, or two.
SPREADS = {'one-exp': float('inf'), 'two-exp': -1.0}


def _blocked_with_spread(monkeypatch, spread: float, x, y_pos, y_neg, w_pos, w_neg, opts):
    """The blocked field traced afresh with `_ONE_EXP_MAX_SPREAD` set to `spread`."""
    monkeypatch.setattr(one_exp, 'ONE_EXP_MAX_SPREAD', spread)
    return jax.jit(lambda *a: _field.__wrapped__(*a, opts, 'blocked'))(
        x, y_pos, y_neg, w_pos, w_neg
    )


@pytest.mark.parametrize('spread', list(SPREADS))
@pytest.mark.parametrize(
    'case',
    ['default-odd-sizes', 'paper-temps-block-1', 'no-power-plan-temps', 'online-block-1-selfmask'],
)
def test_blocked_one_exp_and_two_exp_terms_equal_dense(case, spread, monkeypatch) -> None:
    """Both block terms of the one-group blocked form (`one_exp.one_exp_terms` and the
    two-exp form it falls back to) equal the dense field."""
    x, y_pos, y_neg, w_pos, w_neg, kw = _inputs(case)
    opts = DriftOptions(**kw)
    dense, dense_stats = _field(x, y_pos, y_neg, w_pos, w_neg, opts, 'dense')
    got, stats = _blocked_with_spread(
        monkeypatch, SPREADS[spread], x, y_pos, y_neg, w_pos, w_neg, opts
    )
    assert _rel(got, dense) < TOL
    for key, value in dense_stats.items():
        np.testing.assert_allclose(stats[key], value, rtol=TOL)


def _outlier_inputs():
    """An outlier query whose nearest positive and negative lie 7 away, in blocks (of 8)
    with targets ~0.05 from the other queries; tau = 0.05 on raw distances."""
    rng = np.random.default_rng(3)
    y_pos = _f32(np.concatenate([rng.normal(size=(23, 2)) + 0.5, [[15.0, 15.0]]]))
    y_neg = _f32(np.concatenate([rng.normal(size=(15, 2)), [[15.3, 14.7]]]))
    x = _f32(np.concatenate([rng.normal(size=(19, 2)), [[20.0, 20.0]]]))
    return (
        x,
        y_pos,
        y_neg,
        dict(temperatures=(0.05,), scale_dist=False, block_size=8, self_mask=False),
    )


def test_one_exp_terms_are_not_used_where_they_would_underflow(monkeypatch) -> None:
    """Relative to its blocks' smallest distance the outlier's entries are ~exp(-140) and
    underflow in the one-exp form (forced, its field comes out 0), so the automatic choice
    must fall back to two exponentials and equal the dense field."""
    x, y_pos, y_neg, kw = _outlier_inputs()
    opts = DriftOptions(**kw)
    dense = _field(x, y_pos, y_neg, None, None, opts, 'dense')[0]
    default = one_exp.ONE_EXP_MAX_SPREAD
    forced = _blocked_with_spread(
        monkeypatch, SPREADS['one-exp'], x, y_pos, y_neg, None, None, opts
    )[0]
    assert not np.isfinite(np.asarray(forced)).all() or not _rel(forced, dense) < 1e-2
    auto = _blocked_with_spread(monkeypatch, default, x, y_pos, y_neg, None, None, opts)[0]
    assert _rel(auto, dense) < TOL


def _far_target_block(weight_far: float):
    """Queries near the origin and a block of 8 targets, the last one 40 away."""
    rng = np.random.default_rng(5)
    x = _f32(rng.normal(size=(16, 2)))
    y = _f32(np.concatenate([rng.normal(size=(7, 2)), [[30.0, 30.0]]]))
    q = engine.make_queries(x, None, None)
    t = engine.make_targets(y, jnp.ones(8).at[7].set(weight_far), None, jnp.zeros(2))
    u = engine.block_u(q, t, 'laplace')
    return u, t


@pytest.mark.parametrize('weight_far,exact', [(1.0, False), (0.0, True)])
def test_one_exp_block_flags_a_column_far_beyond_the_block_minimum(weight_far, exact) -> None:
    """A target whose nearest query lies far beyond the block's nearest pair (k (c - m) ~
    800) makes the block's one-exp terms inexact (unless its weight masks it)."""
    u, t = _far_target_block(weight_far)
    opts = DriftOptions(temperatures=(0.05,), scale_dist=False, self_mask=False)
    row_shift = jnp.min(u, axis=1)
    got = one_exp.one_exp_block(u, t, row_shift, jnp.min(u), jnp.float32(1.0), opts)
    assert bool(got[3]) is exact


def test_blocked_field_with_a_far_target_equals_dense() -> None:
    """The far target's block is not exact in one-exp terms, so the blocked field is
    computed again with two-exp terms: it must equal the dense one."""
    rng = np.random.default_rng(6)
    x = _f32(rng.normal(size=(20, 2)))
    y_pos = _f32(np.concatenate([rng.normal(size=(15, 2)) + 0.5, [[30.0, 30.0]]]))
    opts = DriftOptions(temperatures=(0.05, 0.2), block_size=8)
    dense = _field(x, y_pos, None, None, None, opts, 'dense')[0]
    assert _rel(_field(x, y_pos, None, None, None, opts, 'blocked')[0], dense) < TOL


@pytest.mark.parametrize(
    'n,d,b,mask_self',
    [(37, 2, 8, True), (40, 12, 8, True), (24, 3, 8, False), (7, 2, 8, True), (50, 16, 5, True)],
)
def test_symmetric_first_pass_equals_column_blocks(n, d, b, mask_self) -> None:
    """The negatives' first pass from symmetric tiles (5 / 5 / 3 / 1 / 10 tiles: odd, even,
    one) gives the row minima and distance sum of the plain pass over column blocks."""
    x = jnp.asarray(np.random.default_rng(n).normal(size=(n, d)), jnp.float32)
    q = engine.make_queries(x, None, jnp.arange(n) if mask_self else None)
    t = engine.make_targets(x, jnp.ones(n), jnp.arange(n) if mask_self else None, jnp.zeros(d))
    want_min, _, want_sum = engine.pass1_block(q, t, True)
    got_min, got_sum = jax.jit(blocked.symmetric_pass1, static_argnums=(1, 2, 3))(
        x, b, mask_self, True
    )
    assert got_min.shape == (-(-n // b) * b,) and np.isinf(got_min[n:]).all()
    np.testing.assert_allclose(got_min[:n], want_min, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_sum, want_sum, rtol=1e-6)


@pytest.mark.parametrize('temps,m', [((0.05,), 30), (PAPER, 30), ((0.05,), 90)])
def test_blocked_without_negatives_uses_symmetric_pass_and_equals_dense(
    temps, m, monkeypatch
) -> None:
    """y_neg=None (the queries are the negatives) takes the symmetric first pass in the
    one-group blocked form, and the field equals the dense one (also with 90 positives:
    12 blocks against 6 negative ones, so that the first stream holds positives too)."""
    rng = np.random.default_rng(11)
    x, y_pos = _f32(rng.normal(size=(45, 3))), _f32(rng.normal(size=(m, 3)) + 0.4)
    calls = []
    real = blocked.symmetric_pass1
    monkeypatch.setattr(blocked, 'symmetric_pass1', lambda *a: calls.append(a[1:]) or real(*a))
    opts = DriftOptions(temperatures=temps, block_size=8)
    got = _field(x, y_pos, None, None, None, opts, 'blocked')[0]
    assert calls == [(8, True, True)]
    assert _rel(got, _field(x, y_pos, None, None, None, opts, 'dense')[0]) < TOL


def test_vmapped_public_api_keeps_finite_gradients_where_one_exp_does_not_fit() -> None:
    """A user's vmap over compute_drift_field turns the per-block cond into a select, which
    evaluates the one-exp terms even where they do not fit (the outlier): the field and its
    gradients (vmap of grad, and grad of vmap) must stay finite and equal the unvmapped
    ones."""
    x, y_pos, y_neg, kw = _outlier_inputs()
    probe = jnp.asarray(np.random.default_rng(1).normal(size=x.shape), jnp.float32)

    def f(a, y):
        return jnp.sum(compute_drift_field(a, y, y_neg, **kw) * probe)

    xs, ys = jnp.stack([x, x * 1.1]), jnp.stack([y_pos, y_pos * 1.1])
    field = jax.jit(lambda a, y: compute_drift_field(a, y, y_neg, **kw))
    vmapped = jax.jit(jax.vmap(field))(xs, ys)
    for i in range(2):
        assert _rel(vmapped[i], field(xs[i], ys[i])) < TOL
    vmap_of_grad = jax.jit(jax.vmap(jax.grad(f)))(xs, ys)
    grad_of_vmap = jax.jit(jax.grad(lambda a, y: jnp.sum(jax.vmap(f)(a, y))))(xs, ys)
    grad = jax.jit(jax.grad(f))
    for i in range(2):
        assert _rel(vmap_of_grad[i], grad(xs[i], ys[i])) < 1e-4
        assert _rel(grad_of_vmap[i], grad(xs[i], ys[i])) < 1e-4


def test_blocked_gradient_matches_dense() -> None:
    x, y_pos, _, _, _, _ = _inputs('default-odd-sizes')
    probe = jnp.asarray(np.random.default_rng(0).normal(size=x.shape), jnp.float32)
    opts = DriftOptions(temperatures=(0.05, 0.2), block_size=8)

    def grad(form):
        def f(a):
            v = _field.__wrapped__(a[None], y_pos[None], None, None, None, opts, form)[0]
            return jnp.sum(v[0] * probe)

        return jax.jit(jax.grad(f))(jnp.asarray(x))

    assert _rel(grad('blocked'), grad('dense')) < 1e-4


def test_one_exp_forward_two_exp_derivatives(monkeypatch) -> None:
    """The one-group blocked form runs one-exp terms forward (also inside the drifting
    loss's gradient, whose field inputs are under stop_gradient) and differentiates the
    two-exp form; its JVP's primal output equals the forward field."""
    x, y_pos, _, _, _, _ = _inputs('default-odd-sizes')
    opts = DriftOptions(temperatures=(0.05, 0.2), block_size=8)
    traced = []
    real = blocked.single_group_field
    monkeypatch.setattr(
        blocked, 'single_group_field', lambda *a, **k: traced.append(k['one_exp']) or real(*a, **k)
    )

    def blocked_field(a):
        return _field.__wrapped__(a, y_pos, None, None, None, opts, 'blocked')[0]

    forward = jax.jit(blocked_field)(x)
    assert traced == [True]
    traced.clear()
    primal, tangent = jax.jit(lambda a: jax.jvp(blocked_field, (a,), (jnp.ones_like(a),)))(x)
    assert traced == [False]
    assert _rel(primal, forward) < TOL and np.isfinite(np.asarray(tangent)).all()
    traced.clear()
    loss_grad = jax.jit(jax.grad(lambda a: field.drift_loss(a, y_pos, None, opts)[0]))(x)
    assert traced == [True] and np.isfinite(np.asarray(loss_grad)).all()


# ----------------------------------------------------------------------------
# Automatic choice of the form.


def test_select_block_size_memory_threshold() -> None:
    # Off CPU only the memory estimate decides.
    t = 3
    per_entry = field.dense_memory_bytes(1, 1, 1, t)
    limit_entries = field.DENSE_MEMORY_LIMIT_BYTES // per_entry
    n = 4096
    m_fits = limit_entries // n
    assert field.select_block_size(1, n, m_fits, 64, t, backend='gpu') is None
    block = field.select_block_size(1, n, m_fits + 1, 64, t, backend='gpu')
    assert isinstance(block, int) and block > 0
    # Groups count: two groups of half the size need as much as one of the full size.
    assert field.select_block_size(2, n, m_fits // 2 + 1, 64, t, backend='gpu')
    assert field.select_block_size(1, 65536, 65536, 784, t, backend='cpu')  # 2 GiB+.


def test_select_block_size_speed_rule_and_explicit() -> None:
    big = field.BLOCKED_MIN_ENTRIES
    assert field.select_block_size(1, 1024, big // 1024, 2, 1, backend='cpu')
    assert field.select_block_size(1, 1024, big // 1024 - 1, 2, 1, backend='cpu') is None
    assert field.select_block_size(1, 4096, 8192, 784, 1, backend='cpu') is None
    assert field.select_block_size(1, 4096, 8192, 2, 1, backend='tpu') is None
    assert field.select_block_size(1, 8, 8, 2, 1, block_size=3, backend='cpu') == 3


@pytest.mark.parametrize('n,t', [(1, 1), (4096, 1), (4096, 3), (65536, 3), (10**7, 3)])
def test_auto_block_size_bounds(n: int, t: int) -> None:
    b = blocked.auto_block_size(n, t)
    assert 16 <= b <= 4096
    assert b % 128 == 0 or (b < 128 and b & (b - 1) == 0)


@pytest.mark.parametrize(
    'num_neg,num_pos,streams', [(3, 2, 2), (1, 4, 2), (4, 1, 3), (2, 2, 1), (1, 1, 2)]
)
def test_streams_cover_every_block_once_within_one_set(num_neg, num_pos, streams) -> None:
    """Streams split the blocks contiguously and each segment feeds one set only."""
    ranges = blocked.stream_ranges(num_neg + num_pos, streams)
    assert len(ranges) == min(streams, num_neg + num_pos)
    sizes = [hi - lo for lo, hi in ranges]
    assert max(sizes) - min(sizes) <= 1
    covered = []
    for lo, hi in ranges:
        for set_id, a, b in blocked.stream_segments(lo, hi, num_neg):
            assert lo <= a < b <= hi
            assert all((k >= num_neg) == (set_id == 1) for k in range(a, b))
            covered += range(a, b)
    assert covered == list(range(num_neg + num_pos))


def test_field_takes_blocked_path_above_threshold(monkeypatch) -> None:
    """With a tiny memory limit the public API must stream (and give the same field)."""
    x, y_pos, _, _, _, _ = _inputs('default-odd-sizes')
    want = jax.jit(compute_drift_field)(x, y_pos)
    calls = []
    real = blocked.single_group_field

    def spy(*args, **kwargs):
        calls.append(kwargs.get('block_size'))
        return real(*args, **kwargs)

    monkeypatch.setattr(field.driver, 'DENSE_MEMORY_LIMIT_BYTES', 1024)
    monkeypatch.setattr(blocked, 'single_group_field', spy)
    # A fresh function, so jit traces again under the patched limit (eager takes ~15 s).
    got = jax.jit(lambda a, b: compute_drift_field(a, b))(x, y_pos)
    assert calls and calls[0] > 0
    assert _rel(got, want) < TOL


@pytest.mark.parametrize('bad', [2.5, '8', True, np.float32(4.0)])
def test_non_integer_block_size_raises(bad) -> None:
    with pytest.raises(ValueError, match='block_size'):
        DriftOptions(block_size=bad)


def test_negative_block_size_raises() -> None:
    with pytest.raises(ValueError, match='block_size=-1'):
        DriftOptions(block_size=-1)
    assert DriftOptions(block_size=np.int64(64)).block_size == 64


# ----------------------------------------------------------------------------
# Sharded form: 8 fake CPU devices in a subprocess.

SHARDED_CASES = [
    'default-odd-n',
    'mesh8-odd-n',
    'explicit-mesh',
    'fewer-queries-than-devices',
    'blocked-per-device',
    'tau0.01-raw',
    'none-laplace',
    'targets-gauss-d16-weights',
    'groups-cfg-selfmask',
    'online-blocked-groups-cfg',
    'bf16',
    'loss',
    'loss-grad',
]


@pytest.fixture(scope='module')
def sharded_results() -> dict:
    worker = Path(__file__).with_name('_drift_sharded_worker.py')
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    proc = subprocess.run(
        [sys.executable, str(worker)], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('case', SHARDED_CASES)
def test_sharded_equals_single_device(sharded_results: dict, case: str) -> None:
    assert case in sharded_results, sorted(sharded_results)
    assert sharded_results[case] < TOL, sharded_results[case]
