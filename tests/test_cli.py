"""The command-line front doors, run as a user would: train, resume, sample."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from drift_jax import main as main_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    '--config.train.steps=12',
    '--config.train.batch_size=64',
    '--config.train.num_pos=64',
    '--config.model.width=32',
    '--config.eval.every=6',
    '--config.eval.num_samples=100',
    '--config.train.checkpoint_every=6',
    '--config.train.log_every=3',
]


def run(args, cwd=ROOT, timeout=240):
    return subprocess.run(
        [sys.executable, '-m', *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope='module')
def cli_workdir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp('cli') / 'spiral')
    out = run(['drift_jax.main', '--config=configs/spiral.py', f'--workdir={workdir}', *TINY])
    assert out.returncode == 0, out.stderr[-3000:]
    assert f'workdir {workdir}' in out.stdout
    assert 'energy_ratio=' in out.stdout
    return workdir


def test_main_then_sample(cli_workdir, tmp_path):
    path = str(tmp_path / 'samples.npy')
    out = run(['drift_jax.sample', f'--workdir={cli_workdir}', '--num=37', f'--out={path}'])
    assert out.returncode == 0, out.stderr[-3000:]
    x = np.load(path)
    assert x.shape == (37, 2) and np.all(np.isfinite(x))


def test_main_resumes_with_more_steps(cli_workdir):
    args = [a for a in TINY if 'train.steps' not in a] + ['--config.train.steps=18']
    out = run(['drift_jax.main', '--config=configs/spiral.py', f'--workdir={cli_workdir}', *args])
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'resumed from step 12' in out.stdout
    # The changed setting is reported, old and new value (the first run used TINY's steps).
    old_steps = next(a for a in TINY if 'train.steps' in a).split('=')[1]
    assert f'train.steps: {old_steps} -> 18' in out.stdout


def test_points_config_trains_on_a_users_file(tmp_path):
    rng = np.random.default_rng(0)
    cloud = rng.normal(size=(500, 3)) * [1.0, 10.0, 0.1] + [5.0, -3.0, 100.0]
    path = str(tmp_path / 'cloud.csv')
    np.savetxt(path, cloud, delimiter=',', header='a,b,c', comments='')
    workdir = str(tmp_path / 'points')
    out = run(
        [
            'drift_jax.main',
            '--config=configs/points.py',
            f'--config.data.path={path}',
            f'--workdir={workdir}',
            *TINY,
        ]
    )
    assert out.returncode == 0, out.stderr[-3000:]
    samples = str(tmp_path / 's.npy')
    assert (
        run(
            ['drift_jax.sample', f'--workdir={workdir}', '--num=400', f'--out={samples}']
        ).returncode
        == 0
    )
    x = np.load(samples)
    assert x.shape == (400, 3)
    # Samples come back in the user's coordinates (not the standardised ones).
    assert np.all(np.abs(x.mean(0) - cloud.mean(0)) < 3 * cloud.std(0))
    assert abs(x[:, 2].mean() - 100.0) < 1.0


def test_bad_override_fails_fast_with_choices(tmp_path):
    out = run(
        [
            'drift_jax.main',
            '--config=configs/spiral.py',
            f'--workdir={tmp_path}/w',
            '--config.data.name=spirals',
        ],
        timeout=120,
    )
    assert out.returncode != 0
    assert 'spirals' in out.stderr and 'checkerboard' in out.stderr


def test_unknown_config_field_is_rejected(tmp_path):
    out = run(
        [
            'drift_jax.main',
            '--config=configs/spiral.py',
            f'--workdir={tmp_path}/w',
            '--config.train.stepz=10',
        ],
        timeout=120,
    )
    assert out.returncode != 0
    assert 'stepz' in out.stderr


def test_default_workdir_names():
    assert main_module.default_workdir('configs/spiral.py') == os.path.join('workdirs', 'spiral')
    assert main_module.default_workdir('configs/bimodal.py:far') == os.path.join(
        'workdirs', 'bimodal_far'
    )


@pytest.mark.parametrize(
    'args, message',
    [
        (['--out=samples.txt'], '--out must end in .npy, .csv or .png'),
        (['--alpha=0.5'], '--alpha must be >= 1'),
        (['--num=0'], '--num must be positive'),
    ],
)
def test_sample_cli_rejects_bad_flags(cli_workdir, tmp_path, args, message):
    args = [a.replace('--out=', f'--out={tmp_path}/') for a in args]
    out = run(['drift_jax.sample', f'--workdir={cli_workdir}', *args], timeout=120)
    assert out.returncode != 0
    assert message in out.stderr


def test_sample_cli_on_missing_workdir(tmp_path):
    out = run(
        ['drift_jax.sample', f'--workdir={tmp_path}/nothing', '--num=3', f'--out={tmp_path}/s.npy'],
        timeout=120,
    )
    assert out.returncode != 0
    assert 'is not a drift_jax workdir' in out.stderr or 'does not exist' in out.stderr


def test_train_step_benchmark_times_a_config_file(tmp_path):
    """benchmarks/train_step.py --config times that config's own step and writes records."""
    path = str(tmp_path / 'step.json')
    out = subprocess.run(
        [
            sys.executable,
            'benchmarks/train_step.py',
            '--config=configs/spiral.py',
            '--set=train.batch_size=64',
            '--set=train.num_pos=64',
            '--set=model.width=32',
            '--steps=2',
            '--repeats=2',
            f'--json={path}',
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    with open(path) as f:
        (rec,) = json.load(f)
    assert rec['config'] == 'configs/spiral.py' and rec['batch_size'] == 64
    assert rec['overrides'] == ['train.batch_size=64', 'train.num_pos=64', 'model.width=32']
    assert rec['ms_per_step'] > 0 and abs(rec['steps_per_s'] * rec['ms_per_step'] - 1e3) < 20
    bad = subprocess.run(
        [sys.executable, 'benchmarks/train_step.py', '--config=nope.py'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "'nope.py' does not exist" in bad.stderr


@pytest.mark.parametrize(
    'args, message',
    [
        (['a', 'b', '--pairs', '0'], '--pairs, --batch and --repeats must be >= 1'),
        (['nope_run', 'b'], "is 'nope_run' a drift_jax workdir?"),
    ],
)
def test_sampler_throughput_refuses_bad_arguments(args, message):
    bad = subprocess.run(
        [sys.executable, 'benchmarks/sampler_throughput.py', *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and message in bad.stderr, bad.stderr[-2000:]
