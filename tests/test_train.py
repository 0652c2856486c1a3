"""End-to-end tests of the trainer: workdir contract, exact resume, NaN stop, bad input."""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest

from drift_jax import checkpointing, defaults, train, writers


def tiny_config(**overrides):
    c = defaults.toy_config()
    c.model.width = 32
    c.model.depth = 2
    c.model.noise_dim = 8
    c.train.steps = 20
    c.train.batch_size = 64
    c.train.num_pos = 64
    c.train.log_every = 5
    c.train.checkpoint_every = 10
    c.train.max_to_keep = 5
    c.eval.every = 10
    c.eval.num_samples = 200
    c.eval.plot_points = 200
    for key, value in overrides.items():
        section, name = key.split('.')
        c[section][name] = value
    return c


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp('run'))
    config = tiny_config()
    result = train.train_and_evaluate(config, workdir)
    return config, workdir, result


def _params_leaves(workdir):
    _, state, step = train.load_run(workdir)
    return step, [np.asarray(x) for x in jax.tree.leaves(state.params)], state


def test_workdir_contract(finished_run):
    _, workdir, result = finished_run
    assert result['step'] == 20
    assert np.isfinite(result['energy_distance']) and result['energy_floor'] > 0
    assert os.path.exists(os.path.join(workdir, 'config.json'))
    events = writers.read_metrics(workdir)
    assert all('step' in e for e in events)
    evals = [e for e in events if 'energy_distance' in e]
    logs = [e for e in events if 'loss' in e]
    assert [e['step'] for e in evals] == [10, 20]
    assert all('energy_floor' in e for e in evals)
    assert [e['step'] for e in logs] == [5, 10, 15, 20]
    samples = sorted(os.listdir(os.path.join(workdir, 'samples')))
    assert samples == ['evolution.gif', 'metrics.png', 'step_0000010.png', 'step_0000020.png']
    assert os.listdir(os.path.join(workdir, 'tensorboard'))
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'))
    assert ckpt.all_steps() == [10, 20]
    ckpt.close()


def test_resume_after_crash_equals_straight_run(finished_run, tmp_path):
    """Lose the last checkpoint (a crash after step 10), resume: same final parameters."""
    config, workdir, _ = finished_run
    crashed = str(tmp_path / 'crashed')
    shutil.copytree(workdir, crashed)
    shutil.rmtree(os.path.join(crashed, 'checkpoints', '20'))
    step, straight, _ = _params_leaves(workdir)
    assert step == 20
    train.train_and_evaluate(config, crashed)
    step, resumed, _ = _params_leaves(crashed)
    assert step == 20
    for a, b in zip(straight, resumed, strict=True):
        np.testing.assert_array_equal(a, b)  # bitwise: same keys, same ops, same order
    # metrics.jsonl holds one history: the lines after step 10 were rewritten once.
    steps = [e['step'] for e in writers.read_metrics(crashed) if 'loss' in e]
    assert steps == [5, 10, 15, 20]


def test_rerun_of_finished_run_does_not_train(finished_run):
    config, workdir, _ = finished_run
    before = writers.read_metrics(workdir)
    result = train.train_and_evaluate(config, workdir)
    assert result['step'] == 20
    after = writers.read_metrics(workdir)
    assert [e for e in after if 'loss' in e] == [e for e in before if 'loss' in e]


def test_damaged_newest_checkpoint_falls_back(finished_run, tmp_path):
    _, workdir, _ = finished_run
    damaged = str(tmp_path / 'damaged')
    shutil.copytree(workdir, damaged)
    state_dir = os.path.join(damaged, 'checkpoints', '20', 'state')
    for root, _, files in os.walk(state_dir):
        for name in files:
            with open(os.path.join(root, name), 'w') as f:
                f.write('garbage')
    _, _, step = train.load_run(damaged)
    assert step == 10


def test_divergence_stops_loudly_and_keeps_last_good_checkpoint(tmp_path):
    config = tiny_config(
        **{
            'optim.learning_rate': 1e30,
            'optim.grad_clip': 0.0,
            'optim.warmup_steps': 0,
            'train.checkpoint_every': 1,
        }
    )
    workdir = str(tmp_path / 'nan')
    with pytest.raises(FloatingPointError, match=r'diverged at step (\d+)') as err:
        train.train_and_evaluate(config, workdir)
    bad_step = int(err.value.args[0].split('step ')[1].split(':')[0])
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'))
    steps = ckpt.all_steps()
    ckpt.close()
    assert steps and max(steps) < bad_step
    _, state, _ = train.load_run(workdir)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


@pytest.mark.parametrize(
    'overrides, message',
    [
        ({'data.name': 'spirall'}, r'spirall.*spiral'),
        ({'drift.temperatures': (0.05, -1.0)}, r'temperatures.*positive'),
        ({'drift.kernel': 'cauchy'}, r'cauchy.*laplace'),
        ({'optim.learning_rate': 0.0}, r'learning_rate.*positive'),
        ({'train.batch_size': -4}, r'batch_size.*positive'),
        ({'model.init': 'far'}, r"only defined for data.name='bimodal'"),
        ({'mesh.data': 3}, r'does not match the \d+ available devices'),
        ({'eval.draws': 0}, r'eval.draws must be a positive int'),
    ],
)
def test_bad_config_fails_before_anything_runs(tmp_path, overrides, message):
    workdir = str(tmp_path / 'never')
    with pytest.raises(ValueError, match=message):
        train.train_and_evaluate(tiny_config(**overrides), workdir)
    assert not os.path.exists(workdir)


def test_batch_not_divisible_by_devices():
    with pytest.raises(ValueError, match=r'batch_size=64 is not divisible by the 3 devices'):
        train.validate_config(tiny_config(), num_devices=3)


def test_unknown_drift_option_is_named():
    config = tiny_config()
    config.drift.unlock()
    config.drift.temprature = 0.1
    with pytest.raises(ValueError, match='temprature'):
        train.validate_config(config)


@pytest.mark.parametrize(
    'content, message',
    [
        (None, r'does not exist|No such file|not found'),
        (np.zeros((50,)), None),
        (np.full((50, 3), np.nan), r'NaN|nan|inf'),
        (np.zeros((50, 2, 2)), r'shape'),
    ],
)
def test_bad_point_file(tmp_path, content, message):
    path = str(tmp_path / 'cloud.npy')
    if content is not None:
        np.save(path, content)
    config = tiny_config(**{'data.name': 'points', 'data.path': path})
    if message is None:  # a 1-D file is read as [n, 1]: accepted
        train.validate_config(config)
        return
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        train.validate_config(config)


def test_unwritable_workdir_fails_at_start(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    with pytest.raises(OSError):
        train.train_and_evaluate(tiny_config(), str(blocker / 'sub'))


def test_config_json_round_trips(finished_run):
    config, workdir, _ = finished_run
    with open(os.path.join(workdir, 'config.json')) as f:
        saved = json.load(f)
    assert saved['train']['steps'] == config.train.steps
    assert saved['drift']['temperatures'] == list(config.drift.temperatures)


def test_failing_save_names_the_step_and_keeps_earlier_checkpoints(tmp_path, monkeypatch):
    workdir = str(tmp_path / 'full')
    original = checkpointing.ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step >= 20:
            raise OSError(28, 'No space left on device')
        return original(self, step, *args, **kwargs)

    monkeypatch.setattr(checkpointing.ocp.CheckpointManager, 'save', save)
    with pytest.raises(
        OSError,
        match=r'checkpoint of step 20 .* No space left on device.*'
        r'Earlier checkpoints are kept: \[10\]',
    ):
        train.train_and_evaluate(tiny_config(), workdir)
    monkeypatch.undo()
    _, _, step = train.load_run(workdir)
    assert step == 10


def test_toy_evaluator_scores_data_near_one_and_a_shift_far_above():
    """Data draws as the 'generated' samples score ~1 (both sides averaged over draws, the
    floor an expectation); the same draws shifted by 0.1 data std (~3 mode widths) do not."""
    config = tiny_config(**{'data.name': 'twenty_five_gaussians', 'eval.num_samples': 1000})
    task = train.make_run(config).task
    evaluator = task.make_evaluator(seed=0)
    keys = jax.random.split(jax.random.PRNGKey(123), config.eval.draws)
    data_draws = [np.asarray(task.dataset.sample(k, 1000, split='eval')) for k in keys]
    good = evaluator.score(data_draws)
    # The mean of 8 draws still scatters by ~20% (measured over 64 pairs of 5000-point draws).
    assert 0.5 < good['energy_ratio'] < 1.5, good
    assert good['energy_ratio'] == pytest.approx(good['energy_distance'] / good['energy_floor'])
    shifted = evaluator.score([d + np.array([0.1, 0.0], np.float32) * d.std(0) for d in data_draws])
    assert shifted['energy_ratio'] > 3 * good['energy_ratio'], shifted
    with pytest.raises(ValueError, match='Expected 8 generated draws'):
        evaluator.score(data_draws[:2])


def test_extra_toy_metrics_are_logged(tmp_path):
    extra = ('mmd', 'sliced_wasserstein')
    config = tiny_config(
        **{
            'train.steps': 4,
            'train.checkpoint_every': 4,
            'eval.every': 2,
            'eval.num_samples': 128,
            'eval.plot_points': 64,
            'eval.extra_metrics': extra,
        }
    )
    workdir = str(tmp_path / 'extra')
    result = train.train_and_evaluate(config, workdir)
    assert result['step'] == 4
    assert np.isfinite(result['mmd'])
    # An untrained generator is far from the data: a strictly positive transport cost.
    assert np.isfinite(result['sliced_wasserstein']) and result['sliced_wasserstein'] > 0
    evals = [e for e in writers.read_metrics(workdir) if 'energy_ratio' in e]
    assert [e['step'] for e in evals] == [2, 4]
    assert all(set(extra) <= set(e) for e in evals)


def test_unknown_extra_toy_metric_is_named():
    config = tiny_config(**{'eval.extra_metrics': ('mmd', 'kl')})
    with pytest.raises(ValueError, match=r"unknown \['kl'\].*sliced_wasserstein"):
        train.validate_config(config)
    with pytest.raises(ValueError, match="'kl'"):
        train.make_run(config)
