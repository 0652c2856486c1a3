"""Trains and compares every generative method: `python -m drift_jax.compare` (docs/compare.md).

    python -m drift_jax.compare --suite=toy --out=/tmp/compare
    python -m drift_jax.compare --suite=toy --data=spiral,moons --methods=drifting,ddpm --out=D
    python -m drift_jax.compare --suite=digits --budget_seconds=300 --out=D
    python -m drift_jax.compare --out=D --override=train.steps=200 --override=ddpm:train.steps=400

Re-running the same command resumes unfinished runs and skips finished ones. The work is
`drift_jax.comparison.compare`; this module only reads flags. A refused argument prints one
line and exits with status 2; SIGTERM stops it (the interrupted run keeps its checkpoint)
with status 143.
"""

from __future__ import annotations

import signal
import sys

from absl import app, flags, logging

_SUITE = flags.DEFINE_string('suite', 'toy', 'Datasets to compare on: toy, digits or mnist.')
_OUT = flags.DEFINE_string('out', None, 'Output folder (results, tables, figures, runs/).')
_DATA = flags.DEFINE_list('data', None, "The suite's datasets to run (default: all).")
_METHODS = flags.DEFINE_list('methods', None, 'Methods to compare (default: every generator).')
_POINTS = flags.DEFINE_string('points', None, "A .npy/.csv point cloud added as data 'points'.")
_BUDGET = flags.DEFINE_float(
    'budget_seconds', 0.0, 'Seconds of training per run instead of its steps (0: steps).'
)
_DDGAN_STEPS = flags.DEFINE_list(
    'ddgan_steps', None, "T of extra ddgan runs (default: toy 1,2,4,8, images none; '' none)."
)
_DDPM_STEPS = flags.DEFINE_list(
    'ddpm_steps', None, "DDIM steps scored for quality against NFE (default: the suite's)."
)
_NCSN_STEPS = flags.DEFINE_list(
    'ncsn_steps', None, "Langevin steps per level scored against NFE (default: the suite's)."
)
_OVERRIDE = flags.DEFINE_multi_string(
    'override', [], 'Config override [METHOD:]section.name=value for every run (or METHOD).'
)
_BATCH = flags.DEFINE_integer('throughput_batch', 1000, 'Samples per timed sampler call.')
_THROUGHPUT_SECONDS = flags.DEFINE_float(
    'throughput_seconds',
    60.0,
    'No timed sampler call starts after this many seconds (0: no limit).',
)


def _ints(values: list[str], name: str) -> list[int]:
    from drift_jax.comparison import ComparisonError

    try:
        return [int(v) for v in values]
    except ValueError:
        raise ComparisonError(f'--{name} takes integers, got {",".join(values)!r}.') from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    if not flags.FLAGS['verbosity'].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    from drift_jax import comparison  # after flag parsing: importing jax is slow for --help

    try:
        if not _OUT.value:
            raise comparison.ComparisonError('--out is required (the output folder).')
        overrides, per_method = {}, {}
        for text in _OVERRIDE.value:
            method, key, value = comparison.parse_override(text)
            (per_method.setdefault(method, {}) if method else overrides)[key] = value
        sweeps = {}
        for method, flag in (('ddpm', _DDPM_STEPS), ('ncsn', _NCSN_STEPS)):
            if flag.value is not None:
                sweeps[method] = _ints(flag.value, flag.name)
        ddgan = None if _DDGAN_STEPS.value is None else _ints(_DDGAN_STEPS.value, 'ddgan_steps')
        comparison.compare(
            _OUT.value,
            _SUITE.value,
            data=_DATA.value,
            methods=_METHODS.value,
            points=_POINTS.value,
            overrides=overrides,
            method_overrides=per_method,
            budget_seconds=_BUDGET.value,
            ddgan_steps=ddgan,
            sampling_steps=sweeps,
            throughput_batch=_BATCH.value,
            throughput_seconds=_THROUGHPUT_SECONDS.value or None,
        )
    except comparison.ComparisonError as e:  # refused before anything trains
        print(f'drift_jax.compare: error: {e}', file=sys.stderr)
        sys.exit(2)
    except comparison.ComparisonStopped as e:
        print(f'drift_jax.compare: {e}', file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)


if __name__ == '__main__':
    app.run(main)
