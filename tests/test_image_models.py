"""Tests for the class-conditional image generators (conv, DiT, MLP) and their factory.

Tiny widths: shapes for digits/MNIST/CIFAR sizes, finiteness, dependence on label and alpha,
finite gradients, parameter counts and configuration errors.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from drift_jax.models import image as im

IMAGE_SHAPES = [(8, 8, 1), (28, 28, 1), (32, 32, 3)]
NUM_CLASSES = 10


def _config(name, **kw):
    if name == 'conv':
        base = dict(name='conv', noise_dim=8, base_channels=8, max_channel_mult=2, cond_dim=16)
    elif name == 'mlp':
        base = dict(name='mlp', noise_dim=8, hidden=16, depth=2, cond_dim=16)
    else:
        base = dict(name='dit', patch_size=4, hidden=16, depth=1, heads=2, num_style_tokens=2)
    base.update(kw)
    return ml_collections.ConfigDict(base)


def _inputs(model, batch=3):
    noise = jax.random.normal(jax.random.key(0), (batch, *model.noise_shape))
    labels = jnp.arange(batch, dtype=jnp.int32) % NUM_CLASSES
    alpha = jnp.linspace(1.0, 3.0, batch)
    return noise, labels, alpha


def _random_params(model, noise, labels, alpha, seed=0):
    """Parameters of the init's shapes drawn on the host (std 1/sqrt(fan_in) for kernels).

    Compiling `model.init` costs seconds per model on CPU (threefry for every tensor), and
    random values also exercise the zero-initialised adaLN layers.
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0), noise, labels, alpha)['params']
    rng = np.random.default_rng(seed)

    def draw(s):
        std = 1 / np.sqrt(np.prod(s.shape[:-1])) if len(s.shape) >= 2 else 0.1
        return jnp.asarray(rng.normal(0.0, std, s.shape), s.dtype)

    return jax.tree.map(draw, shapes)


@functools.cache
def _real_init(model):
    """The module's own init (rbg keys compile several times faster than threefry)."""
    noise, labels, alpha = _inputs(model)
    return jax.jit(model.init)(jax.random.key(1, impl='rbg'), noise, labels, alpha)


@pytest.mark.parametrize('name', ['conv', 'dit', 'mlp'])
@pytest.mark.parametrize('image_shape', IMAGE_SHAPES)
def test_generator_shapes_and_conditioning(name, image_shape):
    if name == 'dit' and image_shape[0] == 28:
        model = im.make_image_generator(_config(name, patch_size=7), image_shape, NUM_CLASSES)
    else:
        model = im.make_image_generator(_config(name), image_shape, NUM_CLASSES)
    noise, labels, alpha = _inputs(model)
    params = _random_params(model, noise, labels, alpha)
    apply = jax.jit(lambda p, n, lab, a: model.apply({'params': p}, n, lab, a))
    out = apply(params, noise, labels, alpha)
    assert out.shape == (3, *image_shape) and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.max(jnp.abs(out))) <= 1.0
    n_params = sum(p.size for p in jax.tree.leaves(params))
    print(f'{name} {image_shape}: {n_params} parameters')
    assert 1_000 < n_params < 1_000_000
    # Changing only the label (incl. the null class) or only alpha changes every sample;
    # changing the noise changes the samples too.
    for other in (
        apply(params, noise, (labels + 1) % NUM_CLASSES, alpha),
        apply(params, noise, jnp.full_like(labels, NUM_CLASSES), alpha),
        apply(params, noise, labels, alpha + 0.5),
        apply(params, -noise, labels, alpha),
    ):
        diff = jnp.abs(other - out).reshape(3, -1).max(axis=1)
        assert bool(jnp.all(diff > 1e-4)), diff


@pytest.mark.parametrize('name', ['conv', 'dit', 'mlp'])
def test_gradients_finite_and_nonzero(name):
    model = im.make_image_generator(_config(name), (8, 8, 1), NUM_CLASSES)
    noise, labels, alpha = _inputs(model)
    params = _random_params(model, noise, labels, alpha)

    def loss(p):
        return jnp.mean(model.apply({'params': p}, noise, labels, alpha) ** 2)

    grads = jax.jit(jax.grad(loss))(params)
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    # Every parameter tensor receives some gradient (none is disconnected), except the
    # null-class and unused label rows, which only see the labels in the batch.
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    for path, g in flat:
        if 'label_embed' in jax.tree_util.keystr(path):
            continue
        assert float(jnp.max(jnp.abs(g))) > 0, jax.tree_util.keystr(path)


def test_initial_dit_samples_vary_with_noise():
    """With the module's own adaLN-zero init, samples already differ across noise draws."""
    model = im.make_image_generator(_config('dit'), (8, 8, 1), NUM_CLASSES)
    noise, labels, alpha = _inputs(model)
    out = jax.jit(model.apply)(_real_init(model), noise, labels, alpha)
    assert bool(jnp.all(jnp.isfinite(out)))
    assert float(jnp.std(out, axis=0).mean()) > 1e-2


def test_noise_shapes_and_start_sizes():
    conv = im.make_image_generator(_config('conv'), (28, 28, 1), NUM_CLASSES)
    assert conv.noise_shape == (8,)
    dit = im.make_image_generator(_config('dit'), (32, 32, 3), NUM_CLASSES)
    assert dit.noise_shape == (64 + 2, 48)
    assert im.conv_start_size((8, 8)) == (4, 4, 1)
    assert im.conv_start_size((28, 28)) == (7, 7, 2)
    assert im.conv_start_size((32, 32)) == (4, 4, 3)


def test_dit_patch_tokens_are_row_major_patches():
    """At init the adaLN-zero blocks are the identity, so each output patch depends only on
    its own noise token: changing token 1 changes exactly the top-right patch."""
    model = im.make_image_generator(_config('dit'), (8, 8, 1), NUM_CLASSES)
    noise, labels, alpha = _inputs(model)
    apply = jax.jit(model.apply)
    out = np.asarray(apply(_real_init(model), noise, labels, alpha))
    changed = np.asarray(apply(_real_init(model), noise.at[:, 1].set(0.0), labels, alpha))
    diff = (np.abs(changed - out) > 0).any(axis=(0, 3))
    # Token 1 is the top-right 4x4 patch.
    assert diff[:4, 4:].all() and not diff[:4, :4].any() and not diff[4:].any()


@pytest.mark.parametrize(
    'name,kw,match',
    [
        ('gan', {}, 'unknown'),
        ('conv', {'base_channels': 0}, 'base_channels'),
        ('conv', {'noise_dim': 2.5}, 'noise_dim'),
        ('dit', {'patch_size': 3}, 'patch_size'),
        ('dit', {'hidden': 10, 'heads': 4}, 'heads'),
        ('dit', {'num_style_tokens': -1}, 'num_style_tokens'),
        ('dit', {'depth': 0}, 'depth'),
        ('mlp', {'hidden': 0}, 'hidden'),
        ('mlp', {'depth': -1}, 'depth'),
    ],
)
def test_bad_config_errors(name, kw, match):
    config = _config('conv' if name == 'gan' else name, **kw)
    config.name = name
    with pytest.raises(ValueError, match=match):
        im.make_image_generator(config, (32, 32, 3), NUM_CLASSES)


def test_bad_image_shape_errors():
    with pytest.raises(ValueError, match='width'):
        im.make_image_generator(_config('conv'), (32, 6, 3), NUM_CLASSES)
    with pytest.raises(ValueError, match='image_shape'):
        im.make_image_generator(_config('conv'), (32, 32), NUM_CLASSES)
    with pytest.raises(ValueError, match='image_shape'):
        im.make_image_generator(_config('conv'), (32.0, 32, 3), NUM_CLASSES)
    model = im.make_image_generator(_config('conv'), np.array([8, 8, 1]), NUM_CLASSES)
    assert model.image_shape == (8, 8, 1) and type(model.image_shape[0]) is int
