"""Command-line front door: `python -m drift_jax.main --config=configs/spiral.py`.

Parses flags, applies the chosen method's settings (`--config.method=NAME`) and hands over
to `train.train_and_evaluate`; everything else is importable.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from drift_jax import distributed

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file (ml_collections get_config()).', lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    'workdir',
    None,
    'Where checkpoints, metrics and samples go. Default: '
    'workdirs/<config name>. Re-running with the same workdir resumes.',
)
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address',
    None,
    "Multi-process runs: 'host:port' of process 0. Default: from "
    'the environment (launch/*, SLURM, Cloud TPU); see drift_jax/distributed.py.',
)
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Multi-process runs: process count.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Multi-process runs: this process id.')
flags.mark_flags_as_required(['config'])


def default_workdir(config_path: str) -> str:
    """workdirs/<config file name without .py> (a config argument after ':' is appended)."""
    path, _, arg = config_path.partition(':')
    name = os.path.splitext(os.path.basename(path))[0]
    return os.path.join('workdirs', f'{name}_{arg}' if arg else name)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    if not flags.FLAGS['verbosity'].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    try:
        spec = distributed.detect(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    if spec is not None:  # Before anything touches jax devices.
        distributed.initialize(spec)
    # after flag parsing: importing jax early is slow for --help
    from drift_jax import methods, train

    workdir = _WORKDIR.value or default_workdir(
        config_flags.get_config_filename(flags.FLAGS['config'])
    )
    logging.info('workdir: %s', os.path.abspath(workdir))
    print(f'drift_jax: workdir {os.path.abspath(workdir)}', flush=True)
    try:
        config = methods.resolve_config(
            _CONFIG.value, keep=methods.command_line_overrides(sys.argv)
        )
        train.validate_config(config)  # before any compile
    except (ValueError, FileNotFoundError) as e:
        # A bad setting or data file: its message on one line, without the flags' help.
        sys.exit(f'drift_jax: error: {e}')
    result = train.train_and_evaluate(config, workdir)
    if result:
        summary = ', '.join(
            f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in result.items()
        )
        print(f'drift_jax: final {summary}', flush=True)


if __name__ == '__main__':
    app.run(main)
