"""End to end on 8x8 digits (built offline): image training, evaluation, sampling, errors."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from drift_jax import defaults, train, writers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def data_dir(digits_data_dir):
    return digits_data_dir


def tiny_image_config(data_dir, **overrides):
    c = defaults.image_config()
    c.data.name = 'digits'
    c.data.data_dir = data_dir
    c.model.base_channels = 8
    c.model.noise_dim = 8
    c.model.cond_dim = 16
    c.train.steps = 6
    c.train.classes_per_step = 4
    c.train.gen_per_class = 4
    c.train.pos_per_class = 4
    c.train.uncond_per_class = 4
    c.train.batch_size = 16
    c.train.bank_capacity = 8
    c.train.bank_push = 8
    c.train.log_every = 3
    c.train.checkpoint_every = 3
    c.eval.every = 6
    c.eval.num_samples = 100
    c.eval.classifier_steps = 30
    c.guidance.alpha_max = 3.0
    for key, value in overrides.items():
        section, name = key.split('.')
        c[section][name] = value
    return c


@pytest.fixture(scope='module')
def image_run(data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp('img') / 'digits')
    result = train.train_and_evaluate(tiny_image_config(data_dir), workdir)
    return workdir, result


def test_image_run_writes_metrics_grid_and_bank(image_run):
    workdir, result = image_run
    for key in ('fd', 'fd_floor', 'fd_ratio', 'precision', 'recall', 'class_accuracy'):
        assert np.isfinite(result[key]), key
    assert result['fd_floor'] > 0
    events = writers.read_metrics(workdir)
    assert [e['step'] for e in events if 'loss' in e] == [3, 6]
    assert os.path.exists(os.path.join(workdir, 'samples', 'step_0000006.png'))
    # The memory bank is part of the checkpoint: a resumed run does not start empty.
    _, state, step = train.load_run(workdir)
    assert step == 6
    assert int(np.min(np.asarray(state.extra.count))) > 0
    # It holds real digits in the data's value range [-1, 1]: a black background (-1) and
    # bright strokes, nothing outside the range.
    images, count = np.asarray(state.extra.images, np.float32), np.asarray(state.extra.count)
    valid = np.concatenate([images[c, :n] for c, n in enumerate(count)])
    assert valid.min() == pytest.approx(-1.0, abs=1e-6)
    assert 0.5 < valid.max() <= 1.0 + 1e-6


def test_sample_cli_images_with_labels_and_alpha(image_run, tmp_path):
    workdir, _ = image_run
    out = str(tmp_path / 'g.npy')
    proc = subprocess.run(
        [
            sys.executable,
            '-m',
            'drift_jax.sample',
            f'--workdir={workdir}',
            '--num=6',
            '--labels=3,7',
            '--alpha=2',
            f'--out={out}',
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    x = np.load(out)
    assert x.shape == (6, 8, 8, 1) and x.min() >= 0 and x.max() <= 1
    png = str(tmp_path / 'g.png')
    proc = subprocess.run(
        [
            sys.executable,
            '-m',
            'drift_jax.sample',
            f'--workdir={workdir}',
            '--num=4',
            f'--out={png}',
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 4 samples of 8x8 upscaled x4 to 32x32, tiled 2 x 2 with 2 pixels of white padding.
    with Image.open(png) as im:
        assert im.format == 'PNG' and im.mode == 'L'
        grid = np.asarray(im)
    assert grid.shape == (2 * (32 + 2) + 2, 2 * (32 + 2) + 2)
    cells = [
        np.s_[2 + 34 * r : 34 + 34 * r, 2 + 34 * q : 34 + 34 * q] for r in (0, 1) for q in (0, 1)
    ]
    tiles = np.stack([grid[c] for c in cells])
    padding = grid.copy()
    for c in cells:
        padding[c] = 255
    assert np.all(padding == 255)
    # Nearest-neighbour upscaling: every 4x4 block of a tile is one sample pixel.
    blocks = tiles.reshape(4, 8, 4, 8, 4)
    assert np.all(blocks == blocks[:, :, :1, :, :1])
    assert tiles.std() > 1.0  # not a constant image


def test_sampling_rejects_bad_labels_and_alpha(image_run):
    workdir, _ = image_run
    run, state, _ = train.load_run(workdir)
    import jax

    with pytest.raises(ValueError, match=r'\[10, 12\] are outside the 10 classes'):
        train.sample(run, state.ema_params, jax.random.PRNGKey(0), 4, labels=[1, 10, 12])
    with pytest.raises(ValueError, match='alpha must be >= 1'):
        train.sample(run, state.ema_params, jax.random.PRNGKey(0), 4, alpha=0.5)


def test_missing_dataset_fails_at_once_with_instructions(data_dir, tmp_path):
    config = tiny_image_config(data_dir, **{'data.name': 'mnist'})
    with pytest.raises(FileNotFoundError, match='drift_jax.data.build'):
        train.validate_config(config)


@pytest.mark.parametrize(
    'overrides, error, message',
    [
        ({'guidance.alpha_max': 0.5}, ValueError, 'alpha_max must be >= 1'),
        ({'train.batch_size': 20}, ValueError, 'must equal classes_per_step'),
        ({'model.name': 'unet'}, ValueError, "'unet' is unknown"),
        ({'encoder.name': 'mae'}, ValueError, 'needs encoder.workdir'),
        (
            {'encoder.name': 'mae', 'encoder.workdir': '/nonexistent'},
            FileNotFoundError,
            'train the encoder first',
        ),
    ],
)
def test_bad_image_config(data_dir, overrides, error, message):
    config = tiny_image_config(data_dir, **overrides)
    with pytest.raises(error, match=message):
        train.make_run(config)


def test_encoder_workdir_of_wrong_kind_is_rejected(data_dir, image_run):
    workdir, _ = image_run  # a generator run, not an MAE run
    config = tiny_image_config(data_dir, **{'encoder.name': 'mae', 'encoder.workdir': workdir})
    with pytest.raises(ValueError, match='expected an MAE run'):
        train.make_run(config)


@pytest.fixture(scope='module')
def mae_dir(data_dir, tmp_path_factory):
    """A tiny MAE encoder trained through the front door (4 steps)."""
    mae = defaults.mae_config()
    mae.data.name, mae.data.data_dir = 'digits', data_dir
    mae.mae.widths = (8, 16)
    mae.mae.decoder_width = 8
    mae.train.steps, mae.train.batch_size = 4, 16
    mae.train.checkpoint_every = mae.eval.every = 4
    mae.eval.num_samples = 64
    workdir = str(tmp_path_factory.mktemp('mae') / 'mae')
    result = train.train_and_evaluate(mae, workdir)
    assert np.isfinite(result['mae_test_loss'])
    return workdir


def test_mae_then_feature_space_generator(data_dir, mae_dir, tmp_path):
    """The MAE front door trains an encoder; a generator config loads it frozen, and its bank
    (feature sets of real images, encoded at push) is checkpointed."""
    config = tiny_image_config(
        data_dir,
        **{
            'encoder.name': 'mae',
            'encoder.workdir': mae_dir,
            'train.steps': 2,
            'eval.every': 2,
            'model.name': 'mlp',
            'model.hidden': 32,
            'model.depth': 1,  # 3 sets: a quicker compile
            'encoder.feature_sets': ('locations', 'raw'),
        },
    )
    result = train.train_and_evaluate(config, str(tmp_path / 'gen'))
    assert np.isfinite(result['fd']) and result['step'] == 2
    _, state, _ = train.load_run(str(tmp_path / 'gen'))
    assert set(state.extra.images) == {'raw', 'block0/locations', 'block1/locations'}
    assert state.extra.images['raw'].shape == (10, 8, 1, 64)


def test_feature_bank_gives_the_loss_of_the_image_bank(data_dir, mae_dir):
    """Holding encoded real samples in the bank changes nothing but the cost: the stored
    features are the encoded stored images, and one step's loss and gradient agree."""
    import copy

    import jax

    config = tiny_image_config(
        data_dir,
        **{
            'encoder.name': 'mae',
            'encoder.workdir': mae_dir,
            'model.name': 'mlp',
            'model.hidden': 32,
            'model.depth': 1,
            'encoder.feature_sets': ('locations',),
        },
    )
    run = train.make_run(config)
    feat_method = run.method
    img_method = copy.copy(feat_method)  # the same method with a bank of images
    img_method.bank_features = False
    state = train.create_train_state(run, 0)
    methods_ = (feat_method, img_method)
    states = [m.warm_start(state.replace(extra=m.init(jax.random.PRNGKey(0))[1])) for m in methods_]
    feat_state, img_state = states
    assert feat_method.bank_features and isinstance(feat_state.extra.images, dict)
    images = img_state.extra.images
    encoded = jax.jit(img_method.encoder.features)(images.reshape(-1, *images.shape[2:]))
    for name, value in encoded.items():
        np.testing.assert_allclose(
            np.asarray(feat_state.extra.images[name]).reshape(value.shape),
            value,
            rtol=1e-5,
            atol=1e-5,
            err_msg=name,
        )
    key, batch = jax.random.PRNGKey(3), run.task.host_batch(1, img_method.host_batch_size)
    outs = [
        jax.jit(jax.value_and_grad(m.updates()[0].loss, has_aux=True))(
            state.params, state.extra, key, batch
        )
        for m, state in zip(methods_, states, strict=True)
    ]
    (loss_f, _), grad_f = outs[0]
    (loss_i, _), grad_i = outs[1]
    assert float(loss_f) > 0
    np.testing.assert_allclose(loss_f, loss_i, rtol=1e-5)
    # As one vector: some leaves (biases ahead of a normalisation) have a zero gradient up
    # to float noise, so leaf-wise relative checks would compare noise.
    flat_f, flat_i = (
        np.concatenate([np.ravel(a) for a in jax.tree.leaves(g)]) for g in (grad_f, grad_i)
    )
    assert np.linalg.norm(flat_i) > 0
    assert np.linalg.norm(flat_f - flat_i) <= 1e-4 * np.linalg.norm(flat_i)
