"""Inception FID, IS and precision/recall: the Flax network against pytorch-fid, the metrics
against closed forms, the weight files, statistics of a dataset and config validation (a run
and the command line are in test_fid_run.py, so that the two files run side by side).

The network is checked against tests/fixtures/inception_fixture.npz, written by
tests/make_inception_fixture.py from pytorch-fid's own code on random weights of a network
with 1/8 of the channels (torch is not needed here). Runs use random weights of a 1/16 network
whose file asks for 75 x 75 inputs (299 in real use), which CPUs run quickly.
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
import pytest

from drift_jax import defaults, methods, train
from drift_jax.eval import fid as fid_lib
from drift_jax.eval import inception as inc
from drift_jax.eval import inception_weights as incw
from drift_jax.eval.images import frechet_distance_from_moments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, 'tests', 'fixtures', 'inception_fixture.npz')
TOL = 1e-4  # max |ours - pytorch-fid| / max |pytorch-fid|
BATCH = 200  # InceptionExtractor's default batch size, which the run's evaluator uses


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def nhwc(a: np.ndarray) -> np.ndarray:
    return np.transpose(a, (0, 2, 3, 1))


@pytest.fixture(scope='module')
def fixture():
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope='module')
def converted(fixture):
    state = {k[len('state/') :]: v for k, v in fixture.items() if k.startswith('state/')}
    variables, meta = incw.variables_from_state_dict(state)
    return variables, meta


# ----------------------------------------------------------------------------------------------
# The network against pytorch-fid.


def test_state_dict_conversion_reads_widths(fixture, converted):
    _, meta = converted
    assert meta == {
        'width_divisor': int(fixture['meta/width_divisor']),
        'num_classes': int(fixture['meta/num_classes']),
    }
    bad = {k[len('state/') :]: v for k, v in fixture.items() if k.startswith('state/')}
    bad['Mixed_5b.branch1x1.conv.weight'] = bad['Mixed_5b.branch1x1.conv.weight'][:1]
    with pytest.raises(ValueError, match='Mixed_5b/branch1x1/conv/kernel'):
        incw.variables_from_state_dict(bad)


def test_resize_matches_torch_interpolate(fixture):
    for i in range(3):
        x, y = fixture[f'resize/{i}/x'], fixture[f'resize/{i}/y']
        ours = inc.resize_bilinear(nhwc(x), y.shape[2:])
        np.testing.assert_allclose(np.asarray(ours), nhwc(y), atol=2e-6, err_msg=f'case {i}')


def test_each_mixed_block_matches_pytorch_fid(fixture, converted):
    variables, meta = converted
    names = list(inc.MIXED_BLOCKS)

    @jax.jit  # all eleven blocks, each on its own reference input, in one compile
    def apply_blocks(variables, inputs):
        return {
            n: inc.mixed_block(n, meta['width_divisor']).apply(
                {c: variables[c][n] for c in ('params', 'batch_stats')}, inputs[n]
            )
            for n in names
        }

    outs = apply_blocks(variables, {n: nhwc(fixture[f'mixed/{n}/in']) for n in names})
    for n in names:
        assert rel_err(outs[n], nhwc(fixture[f'mixed/{n}/out'])) <= TOL, n


def test_end_to_end_matches_pytorch_fid(fixture, converted):
    """[0, 1] images -> resize to 299, [-1, 1] -> pytorch-fid's four blocks, pool, logits."""
    variables, meta = converted
    model = inc.InceptionV3(meta['width_divisor'], meta['num_classes'])
    out = jax.jit(lambda v, x: model.apply(v, inc.preprocess(x), return_blocks=True))(
        variables, nhwc(fixture['e2e/x'])
    )
    for i, block in enumerate(out['blocks']):
        assert rel_err(block, nhwc(fixture[f'e2e/block{i}'])) <= TOL, f'block {i}'
    assert rel_err(out['pool'], fixture['e2e/pool']) <= TOL
    assert rel_err(out['logits'], fixture['e2e/logits']) <= TOL


def test_preprocess_grey_quantize_and_range():
    rng = np.random.default_rng(0)
    grey = rng.uniform(size=(2, 9, 7, 1)).astype(np.float32)
    a = inc.preprocess(grey, size=11)
    assert a.shape == (2, 11, 11, 3)
    np.testing.assert_array_equal(a, inc.preprocess(np.repeat(grey, 3, -1), size=11))
    # Quantising is a no-op on 8-bit images and rounds anything else to them.
    u8 = rng.integers(0, 256, size=(1, 5, 5, 3)) / 255.0
    np.testing.assert_allclose(
        inc.preprocess(u8, 5, quantize=True), inc.preprocess(u8, 5), atol=1e-6
    )
    np.testing.assert_allclose(
        inc.preprocess(u8 + 0.4 / 255, 5, quantize=True), inc.preprocess(u8, 5), atol=1e-6
    )
    # Same size: the resize is the identity and the output is 2x - 1.
    np.testing.assert_allclose(inc.preprocess(u8, 5), 2 * u8 - 1, atol=1e-6)


def test_weight_file_round_trip_and_lookup(converted, tmp_path, monkeypatch):
    variables, meta = converted
    path = str(tmp_path / 'w.npz')
    incw.save_weights(path, variables, meta['width_divisor'])
    model, loaded, meta = incw.load_weights(path)
    assert (model.width_divisor, model.num_classes, meta['input_size']) == (8, 1008, 299)
    flat = jax.tree.leaves(jax.tree.map(lambda a, b: np.array_equal(a, b), variables, loaded))
    assert all(flat)
    # Lookup: explicit path, else the environment variable, else the cache path.
    assert incw.find_weights(path) == path
    monkeypatch.setenv(incw.ENV_VAR, path)
    assert incw.find_weights() == path
    monkeypatch.delenv(incw.ENV_VAR)
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    with pytest.raises(FileNotFoundError) as e:
        incw.find_weights()
    assert incw.FID_WEIGHTS_URL in str(e.value) and incw.DEFAULT_PATH in str(e.value)
    assert 'drift_jax.fid convert' in str(e.value)
    # A .npz that is not ours is refused with the command that makes one.
    np.savez(tmp_path / 'other.npz', a=np.zeros(3))
    with pytest.raises(ValueError, match='convert'):
        incw.load_weights(str(tmp_path / 'other.npz'))


def test_pth_without_torch_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'torch', None)  # import torch -> ImportError
    path = tmp_path / 'w.pth'
    path.write_bytes(b'not read')
    with pytest.raises(ImportError, match='needs torch.*convert'):
        incw.load_weights(str(path))


# ----------------------------------------------------------------------------------------------
# Metrics.


def test_fid_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    f = 16
    mu1, mu2 = rng.normal(size=f), rng.normal(size=f)
    a, b = rng.uniform(0.1, 3, f), rng.uniform(0.1, 3, f)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = fid_lib.fid_from_stats(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-10)
    # Full covariances: the eigendecomposition route of eval.images agrees.
    m1, m2 = rng.normal(size=(f, f)), rng.normal(size=(f, f))
    s1, s2 = m1 @ m1.T / f, m2 @ m2.T / f
    assert fid_lib.fid_from_stats(mu1, s1, mu2, s2) == pytest.approx(
        frechet_distance_from_moments(mu1, s1, mu2, s2), rel=1e-8
    )
    assert abs(fid_lib.fid_from_stats(mu1, s1, mu1, s1)) < 1e-8
    # A singular product (rank-1 covariances) takes the eps fallback and stays finite.
    v = rng.normal(size=(f, 1))
    assert np.isfinite(fid_lib.fid_from_stats(mu1, v @ v.T, mu2, v @ v.T))


def test_feature_stats_are_mean_and_unbiased_covariance():
    x = np.random.default_rng(1).normal(size=(50, 4))
    mu, sigma = fid_lib.feature_stats(x)
    np.testing.assert_allclose(mu, x.mean(0))
    np.testing.assert_allclose(sigma, (x - mu).T @ (x - mu) / 49)


def test_inception_score_extremes():
    k, n = 10, 200
    # Confident and spread evenly over k classes: IS = k in every split, std 0.
    confident = 50.0 * np.eye(k)[np.arange(n) % k]
    mean, std = fid_lib.inception_score(confident, splits=10)
    assert mean == pytest.approx(k, rel=1e-6) and std == pytest.approx(0, abs=1e-6)
    # The same prediction everywhere: IS = 1.
    same = np.tile(np.random.default_rng(0).normal(size=k), (n, 1))
    assert fid_lib.inception_score(same)[0] == pytest.approx(1.0, abs=1e-9)
    # One split by hand: p(y|x) = (0.9, 0.1) and (0.5, 0.5), p(y) = (0.7, 0.3).
    p = np.array([[0.9, 0.1], [0.5, 0.5]])
    kl = [0.9 * np.log(0.9 / 0.7) + 0.1 * np.log(0.1 / 0.3), 0.5 * np.log(0.5 / 0.7 * 0.5 / 0.3)]
    assert fid_lib.inception_score(np.log(p), splits=1)[0] == pytest.approx(np.exp(np.mean(kl)))
    with pytest.raises(ValueError):
        fid_lib.inception_score(confident[:5], splits=10)


def test_stats_files_round_trip_and_read_pytorch_fid_layout(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(30, 6))
    mu, sigma = fid_lib.feature_stats(feats)
    path = str(tmp_path / 's.npz')
    fid_lib.save_stats(path, mu, sigma, 30, feats[:10], data='x', split='train')
    s = fid_lib.load_stats(path)
    np.testing.assert_array_equal(s['mu'], mu)
    assert s['num_images'] == 30 and s['features'].shape == (10, 6)
    np.savez(tmp_path / 'pf.npz', mu=mu, sigma=sigma)  # what pytorch-fid --save-stats writes
    s = fid_lib.load_stats(str(tmp_path / 'pf.npz'))
    assert s['num_images'] == 0 and s['features'] is None
    with pytest.raises(FileNotFoundError, match='drift_jax.fid stats'):
        fid_lib.load_stats(str(tmp_path / 'missing.npz'))


# ----------------------------------------------------------------------------------------------
# In a run and on the command line (random weights, 1/16 of the widths).


@pytest.fixture(scope='module')
def files(tmp_path_factory, digits_data_dir):
    """Random weights of a 1/16-width network fed 75 x 75 images, and statistics of 300
    train digits."""
    d = tmp_path_factory.mktemp('fid')
    variables = incw.random_variables(width_divisor=16)
    weights = str(d / 'inception_w16.npz')
    incw.save_weights(weights, variables, 16, input_size=75)  # 75: CPU-cheap, as the file says
    data_dir = digits_data_dir
    # One batch size everywhere (here, the run's evaluator, the CLI): one compile, cached.
    ex = inc.InceptionExtractor.from_file(weights, batch_size=BATCH)
    assert ex.size == 75
    s = fid_lib.dataset_stats('digits', ex, data_dir=data_dir, num=300, pr_num=100)
    assert s['num_images'] == 300 and s['features'].shape == (100, 128)
    stats = str(d / 'digits_train.npz')
    fid_lib.save_stats(stats, s['mu'], s['sigma'], s['num_images'], s['features'])
    return {'weights': weights, 'stats': stats, 'data_dir': data_dir, 'extractor': ex}


def image_config(data_dir, **eval_overrides):
    c = defaults.image_config()
    c.data.name, c.data.data_dir = 'digits', data_dir
    for k, v in eval_overrides.items():
        c.eval[k] = v
    return methods.resolve_config(c)


def test_real_images_score_better_than_noise(files):
    metrics = fid_lib.InceptionMetrics(files['stats'], files['extractor'])
    from drift_jax.data import images as image_data

    data = image_data.load_image_dataset('digits', files['data_dir'], value_range=(0, 1))
    real, _ = data.class_arrays('test')
    noise = np.random.default_rng(0).uniform(size=real[:200].shape).astype(np.float32)
    # Features do not depend on an image's batch or on the padding of the last batch.
    ex = files['extractor']
    np.testing.assert_allclose(ex(real[5:8])['pool'], ex(real[:250])['pool'][5:8], atol=1e-5)
    fid_real = metrics(real[:200], precision_recall_k=3)
    fid_noise = metrics(noise, precision_recall_k=3)
    assert 0 <= fid_real['fid'] < fid_noise['fid']
    assert fid_real['recall'] > fid_noise['recall']
    assert fid_real['inception_score'] >= 1.0 - 1e-6


def test_config_validation_names_missing_files(files, tmp_path, monkeypatch):
    monkeypatch.delenv(incw.ENV_VAR, raising=False)
    monkeypatch.setenv('HOME', str(tmp_path))  # no weights at the cache path
    train.validate_config(image_config(files['data_dir']))  # no fid_stats: Inception unused
    missing = str(tmp_path / 'nope.npz')
    with pytest.raises(ValueError, match='nope.npz'):
        train.validate_config(image_config(files['data_dir'], fid_stats=missing))
    with pytest.raises(ValueError, match='pt_inception-2015-12-05') as e:
        train.validate_config(image_config(files['data_dir'], fid_stats=files['stats']))
    assert incw.DEFAULT_PATH in str(e.value) and 'drift_jax.fid convert' in str(e.value)
    # The weights named in the config are found.
    train.validate_config(
        image_config(
            files['data_dir'], fid_stats=files['stats'], inception_weights=files['weights']
        )
    )
