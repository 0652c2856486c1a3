"""Prepares a TFDS image dataset from local files, offline:

    python -m drift_jax.data.build --name=NAME --source=PATH [--data_dir=DIR] [--overwrite]

PATH: a folder of class folders, an .npz (images, labels), a folder of MNIST IDX files or
mnist.pkl.gz. ``--name=digits`` without ``--source`` prepares scikit-learn's digits.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence

from drift_jax.data import builders
from drift_jax.data.images import BUILTIN_DATASETS, build_builtin, default_data_dir


def build_dataset(
    name: str,
    source: str | os.PathLike | None,
    data_dir: str | os.PathLike | None = None,
    *,
    kind: str | None = None,
    test_fraction: float = builders.DEFAULT_TEST_FRACTION,
    seed: int = builders.SPLIT_SEED,
    overwrite: bool = False,
) -> dict[str, int]:
    """Writes dataset ``name`` (version 1.0.0, array_record) from ``source`` -> split sizes.

    ``kind`` (one of ``builders.SOURCE_KINDS``) is detected when ``None``; a split missing
    from the source is made by a seeded stratified split (``test_fraction``, ``seed``).
    An already prepared ``data_dir/name/1.0.0`` is an error unless ``overwrite``.
    Raises ``builders.SourceError`` (a ``ValueError``) naming the file for a bad source.
    """
    import tensorflow_datasets as tfds

    builders.check_dataset_name(name)
    data_dir = os.fspath(data_dir) if data_dir else default_data_dir()
    target = os.path.join(data_dir, name, builders.LOCAL_VERSION)
    if os.path.exists(target):
        if not overwrite:
            raise FileExistsError(
                f'dataset {name!r} is already prepared at {target}; pass --overwrite to rebuild it'
            )
        shutil.rmtree(target)
    if source is None:
        if name not in BUILTIN_DATASETS:
            raise ValueError(
                f'--source is required for {name!r} (only {", ".join(BUILTIN_DATASETS)} '
                'build without one)'
            )
        return dict(build_builtin(name, data_dir))
    data = builders.read_source(os.fspath(source), kind, test_fraction, seed)
    builder = builders.make_local_builder(name, data, data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    return {s: int(v.num_examples) for s, v in builder.info.splits.items()}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='python -m drift_jax.data.build',
        description='Prepare a TFDS image dataset (array_record) from local files, offline.',
    )
    p.add_argument('--name', required=True, help='dataset name read by configs, e.g. mnist')
    p.add_argument(
        '--source',
        default=None,
        help='folder of class folders | .npz (images, labels) | folder of MNIST IDX files | '
        'mnist.pkl.gz (optional for the built-in digits)',
    )
    p.add_argument(
        '--data_dir',
        default=None,
        help='TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets)',
    )
    p.add_argument('--kind', default=None, choices=builders.SOURCE_KINDS, help='skip detection')
    p.add_argument('--test_fraction', type=float, default=builders.DEFAULT_TEST_FRACTION)
    p.add_argument('--seed', type=int, default=builders.SPLIT_SEED)
    p.add_argument('--overwrite', action='store_true', help='rebuild an existing dataset')
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; prints the prepared splits and sizes; returns the exit status."""
    args = _parser().parse_args(argv)
    data_dir = args.data_dir or default_data_dir()
    try:
        sizes = build_dataset(
            args.name,
            args.source,
            data_dir,
            kind=args.kind,
            test_fraction=args.test_fraction,
            seed=args.seed,
            overwrite=args.overwrite,
        )
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'prepared {args.name!r} in {os.path.join(data_dir, args.name)}')
    for split, size in sizes.items():
        print(f'  {split}: {size} examples')
    return 0


if __name__ == '__main__':
    sys.exit(main())
