"""Draws samples from the EMA generator of a workdir: `python -m drift_jax.sample`.

    python -m drift_jax.sample --workdir=W --num=N --out=samples.npy
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags

_WORKDIR = flags.DEFINE_string('workdir', None, 'A drift_jax workdir (finished or running).')
_NUM = flags.DEFINE_integer('num', 1000, 'Number of samples.')
_OUT = flags.DEFINE_string('out', 'samples.npy', 'Output file (.npy, or .csv for points).')
_SEED = flags.DEFINE_integer('seed', 0, 'Noise seed.')
flags.mark_flags_as_required(['workdir'])


def sample_workdir(workdir: str, num: int, seed: int = 0) -> np.ndarray:
    """num samples [num, D] from the newest checkpoint's EMA parameters, in data coordinates."""
    if num <= 0:
        raise ValueError(f'--num must be positive, got {num}.')
    import jax

    from drift_jax import train
    setup, state, _ = train.load_run(workdir)
    return train.sample(setup, state.ema_params, jax.random.PRNGKey(seed), num)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    out = _OUT.value
    ext = os.path.splitext(out)[1]
    if ext not in ('.npy', '.csv'):
        raise app.UsageError(f'--out must end in .npy or .csv, got {out!r}.')
    x = sample_workdir(_WORKDIR.value, _NUM.value, _SEED.value)
    if ext == '.npy':
        np.save(out, x)
    else:
        np.savetxt(out, x, delimiter=',')
    print(f'drift_jax: wrote {x.shape[0]} samples of dim {x.shape[1]} to {out}')


if __name__ == '__main__':
    app.run(main)
