"""Tests for drift_jax.models.encoders: the ResNet encoder, its MAE objective, the multi-scale
feature sets and the feature-space drifting loss (docs/images.md).

Encoders are tiny (widths of 4-16 channels) and shapes are checked with eval_shape.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

from drift_jax import field
from drift_jax.methods import features
from drift_jax.models import encoders as enc
from drift_jax.models import layers


@pytest.fixture(autouse=True)
def _fast_compiling_prng():
    """Non-partitionable threefry: each random op compiles ~10x faster on CPU (~0.3 s
    instead of ~4 s here); only the random streams change, not the code under test."""
    with jax.threefry_partitionable(False):
        yield


@pytest.mark.parametrize(
    'shape, expected',
    [
        ((2, 8, 8, 1), [(8, 8, 4), (4, 4, 8), (2, 2, 16)]),
        ((2, 28, 28, 1), [(28, 28, 4), (14, 14, 8), (7, 7, 16)]),
        ((2, 32, 32, 3), [(32, 32, 4), (16, 16, 8), (8, 8, 16)]),
    ],
)
def test_encoder_block_shapes(shape, expected):
    model = enc.ResNetEncoder(widths=(4, 8, 16), blocks_per_stage=2)
    x = jnp.zeros(shape)
    maps, params = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x))
    assert [m.shape for m in maps] == [(shape[0],) + e for e in expected]
    last = jax.eval_shape(lambda p: model.apply(p, x, return_blocks=False), params)
    assert last.shape == (shape[0],) + expected[-1]
    # blocks_per_stage blocks per stage, each with its own parameters.
    assert sorted(k for k in params['params'] if k.startswith('stage1')) == [
        'stage1_block0',
        'stage1_block1',
    ]


def test_stem_stride_halves_every_map_and_mae_reconstructs_full_size():
    model = enc.ResNetEncoder(widths=(4, 8, 16), blocks_per_stage=1, stem_stride=2)
    x = jnp.zeros((2, 28, 28, 1))
    maps, _ = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x))
    assert [m.shape for m in maps] == [(2, 14, 14, 4), (2, 7, 7, 8), (2, 4, 4, 16)]
    mae = enc.make_mae(1, widths=(4, 8), blocks_per_stage=1, decoder_width=4, stem_stride=2)
    assert mae.encoder.stem_stride == 2
    out, _ = jax.eval_shape(lambda: mae.init_with_output(jax.random.key(0), x))
    assert out.shape == (2, 28, 28, 1)
    with pytest.raises(ValueError, match='stem_stride'):
        enc.make_mae(1, stem_stride=0)


def test_encoder_rejects_bad_rank():
    with pytest.raises(ValueError, match=r'\[B, H, W, C\]'):
        enc.ResNetEncoder(widths=(4,)).init(jax.random.key(0), jnp.zeros((8, 8, 1)))


def _digits() -> np.ndarray:
    """sklearn digits as [1797, 8, 8, 1] floats in [-1, 1]."""
    return (load_digits().images.astype(np.float32) / 16.0 * 2.0 - 1.0)[..., None]


def test_random_patch_mask_masks_whole_patches():
    ratio, p = 0.6, 3  # 8x8 image -> 3x3 grid of patches (last row/column cropped to 2).
    mask = np.asarray(enc.random_patch_mask(jax.random.key(1), (5, 8, 8, 1), ratio, p))
    assert mask.shape == (5, 8, 8, 1)
    assert set(np.unique(mask)) == {0.0, 1.0}
    grid = mask[:, ::p, ::p, 0]  # One pixel per patch.
    np.testing.assert_array_equal(grid.reshape(5, -1).sum(1), round(ratio * 9))
    # Constant within each patch.
    full = np.repeat(np.repeat(grid, p, 1), p, 2)[:, :8, :8, None]
    np.testing.assert_array_equal(mask, full)
    # Different images get different masks.
    assert not all(np.array_equal(grid[0], g) for g in grid[1:])
    with pytest.raises(ValueError, match='mask_ratio'):
        enc.random_patch_mask(jax.random.key(1), (5, 8, 8, 1), 1.0, 2)
    with pytest.raises(ValueError, match='mask_ratio'):
        enc.random_patch_mask(jax.random.key(1), (5, 8, 8, 1), 0.01, 2)


def _train_mae(module, images, steps: int, batch_size: int, lr: float, seed: int = 0):
    """AdamW on the MAE objective, batches drawn with replacement inside a jitted step."""
    images = jnp.asarray(images, jnp.float32)
    init_key, train_key = jax.random.split(jax.random.key(seed))
    params = jax.jit(module.init)(init_key, images[:1])['params']
    tx = optax.adamw(lr, weight_decay=1e-4)
    opt_state = tx.init(params)

    @jax.jit
    def step_fn(params, opt_state, key):
        batch_key, mask_key = jax.random.split(key)
        idx = jax.random.randint(batch_key, (batch_size,), 0, images.shape[0])
        grads, _ = jax.grad(enc.mae_loss, has_aux=True)(
            params, module, images[idx], mask_key, 0.5, 2
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for step in range(steps):
        params, opt_state = step_fn(params, opt_state, jax.random.fold_in(train_key, step))
    return params


def test_mae_learns_digits():
    images = _digits()
    train, held_out = images[:1500], jnp.asarray(images[1500:])
    module = enc.make_mae(1, widths=(8, 16), blocks_per_stage=1, decoder_width=16)
    loss_fn = jax.jit(enc.mae_loss, static_argnames=('module', 'mask_ratio', 'patch_size'))
    key = jax.random.key(7)
    before = loss_fn(_train_mae(module, train, 0, 64, 3e-3), module, held_out, key, 0.5, 2)[1]
    params = _train_mae(module, train, 60, 64, 3e-3)
    after = loss_fn(params, module, held_out, key, 0.5, 2)[1]
    assert np.isfinite(float(after['loss']))
    assert float(after['loss']) < 0.5 * float(before['loss'])
    # Better than predicting 0 on the masked patches (the trivial inpainting).
    assert float(after['loss']) < 0.5 * float(after['mse_zero'])
    # The encoder subtree works with a plain ResNetEncoder.
    maps = enc.ResNetEncoder(widths=(8, 16), blocks_per_stage=1).apply(
        {'params': params['encoder']}, held_out[:3]
    )
    assert [m.shape for m in maps] == [(3, 8, 8, 8), (3, 4, 4, 16)]


def _pool_reference(fmap: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over each k x k patch by explicit loops: [B, T, c]."""
    b, h, w, c = fmap.shape
    means, stds = [], []
    for i in range(h // k):
        for j in range(w // k):
            patch = fmap[:, i * k : (i + 1) * k, j * k : (j + 1) * k].reshape(b, k * k, c)
            means.append(patch.mean(1))
            stds.append(patch.std(1))
    return np.stack(means, 1), np.stack(stds, 1)


def test_feature_sets_shapes_and_values():
    rng = np.random.default_rng(0)
    shapes = [(3, 8, 8, 4), (3, 7, 7, 6), (3, 2, 2, 5), (3, 1, 1, 2)]
    maps = [rng.normal(size=s).astype(np.float32) for s in shapes]
    raw = rng.uniform(-1, 1, size=(3, 8, 8, 2)).astype(np.float32)
    feats = features.feature_sets([jnp.asarray(m) for m in maps], jnp.asarray(raw))
    got = {k: v.shape for k, v in feats.items()}
    assert got == {
        'block0/locations': (3, 64, 4),
        'block0/global_mean': (3, 1, 4),
        'block0/global_std': (3, 1, 4),
        'block0/patch2_mean': (3, 16, 4),
        'block0/patch2_std': (3, 16, 4),
        'block0/patch4_mean': (3, 4, 4),
        'block0/patch4_std': (3, 4, 4),
        'block1/locations': (3, 49, 6),
        'block1/global_mean': (3, 1, 6),
        'block1/global_std': (3, 1, 6),
        'block1/patch2_mean': (3, 9, 6),
        'block1/patch2_std': (3, 9, 6),
        'block1/patch4_mean': (3, 1, 6),
        'block1/patch4_std': (3, 1, 6),
        # 2x2 map: its one 2x2 patch is the global set, 4x4 patches do not fit.
        'block2/locations': (3, 4, 5),
        'block2/global_mean': (3, 1, 5),
        'block2/global_std': (3, 1, 5),
        # 1x1 map: the location is the global mean, the global std is 0.
        'block3/locations': (3, 1, 2),
        'raw': (3, 1, 128),
        'energy': (3, 1, 2),
    }
    for s, m in enumerate(maps[:3]):
        b, h, w, c = m.shape
        np.testing.assert_array_equal(feats[f'block{s}/locations'], m.reshape(b, h * w, c))
        np.testing.assert_allclose(
            feats[f'block{s}/global_mean'][:, 0],
            jnp.mean(jnp.asarray(m), axis=(1, 2)),
            rtol=1e-5,
            atol=1e-6,
        )
        np.testing.assert_allclose(
            feats[f'block{s}/global_std'][:, 0], m.std(axis=(1, 2)), rtol=1e-4
        )
    for s, k in ((0, 2), (0, 4), (1, 2), (1, 4)):  # 7x7 crops to 6x6 and 4x4.
        mean, std = _pool_reference(maps[s], k)
        np.testing.assert_allclose(feats[f'block{s}/patch{k}_mean'], mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(feats[f'block{s}/patch{k}_std'], std, rtol=1e-3, atol=1e-4)
    np.testing.assert_array_equal(feats['raw'][:, 0], raw.reshape(3, -1))
    np.testing.assert_allclose(feats['energy'][:, 0], (raw**2).mean((1, 2)), rtol=1e-5)

    # Selections: without 'locations' a 1x1 map keeps its global mean; no raw images, no raw.
    only = features.feature_sets([jnp.asarray(maps[3])], None, include=('global', 'raw'))
    assert list(only) == ['block0/global_mean']


def test_feature_sets_rejects_unknown_kind():
    with pytest.raises(ValueError, match='patch8'):
        features.feature_sets([jnp.zeros((2, 4, 4, 3))], None, include=('global', 'patch8'))


def _grouped(feats: dict, groups: int) -> dict:
    """[G * N, T, D] -> [G, N, T, D] for each set."""
    return {k: v.reshape((groups, -1) + v.shape[1:]) for k, v in feats.items()}


def test_feature_drift_loss_sum_and_gradients():
    g, n, n_pos = 2, 5, 6
    # Per-location sets of two blocks (T = 64 and 16 tokens) and the raw set (T = 1).
    include = ('locations', 'raw')
    model = enc.ResNetEncoder(widths=(4, 8), blocks_per_stage=1)
    k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
    params = jax.jit(model.init)(k1, jnp.zeros((1, 8, 8, 1)))['params']
    gen = jax.random.uniform(k2, (g * n, 8, 8, 1), minval=-1, maxval=1)
    real = jnp.asarray(_digits()[: g * n_pos])
    opts = field.DriftOptions()
    w_pos = jax.random.uniform(k3, (g, n_pos), minval=0.5, maxval=1.5)
    extract = jax.jit(lambda im: features.extract_feature_sets(model, params, im, include=include))
    pos = _grouped(extract(real), g)

    def loss_fn(images, enc_params):
        gen_feats = _grouped(
            features.extract_feature_sets(model, enc_params, images, include=include), g
        )
        loss, metrics = features.feature_drift_loss(gen_feats, pos, None, opts, weights_pos=w_pos)
        # The same sum, one drift_loss call per set on [G * T, N, D] groups.
        manual = 0.0
        for name, x in gen_feats.items():
            t, d = x.shape[2], x.shape[3]
            manual = (
                manual
                + field.drift_loss(
                    jnp.swapaxes(x, 1, 2).reshape(g * t, n, d),
                    jnp.swapaxes(pos[name], 1, 2).reshape(g * t, n_pos, d),
                    None,
                    opts,
                    weights_pos=jnp.repeat(w_pos, t, axis=0),
                )[0]
            )
        return loss, (metrics, manual)

    (loss, (metrics, manual)), (grad_x, grad_p) = jax.jit(
        jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
    )(gen, params)
    assert sorted(pos) == ['block0/locations', 'block1/locations', 'raw']
    assert np.isfinite(float(loss))
    np.testing.assert_allclose(float(loss), float(manual), rtol=1e-6)
    np.testing.assert_allclose(float(metrics['loss']), float(loss))
    np.testing.assert_allclose(
        sum(float(metrics[f'{k}/loss']) for k in pos), float(loss), rtol=1e-6
    )
    # Gradients reach the generated images through the frozen encoder...
    grad_x = np.asarray(grad_x)
    assert np.all(np.isfinite(grad_x)) and np.abs(grad_x).max() > 0
    # ...and never its parameters.
    assert all(not np.any(np.asarray(v)) for v in jax.tree.leaves(grad_p))


def test_feature_drift_loss_bad_inputs():
    x = {'a': jnp.zeros((2, 3, 1, 4)), 'b': jnp.zeros((2, 3, 2, 4))}
    with pytest.raises(ValueError, match="'b'"):
        features.feature_drift_loss(x, {'a': x['a']})
    with pytest.raises(ValueError, match="'c'"):
        features.feature_drift_loss(x, {**x, 'c': x['a']})
    with pytest.raises(ValueError, match='scale_dist'):
        features.feature_drift_loss(x, x, opts=field.DriftOptions(scale_dist=False))
    with pytest.raises(ValueError, match="pos_feats\\['a'\\]"):
        features.feature_drift_loss(x, {'a': jnp.zeros((2, 3, 1, 5)), 'b': x['b']})


def test_mae_patch_grid_count():
    # 28x28 with 4x4 patches: 49 patches, 0.75 masks round(36.75) = 37.
    mask = enc.random_patch_mask(jax.random.key(0), (2, 28, 28, 1), 0.75, 4)
    np.testing.assert_array_equal(np.asarray(mask).sum((1, 2, 3)), 37 * 16)


@pytest.mark.parametrize(
    'shape, groups', [((4, 6, 5, 16), 8), ((3, 7, 7, 12), 4), ((2, 3, 3, 8), 1)]
)
def test_group_norm_equals_flax_group_norm(shape, groups):
    """Same parameters, same outputs and input gradients as flax.linen.GroupNorm."""
    import flax.linen as nn

    x = 3.0 + 2.0 * jax.random.normal(jax.random.PRNGKey(0), shape)
    ours, ref = layers.GroupNorm(num_groups=groups), nn.GroupNorm(num_groups=groups)
    params = ref.init(jax.random.PRNGKey(1), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(1), x)) == jax.tree.map(
        jnp.shape, params
    )
    params = jax.tree.map(
        lambda p: p + 0.3 * jax.random.normal(jax.random.PRNGKey(2), p.shape), params
    )
    # One jitted function per module (op-by-op eager mode compiles every primitive).
    both = jax.jit(lambda m_params, v: (ours.apply(m_params, v), ref.apply(m_params, v)))
    out_ours, out_ref = both(params, x)
    np.testing.assert_allclose(out_ours, out_ref, rtol=1e-5, atol=1e-5)

    def grad_of(module):
        return jax.jit(jax.grad(lambda v: jnp.sum(jnp.sin(module.apply(params, v)))))(x)

    np.testing.assert_allclose(grad_of(ours), grad_of(ref), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match='do not split'):
        layers.GroupNorm(num_groups=5).init(jax.random.PRNGKey(0), x)
