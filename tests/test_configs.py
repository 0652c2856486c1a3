"""Every file in configs/ loads and describes a model and field the library can build.

No data is read and nothing is compiled: generators are built for the image shape of the
dataset each config names and their parameter shapes are traced with eval_shape.
"""

import importlib.util
import os

import jax
import jax.numpy as jnp
import pytest

from drift_jax import field
from drift_jax.methods import METHODS, resolve_config
from drift_jax.models import encoders
from drift_jax.models import image as image_models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, 'configs')
CONFIG_FILES = sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith('.py'))
# (H, W, C, classes) of the datasets the image configs name.
IMAGE_SHAPES = {
    'digits': (8, 8, 1, 10),
    'mnist': (28, 28, 1, 10),
    'fashion_mnist': (28, 28, 1, 10),
    'cifar10': (32, 32, 3, 10),
}


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIG_DIR, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_config_list_is_complete():
    for name in (
        'spiral',
        'bimodal',
        'points',
        'digits',
        'mnist',
        'mnist_features',
        'mae_mnist',
        'fashion_mnist',
        'cifar10',
    ):
        assert name in CONFIG_FILES


@pytest.mark.parametrize('name', CONFIG_FILES)
def test_config_builds(name):
    c = _load(name)
    for section in ('data', 'model', 'drift', 'optim', 'train', 'eval', 'mesh'):
        assert section in c, f'{name}: no {section} section'
    assert c.method in METHODS, name
    assert c.train.steps > 0 and c.eval.every > 0
    field.options_from_config(c.drift)
    task = c.get('task', 'toy')
    if task == 'toy':
        return
    h, w, ch, classes = IMAGE_SHAPES[c.data.name]
    if c.method == 'mae':
        mae = encoders.make_mae(
            ch,
            widths=tuple(c.mae.widths),
            blocks_per_stage=c.mae.blocks_per_stage,
            decoder_width=c.mae.decoder_width,
            stem_stride=c.mae.get('stem_stride', 1),
        )
        out, _ = jax.eval_shape(
            lambda: mae.init_with_output(jax.random.key(0), jnp.zeros((2, h, w, ch)))
        )
        assert out.shape == (2, h, w, ch)
        return
    if c.method != 'drifting':
        resolved = resolve_config(c)
        METHODS[c.method].validate(resolved, 'images')
        return
    t = c.train
    assert t.batch_size == t.classes_per_step * t.gen_per_class, name
    assert c.guidance.alpha_max >= 1 and c.eval.alpha >= 1
    if c.encoder.name == 'mae':
        assert c.encoder.workdir, name
    model = image_models.make_image_generator(c.model, (h, w, ch), classes)
    out, _ = jax.eval_shape(
        lambda: model.init_with_output(
            jax.random.key(0),
            jnp.zeros((2, *model.noise_shape)),
            jnp.zeros((2,), jnp.int32),
            jnp.ones((2,)),
        )
    )
    assert out.shape == (2, h, w, ch)


@pytest.mark.parametrize('name', ['spiral', 'moons', 'swiss_roll', 'checkerboard'])
def test_toy_configs_give_drifting_alone_the_papers_field(name):
    """These toys set the paper's field as the drifting method's settings: the baselines
    on the same config keep the base optimiser and EMA, and the command line still wins."""
    config = _load(name)
    drifting = resolve_config(config)
    assert drifting.method == 'drifting'
    assert tuple(drifting.drift.temperatures) == (0.02, 0.05, 0.2)
    assert drifting.drift.scale_dist and drifting.drift.normalize_drift
    assert (drifting.optim.learning_rate, drifting.train.ema_decay) == (2e-3, 0.999)
    config.method = 'ddpm'
    ddpm = resolve_config(config)
    assert tuple(ddpm.drift.temperatures) == (0.05,) and not ddpm.drift.scale_dist
    assert (ddpm.optim.learning_rate, ddpm.train.ema_decay) == (1e-3, 0.995)
    config.method = 'drifting'
    config.drift.temperatures = (0.05,)
    kept = resolve_config(config, keep=('drift.temperatures',))
    assert tuple(kept.drift.temperatures) == (0.05,) and kept.drift.scale_dist
