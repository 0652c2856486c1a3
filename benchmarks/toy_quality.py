"""Trains each toy config with its defaults and reports time and quality in one table.

    python benchmarks/toy_quality.py                       # every toy config
    python benchmarks/toy_quality.py --configs=spiral,moons --json=toy.json
    python benchmarks/toy_quality.py --configs=spiral,moons --methods=ddpm --steps=50

`--methods` trains each config with each method (its `method_settings` applied);
`--steps` also scores the finished run's sampler at these numbers of sampling steps (DDIM
for ddpm, Langevin steps per level for ncsn) with the same evaluator
(`drift_jax.comparison.score_sampler`; `python -m drift_jax.compare` compares every method).

Quality is energy_distance / energy_floor on 5000 vs 5000 samples (1.0 = indistinguishable
from a second data draw); bimodal also reports the fraction of samples in each mode.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

from absl import app, flags, logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench_configs import apply_overrides, load_config  # noqa: E402  (beside this script)

ALL = (
    'spiral',
    'checkerboard',
    'swiss_roll',
    'moons',
    'eight_gaussians',
    'twenty_five_gaussians',
    'rings',
    'bimodal:middle',
    'bimodal:far',
    'bimodal:collapsed',
)
# What each config must reach (the project's acceptance goals).
GOALS = {'checkerboard': 4.0, 'twenty_five_gaussians': 4.0}

_CONFIGS = flags.DEFINE_list('configs', list(ALL), 'Config names (file[:arg]) to run.')
_JSON = flags.DEFINE_string('json', None, 'Write the records to this JSON file.')
_OVERRIDES = flags.DEFINE_multi_string('set', [], 'Overrides as section.name=value.')
_POINTS = flags.DEFINE_string('points', None, 'Also train configs/points.py on this file.')
_METHODS = flags.DEFINE_list('methods', ['drifting'], 'Methods to train on each config.')
_STEPS = flags.DEFINE_list('steps', [], 'Also score multi-step samplers at these step counts.')


def score_at_steps(workdir: str, steps: int) -> tuple[float, int, float]:
    """(ED / floor, NFE, sampling seconds) of a finished run's sampler at `steps` steps."""
    from drift_jax import comparison, train

    run, state, step = train.load_run(workdir)
    scored = comparison.score_sampler(run, state.ema_params, step, steps=steps)
    return scored['energy_ratio'], run.method.nfe(steps=steps), scored['sample_seconds']


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    from drift_jax import methods, train

    names = list(_CONFIGS.value) + (['points'] if _POINTS.value else [])
    records = []
    for name in names:
        for method in _METHODS.value:
            config = load_config(name)
            config.method = method
            if name == 'points':
                config.data.path = _POINTS.value
            config = methods.resolve_config(config)
            apply_overrides(config, _OVERRIDES.value)
            with tempfile.TemporaryDirectory() as workdir:
                start = time.perf_counter()
                result = train.train_and_evaluate(config, workdir)
                seconds = time.perf_counter() - start
                extra = {int(s): score_at_steps(workdir, int(s)) for s in _STEPS.value}
            goal = 2.0 if name.startswith('bimodal') else GOALS.get(name, 2.0)
            rec = {
                'config': name,
                'method': method,
                'steps': config.train.steps,
                'seconds': round(seconds, 1),
                'energy_ratio': round(result['energy_ratio'], 3),
                'nfe': result.get('nfe'),
                'goal': goal,
            }
            for s, (ratio, nfe, secs) in extra.items():
                rec[f'energy_ratio_steps{s}'] = round(ratio, 3)
                rec[f'nfe_steps{s}'] = nfe
                rec[f'sample_seconds_steps{s}'] = round(secs, 1)
            if 'mode_fraction_0' in result:
                rec['mode_fraction_0'] = round(result['mode_fraction_0'], 3)
            if 'nll' in result:  # likelihood methods (flow): held-out nats per example
                rec['nll'] = round(result['nll'], 3)
            records.append(rec)
            print(json.dumps(rec), flush=True)
    print('\n| config | method | steps | seconds | NFE | ED / floor | goal | modes |')
    print('|---|---|---|---|---|---|---|---|')
    for r in records:
        modes = (
            f'{r["mode_fraction_0"]:.2f} / {1 - r["mode_fraction_0"]:.2f}'
            if ('mode_fraction_0' in r)
            else ''
        )
        print(
            f'| {r["config"]} | {r["method"]} | {r["steps"]} | {r["seconds"]} | {r["nfe"]} | '
            f'{r["energy_ratio"]:.2f} | '
            f'<= {r["goal"]} | {modes} |'
        )
    if _JSON.value:
        with open(_JSON.value, 'w') as f:
            json.dump(records, f, indent=1)


if __name__ == '__main__':
    app.run(main)
