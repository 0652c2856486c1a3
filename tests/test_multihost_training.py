"""Training across processes and surviving interruptions, run as real subprocesses.

2 processes x 2 CPU devices must match 1 process x 4 devices; SIGTERM checkpoints and exits
0; repeated SIGKILLs never leave a run unable to resume, and the finished run is exact.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from _xla_flags import with_fake_devices

from drift_jax import train, writers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL = os.path.join(ROOT, 'launch', 'local_multiprocess.sh')
TINY = [
    '--config.model.width=32',
    '--config.model.noise_dim=8',
    '--config.train.batch_size=64',
    '--config.train.num_pos=64',
    '--config.eval.num_samples=100',
    '--config.train.log_every=1',
    '--config.eval.every=10',
]


def _env(devices: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(('DRIFT_JAX_', 'SLURM_'))}
    env['PYTHONPATH'] = os.pathsep.join(p for p in (ROOT, env.get('PYTHONPATH')) if p)
    env['XLA_FLAGS'] = with_fake_devices(devices)
    env['JAX_PLATFORMS'] = 'cpu'
    return env


def _main_cmd(workdir: str, steps: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        '-m',
        'drift_jax.main',
        '--config=configs/spiral.py',
        f'--workdir={workdir}',
        f'--config.train.steps={steps}',
        *TINY,
        *extra,
    ]


def _losses(workdir: str) -> dict[int, float]:
    return {e['step']: e['loss'] for e in writers.read_metrics(workdir) if 'loss' in e}


def _final_params(workdir: str) -> list[np.ndarray]:
    _, state, step = train.load_run(workdir)  # restored into this 1-device process
    return step, [np.asarray(x) for x in jax.tree.leaves(state.params)]


@pytest.fixture(scope='module')
def one_process_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp('mh') / 'one')
    out = subprocess.run(
        _main_cmd(workdir, 20, '--config.train.checkpoint_every=10'),
        cwd=ROOT,
        env=_env(4),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir


@pytest.mark.slow
def test_two_processes_equal_one_process(one_process_run, tmp_path):
    workdir = str(tmp_path / 'two')
    cmd = [
        'bash',
        LOCAL,
        '2',
        '--devices_per_process',
        '2',
        '--timeout',
        '300',
        '--',
        *_main_cmd(workdir, 20, '--config.train.checkpoint_every=10'),
    ]
    out = subprocess.run(cmd, cwd=ROOT, env=_env(2), capture_output=True, text=True, timeout=330)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])
    one, two = _losses(one_process_run), _losses(workdir)
    assert sorted(one) == sorted(two) == list(range(1, 21))
    np.testing.assert_allclose(
        [two[s] for s in sorted(two)], [one[s] for s in sorted(one)], rtol=1e-5, atol=0
    )
    # A checkpoint written by 2 processes restores in this single process (re-sharded).
    s1, p1 = _final_params(one_process_run)
    s2, p2 = _final_params(workdir)
    assert s1 == s2 == 20
    for a, b in zip(p1, p2, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_one_process_checkpoint_continues_in_two_processes(one_process_run, tmp_path):
    workdir = str(tmp_path / 'grow')
    shutil.copytree(one_process_run, workdir)
    cmd = [
        'bash',
        LOCAL,
        '2',
        '--devices_per_process',
        '2',
        '--timeout',
        '300',
        '--',
        *_main_cmd(workdir, 24, '--config.train.checkpoint_every=10'),
    ]
    out = subprocess.run(cmd, cwd=ROOT, env=_env(2), capture_output=True, text=True, timeout=330)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])
    assert 'resumed from step 20' in out.stdout
    losses = _losses(workdir)
    assert sorted(losses) == list(range(1, 25))
    assert all(np.isfinite(v) for v in losses.values())


def _wait_for_step(workdir: str, proc: subprocess.Popen, step: int, within: float = 120):
    deadline = time.monotonic() + within
    path = os.path.join(workdir, 'metrics.jsonl')
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        if os.path.exists(path):
            with open(path) as f:
                steps = [json.loads(ln)['step'] for ln in f if ln.strip()]
            if steps and max(steps) >= step:
                return
        time.sleep(0.05)
    raise TimeoutError(f'no step {step} in {path} after {within} s')


@pytest.mark.slow
def test_sigterm_checkpoints_exits_zero_and_resume_is_exact(one_process_run, tmp_path):
    workdir = str(tmp_path / 'term')
    cmd = _main_cmd(workdir, 20, '--config.train.checkpoint_every=1000')
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for_step(workdir, proc, 3)
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        out, err = proc.communicate(timeout=30)
        assert time.monotonic() - t0 < 30
        assert proc.returncode == 0, err[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 'SIGTERM: saved a checkpoint' in err, (out, err[-3000:], os.listdir(workdir))
    _, _, saved = train.load_run(workdir)
    assert 3 <= saved < 20  # a checkpoint at the step it was stopped
    out = subprocess.run(cmd, cwd=ROOT, env=_env(4), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f'resumed from step {saved}' in out.stdout
    s1, p1 = _final_params(one_process_run)
    s2, p2 = _final_params(workdir)
    assert s1 == s2 == 20
    for a, b in zip(p1, p2, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_repeated_sigkill_always_resumes(one_process_run, tmp_path):
    workdir = str(tmp_path / 'kill')
    cmd = _main_cmd(workdir, 20, '--config.train.checkpoint_every=2')
    rng = random.Random(0)
    for _ in range(3):
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=_env(4), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        try:
            _wait_for_step(workdir, proc, 1, within=120) if rng.random() < 0.7 else None
            time.sleep(rng.uniform(0.0, 1.5))
        except (AssertionError, TimeoutError):
            pass  # finished before the kill: fine
        proc.kill()
        proc.wait(timeout=30)
    out = subprocess.run(cmd, cwd=ROOT, env=_env(4), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    s1, p1 = _final_params(one_process_run)
    s2, p2 = _final_params(workdir)
    assert s1 == s2 == 20
    for a, b in zip(p1, p2, strict=True):
        np.testing.assert_array_equal(a, b)
