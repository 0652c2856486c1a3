"""Tests of `affinity_floor`: the official release's floored affinity as a field option.

The library's floored field is checked against a plain float64 restatement of the official
loss's field (written here from its semantics, with its calling convention: targets
[generated; negatives; positives]), then: a zero floor leaves the exact field unchanged, the
floor matters in 2-D and hardly at all in 784-D, invalid floors and combinations are refused
before anything is computed, and the config value reaches the field.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from drift_jax import defaults
from drift_jax.field import (
    DriftOptions,
    compute_drift_field,
    compute_drift_field_with,
    drift_loss,
    driver,
    options_from_config,
    sharded_drift_field,
)

PAPER_TEMPS = (0.02, 0.05, 0.2)
N, M_POS = 64, 128


@functools.partial(jax.jit, static_argnames=('opts',))
def _jit_field(x, y_pos, y_neg=None, w_pos=None, w_neg=None, *, opts: DriftOptions):
    """The field under one jit per option set (eager mode compiles every op: slow here)."""
    return compute_drift_field_with(x, y_pos, y_neg, opts, weights_pos=w_pos, weights_neg=w_neg)


def field(x, y_pos, y_neg=None, weights_pos=None, weights_neg=None, **options):
    return _jit_field(x, y_pos, y_neg, weights_pos, weights_neg, opts=DriftOptions(**options))


def _softmax(logits: np.ndarray, axis: int) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


def official_field(
    gen,
    pos,
    neg=None,
    w_gen=None,
    w_pos=None,
    w_neg=None,
    *,
    temperatures=PAPER_TEMPS,
    floor=1e-6,
    scale_dist=True,
    normalize_drift=True,
):
    """The official loss's field in float64, in the input's coordinates [B, N, D].

    Targets are [gen; neg; pos] with their weights; distances sqrt(max(|x - y|^2, 1e-8));
    one scale s = mean(w d) / mean(w) over every group, query and target (self pairs too);
    coordinates / max(s / sqrt(D), 1e-3), distances / max(s, 1e-3), +100 on the self pairs;
    per temperature: both softmaxes of -distance / tau over every target and query, a =
    sqrt(max(product, floor)) * w, the force sum_j coeff_ij y_j - (sum_j coeff_ij) x_i with
    coefficients -a_neg * sum(a_pos) and a_pos * sum(a_neg), divided by sqrt(max(mean of its
    squares, 1e-8)), summed. The two switches (off: s = 1, no division) are the library's.
    """
    gen, pos = np.asarray(gen, np.float64), np.asarray(pos, np.float64)
    b, n, d = gen.shape
    neg = np.zeros((b, 0, d)) if neg is None else np.asarray(neg, np.float64)

    def ones_or(w, m):
        return np.ones((b, m)) if w is None else np.broadcast_to(np.asarray(w, np.float64), (b, m))

    targets = np.concatenate([gen, neg, pos], axis=1)
    w = np.concatenate(
        [ones_or(w_gen, n), ones_or(w_neg, neg.shape[1]), ones_or(w_pos, pos.shape[1])], axis=1
    )
    sq = np.sum((gen[:, :, None, :] - targets[:, None, :, :]) ** 2, axis=-1)
    dist = np.sqrt(np.maximum(sq, 1e-8))
    if scale_dist:
        scale = np.mean(dist * w[:, None, :]) / np.mean(w)
        c = max(scale / np.sqrt(d), 1e-3)
        dist = dist / max(scale, 1e-3)
    else:
        c = 1.0
    dist[:, np.arange(n), np.arange(n)] += 100.0
    x_s, y_s = gen / c, targets / c
    split = n + neg.shape[1]
    total = np.zeros_like(gen)
    for tau in temperatures:
        logits = -dist / tau
        a = np.sqrt(np.maximum(_softmax(logits, 2) * _softmax(logits, 1), floor)) * w[:, None, :]
        a_neg, a_pos = a[:, :, :split], a[:, :, split:]
        coeff = np.concatenate(
            [-a_neg * a_pos.sum(-1, keepdims=True), a_pos * a_neg.sum(-1, keepdims=True)], axis=2
        )
        force = np.einsum('bnm,bmd->bnd', coeff, y_s) - coeff.sum(-1)[..., None] * x_s
        if normalize_drift:
            force = force / np.sqrt(max(np.mean(force**2), 1e-8))
        total = total + force
    return total * c


def _rel(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape and np.isfinite(got).all()
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _cos(a, b) -> float:
    a, b = np.ravel(np.asarray(a, np.float64)), np.ravel(np.asarray(b, np.float64))
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _points(d: int, seed: int, groups: int = 1):
    """Queries near the origin and positives shifted by 0.5 per coordinate, [G, ., d]."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(groups, N, d)).astype(np.float32)
    y = (rng.normal(size=(groups, M_POS, d)) + 0.5).astype(np.float32)
    return x, y


# ----------------------------------------------------------------------------
# 1. The official field.


@pytest.mark.parametrize('d', [2, 64, 784])
def test_matches_official_field(d: int) -> None:
    x, y = _points(d, seed=d)
    got = field(x[0], y[0], affinity_floor=1e-6)  # paper defaults otherwise
    want = official_field(x, y)[0]
    assert _rel(got, want) <= 1e-5


@pytest.mark.parametrize(
    'switches',
    [{}, {'scale_dist': False, 'normalize_drift': False}],
    ids=['paper', 'raw'],
)
def test_matches_official_field_groups_weights_negatives(switches) -> None:
    """Three groups of different spreads share one scale and one RMS per temperature; the
    unconditional negatives carry guidance weights, one of them 0 (it still takes part in
    both softmaxes); the first N negatives are the queries, self-masked."""
    g, n_unc, d = 3, 16, 16
    rng = np.random.default_rng(3)
    spread = np.array([0.3, 1.0, 3.0])[:, None, None]
    x = (rng.normal(size=(g, N, d)) * spread).astype(np.float32)
    y = ((rng.normal(size=(g, M_POS, d)) + 0.5) * spread).astype(np.float32)
    unc = ((rng.normal(size=(g, n_unc, d)) - 0.3) * spread).astype(np.float32)
    w_unc = np.full((g, n_unc), 0.5 * (N - 1) / n_unc, np.float32)
    w_unc[:, 3] = 0.0
    w_pos = rng.uniform(0.5, 2.0, size=(g, M_POS)).astype(np.float32)
    temps = (0.05,) if switches else PAPER_TEMPS
    got = field(
        x,
        y,
        np.concatenate([x, unc], axis=1),
        weights_pos=w_pos,
        weights_neg=np.concatenate([np.ones((g, N), np.float32), w_unc], axis=1),
        self_mask=True,
        temperatures=temps,
        affinity_floor=1e-4,
        **switches,
    )
    want = official_field(x, y, unc, None, w_pos, w_unc, temperatures=temps, floor=1e-4, **switches)
    assert _rel(got, want) <= 1e-5


def test_loss_and_stats_with_floor() -> None:
    """The loss is the mean squared field in the official scaled coordinates; its gradient
    is finite; the stats report the official scale (self pairs included)."""
    x, y = _points(8, seed=1)
    x, y = x[0], y[0]
    loss_fn = jax.jit(functools.partial(drift_loss, opts=DriftOptions(affinity_floor=1e-6)))
    (loss, stats), grad = jax.value_and_grad(lambda a: loss_fn(a, y, None), has_aux=True)(x)
    targets = np.concatenate([x, y]).astype(np.float64)
    sq = np.sum((x[:, None].astype(np.float64) - targets[None]) ** 2, -1)
    scale = np.sqrt(np.maximum(sq, 1e-8)).mean()
    np.testing.assert_allclose(float(stats['scale']), scale, rtol=1e-5)
    v = official_field(x[None], y[None])[0]
    c = scale / np.sqrt(8)
    np.testing.assert_allclose(float(loss), np.mean(np.sum((v / c) ** 2, -1)), rtol=1e-4)
    assert np.isfinite(np.asarray(grad)).all() and np.abs(np.asarray(grad)).max() > 0


@pytest.mark.parametrize('d', [2, 64, 784])
def test_official_loss_with_mean_reduction(d: int) -> None:
    """With loss_reduction='mean' the loss is the official one, mean over samples and
    coordinates of (x/c - sg(x/c + V))^2 = mean(V^2) in its scaled coordinates, and so is
    its gradient, -2 V / (N D c); 'sum' is D times both."""
    x, y = _points(d, seed=10 + d)
    x, y = x[0], y[0]
    targets = np.concatenate([x, y]).astype(np.float64)
    sq = np.sum((x[:, None].astype(np.float64) - targets[None]) ** 2, -1)
    c = max(np.sqrt(np.maximum(sq, 1e-8)).mean() / np.sqrt(d), 1e-3)
    v_scaled = official_field(x[None], y[None])[0] / c
    want_loss = np.mean(v_scaled**2)
    want_grad = -2.0 * v_scaled / (N * d * c)
    got = {}
    for reduction in ('mean', 'sum'):
        opts = DriftOptions(affinity_floor=1e-6, loss_reduction=reduction)
        loss_fn = jax.jit(lambda a, o=opts: drift_loss(a, y, None, o))
        (loss, _), grad = jax.value_and_grad(loss_fn, has_aux=True)(x)
        got[reduction] = float(loss), np.asarray(grad)
    assert abs(got['mean'][0] - want_loss) / want_loss <= 1e-5
    assert _rel(got['mean'][1], want_grad) <= 1e-5
    assert got['sum'][0] == pytest.approx(d * got['mean'][0], rel=1e-5)
    np.testing.assert_allclose(got['sum'][1], d * got['mean'][1], rtol=1e-4, atol=1e-12)


def test_unknown_loss_reduction_is_refused() -> None:
    with pytest.raises(ValueError, match=r"drift.loss_reduction='max' is unknown.*'sum', 'mean'"):
        DriftOptions(loss_reduction='max')
    c = defaults.toy_config()
    assert c.drift.loss_reduction == 'sum'
    c.drift.loss_reduction = 'mean'
    assert options_from_config(c.drift).loss_reduction == 'mean'


# ----------------------------------------------------------------------------
# 2. A zero floor is the exact field; a positive one matters in 2-D.


def test_zero_floor_is_the_exact_field_bit_for_bit() -> None:
    """A zero floor is the default: the same options (equal and equally hashed, so the same
    compiled field) and the same values; the toy configs keep it."""
    assert DriftOptions(affinity_floor=0.0) == DriftOptions()
    assert hash(DriftOptions(affinity_floor=0)) == hash(DriftOptions())
    toy = defaults.toy_config().drift
    assert toy.affinity_floor == 0.0
    without = {k: v for k, v in toy.items() if k != 'affinity_floor'}
    assert options_from_config(toy) == options_from_config(without)
    x, y = _points(2, seed=5)
    simple = dict(temperatures=0.05, scale_dist=False, normalize_drift=False)
    static = ('temperatures', 'scale_dist', 'normalize_drift', 'affinity_floor')
    jitted = jax.jit(compute_drift_field, static_argnames=static)
    plain = np.asarray(jitted(x[0], y[0], **simple))
    zero = np.asarray(jitted(x[0], y[0], affinity_floor=0.0, **simple))
    np.testing.assert_array_equal(zero, plain)


def test_floor_changes_the_field_in_2d_but_not_in_784d() -> None:
    """In 2-D most products of the two softmaxes are far below 1e-6, so the floor flattens
    the weights and turns the field; in 784-D distances concentrate and it hardly acts."""
    x, y = _points(2, seed=7)
    exact = field(x[0], y[0])
    floored = field(x[0], y[0], affinity_floor=1e-6)
    assert _cos(exact, floored) < 0.9
    assert _rel(floored, exact) > 0.3
    x, y = _points(784, seed=7)
    exact = field(x[0], y[0])
    floored = field(x[0], y[0], affinity_floor=1e-6)
    assert _cos(exact, floored) > 0.999


# ----------------------------------------------------------------------------
# 3. Refusals and the config.


def _small(**kw):
    x = np.zeros((5, 2), np.float32)
    return compute_drift_field(x, np.ones((6, 2), np.float32), **kw)


@pytest.mark.parametrize(
    'call,match',
    [
        (lambda: _small(affinity_floor=-1e-6), r'affinity_floor=-1e-06.*>= 0'),
        (lambda: _small(affinity_floor=float('nan')), r'affinity_floor=nan'),
        (lambda: _small(affinity_floor=float('inf')), r'affinity_floor=inf'),
        (lambda: _small(affinity_floor='1e-6'), r"affinity_floor='1e-6'.*number"),
        (lambda: DriftOptions(affinity_floor=True), r'affinity_floor=True'),
        (lambda: _small(affinity_floor=1e-6, kernel='gaussian'), r"kernel='gaussian'"),
        (lambda: _small(affinity_floor=1e-6, normalize='targets'), r"normalize='targets'"),
        (lambda: _small(affinity_floor=1e-6, block_size=64), r'block_size=64.*block_size=0'),
        (lambda: options_from_config({'affinity_floor': -2.0}), r'affinity_floor=-2\.0'),
    ],
    ids=['negative', 'nan', 'inf', 'string', 'bool', 'kernel', 'normalize', 'block', 'config'],
)
def test_bad_floor_raises(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_blocked_and_sharded_forms_refuse_a_floor() -> None:
    x = np.zeros((5, 2), np.float32)
    y = np.ones((6, 2), np.float32)
    opts = DriftOptions(affinity_floor=1e-6)
    with pytest.raises(ValueError, match='dense form only'):
        driver.field_scaled(x, y, None, None, None, opts, form='blocked')
    mesh = jax.make_mesh((1,), ('data',))
    with pytest.raises(ValueError, match=r'sharded field does not implement.*mesh\.data=1'):
        sharded_drift_field(x, y, None, opts, mesh)


def test_config_floor_reaches_the_field() -> None:
    """`--config.drift.affinity_floor=1e-6` (a locked config's override) reaches the
    drifting method's options; an invalid one stops the run before any compile."""
    from drift_jax import train

    config = defaults.toy_config()
    config.train.batch_size = config.train.num_pos = 64
    config.lock()  # as the command line's config is: only existing keys can be set
    config.drift.affinity_floor = 1e-6
    run = train.make_run(config)
    assert run.method.drift_options.affinity_floor == 1e-6

    class TwoDeviceMesh:  # what the method reads of a mesh whose data axis has 2 devices
        shape = {'data': 2, 'fsdp': 1}

    with pytest.raises(ValueError, match=r'data axis has 2 devices.*mesh\.data=1'):
        type(run.method)(config, run.task, TwoDeviceMesh())
    config.drift.affinity_floor = -1.0
    with pytest.raises(ValueError, match=r'affinity_floor=-1\.0'):
        train.make_run(config)
