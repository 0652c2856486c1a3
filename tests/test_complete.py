"""Image completion (method='complete'): masks, conditions, both losses end to end."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drift_jax import defaults, train
from drift_jax.methods import complete


def test_keep_mask_rows():
    m = complete.keep_mask((8, 8, 1), 0.5)
    assert m.shape == (8, 8, 1) and m[:4].min() == 1 and m[4:].max() == 0
    assert complete.keep_mask((28, 28, 1), 0.3)[:8].min() == 1  # round(8.4) rows
    # Always at least one row shown and one hidden.
    assert complete.keep_mask((8, 8, 1), 0.01).sum() == 8
    assert complete.keep_mask((8, 8, 1), 0.99)[7].max() == 0


def tiny_config(data_dir, **overrides):
    c = defaults.image_config()
    c.method = 'complete'
    del c['method_settings']
    c.data.data_dir = data_dir
    c.model.base_channels = c.denoiser.base_channels = 8
    c.denoiser.mults = (1,)  # one level: half the compile time of two
    c.train.steps, c.train.batch_size = 2, 16
    c.train.log_every = c.train.checkpoint_every = c.eval.every = 2
    c.eval.num_samples, c.eval.classifier_steps, c.eval.grid_per_class = 20, 5, 2
    for key, value in overrides.items():
        section, _, name = key.rpartition('.')
        c[section][name] = value
    return c


@pytest.mark.parametrize(
    'overrides, message',
    [
        ({'complete.loss': 'l2'}, "complete.loss='l2' is unknown"),
        ({'complete.keep_rows': 1.0}, r'complete.keep_rows must be in \(0, 1\), got 1.0'),
        ({'complete.loss': 'l1', 'complete.l1_weight': 0.0}, 'complete.l1_weight must be'),
        ({'complete.latent_channels': -1}, 'complete.latent_channels must be an integer >= 0'),
    ],
)
def test_bad_options_are_refused_before_any_compile(digits_data_dir, overrides, message):
    with pytest.raises(ValueError, match=message):
        train.validate_config(tiny_config(digits_data_dir, **overrides))


def test_points_are_refused(tmp_path):
    c = defaults.toy_config()
    c.method = 'complete'
    with pytest.raises(ValueError, match="method='complete' does not train on points"):
        train.validate_config(c)


def test_completion_runs_and_keeps_the_shown_rows(tmp_path, digits_data_dir):
    c = tiny_config(digits_data_dir)
    result = train.train_and_evaluate(c, str(tmp_path / 'w'))
    assert np.isfinite(result['completion_l1']) and np.isfinite(result['class_accuracy'])
    assert result['nfe'] == 1
    run, state, _ = train.load_run(str(tmp_path / 'w'))
    assert set(state.params) == {'generator', 'discriminator'}
    method = run.method
    x = jnp.asarray(method.held_out[0][:6])
    out = method.complete(state.ema_params['generator'], jax.random.PRNGKey(0), x)
    # The shown rows are the source's, the hidden rows the generator's (in [-1, 1]).
    np.testing.assert_array_equal(np.asarray(out[:, :4]), np.asarray(x[:, :4]))
    assert float(jnp.max(jnp.abs(out))) <= 1.0
    c_in = method.condition(x)
    assert c_in.shape == (6, 8, 8, 2) and float(jnp.min(c_in[:, 4:, :, 0])) == -1.0
    images = train.sample(run, state.ema_params, jax.random.PRNGKey(1), 5, labels=[0, 1, 2, 3, 4])
    assert images.shape == (5, 8, 8, 1) and images.min() >= 0 and images.max() <= 1


def test_l1_alone_trains_one_network(digits_data_dir):
    run = train.make_run(tiny_config(digits_data_dir, **{'complete.loss': 'l1'}))
    state = train.create_train_state(run, 0)
    assert set(state.params) == {'generator'}
    batch = run.task.host_batch(1, run.method.host_batch_size)
    state, metrics = train.make_train_step(run)(state, batch)
    assert set(metrics) == {'loss', 'grad_norm', 'l1'}
    assert float(metrics['loss']) == pytest.approx(100.0 * float(metrics['l1']), rel=1e-5)
    assert float(metrics['grad_norm']) > 0
