"""Inception FID, IS, precision and recall from the command line: `python -m drift_jax.fid`.

    python -m drift_jax.fid convert --pth=pt_inception-2015-12-05-6726825d.pth --out=inception.npz
    python -m drift_jax.fid download            # fetches pytorch-fid's weights and converts them
    python -m drift_jax.fid stats --data=cifar10 --split=train --out=cifar10_train.npz
    python -m drift_jax.fid score --workdir=W --stats=cifar10_train.npz --num=50000

The weights are found as `--inception_weights`, else $DRIFT_JAX_INCEPTION, else
~/.cache/drift_jax/inception_fid.npz (docs/fid.md). The logic lives in
`drift_jax.eval.fid` and `drift_jax.eval.inception`.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

COMMANDS = ('convert', 'download', 'stats', 'score')

_WEIGHTS = flags.DEFINE_string(
    'inception_weights', '', 'Inception weights (.npz, or .pth with torch); default: see docs.'
)
_BATCH = flags.DEFINE_integer('batch_size', 200, 'Images per Inception (and sampler) batch.')
_OUT = flags.DEFINE_string('out', None, 'convert/download/stats: file to write; score: .json.')
_PTH = flags.DEFINE_string('pth', None, "convert: pytorch-fid's .pth weight file.")
_DATA = flags.DEFINE_string('data', None, 'stats: dataset name, as config.data.name.')
_SPLIT = flags.DEFINE_string('split', 'train', 'stats: split.')
_DATA_DIR = flags.DEFINE_string('data_dir', '', 'stats: TFDS data dir, as config.data.data_dir.')
_PR_NUM = flags.DEFINE_integer(
    'pr_num', 10_000, 'stats: features of this many images kept for precision/recall (0: none).'
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'score: an image workdir.')
_STATS = flags.DEFINE_string('stats', None, 'score: reference statistics (.npz).')
_NUM = flags.DEFINE_integer('num', 50_000, 'score: samples; stats: images (0 = whole split).')
_SEED = flags.DEFINE_integer('seed', 0, 'score: noise seed; stats: seed of the kept subset.')
_LABELS = flags.DEFINE_list(
    'labels', None, 'score: class labels cycled over the samples (default: all in turn).'
)
_ALPHA = flags.DEFINE_float('alpha', 1.0, 'score: guidance scale alpha >= 1.')
_STEPS = flags.DEFINE_integer(
    'steps', 0, "score: sampling steps of multi-step methods (0: the config's)."
)
_K = flags.DEFINE_integer('k', 3, 'score: neighbour rank of precision/recall (0: skip them).')


def _require(*fs):
    missing = [f'--{f.name}' for f in fs if not f.value]
    if missing:
        raise app.UsageError(f'{", ".join(missing)} required')


def main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f'give one command: {" | ".join(COMMANDS)}')
    command = argv[1]
    from drift_jax.eval import fid as fid_lib
    from drift_jax.eval import inception, inception_weights

    if command == 'convert':
        _require(_PTH, _OUT)
        meta = inception_weights.convert(_PTH.value, _OUT.value)
        print(f'drift_jax: wrote {_OUT.value} ({meta})')
        return
    if command == 'download':
        out = inception_weights.download(_OUT.value or inception_weights.DEFAULT_PATH)
        print(f'drift_jax: wrote {out}')
        return
    extractor = inception.InceptionExtractor.from_file(_WEIGHTS.value, batch_size=_BATCH.value)
    if command == 'stats':
        _require(_DATA, _OUT)
        num = _NUM.value if _NUM.present else 0
        s = fid_lib.dataset_stats(
            _DATA.value,
            extractor,
            split=_SPLIT.value,
            data_dir=_DATA_DIR.value or None,
            num=num,
            pr_num=_PR_NUM.value,
            seed=_SEED.value,
            progress=True,
        )
        fid_lib.save_stats(
            _OUT.value,
            s['mu'],
            s['sigma'],
            s['num_images'],
            s['features'],
            data=_DATA.value,
            split=_SPLIT.value,
        )
        print(f'drift_jax: wrote statistics of {s["num_images"]} images to {_OUT.value}')
        return
    _require(_WORKDIR, _STATS)
    if _ALPHA.value < 1:
        raise app.UsageError(f'--alpha must be >= 1, got {_ALPHA.value}.')
    labels = None if _LABELS.value is None else [int(v) for v in _LABELS.value]
    out = fid_lib.score_workdir(
        _WORKDIR.value,
        _STATS.value,
        extractor,
        _NUM.value,
        precision_recall_k=_K.value,
        seed=_SEED.value,
        labels=labels,
        alpha=_ALPHA.value,
        steps=_STEPS.value,
        progress=True,
    )
    for key, value in out.items():
        print(f'{key}: {value:.6g}' if isinstance(value, float) else f'{key}: {value}')
    if _OUT.value:
        os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
        with open(_OUT.value, 'w') as f:
            json.dump(out, f, indent=1)


if __name__ == '__main__':
    app.run(main)
