"""RealNVP coupling flow: exact inverses, log-determinants against autodiff Jacobians, the
likelihood at the identity start in closed form, bits/dim, bad options refused before any
compile, and tiny runs through the trainer (points and digits) with held-out likelihoods
and an exact resume."""

from __future__ import annotations

import json
import math
import os
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drift_jax import defaults, train
from drift_jax.methods import flow as flow_method
from drift_jax.models import flows


def _perturbed(params, key, scale=0.1):
    """Parameters moved off the identity start (zero output layers), so every layer acts."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    moved = [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(tree, moved)


def _check_inverse_and_logdet(model, x, labels=None, scale=0.1):
    """Returns z for `labels` and for the labels rolled by one (the same x)."""
    init = jax.jit(lambda k: model.init(k, x, labels, method=model.forward))
    params = _perturbed(init(jax.random.PRNGKey(0)), jax.random.PRNGKey(1), scale)

    def z_of(x_flat, label):  # one example, flattened: [D] -> [D]
        x1 = x_flat.reshape(1, *x.shape[1:])
        return model.apply(params, x1, label, method=model.forward)[0][0]

    @jax.jit  # one compile for the whole check
    def check(x, labels):
        n = x.shape[0]
        flat = x.reshape(n, -1)
        if labels is None:
            z, logdet = model.apply(params, x, None, method=model.forward)
            jac = jax.vmap(jax.jacfwd(lambda a: z_of(a, None)))(flat)
            z_other = z
        else:  # x again with the labels rolled by one, in the same pass
            both = jnp.concatenate([labels, jnp.roll(labels, 1)])
            z2, logdet = model.apply(params, jnp.concatenate([x, x]), both, method=model.forward)
            z, z_other, logdet = z2[:n], z2[n:], logdet[:n]
            jac = jax.vmap(jax.jacfwd(z_of))(flat, labels[:, None])
        back = model.apply(params, z, labels, method=model.inverse)
        return z, logdet, back, jac, z_other

    z, logdet, back, jac, z_other = check(x, labels)
    assert z.shape == (x.shape[0], math.prod(x.shape[1:]))
    assert float(jnp.max(jnp.abs(z.reshape(x.shape) - x))) > 0.2  # not the identity
    np.testing.assert_allclose(back, x, atol=1e-5)
    sign, want = np.linalg.slogdet(np.asarray(jac, np.float64))
    assert np.all(sign != 0)
    np.testing.assert_allclose(logdet, want, atol=2e-4, rtol=1e-4)
    return z, z_other


@pytest.mark.parametrize('dim', [2, 3])
def test_point_flow_inverse_and_log_determinant(dim):
    model = flows.PointFlow(dim, layers=4, width=16, depth=2, bound=2.0, actnorm=True)
    x = jax.random.normal(jax.random.PRNGKey(2), (6, dim))
    _check_inverse_and_logdet(model, x)


def test_image_flow_with_labels_inverse_and_log_determinant():
    """4x4x1 through two levels: checkerboard and channel couplings of both parities, two
    squeezes and a factored-out half (D = 16). Parameters move less than for points: the
    deeper image flow amplifies float32 rounding more."""
    model = flows.ImageFlow((4, 4, 1), 2, 2, 8, 1, 2.0, True, num_classes=3)
    x = jax.random.uniform(jax.random.PRNGKey(3), (3, 4, 4, 1), minval=-1.0, maxval=1.0)
    z, z_other = _check_inverse_and_logdet(model, x, jnp.asarray([0, 1, 2]), scale=0.05)
    assert float(jnp.min(jnp.max(jnp.abs(z - z_other), axis=1))) > 1e-3  # labels matter


def test_masks_squeeze_and_bounded_scale():
    # D = 2: the two layers of a pair transform the second, then the first coordinate.
    np.testing.assert_array_equal(flows.pass_mask('alternate', 0, (2,)), [1, 0])
    np.testing.assert_array_equal(flows.pass_mask('alternate', 1, (2,)), [0, 1])
    board = np.asarray(flows.pass_mask('checkerboard', 0, (2, 3, 5)))[..., 0]
    np.testing.assert_array_equal(board, [[1, 0, 1], [0, 1, 0]])
    x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
    s = flows.squeeze(x)
    assert s.shape == (2, 2, 2, 12)
    np.testing.assert_array_equal(s[0, 1, 0].reshape(2, 2, 3), x[0, 2:4, 0:2])  # one 2x2 patch
    np.testing.assert_array_equal(flows.unsqueeze(s), x)
    raw = jnp.asarray([-1e4, -0.01, 0.0, 0.01, 1e4])
    log_s = flows.bounded_log_scale(raw, 1.5)
    assert float(jnp.max(jnp.abs(log_s))) <= 1.5 and float(log_s[-1]) == pytest.approx(1.5)
    np.testing.assert_allclose(log_s[1:4], raw[1:4], atol=1e-6)


def _method(shape, num_classes=0):
    """The Flow method on a stand-in task (a shape and, for images, the [-1, 1] range)."""
    config = defaults.image_config() if len(shape) == 3 else defaults.toy_config()
    config.flow.width, config.flow.depth = 8, 1
    if len(shape) == 3:
        config.flow.levels, config.flow.blocks = 1, 1
    task = types.SimpleNamespace(
        data_shape=shape,
        num_classes=num_classes,
        kind='images' if len(shape) == 3 else 'points',
        data=types.SimpleNamespace(value_range=(-1.0, 1.0)),
    )
    return flow_method.Flow(config, task, mesh=None)


@pytest.mark.parametrize('shape', [(3,), (4, 4, 3)])
def test_identity_start_has_the_standard_normal_likelihood(shape):
    method = _method(shape, num_classes=2 if len(shape) == 3 else 0)
    params, _ = jax.jit(method.init)(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(5, *shape)).astype(np.float32)
    labels = jnp.asarray([0, 1, 0, 1, 1]) if len(shape) == 3 else None
    d = math.prod(shape)
    want = 0.5 * np.sum(x.reshape(5, -1).astype(np.float64) ** 2, -1) + 0.5 * d * np.log(2 * np.pi)
    got = jax.jit(method.nll)(params['flow'], x, labels)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_bits_per_dim_counts_pixel_units():
    # A density uniform over the dequantised cube of 256 bins of width b is exactly 8 bits/dim.
    b, d = 2.0 / 255.0, 12
    nll = jnp.asarray([d * math.log(256 * b)])
    assert float(flow_method.bits_per_dim(nll, d, b)[0]) == pytest.approx(8.0, rel=1e-6)
    # The same as (-log p(v) + D log 256) / (D ln 2) for v = y / 256 in [0, 1).
    nll_train = jnp.asarray([3.0])
    nll_unit = 3.0 - d * math.log(256 * b)  # v = (x - lo) / (256 b): p(v) = p(x) (256 b)^D
    want = (nll_unit + d * math.log(256)) / (d * math.log(2))
    assert float(flow_method.bits_per_dim(nll_train, d, b)[0]) == pytest.approx(want, rel=1e-6)
    x = jnp.zeros((4000, 1))
    noisy = flow_method.dequantise(jax.random.PRNGKey(0), x, b)
    assert float(noisy.min()) >= -b / 2 and float(noisy.max()) < b / 2
    assert float(noisy.std()) == pytest.approx(b / math.sqrt(12), rel=0.05)


def tiny_config(**overrides):
    c = defaults.toy_config()
    c.method = 'flow'
    del c['method_settings']  # the tiny sizes below, not the tuned toy settings
    c.flow.layers, c.flow.width, c.flow.depth = 4, 16, 1
    c.train.steps, c.train.batch_size = 8, 64
    c.train.log_every, c.train.checkpoint_every, c.train.max_to_keep = 4, 4, 5
    c.eval.every, c.eval.num_samples, c.eval.plot_points, c.eval.draws = 8, 100, 100, 2
    for key, value in overrides.items():
        section, _, name = key.rpartition('.')
        (c[section] if section else c)[name] = value
    return c


@pytest.mark.parametrize(
    'overrides, message',
    [
        ({'flow.layers': 0}, 'flow.layers must be a positive integer, got 0'),
        ({'flow.width': 0}, 'flow.width must be a positive integer, got 0'),
        ({'flow.depth': -1}, 'flow.depth must be a positive integer, got -1'),
        ({'flow.scale': 0.0}, r'flow.scale \(the bound on log s\) must be positive, got 0.0'),
        ({'flow.scale': -2.0}, 'must be positive, got -2.0'),
    ],
)
def test_bad_options_are_refused_before_any_compile(overrides, message):
    with pytest.raises(ValueError, match=message):
        train.validate_config(tiny_config(**overrides))


def test_a_config_without_the_flow_block_is_refused():
    c = tiny_config()
    del c['flow']
    with pytest.raises(ValueError, match="method='flow' needs the config block flow"):
        train.validate_config(c)


def test_toy_run_nll_resume_and_sampling(tmp_path):
    config = tiny_config()
    workdir = str(tmp_path / 'run')
    result = train.train_and_evaluate(config, workdir)
    assert result['nfe'] == 1 and np.isfinite(result['energy_ratio'])
    assert np.isfinite(result['nll']) and result['nll'] > 0

    crashed = str(tmp_path / 'crashed')
    shutil.copytree(workdir, crashed)
    shutil.rmtree(os.path.join(crashed, 'checkpoints', '8'))
    train.train_and_evaluate(config, crashed)
    leaves = [jax.tree.leaves(train.load_run(w)[1]) for w in (workdir, crashed)]
    for a, b in zip(*leaves, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    run, state, _ = train.load_run(workdir)
    params = state.ema_params
    # The logged figure is the held-out NLL of the EMA parameters.
    assert run.method.evaluate(params, 8)['nll'] == pytest.approx(result['nll'], rel=1e-6)
    key = jax.random.PRNGKey(0)
    x = train.sample(run, params, key, 300)
    assert x.shape == (300, 2) and np.all(np.isfinite(x))
    np.testing.assert_array_equal(x, train.sample(run, params, key, 300))
    # Sampling is the inverse pass: the forward pass of the samples gives back T z.
    cold = run.method.sample(params, key, 300, temperature=0.5)
    model = run.method.model
    z, _ = jax.jit(lambda p, x: model.apply(p, x, method=model.forward))(params['flow'], cold)
    np.testing.assert_allclose(z, 0.5 * jax.random.normal(key, (300, 2)), atol=1e-4)
    with pytest.raises(ValueError, match='temperature must be positive, got 0'):
        run.method.sample(params, key, 3, temperature=0)
    with pytest.raises(ValueError, match='labels apply to labelled data only'):
        run.method.sample(params, key, 3, labels=[1, 2, 3])
    with pytest.raises(ValueError, match='--steps applies to multi-step methods'):
        train.sample_workdir(workdir, 5, steps=10)
    cli = train.sample_workdir(workdir, 7, seed=0)
    assert cli.shape == (7, 2) and np.all(np.isfinite(cli))


@pytest.fixture(scope='module')
def digits_dir(digits_data_dir):
    return digits_data_dir


def _digits_config(data_dir, **overrides):
    c = defaults.image_config()
    c.method = 'flow'
    del c['method_settings']
    c.data.data_dir = data_dir
    c.flow.levels, c.flow.blocks, c.flow.width, c.flow.depth = 1, 1, 8, 1
    c.train.steps, c.train.batch_size = 2, 16
    c.train.log_every = c.train.checkpoint_every = c.eval.every = 2
    c.eval.num_samples, c.eval.classifier_steps, c.eval.grid_per_class = 20, 5, 2
    for key, value in overrides.items():
        section, _, name = key.rpartition('.')
        c[section][name] = value
    return c


def test_image_levels_that_squeeze_cannot_halve_are_refused(digits_dir):
    with pytest.raises(ValueError, match=r'flow.levels=4 squeezes 8x8 images 4 times.*<= 3'):
        train.validate_config(_digits_config(digits_dir, **{'flow.levels': 4}))


def test_class_conditional_digits_bits_per_dim(tmp_path, digits_dir, monkeypatch):
    workdir = str(tmp_path / 'w')
    result = train.train_and_evaluate(_digits_config(digits_dir), workdir)
    assert result['nfe'] == 1 and np.isfinite(result['fd'])
    # 64 pixels of 8 bits: a few bits per dimension after two steps, never below zero.
    assert 0 < result['bits_per_dim'] < 16
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        logged = [json.loads(line) for line in f]
    train_rows = [r for r in logged if 'loss' in r]
    assert train_rows and all(
        r['bits_per_dim'] * math.log(2) == pytest.approx(r['loss']) for r in train_rows
    )

    run, state, _ = train.load_run(workdir)
    # Chunks of 7 (the last one padded) give the figure of one chunk of all 20.
    monkeypatch.setattr(flow_method, 'EVAL_CHUNK', 7)
    run.method._eval_fn = None
    chunked = run.method.evaluate(state.ema_params, 2)['bits_per_dim']
    assert chunked == pytest.approx(result['bits_per_dim'], rel=1e-5)

    x = train.sample(run, state.ema_params, jax.random.PRNGKey(0), 4, labels=[3, 7])
    assert x.shape == (4, 8, 8, 1) and x.min() >= 0 and x.max() <= 1
    params, key = state.ema_params, jax.random.PRNGKey(1)
    with pytest.raises(ValueError, match="method='flow' has no guidance"):
        run.method.sample(params, key, 2, alpha=2.0)
