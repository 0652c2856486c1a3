"""The sharded train step on 8 fake CPU devices follows the single-device run (1e-5)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from _xla_flags import with_fake_devices

from drift_jax import writers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = [
    '--config=configs/spiral.py',
    '--config.train.steps=20',
    '--config.model.width=32',
    '--config.model.noise_dim=8',
    '--config.train.batch_size=60',
    '--config.train.num_pos=64',
    '--config.train.log_every=1',
    '--config.eval.every=20',
    '--config.eval.num_samples=100',
    '--config.train.checkpoint_every=20',
]


def _train(workdir: str, devices: int, *extra: str) -> dict[int, float]:
    env = dict(os.environ, XLA_FLAGS=with_fake_devices(devices), JAX_PLATFORMS='cpu')
    env['PYTHONPATH'] = os.pathsep.join(p for p in (ROOT, env.get('PYTHONPATH')) if p)
    out = subprocess.run(
        [sys.executable, '-m', 'drift_jax.main', f'--workdir={workdir}', *ARGS, *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return {e['step']: e['loss'] for e in writers.read_metrics(workdir) if 'loss' in e}


@pytest.mark.slow
def test_sharded_training_matches_single_device(tmp_path):
    single = _train(str(tmp_path / 'one'), 1)
    # 60 generated samples over 4 data devices x 2 fsdp: parameters sharded too.
    sharded = _train(str(tmp_path / 'eight'), 8, '--config.mesh.data=4', '--config.mesh.fsdp=2')
    assert sorted(single) == sorted(sharded) == list(range(1, 21))
    np.testing.assert_allclose(
        [sharded[s] for s in range(1, 21)], [single[s] for s in range(1, 21)], rtol=1e-5, atol=0
    )


def test_batch_not_divisible_by_data_devices_fails_fast(tmp_path):
    env = dict(os.environ, XLA_FLAGS=with_fake_devices(8), JAX_PLATFORMS='cpu')
    out = subprocess.run(
        [
            sys.executable,
            '-m',
            'drift_jax.main',
            f'--workdir={tmp_path}/w',
            *ARGS,
            '--config.mesh.data=8',
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert 'batch_size=60 is not divisible by the 8 devices' in out.stderr
