"""The comparison of methods (`drift_jax.comparison`, `python -m drift_jax.compare`): tables,
a tiny suite end to end, re-runs that do not train again, refused arguments, and the
trainer's time budget it relies on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest

from drift_jax import comparison, comparison_report, defaults, train, writers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {
    'train.steps': 4,
    'train.batch_size': 64,
    'train.num_pos': 64,
    'train.log_every': 2,
    'train.checkpoint_every': 4,
    'eval.every': 2,
    'eval.num_samples': 100,
    'eval.draws': 1,
    'eval.plot_points': 100,
    'model.width': 16,
    'denoiser.width': 16,
    'ddpm.timesteps': 20,
}
SUITE = dict(
    data=['spiral'],
    methods=['drifting', 'ddpm'],
    overrides=TINY,
    sampling_steps={'ddpm': (2, 20, 1000)},  # 20 = T: the run's own sampler; 1000 > T
    throughput_batch=64,
    throughput_repeats=1,
    grid_points=100,
)


# ----------------------------------------------------------------------------- tables

ROWS = [
    {
        'method': 'drifting',
        'data': 'spiral',
        'run': 'spiral_drifting',
        'ratio_key': 'energy_ratio',
        'ratio': 1.23456,
        'nfe': 1,
        'train_steps': 2000,
        'train_seconds': 41.25,
        'samples_per_second': 123456.7,
        'params': 67842,
    },
    {
        'method': 'ddpm',
        'data': 'digits',
        'run': 'digits_ddpm',
        'ratio_key': 'fd_ratio',
        'ratio': 12.5,
        'nfe': 100,
        'train_steps': 3000,
        'train_seconds': None,
        'samples_per_second': 850.0,
        'params': 1234567,
        'class_accuracy': 0.91234,
    },
]


def test_tables_of_synthetic_rows(tmp_path):
    paths = comparison_report.write_tables(ROWS, str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ['results.json', 'table.md', 'table.csv']
    with open(paths[0]) as f:
        assert json.load(f) == ROWS
    with open(paths[1]) as f:
        assert f.read() == (
            '| data | method | ratio | NFE | train s | samples/s | params | class acc. |\n'
            '|---|---|---|---|---|---|---|---|\n'
            '| spiral | drifting | 1.23 | 1 | 41.2 | 123,457 | 67,842 | - |\n'
            '| digits | ddpm | 12.5 | 100 | - | 850 | 1,234,567 | 0.912 |\n'
            '\n'
            'ratio: ED / floor (points); FD / floor (images).\n'
        )
    with open(paths[2]) as f:
        assert f.read() == (
            'data,method,run,ratio_key,ratio,nfe,train_steps,train_seconds,'
            'samples_per_second,params,class_accuracy,error\n'
            'spiral,drifting,spiral_drifting,energy_ratio,1.23456,1,2000,41.25,123456.7,67842,,\n'
            'digits,ddpm,digits_ddpm,fd_ratio,12.5,100,3000,,850.0,1234567,0.91234,\n'
        )
    # Without labelled data there is no class accuracy column.
    assert 'class acc.' not in comparison_report.format_markdown(ROWS[:1])


def test_overrides_parse_and_apply():
    assert comparison.parse_override('ddpm:train.steps=200') == ('ddpm', 'train.steps', 200)
    assert comparison.parse_override('data.name=moons') == (None, 'data.name', 'moons')
    method, key, value = comparison.parse_override('eval.extra_metrics=["mmd"]')
    config = defaults.toy_config()
    comparison.apply_overrides(config, {key: value, 'train.time_budget': 5})
    assert method is None and config.eval.extra_metrics == ('mmd',)
    assert config.train.time_budget == 5.0
    with pytest.raises(comparison.ComparisonError, match="the config has no field 'train.stepz'"):
        comparison.apply_overrides(config, {'train.stepz': 1})
    with pytest.raises(comparison.ComparisonError, match='is not'):
        comparison.parse_override('train.steps')


# ----------------------------------------------------------------------------- a tiny suite


@pytest.fixture(scope='module')
def tiny_suite(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('compare'))
    lines = []
    rows = comparison.compare(out, 'toy', echo=lines.append, **SUITE)
    return out, rows, lines


def test_tiny_suite_writes_results_tables_and_figures(tiny_suite):
    out, rows, lines = tiny_suite
    assert lines[:1] == ['[1/2] drifting on spiral: training in ' + f'{out}/runs/spiral_drifting']
    assert any(line.startswith('[2/2] ddpm on spiral: training') for line in lines)
    for name in ('results.json', 'table.md', 'table.csv', *comparison_report.FIGURES):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    with open(os.path.join(out, 'results.json')) as f:
        assert json.load(f) == rows
    drifting, ddpm = rows
    assert (drifting['method'], ddpm['method']) == ('drifting', 'ddpm')
    for row in rows:
        assert row['data'] == 'spiral' and row['ratio_key'] == 'energy_ratio'
        assert row['train_steps'] == 4 and row['train_seconds'] > 0
        assert row['samples_per_second'] > 0 and row['ratio'] == row['eval']['energy_ratio']
        assert len(row['curve']['seconds']) == 2  # evaluations at steps 2 and 4
        assert row['curve']['ratio'][-1] == row['ratio']
        assert row['curve']['seconds'][-1] == pytest.approx(row['train_seconds'], abs=1e-3)
    assert drifting['nfe'] == 1 and ddpm['nfe'] == 20
    # The sweep: DDIM at 2 steps, the run's own ancestral sampler at T = 20; 1000 > T is
    # left out with a note.
    assert [(p['nfe'], p['sampling']) for p in ddpm['nfe_sweep']] == [
        (2, 'steps=2'),
        (20, 'default'),
    ]
    assert ddpm['nfe_sweep'][-1]['ratio'] == ddpm['ratio']
    assert any('steps=1000 left out' in line for line in lines)
    # params: the sampling networks of the restored run, counted independently.
    run, state, _ = train.load_run(os.path.join(out, 'runs', 'spiral_ddpm'))
    leaves = jax.tree.leaves(state.ema_params['denoiser'])
    assert ddpm['params'] == sum(x.size for x in leaves) and ddpm['sampling_networks'] == [
        'denoiser'
    ]
    with np.load(os.path.join(out, 'runs', 'spiral_drifting', comparison.SAMPLES_FILE)) as f:
        assert f['samples'].shape == (100, 2) and f['data'].shape == (100, 2)


def test_rerun_does_not_train_finished_runs(tiny_suite, monkeypatch):
    out, rows, _ = tiny_suite

    def no_training(*args, **kwargs):
        raise AssertionError('a finished run was trained again')

    monkeypatch.setattr(train, 'train_and_evaluate', no_training)
    metrics = os.path.join(out, 'runs', 'spiral_ddpm', 'metrics.jsonl')
    before = os.stat(metrics).st_mtime_ns
    lines = []
    again = comparison.compare(out, 'toy', echo=lines.append, **SUITE)
    assert again == rows  # every number from the cache
    assert lines[0] == '[1/2] drifting on spiral: finished, evaluated (cached)'
    # Without its cached evaluation, a finished run is evaluated again, not trained.
    os.remove(os.path.join(out, 'runs', 'spiral_drifting', comparison.CACHE_FILE))
    lines = []
    third = comparison.compare(out, 'toy', echo=lines.append, **SUITE)
    assert lines[0] == '[1/2] drifting on spiral: finished, evaluating'
    assert (
        third[0]['ratio'] == rows[0]['ratio']
        and third[0]['train_seconds'] == rows[0]['train_seconds']
    )
    assert os.stat(metrics).st_mtime_ns == before


def test_stop_requests_nest():
    """A SIGTERM taken by an outer request (the comparison's) before an inner one (the
    trainer's) takes over is the inner one's from the start; the inner one passes its own
    on when it ends."""
    assert threading.current_thread() is threading.main_thread()  # else SIGTERM would kill
    handler = signal.getsignal(signal.SIGTERM)
    with train.StopRequest() as outer:
        with train.StopRequest() as inner:
            assert not inner.requested
        assert not outer.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert outer.requested
        with train.StopRequest() as inner:
            assert inner.requested
    with train.StopRequest() as outer:
        with train.StopRequest() as inner:
            os.kill(os.getpid(), signal.SIGTERM)
            assert inner.requested and not outer.requested
        assert outer.requested  # passed on
    assert signal.getsignal(signal.SIGTERM) == handler


def test_sigterm_stops_the_comparison_and_the_same_call_continues(tmp_path, monkeypatch):
    assert threading.current_thread() is threading.main_thread()  # else SIGTERM would kill
    handler = signal.getsignal(signal.SIGTERM)
    out = str(tmp_path)
    overrides = {**TINY, 'train.checkpoint_every': 2}
    kwargs = dict(SUITE, methods=['drifting'], data=['spiral', 'moons'], overrides=overrides)
    kwargs.update(sampling_steps={}, figures=False)
    save = writers.save_train_seconds
    signal_at = []  # (run name, step) at which SIGTERM lands, once each

    def save_and_signal(workdir, step, seconds):
        save(workdir, step, seconds)
        if signal_at and (os.path.basename(workdir), step) == signal_at[0]:
            signal_at.pop()
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(writers, 'save_train_seconds', save_and_signal)
    # During training: the trainer checkpoints at the next step and the comparison stops
    # without evaluating or caching that run.
    signal_at.append(('spiral_drifting', 2))
    with pytest.raises(comparison.ComparisonStopped) as e:
        comparison.compare(out, 'toy', echo=lambda line: None, **kwargs)
    assert str(e.value).startswith(
        '[1/2] drifting on spiral: SIGTERM stopped training at step 3 of 4'
    )
    assert 'run the same command again to continue' in str(e.value)
    assert not os.path.exists(os.path.join(out, 'runs', 'spiral_drifting', comparison.CACHE_FILE))
    # At the run's last step (too late for the trainer to act on): the run is finished and
    # evaluated, then the comparison stops before the next one.
    signal_at.append(('spiral_drifting', 4))
    lines = []
    with pytest.raises(
        comparison.ComparisonStopped, match=r'stopped before \[2/2\] drifting on moons'
    ):
        comparison.compare(out, 'toy', echo=lines.append, **kwargs)
    assert lines == [f'[1/2] drifting on spiral: resuming in {out}/runs/spiral_drifting']
    assert signal.getsignal(signal.SIGTERM) == handler  # the comparison's own is gone
    lines = []
    rows = comparison.compare(out, 'toy', echo=lines.append, **kwargs)
    assert lines[0] == '[1/2] drifting on spiral: finished, evaluated (cached)'
    assert lines[1].startswith('[2/2] drifting on moons: training')
    assert [(r['run'], r['train_steps']) for r in rows] == [
        ('spiral_drifting', 4),
        ('moons_drifting', 4),
    ]


def test_a_diverged_run_is_recorded_and_the_comparison_goes_on(tmp_path, monkeypatch):
    def diverge(config, workdir):
        os.makedirs(workdir, exist_ok=True)
        raise FloatingPointError('Training diverged at step 3: loss nan.')

    monkeypatch.setattr(train, 'train_and_evaluate', diverge)
    lines = []
    kwargs = dict(data=['spiral', 'moons'], methods=['gan'], echo=lines.append)
    rows = comparison.compare(str(tmp_path), 'toy', **kwargs)
    assert [(r['run'], r['ratio'], r['error']) for r in rows] == [
        ('spiral_gan', None, 'Training diverged at step 3: loss nan.'),
        ('moons_gan', None, 'Training diverged at step 3: loss nan.'),
    ]
    assert lines[0].startswith('[1/2] gan on spiral: training')
    assert lines[1].startswith('[1/2] gan on spiral: FAILED')
    with open(tmp_path / 'table.md') as f:
        table = f.read()
    assert '| spiral | gan | - | - |' in table
    assert 'Failed (diverged; the error is in results.json): spiral_gan, moons_gan.' in table
    assert all(os.path.exists(tmp_path / name) for name in comparison_report.FIGURES)
    lines.clear()
    assert comparison.compare(str(tmp_path), 'toy', **kwargs) == rows  # not tried again
    assert lines[0] == '[1/2] gan on spiral: failed, evaluated (cached)'


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    'kwargs, message',
    [
        (
            {'methods': ['drifting', 'ddpn']},
            "unknown method 'ddpn'; choose from drifting, ddpm, ncsn, gan, ddgan, flow",
        ),
        ({'methods': ['mae']}, "method 'mae' is not compared: it trains a feature encoder"),
        (
            {'data': ['spirals']},
            "unknown data 'spirals'; choose from spiral, checkerboard, swiss_roll, moons",
        ),
        ({'suite': 'digits', 'data': ['spiral']}, '(--suite=toy: spiral, checkerboard'),
        ({'points': '/nonexistent/cloud.npy'}, "--points='/nonexistent/cloud.npy': no such"),
        ({'suite': 'cifar'}, "unknown suite 'cifar'; choose from toy, digits, mnist"),
        ({'overrides': {'train.stepz': 3}}, "the config has no field 'train.stepz'"),
    ],
)
def test_refused_arguments(kwargs, message):
    kwargs = {'suite': 'toy', 'methods': ['drifting'], **kwargs}
    with pytest.raises(comparison.ComparisonError) as e:
        comparison.plan(**kwargs)
    assert message in str(e.value)


def test_mnist_suite_without_mnist_prepared_names_the_command(tmp_path):
    with pytest.raises(comparison.ComparisonError) as e:
        comparison.plan(
            'mnist', methods=['drifting'], overrides={'data.data_dir': str(tmp_path / 'none')}
        )
    assert "image dataset 'mnist' is not prepared" in str(e.value)
    assert 'python -m drift_jax.data.build --name=mnist' in str(e.value)


def test_cli_refuses_in_one_line_with_status_2(tmp_path):
    out = subprocess.run(
        [sys.executable, '-m', 'drift_jax.compare', f'--out={tmp_path}', '--methods=ddpn'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [
        "drift_jax.compare: error: unknown method 'ddpn'; choose from "
        + ', '.join(comparison.COMPARED)
        + '.'
    ]
    assert not os.listdir(tmp_path)  # refused before anything is written


def test_cli_stopped_by_sigterm_says_so_in_one_line_with_status_143(tmp_path):
    # The comparison's own SIGTERM handling is tested above (a real signal, in-process); this
    # runs the CLI in a subprocess with `compare` stopping at once, to check what it prints.
    script = (
        'import sys\n'
        'from absl import app\n'
        'from drift_jax import compare, comparison\n'
        'def stopped(*args, **kwargs):\n'
        "    raise comparison.ComparisonStopped('SIGTERM: stopped before [1/1] drifting on "
        "spiral; run the same command again to continue.')\n"
        'comparison.compare = stopped\n'
        f"sys.argv = ['compare', '--out={tmp_path}']\n"
        'app.run(compare.main)\n'
    )
    out = subprocess.run(
        [sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 128 + signal.SIGTERM == 143, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [
        'drift_jax.compare: SIGTERM: stopped before [1/1] drifting on spiral; run the same '
        'command again to continue.'
    ]


def test_ddgan_runs_one_extra_run_per_other_t():
    specs = comparison.plan('toy', data=['moons'], methods=['ddgan'], ddgan_steps=(1, 4, 8, 1))
    assert [(s.name, s.main, s.config.ddgan.steps) for s in specs] == [
        ('moons_ddgan', True, 4),
        ('moons_ddgan_T1', False, 1),
        ('moons_ddgan_T8', False, 8),
    ]
    budget = comparison.plan('toy', data=['moons'], methods=['ddpm'], budget_seconds=30)
    assert budget[0].config.train.time_budget == 30.0
    assert budget[0].config.train.steps == 5000  # ddpm's method_settings, applied


# ----------------------------------------------------------------------------- time budget


def test_time_budget_stops_after_the_first_step_and_evaluates(tmp_path):
    config = defaults.toy_config()
    comparison.apply_overrides(config, TINY)
    config.train.steps, config.train.time_budget = 50, 1e-6
    workdir = str(tmp_path / 'run')
    result = train.train_and_evaluate(config, workdir)
    assert result['step'] == 1 and 'energy_ratio' in result
    events = writers.read_metrics(workdir)
    assert [e['step'] for e in events if 'energy_ratio' in e] == [1]
    assert writers.read_train_seconds(workdir, 1) > 0
    _, _, step = train.load_run(workdir)
    assert step == 1
    # Re-running: the budget is spent, so it only evaluates again (no step 2).
    again = train.train_and_evaluate(config, workdir)
    assert again['step'] == 1 and train.load_run(workdir)[2] == 1
    config.train.time_budget = -1.0
    with pytest.raises(ValueError, match='train.time_budget must be seconds >= 0'):
        train.validate_config(config)


def test_time_curve_uses_training_seconds_not_evaluation_time(tmp_path):
    workdir = str(tmp_path)
    events = [
        {'step': 50, 'loss': 1.0, 'wall_time': 100.0},
        {'step': 100, 'energy_ratio': 3.0, 'wall_time': 190.0},  # a slow evaluation
        {'step': 200, 'energy_ratio': 1.5, 'wall_time': 400.0},
    ]
    with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
        f.writelines(json.dumps(e) + '\n' for e in events)
    # Wall clock without a training-seconds record: seconds since the first logged metrics.
    assert comparison.time_curve(workdir, 'energy_ratio') == {
        'seconds': [90.0, 300.0],
        'ratio': [3.0, 1.5],
    }
    # With one: the checkpoint's seconds, interpolated from step 0 between checkpoints.
    writers.save_train_seconds(workdir, 200, 40.0)
    assert comparison.time_curve(workdir, 'energy_ratio') == {
        'seconds': [20.0, 40.0],
        'ratio': [3.0, 1.5],
    }
    assert comparison.time_curve(workdir, 'fd_ratio') == {'seconds': [], 'ratio': []}
