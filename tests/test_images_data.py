"""Tests for image datasets: offline TFDS builders, the build CLI and the ``ImageData`` reader.

Everything is written under pytest's tmp_path; nothing here may touch the network or import
TensorFlow (TFDS reads array_record through ``tfds.data_source``).
"""

from __future__ import annotations

import gzip
import pickle
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image as PILImage
from sklearn.datasets import load_digits

from drift_jax.data import builders
from drift_jax.data.build import build_dataset, main
from drift_jax.data.images import (
    ImageData,
    load_image_dataset,
    prepared_version,
    shard_indices,
)

ONE_PROCESS = {'process_index': 0, 'process_count': 1}


def _rows(images: np.ndarray, labels: np.ndarray) -> list[tuple[int, bytes]]:
    """Order-free view of a set of examples: sorted (label, pixel bytes) pairs."""
    return sorted(
        (int(y), np.ascontiguousarray(x).tobytes()) for x, y in zip(images, labels, strict=True)
    )


def _all_uint8(data: ImageData, split: str) -> tuple[np.ndarray, np.ndarray]:
    return data.get_uint8(split, np.arange(data.num_examples(split)))


@pytest.fixture(scope='module')
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp('tfds_digits')
    load_image_dataset('digits', data_dir, **ONE_PROCESS)
    return data_dir


# ---------------------------------------------------------------------------------------------
# Built-in digits.


def test_digits_builds_offline_with_expected_info(digits_dir: Path) -> None:
    data = load_image_dataset('digits', digits_dir, **ONE_PROCESS)
    info = data.info
    assert prepared_version('digits', digits_dir) == '1.0.0'
    assert info.image_shape == (8, 8, 1)
    assert info.num_classes == 10
    assert set(info.split_sizes) == {'train', 'test'}
    assert sum(info.split_sizes.values()) == 1797
    assert 280 <= info.split_sizes['test'] <= 320
    # Stratified: every class holds about a sixth of its examples out.
    _, test_labels = data.class_arrays('test')
    counts = np.bincount(test_labels, minlength=10)
    assert counts.min() >= 28 and counts.max() <= 32
    assert 'tensorflow' not in sys.modules


def test_digits_match_sklearn_after_rescaling(digits_dir: Path) -> None:
    bunch = load_digits()
    expected_u8 = np.round(bunch.images * 255.0 / 16.0).astype(np.uint8)[..., None]
    data = load_image_dataset('digits', digits_dir, **ONE_PROCESS)
    for split, idx in builders.digits_split_indices().items():
        images, labels = _all_uint8(data, split)
        np.testing.assert_array_equal(images, expected_u8[idx])
        np.testing.assert_array_equal(labels, bunch.target[idx])
    # Float views: [-1, 1] by default, [0, 1] on request, both affine in the uint8 pixels.
    x_pm, y = data.class_arrays('test')
    assert x_pm.dtype == np.float32 and y.dtype == np.int32
    assert x_pm.min() == -1.0 and x_pm.max() == 1.0
    test_idx = builders.digits_split_indices()['test']
    np.testing.assert_allclose(x_pm, expected_u8[test_idx] / 127.5 - 1.0, atol=1e-6)
    unit = load_image_dataset('digits', digits_dir, value_range=(0.0, 1.0), **ONE_PROCESS)
    x01, _ = unit.get('test', np.arange(10))
    np.testing.assert_allclose(x01, (x_pm[:10] + 1.0) / 2.0, atol=1e-6)


def test_digits_split_is_deterministic(digits_dir: Path, tmp_path: Path) -> None:
    first = load_image_dataset('digits', digits_dir, **ONE_PROCESS)
    second = load_image_dataset('digits', tmp_path, **ONE_PROCESS)  # a fresh build
    for split in ('train', 'test'):
        a, b = _all_uint8(first, split), _all_uint8(second, split)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    idx = builders.digits_split_indices()
    assert np.intersect1d(idx['train'], idx['test']).size == 0
    np.testing.assert_array_equal(np.union1d(idx['train'], idx['test']), np.arange(1797))


def test_sampling_helpers_are_consistent(digits_dir: Path) -> None:
    data = load_image_dataset('digits', digits_dir, **ONE_PROCESS)
    rng = np.random.default_rng(0)
    x, y = data.sample(rng, 16)
    assert x.shape == (16, 8, 8, 1) and y.shape == (16,)
    index = data.per_class_index('train')
    labels = data.labels('train')
    assert sum(len(i) for i in index) == data.info.split_sizes['train']
    for c, idx in enumerate(index):
        assert np.all(labels[idx] == c)
    per_class = data.sample_classes(rng, [3, 7], 5)
    assert per_class.shape == (2, 5, 8, 8, 1)
    train_x, train_y = data.class_arrays('train')
    class_rows = {
        c: set(_row[1] for _row in _rows(train_x[train_y == c], train_y[train_y == c]))
        for c in (3, 7)
    }
    for g, c in enumerate((3, 7)):
        for img in per_class[g]:
            assert img.tobytes() in class_rows[c]


# ---------------------------------------------------------------------------------------------
# Sharding across processes.


@pytest.mark.parametrize('n', [0, 1, 7, 10, 1797])
@pytest.mark.parametrize('count', [1, 2, 3])
def test_shard_indices_cover_without_overlap(n: int, count: int) -> None:
    shards = [shard_indices(n, i, count) for i in range(count)]
    joined = np.concatenate(shards)
    np.testing.assert_array_equal(np.sort(joined), np.arange(n))
    assert joined.size == np.unique(joined).size
    sizes = [s.size for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_shard_indices_rejects_bad_process() -> None:
    with pytest.raises(ValueError, match='process_index'):
        shard_indices(10, 2, 2)


def test_two_processes_read_disjoint_halves(digits_dir: Path) -> None:
    procs = [
        load_image_dataset('digits', digits_dir, process_index=i, process_count=2) for i in range(2)
    ]
    shards = [p.shard('test') for p in procs]
    assert np.intersect1d(*shards).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.arange(299))
    for p, shard in zip(procs, shards, strict=True):
        for idx in p.per_class_index('test'):
            assert np.isin(idx, shard).all()
    # Reading each process's shard yields every example of the split exactly once.
    read = [p.get('test', shard) for p, shard in zip(procs, shards, strict=True)]
    shard_x, shard_y = [x for x, _ in read], [y for _, y in read]
    # Random batches of a process come only from its own shard.
    rng = np.random.default_rng(1)
    for p, x, y in zip(procs, shard_x, shard_y, strict=True):
        own = set(_rows(x, y))
        bx, by = p.sample(rng, 64, split='test')
        assert set(_rows(bx, by)) <= own
    all_x, all_y = procs[0].class_arrays('test')
    assert _rows(np.concatenate(shard_x), np.concatenate(shard_y)) == _rows(all_x, all_y)


# ---------------------------------------------------------------------------------------------
# Building from local sources.


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(array).save(path)


def test_build_from_png_class_folders(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(0)
    written_x, written_y = [], []
    for label, cls in enumerate(['cat', 'dog', 'emu']):  # sorted names -> label ids
        for i in range(5):
            img = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)  # H=5, W=6
            _write_png(tmp_path / 'src' / cls / f'{i}.png', img)
            written_x.append(img)
            written_y.append(label)
    (tmp_path / 'src' / 'cat' / 'notes.txt').write_text('not an image')
    data_dir = tmp_path / 'tfds'
    assert main(['--name=pets', f'--source={tmp_path / "src"}', f'--data_dir={data_dir}']) == 0
    out = capsys.readouterr().out
    assert 'train:' in out and 'test:' in out
    data = load_image_dataset('pets', data_dir, **ONE_PROCESS)
    assert data.info.image_shape == (5, 6, 3)
    assert data.info.class_names == ('cat', 'dog', 'emu')
    assert sum(data.info.split_sizes.values()) == 15
    got = [_all_uint8(data, s) for s in ('train', 'test')]
    got_x = np.concatenate([g[0] for g in got])
    got_y = np.concatenate([g[1] for g in got])
    assert _rows(got_x, got_y) == _rows(np.stack(written_x), np.array(written_y))


def test_build_from_split_folders_keeps_given_splits(tmp_path: Path) -> None:
    for split, n in (('train', 4), ('test', 2)):
        for cls in ('a', 'b'):
            for i in range(n):
                _write_png(
                    tmp_path / 'src' / split / cls / f'{i}.png', np.full((4, 4), i, np.uint8)
                )
    sizes = build_dataset('ab', tmp_path / 'src', tmp_path / 'tfds')
    assert sizes == {'train': 8, 'test': 4}
    data = load_image_dataset('ab', tmp_path / 'tfds', **ONE_PROCESS)
    assert data.info.image_shape == (4, 4, 1)


def test_build_from_npz_with_and_without_test_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = rng.random((40, 7, 5)).astype(np.float32)
    labels = np.arange(40) % 4
    np.savez(tmp_path / 'a.npz', images=images, labels=labels)
    sizes = build_dataset('npz_a', tmp_path / 'a.npz', tmp_path / 'tfds')
    assert sizes == {'train': 36, 'test': 4}
    data = load_image_dataset('npz_a', tmp_path / 'tfds', **ONE_PROCESS)
    assert data.info.image_shape == (7, 5, 1) and data.info.num_classes == 4
    got = [_all_uint8(data, s) for s in ('train', 'test')]
    expected = np.round(images * 255).astype(np.uint8)[..., None]
    assert _rows(np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got])) == (
        _rows(expected, labels)
    )

    test_images = rng.integers(0, 256, (6, 7, 5, 3), dtype=np.uint8)
    np.savez(
        tmp_path / 'b.npz',
        images=rng.integers(0, 256, (10, 7, 5, 3), dtype=np.uint8),
        labels=np.arange(10) % 3,
        test_images=test_images,
        test_labels=np.array([0, 1, 2, 3, 4, 0]),
        class_names=np.array(['a', 'b', 'c', 'd', 'e']),
    )
    assert build_dataset('npz_b', tmp_path / 'b.npz', tmp_path / 'tfds') == {
        'train': 10,
        'test': 6,
    }
    data = load_image_dataset('npz_b', tmp_path / 'tfds', **ONE_PROCESS)
    assert data.info.class_names == ('a', 'b', 'c', 'd', 'e')
    x, y = _all_uint8(data, 'test')
    np.testing.assert_array_equal(x, test_images)  # given splits keep their order
    np.testing.assert_array_equal(y, [0, 1, 2, 3, 4, 0])


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f'>{array.ndim}I', *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if path.suffix == '.gz':
        with gzip.open(path, 'wb') as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def test_build_mnist_from_idx_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    src = tmp_path / 'idx'
    src.mkdir()
    arrays = {
        'train': (rng.integers(0, 256, (30, 28, 28)), rng.integers(0, 10, 30)),
        't10k': (rng.integers(0, 256, (12, 28, 28)), rng.integers(0, 10, 12)),
    }
    for prefix, (x, y) in arrays.items():
        _write_idx(src / f'{prefix}-images-idx3-ubyte.gz', x)
        _write_idx(src / f'{prefix}-labels-idx1-ubyte', y)  # plain and .gz both accepted
    assert builders.detect_source_kind(str(src)) == 'idx'
    build_dataset('mnist', src, tmp_path / 'tfds')
    data = load_image_dataset('mnist', tmp_path / 'tfds', **ONE_PROCESS)
    assert data.info.split_sizes == {'train': 30, 'test': 12}
    assert data.info.image_shape == (28, 28, 1)
    for split, prefix in (('train', 'train'), ('test', 't10k')):
        x, y = _all_uint8(data, split)
        np.testing.assert_array_equal(x[..., 0], arrays[prefix][0])
        np.testing.assert_array_equal(y, arrays[prefix][1])


def test_build_mnist_from_pickle(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    parts = tuple(
        (rng.random((n, 784)).astype(np.float32), (np.arange(n) % 10).astype(np.int64))
        for n in (20, 6, 8)
    )
    with gzip.open(tmp_path / 'mnist.pkl.gz', 'wb') as f:
        pickle.dump(parts, f)
    assert (
        main(
            [
                '--name=mnist',
                f'--source={tmp_path / "mnist.pkl.gz"}',
                f'--data_dir={tmp_path / "tfds"}',
            ]
        )
        == 0
    )
    data = load_image_dataset('mnist', tmp_path / 'tfds', **ONE_PROCESS)
    assert data.info.split_sizes == {'train': 20, 'validation': 6, 'test': 8}
    x, y = _all_uint8(data, 'validation')
    expected = np.round(parts[1][0] * 255).astype(np.uint8).reshape(6, 28, 28, 1)
    np.testing.assert_array_equal(x, expected)
    np.testing.assert_array_equal(y, parts[1][1])


def test_existing_dataset_needs_overwrite(tmp_path: Path) -> None:
    np.savez(tmp_path / 'a.npz', images=np.zeros((4, 3, 3), np.uint8), labels=[0, 1, 0, 1])
    build_dataset('twice', tmp_path / 'a.npz', tmp_path / 'tfds')
    with pytest.raises(FileExistsError, match='--overwrite'):
        build_dataset('twice', tmp_path / 'a.npz', tmp_path / 'tfds')
    np.savez(tmp_path / 'b.npz', images=np.zeros((6, 3, 3), np.uint8), labels=[0, 1] * 3)
    build_dataset('twice', tmp_path / 'b.npz', tmp_path / 'tfds', overwrite=True)
    assert (
        sum(load_image_dataset('twice', tmp_path / 'tfds', **ONE_PROCESS).info.split_sizes.values())
        == 6
    )


# ---------------------------------------------------------------------------------------------
# Errors.


def test_missing_dataset_fails_at_once_and_names_the_build_command(tmp_path: Path) -> None:
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as err:
        load_image_dataset('mnist', tmp_path, download=False)
    assert time.perf_counter() - start < 5.0
    message = str(err.value)
    assert 'python -m drift_jax.data.build --name=mnist --source=' in message
    assert '--config.data.download=true' in message
    assert not (tmp_path / 'mnist').exists()


def _bad_sources(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (source path, regex the error must match)."""
    sizes = tmp_path / 'sizes'
    _write_png(sizes / 'a' / '0.png', np.zeros((4, 4), np.uint8))
    _write_png(sizes / 'b' / 'odd.png', np.zeros((5, 4), np.uint8))
    modes = tmp_path / 'modes'
    _write_png(modes / 'a' / '0.png', np.zeros((4, 4), np.uint8))
    _write_png(modes / 'b' / 'rgb.png', np.zeros((4, 4, 3), np.uint8))
    np.savez(tmp_path / 'count.npz', images=np.zeros((5, 3, 3), np.uint8), labels=[0, 1, 0])
    np.savez(
        tmp_path / 'range.npz',
        images=np.zeros((4, 3, 3), np.uint8),
        labels=[0, 1, 2, 3],
        class_names=np.array(['x', 'y']),
    )
    np.savez(tmp_path / 'negative.npz', images=np.zeros((4, 3, 3), np.uint8), labels=[0, -1, 0, 1])
    np.savez(tmp_path / 'float.npz', images=np.full((4, 3, 3), 2.0), labels=[0, 1, 0, 1])
    np.savez(tmp_path / 'nolabels.npz', images=np.zeros((4, 3, 3), np.uint8))
    idx = tmp_path / 'idx_count'
    idx.mkdir()
    _write_idx(idx / 'train-images-idx3-ubyte', np.zeros((5, 4, 4)))
    _write_idx(idx / 'train-labels-idx1-ubyte', np.zeros(4))
    trunc = tmp_path / 'idx_trunc'
    trunc.mkdir()
    (trunc / 'train-images-idx3-ubyte').write_bytes(
        bytes([0, 0, 8, 3]) + struct.pack('>3I', 5, 4, 4) + b'\0' * 10
    )
    _write_idx(trunc / 'train-labels-idx1-ubyte', np.zeros(5))
    (tmp_path / 'notes.txt').write_text('hello')
    (tmp_path / 'empty').mkdir()
    return {
        'sizes': (sizes, r'odd\.png.*4x5.*share size and mode'),
        'modes': (modes, r'rgb\.png.*mode .RGB.*share size and mode'),
        'count': (tmp_path / 'count.npz', r'3 labels for 5 images'),
        'range': (tmp_path / 'range.npz', r'labels out of range'),
        'negative': (tmp_path / 'negative.npz', r'labels out of range'),
        'float': (tmp_path / 'float.npz', r'\[0, 1\]'),
        'nolabels': (tmp_path / 'nolabels.npz', r"missing array\(s\) \['labels'\]"),
        'idx_count': (idx, r'4 labels for 5 images'),
        'idx_trunc': (trunc, r'IDX header says'),
        'unknown_file': (tmp_path / 'notes.txt', r'cannot tell what kind'),
        'empty_dir': (tmp_path / 'empty', r'cannot tell what kind'),
    }


@pytest.mark.parametrize(
    'case',
    [
        'sizes',
        'modes',
        'count',
        'range',
        'negative',
        'float',
        'nolabels',
        'idx_count',
        'idx_trunc',
        'unknown_file',
        'empty_dir',
    ],
)
def test_bad_sources_give_clear_errors(tmp_path: Path, case: str) -> None:
    source, pattern = _bad_sources(tmp_path)[case]
    with pytest.raises(builders.SourceError, match=pattern):
        build_dataset('bad', source, tmp_path / 'tfds')
    assert prepared_version('bad', tmp_path / 'tfds') is None


def test_cli_reports_errors_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / 'notes.txt').write_text('hello')
    code = main(['--name=x', f'--source={tmp_path / "notes.txt"}', f'--data_dir={tmp_path}'])
    assert code == 2
    assert 'cannot tell what kind' in capsys.readouterr().err
    assert main(['--name=Bad-Name', f'--source={tmp_path}', f'--data_dir={tmp_path}']) == 2
    assert 'invalid dataset name' in capsys.readouterr().err
    assert main(['--name=x', f'--source={tmp_path / "nope"}', f'--data_dir={tmp_path}']) == 2
    assert 'does not exist' in capsys.readouterr().err


class _NoLabel(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A dataset of images only: not usable for class-conditional training."""

    name = 'no_label'
    VERSION = tfds.core.Version('1.0.0')

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({'image': tfds.features.Image(shape=(4, 4, 1))}),
        )

    def _split_generators(self, dl_manager: object) -> dict[str, Iterator]:
        return {'train': self._generate_examples()}

    def _generate_examples(self) -> Iterator[tuple[int, dict]]:
        for i in range(3):
            yield i, {'image': builders.encode_png(np.full((4, 4, 1), i, np.uint8))}


class _AnySize(_NoLabel, skip_registration=True):
    """Images of no fixed size."""

    name = 'any_size'

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    'image': tfds.features.Image(shape=(None, None, 1)),
                    'label': tfds.features.ClassLabel(num_classes=2),
                }
            ),
        )

    def _generate_examples(self) -> Iterator[tuple[int, dict]]:
        for i in range(3):
            yield (
                i,
                {
                    'image': builders.encode_png(np.zeros((4 + i, 4, 1), np.uint8)),
                    'label': i % 2,
                },
            )


@pytest.mark.parametrize(
    'builder_cls, pattern', [(_NoLabel, 'no ClassLabel feature'), (_AnySize, 'fixed')]
)
def test_unusable_datasets_are_rejected(tmp_path: Path, builder_cls: type, pattern: str) -> None:
    builder = builder_cls(data_dir=str(tmp_path), file_format='array_record')
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    with pytest.raises(ValueError, match=pattern):
        ImageData(builder_cls.name, tmp_path, **ONE_PROCESS)
