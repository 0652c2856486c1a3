"""Class accuracy and diversity of guided samples as a function of the guidance scale alpha.

    python benchmarks/guidance.py                                  # train digits, then sweep
    python benchmarks/guidance.py --steps=300 --json=guidance.json --plot=/tmp/guidance.png
    python benchmarks/guidance.py --workdir=/tmp/digits --alphas=1,2,4   # reuse (or resume) a run

Trains configs/<config>.py (default digits) with guidance.alpha_max = --alpha_max, or reuses
--workdir when it already holds a run (resuming it if it is unfinished; its saved config then
wins over --steps and --alpha_max). Then draws --per_class images of every class at each alpha
from the EMA weights, with the same noise at every alpha, and reports

  class_accuracy  the held-out classifier of `image_eval.ImageEvaluator` (trained on the real
                  training images, cached under the data dir) agrees with the requested class;
  spread_ratio    within-class pixel spread of the samples / that of the real test set.

Guidance should trade diversity for fidelity: accuracy non-decreasing and spread
non-increasing in alpha. The check is printed (and stored), not enforced.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import numpy as np
from absl import app, flags, logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench_configs import load_config  # noqa: E402  (beside this script)

_STEPS = flags.DEFINE_integer('steps', 1500, 'Training steps of a new run.')
_ALPHAS = flags.DEFINE_list('alphas', ['1', '1.5', '2', '3', '4'], 'Guidance scales to sample.')
_ALPHA_MAX = flags.DEFINE_float('alpha_max', 4.0, 'guidance.alpha_max of a new run.')
_WORKDIR = flags.DEFINE_string(
    'workdir',
    None,
    'Run directory; reused (resumed) if it holds a '
    'run. Default: a temporary directory, deleted afterwards.',
)
_CONFIG = flags.DEFINE_string('config', 'digits', 'Config file name in configs/ for a new run.')
_DATA_DIR = flags.DEFINE_string(
    'data_dir',
    '',
    'TFDS data dir (default: $TFDS_DATA_DIR or '
    '~/tensorflow_datasets; digits is built there offline).',
)
_PER_CLASS = flags.DEFINE_integer('per_class', 100, 'Samples per class at each alpha.')
_SEED = flags.DEFINE_integer('seed', 0, 'Sampling noise seed (the same noise at every alpha).')
_TOLERANCE = flags.DEFINE_float('tolerance', 0.0, 'Slack allowed by the monotonicity check.')
_JSON = flags.DEFINE_string('json', None, 'Write the records and the checks to this JSON file.')
_PLOT = flags.DEFINE_string(
    'plot',
    os.path.join('docs', 'guidance.png'),
    'Write the two-panel plot to this PNG ("" to skip).',
)


def run_config(workdir: str):
    """The saved config of the run in `workdir`, else a new one from the flags."""
    import ml_collections

    path = os.path.join(workdir, 'config.json')
    if os.path.exists(path):
        with open(path) as f:
            config = ml_collections.ConfigDict(json.load(f))
        notes = [
            f'--{flag}={value} ignored (the run has {value_run})'
            for flag, value, value_run in (
                ('steps', _STEPS.value, config.train.steps),
                ('alpha_max', _ALPHA_MAX.value, config.guidance.alpha_max),
            )
            if flags.FLAGS[flag].present and value != value_run
        ]
        print(f'reusing the run in {workdir}' + (': ' + '; '.join(notes) if notes else ''))
        return config
    config = load_config(_CONFIG.value)
    config.train.steps = _STEPS.value
    config.guidance.alpha_max = _ALPHA_MAX.value
    config.eval.every = min(config.eval.every, _STEPS.value)
    if _DATA_DIR.value:
        config.data.data_dir = _DATA_DIR.value
    return config


def trained_run(workdir: str):
    """(run, state, step, train seconds) of a finished run in `workdir` (trained if needed)."""
    from drift_jax import train

    config = run_config(workdir)
    try:
        run, state, step = train.load_run(workdir)
    except FileNotFoundError:
        step = 0
    seconds = 0.0
    if step < config.train.steps:
        start = time.perf_counter()
        train.train_and_evaluate(config, workdir)
        seconds = time.perf_counter() - start
        run, state, step = train.load_run(workdir)
    return run, state, step, seconds


def is_monotone(values, increasing: bool, tolerance: float) -> bool:
    d = np.diff(np.asarray(values, np.float64))
    return bool(np.all(d >= -tolerance) if increasing else np.all(d <= tolerance))


def sweep(run, state, alphas, per_class: int, seed: int):
    """Records (one per alpha) and the evaluator's reference numbers on real test images."""
    import jax

    from drift_jax import train
    from drift_jax.eval import images as image_eval

    task, cfg = run.task, run.config
    data = task.data
    train_x, train_y = data.class_arrays('train')
    test_split = 'test' if 'test' in data.info.split_sizes else 'validation'
    test_x, test_y = data.class_arrays(test_split)
    evaluator = image_eval.ImageEvaluator(
        train_x,
        train_y,
        test_x,
        test_y,
        task.num_classes,
        seed=cfg.train.seed,
        steps=cfg.eval.classifier_steps,
        cache_dir=os.path.join(data.data_dir, 'drift_jax_eval_cache'),
    )
    labels = np.repeat(np.arange(task.num_classes), per_class).astype(np.int32)
    key = jax.random.PRNGKey(seed)
    records = []
    for alpha in alphas:
        x = train.sample(run, state.ema_params, key, len(labels), labels=labels, alpha=alpha)
        x = x * 2.0 - 1.0  # the data's (and the classifiers') [-1, 1]
        per_class_acc = evaluator.per_class_accuracy(x, labels)
        records.append(
            {
                'alpha': alpha,
                'class_accuracy': image_eval.class_accuracy(
                    evaluator.held_out_classifier, x, labels
                ),
                'min_class_accuracy': float(np.nanmin(per_class_acc)),
                'spread_ratio': image_eval.within_class_spread(x, labels) / evaluator.test_spread,
            }
        )
    reference = {
        'split': test_split,
        'num_test': int(test_x.shape[0]),
        'classifier_test_accuracy': evaluator.test_accuracy['held_out'],
        'test_spread': evaluator.test_spread,
    }
    return records, reference


def plot(records, reference, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use('Agg')
    from matplotlib import pyplot as plt

    alphas = [r['alpha'] for r in records]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax1.plot(alphas, [r['class_accuracy'] for r in records], 'o-', label='samples')
    ax1.axhline(
        reference['classifier_test_accuracy'],
        color='grey',
        ls='--',
        lw=0.8,
        label='real test images',
    )
    ax1.set_xlabel('guidance scale alpha')
    ax1.set_ylabel('class accuracy')
    ax1.set_title('fidelity')
    ax1.legend(loc='lower right', fontsize=8)
    ax2.plot(alphas, [r['spread_ratio'] for r in records], 'o-', color='tab:orange')
    ax2.axhline(1.0, color='grey', ls='--', lw=0.8)
    ax2.set_xlabel('guidance scale alpha')
    ax2.set_ylabel('within-class spread / real')
    ax2.set_title('diversity')
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    alphas = sorted({float(a) for a in _ALPHAS.value})
    if not alphas or alphas[0] < 1:
        raise app.UsageError(f'--alphas must be >= 1, got {_ALPHAS.value}.')
    if _PER_CLASS.value < 2:
        raise app.UsageError('--per_class must be >= 2 (the spread needs two images a class).')
    logging.set_verbosity(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = _WORKDIR.value or os.path.join(tmp, 'run')
        run, state, step, train_seconds = trained_run(workdir)
        start = time.perf_counter()
        records, reference = sweep(run, state, alphas, _PER_CLASS.value, _SEED.value)
        sweep_seconds = time.perf_counter() - start
    cfg = run.config
    if alphas[-1] > cfg.guidance.alpha_max:
        print(
            f'note: alphas above guidance.alpha_max={cfg.guidance.alpha_max} extrapolate '
            'beyond the range seen in training.'
        )
    tol = _TOLERANCE.value
    checks = {
        'accuracy_non_decreasing': is_monotone([r['class_accuracy'] for r in records], True, tol),
        'spread_non_increasing': is_monotone([r['spread_ratio'] for r in records], False, tol),
    }
    summary = {
        'dataset': cfg.data.name,
        'steps': step,
        'alpha_max': cfg.guidance.alpha_max,
        'samples_per_alpha': _PER_CLASS.value * run.task.num_classes,
        'train_seconds': round(train_seconds, 1),
        'sweep_seconds': round(sweep_seconds, 1),
        'tolerance': tol,
        **checks,
        **reference,
    }

    print(
        f'\n{cfg.data.name}, step {step}, guidance.alpha_max {cfg.guidance.alpha_max:g}, '
        f'{summary["samples_per_alpha"]} samples per alpha'
    )
    print('| alpha | class accuracy | min over classes | spread ratio |')
    print('|---|---|---|---|')
    for r in records:
        print(
            f'| {r["alpha"]:g} | {r["class_accuracy"]:.3f} | {r["min_class_accuracy"]:.3f} | '
            f'{r["spread_ratio"]:.3f} |'
        )
    print(f'| real {reference["split"]} | {reference["classifier_test_accuracy"]:.3f} | | 1.000 |')
    yes_no = {True: 'yes', False: 'NO'}
    print(f'\nclass accuracy non-decreasing in alpha: {yes_no[checks["accuracy_non_decreasing"]]}')
    print(
        f'spread ratio non-increasing in alpha:   {yes_no[checks["spread_non_increasing"]]}'
        + (f'  (tolerance {tol:g})' if tol else '')
    )
    if _JSON.value:
        with open(_JSON.value, 'w') as f:
            json.dump({'summary': summary, 'records': records}, f, indent=1)
    if _PLOT.value:
        plot(
            records,
            reference,
            _PLOT.value,
            f'{cfg.data.name}, {step} steps, '
            f'alpha_max {cfg.guidance.alpha_max:g}, {summary["samples_per_alpha"]} samples',
        )
        print(f'wrote {_PLOT.value}')


if __name__ == '__main__':
    app.run(main)
