"""Draws samples from the EMA generator of a workdir: `python -m drift_jax.sample`.

    python -m drift_jax.sample --workdir=W --num=N --out=samples.npy
    python -m drift_jax.sample --workdir=W_digits --num=100 --labels=3,7 --alpha=2 --out=g.png
    python -m drift_jax.sample --workdir=W_ddpm --num=N --steps=50 --out=samples.npy

Point workdirs give [N, D] in the user's coordinates (.npy or .csv); image workdirs give
float images in [0, 1] of shape [N, H, W, C] (.npy) or a PNG grid (.png).
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags

_WORKDIR = flags.DEFINE_string('workdir', None, 'A drift_jax workdir (finished or running).')
_NUM = flags.DEFINE_integer('num', 1000, 'Number of samples.')
_OUT = flags.DEFINE_string(
    'out', 'samples.npy', 'Output file: .npy, .csv (points) or .png (images: a grid).'
)
_SEED = flags.DEFINE_integer('seed', 0, 'Noise seed.')
_LABELS = flags.DEFINE_list(
    'labels', None, 'Images: class labels, cycled over the samples (default: all classes in turn).'
)
_ALPHA = flags.DEFINE_float('alpha', 1.0, 'Images: guidance scale alpha >= 1.')
_STEPS = flags.DEFINE_integer(
    'steps', 0, "Multi-step methods: sampling steps, the NFE (0: the config's eval.sample_steps)."
)
flags.mark_flags_as_required(['workdir'])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    out = _OUT.value
    ext = os.path.splitext(out)[1]
    if ext not in ('.npy', '.csv', '.png'):
        raise app.UsageError(f'--out must end in .npy, .csv or .png, got {out!r}.')
    if _ALPHA.value < 1:
        raise app.UsageError(f'--alpha must be >= 1, got {_ALPHA.value}.')
    labels = None if _LABELS.value is None else [int(v) for v in _LABELS.value]
    from drift_jax.train import sample_workdir

    x = sample_workdir(
        _WORKDIR.value,
        _NUM.value,
        _SEED.value,
        labels=labels,
        alpha=_ALPHA.value,
        steps=_STEPS.value,
    )
    if ext == '.npy':
        np.save(out, x)
    elif ext == '.csv':
        if x.ndim != 2:
            raise app.UsageError('.csv output is for point samples; use .npy or .png.')
        np.savetxt(out, x, delimiter=',')
    else:
        if x.ndim != 4:
            raise app.UsageError('.png output is for image samples; use .npy or .csv.')
        from drift_jax import plotting
        from drift_jax.tasks import images as image_task

        plotting.image_grid(image_task.upscale(x), out)
    print(f'drift_jax: wrote {x.shape[0]} samples of shape {x.shape[1:]} to {out}')


if __name__ == '__main__':
    app.run(main)
