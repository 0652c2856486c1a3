"""Inception FID in a tiny image run (eval.fid_stats) and `python -m drift_jax.fid` on it.

Random weights of a 1/16-width network whose file asks for 75 x 75 inputs (299 in real use),
and statistics of 300 train digits made here; the network itself is checked against
pytorch-fid in test_fid.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from drift_jax import defaults, train, writers
from drift_jax.eval import fid as fid_lib
from drift_jax.eval import inception as inc
from drift_jax.eval import inception_weights as incw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 200  # InceptionExtractor's default, which the run's evaluator uses: one compile


@pytest.fixture(scope='module')
def files(tmp_path_factory, digits_data_dir):
    d = tmp_path_factory.mktemp('fid_run')
    weights = str(d / 'inception_w16.npz')
    incw.save_weights(weights, incw.random_variables(width_divisor=16), 16, input_size=75)
    data_dir = digits_data_dir
    ex = inc.InceptionExtractor.from_file(weights, batch_size=BATCH)
    s = fid_lib.dataset_stats('digits', ex, data_dir=data_dir, num=300, pr_num=100)
    stats = str(d / 'digits_train.npz')
    fid_lib.save_stats(stats, s['mu'], s['sigma'], s['num_images'], s['features'])
    return {'weights': weights, 'stats': stats, 'data_dir': data_dir}


def tiny_config(data_dir, **eval_overrides):
    c = defaults.image_config()
    c.data.name, c.data.data_dir = 'digits', data_dir
    c.model.base_channels, c.model.noise_dim, c.model.cond_dim = 8, 8, 16
    c.train.steps, c.train.log_every, c.train.checkpoint_every = 1, 1, 1
    c.train.classes_per_step, c.train.gen_per_class = 4, 4
    c.train.pos_per_class, c.train.uncond_per_class = 4, 4
    c.train.batch_size, c.train.bank_capacity, c.train.bank_push = 16, 8, 8
    c.eval.every, c.eval.num_samples, c.eval.classifier_steps = 1, BATCH, 5
    for k, v in eval_overrides.items():
        c.eval[k] = v
    return c


def test_image_run_logs_fid_and_scores_on_the_command_line(files, tmp_path):
    workdir = str(tmp_path / 'run')
    config = tiny_config(
        files['data_dir'], fid_stats=files['stats'], inception_weights=files['weights']
    )
    result = train.train_and_evaluate(config, workdir)
    assert np.isfinite(result['fid']) and result['inception_score'] >= 1.0 - 1e-6
    assert np.isfinite(result['fd'])  # the library's own metrics are still there
    logged = [e for e in writers.read_metrics(workdir) if 'fid' in e]
    assert [e['step'] for e in logged] == [1] and logged[0]['fid'] == result['fid']

    out = str(tmp_path / 'score.json')
    cmd = [
        sys.executable,
        '-m',
        'drift_jax.fid',
        'score',
        f'--workdir={workdir}',
        f'--stats={files["stats"]}',
        f'--inception_weights={files["weights"]}',
        '--num=64',
        f'--batch_size={BATCH}',
        '--labels=1,2',
        '--seed=3',
        f'--out={out}',
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'fid:' in proc.stdout
    with open(out) as f:
        scores = json.load(f)
    assert scores['num'] == 64
    for key in ('fid', 'inception_score', 'inception_score_std', 'precision', 'recall'):
        assert np.isfinite(scores[key]), key
    # The command computes what the library function does with the same settings.
    ex = inc.InceptionExtractor.from_file(files['weights'], batch_size=BATCH)
    direct = fid_lib.score_workdir(workdir, files['stats'], ex, 64, labels=[1, 2], seed=3)
    for key in ('fid', 'inception_score', 'precision', 'recall'):
        assert scores[key] == pytest.approx(direct[key], rel=1e-5, abs=1e-9), key


def test_cli_names_the_commands():
    proc = subprocess.run(
        [sys.executable, '-m', 'drift_jax.fid', 'frobnicate'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert 'convert | download | stats | score' in proc.stderr
