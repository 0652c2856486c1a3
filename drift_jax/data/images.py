"""Image datasets read by name from prepared TFDS array_record files, without TensorFlow.

``load_image_dataset`` opens (and for 'digits' first builds) a dataset; ``ImageData`` gives
random-access batches, per-process index shards and whole-split arrays (records are read
through ``tfds.data_source``).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

BUILTIN_DATASETS: tuple[str, ...] = ('digits',)
VALUE_RANGES: tuple[tuple[float, float], ...] = ((-1.0, 1.0), (0.0, 1.0))
DEFAULT_VALUE_RANGE: tuple[float, float] = (-1.0, 1.0)
_VERSION_RE = re.compile(r'^\d+\.\d+\.\d+$')


def default_data_dir() -> str:
    """``$TFDS_DATA_DIR`` if set, else ``~/tensorflow_datasets`` (TFDS' own default)."""
    return os.path.expanduser(os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets')


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split('.'))


def prepared_version(name: str, data_dir: str | os.PathLike) -> str | None:
    """Latest version ``x.y.z`` with a complete ``data_dir/name/x.y.z/dataset_info.json``.

    ``name`` may be ``'ds'``, ``'ds/config'`` or pin a version (``'ds:1.0.0'``). Returns
    ``None`` when nothing is prepared. Reads only the local file system.
    """
    base, _, pinned = name.partition(':')
    root = pathlib.Path(data_dir, *base.split('/'))
    if pinned:
        return pinned if (root / pinned / 'dataset_info.json').is_file() else None
    if not root.is_dir():
        return None
    versions = [
        d.name
        for d in root.iterdir()
        if _VERSION_RE.match(d.name) and (d / 'dataset_info.json').is_file()
    ]
    return max(versions, key=_version_key) if versions else None


def missing_dataset_message(name: str, data_dir: str | os.PathLike) -> str:
    """The ``FileNotFoundError`` text for a dataset that is not prepared under ``data_dir``."""
    base = name.partition(':')[0].split('/')[0]
    return (
        f'image dataset {name!r} is not prepared under data_dir={os.fspath(data_dir)!r} '
        f'(no {base}/<version>/dataset_info.json) and download is off. Prepare it from local '
        f'files with:\n  python -m drift_jax.data.build --name={base} --source=PATH '
        f'--data_dir={os.fspath(data_dir)}\n'
        'where PATH is a folder of class folders, an .npz (images, labels), a folder of MNIST '
        'IDX files or mnist.pkl.gz; or, on a machine with network access, set '
        '--config.data.download=true to let TFDS download and prepare it.'
    )


def shard_indices(
    num_examples: int, process_index: int | None = None, process_count: int | None = None
) -> np.ndarray:
    """This process's contiguous block of ``arange(num_examples)``, int64 ``[n_local]``.

    Blocks of all processes are disjoint, cover every index, and differ in size by at most
    one. ``process_index``/``process_count`` default to ``jax.process_index()/count()``.
    """
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f'need 0 <= process_index < process_count, got {process_index} / {process_count}'
        )
    start = (num_examples * process_index) // process_count
    stop = (num_examples * (process_index + 1)) // process_count
    return np.arange(start, stop, dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """What a prepared image dataset holds.

    Attributes:
      name: dataset name as given (e.g. 'mnist').
      version: the prepared version read (e.g. '1.0.0').
      image_shape: ``(H, W, C)`` of every image.
      num_classes: labels lie in ``[0, num_classes)``.
      class_names: one name per class.
      split_sizes: split name -> number of examples (whole dataset, all processes).
      data_dir: the TFDS data directory it was read from.
    """

    name: str
    version: str
    image_shape: tuple[int, int, int]
    num_classes: int
    class_names: tuple[str, ...]
    split_sizes: dict[str, int]
    data_dir: str


def _image_info(name: str, version: str, data_dir: str, tfds_info: Any) -> ImageInfo:
    """Validates TFDS features (uint8 Image of fixed shape + ClassLabel) -> ``ImageInfo``."""
    import tensorflow_datasets as tfds

    features = tfds_info.features
    keys = list(features.keys()) if hasattr(features, 'keys') else []
    image = features['image'] if 'image' in keys else None
    label = features['label'] if 'label' in keys else None
    if not isinstance(image, tfds.features.Image):
        raise ValueError(
            f'dataset {name!r} has no Image feature named "image" (features: {keys}); '
            'image datasets need {"image": Image, "label": ClassLabel}'
        )
    if not isinstance(label, tfds.features.ClassLabel):
        raise ValueError(
            f'dataset {name!r} has no ClassLabel feature named "label" (features: {keys}); '
            'class labels are required (drifting models here are class-conditional)'
        )
    shape = tuple(image.shape)
    if len(shape) != 3 or any(d is None for d in shape) or shape[-1] not in (1, 3, 4):
        raise ValueError(
            f'dataset {name!r} image shape {shape} is not a fixed (H, W, C) with C in 1, 3, 4; '
            'images must all share one size'
        )
    if np.dtype(image.np_dtype) != np.uint8:
        raise ValueError(f'dataset {name!r} images have dtype {image.np_dtype}; expected uint8')
    return ImageInfo(
        name=name,
        version=version,
        image_shape=tuple(int(d) for d in shape),  # type: ignore[arg-type]
        num_classes=int(label.num_classes),
        class_names=tuple(label.names),
        split_sizes={s: int(v.num_examples) for s, v in tfds_info.splits.items()},
        data_dir=data_dir,
    )


class ImageData:
    """A prepared image dataset opened through ``tfds.data_source`` (array_record, no TF).

    Images come back as float32 ``[B, H, W, C]`` in ``value_range`` (default [-1, 1]:
    ``lo + (hi - lo) * uint8 / 255``), labels as int32 ``[B]``. Sampling and iteration use
    this process's shard of each split (``shard_indices``); ``class_arrays`` and ``get``
    address the whole split.

    Attributes:
      info: ``ImageInfo`` (image shape, classes, split sizes).
      value_range: ``(lo, hi)`` of the returned pixel values.
      process_index: this process's index among ``process_count`` readers.
      process_count: number of reading processes (JAX processes by default).
    """

    def __init__(
        self,
        name: str,
        data_dir: str | os.PathLike | None = None,
        *,
        download: bool = False,
        value_range: tuple[float, float] = DEFAULT_VALUE_RANGE,
        process_index: int | None = None,
        process_count: int | None = None,
    ):
        """Opens ``name`` under ``data_dir``; raises ``FileNotFoundError`` at once if it is not
        prepared and ``download`` is False (TFDS is never asked to reach the network then)."""
        import tensorflow_datasets as tfds

        lo, hi = (float(v) for v in value_range)
        if (lo, hi) not in VALUE_RANGES:
            raise ValueError(f'value_range must be one of {VALUE_RANGES}, got {value_range}')
        self.value_range = (lo, hi)
        data_dir = os.fspath(data_dir) if data_dir else default_data_dir()
        version = prepared_version(name, data_dir)
        if version is None and not download:
            raise FileNotFoundError(missing_dataset_message(name, data_dir))
        base = name.partition(':')[0]
        if version is not None:
            # A pinned version makes TFDS read the dataset from its files, whatever code is
            # registered under the name (our local 'mnist' is not TFDS' catalogue 'mnist').
            self._spec = f'{base}:{version}'
            download = False
        else:
            self._spec = name
        self.data_dir = data_dir
        self._sources: dict[str, Sequence[Any]] = dict(
            tfds.data_source(
                self._spec,
                split=None,
                data_dir=data_dir,
                download=download,
                builder_kwargs={'file_format': 'array_record'} if download else None,
            )
        )
        tfds_info = next(iter(self._sources.values())).dataset_info
        self.info = _image_info(base, str(tfds_info.version), data_dir, tfds_info)
        self._spec = f'{base}:{self.info.version}'
        if process_index is None or process_count is None:
            import jax

            process_index = jax.process_index() if process_index is None else process_index
            process_count = jax.process_count() if process_count is None else process_count
        self.process_index = int(process_index)
        self.process_count = int(process_count)
        # split -> whole-split uint8 images and int32 labels, filled by ``class_arrays``.
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._labels: dict[str, np.ndarray] = {}

    def __repr__(self) -> str:
        i = self.info
        return (
            f'ImageData(name={i.name!r}, version={i.version!r}, image_shape={i.image_shape}, '
            f'num_classes={i.num_classes}, splits={i.split_sizes}, '
            f'process={self.process_index}/{self.process_count})'
        )

    def _source(self, split: str) -> Sequence[Any]:
        if split not in self._sources:
            raise ValueError(
                f'dataset {self.info.name!r} has no split {split!r}; splits: '
                f'{", ".join(self._sources)}'
            )
        return self._sources[split]

    def num_examples(self, split: str) -> int:
        """Examples in ``split`` over all processes."""
        return len(self._source(split))

    def shard(self, split: str) -> np.ndarray:
        """This process's indices into ``split``, int64 ``[n_local]`` (see ``shard_indices``)."""
        return shard_indices(self.num_examples(split), self.process_index, self.process_count)

    def to_float(self, images_u8: np.ndarray) -> np.ndarray:
        """uint8 ``[..., H, W, C]`` -> float32 in ``value_range``, same shape."""
        lo, hi = self.value_range
        return images_u8.astype(np.float32) * np.float32((hi - lo) / 255.0) + np.float32(lo)

    def get_uint8(
        self, split: str, indices: Sequence[int] | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Examples ``indices [B]`` of ``split`` -> (uint8 images ``[B,H,W,C]``, int32 ``[B]``)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if split in self._cache:
            images, labels = self._cache[split]
            return images[idx], labels[idx]
        shape = (idx.size, *self.info.image_shape)
        if idx.size == 0:
            self._source(split)
            return np.zeros(shape, np.uint8), np.zeros((0,), np.int32)
        examples = self._source(split).__getitems__([int(i) for i in idx])
        images = np.stack([np.asarray(e['image']) for e in examples])
        if images.dtype != np.uint8 or images.shape != shape:
            raise ValueError(
                f'dataset {self.info.name!r} split {split!r}: decoded images are '
                f'{images.dtype} {list(images.shape)}, expected uint8 {list(shape)}'
            )
        labels = np.asarray([e['label'] for e in examples], dtype=np.int32)
        return images, labels

    def get(self, split: str, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Examples ``indices [B]`` of ``split`` -> (float32 ``[B,H,W,C]``, int32 ``[B]``)."""
        images, labels = self.get_uint8(split, indices)
        return self.to_float(images), labels

    def sample(
        self, rng: np.random.Generator, batch_size: int, split: str = 'train'
    ) -> tuple[np.ndarray, np.ndarray]:
        """``batch_size`` random examples of this process's shard (without replacement when the
        shard is large enough) -> (float32 ``[B,H,W,C]``, int32 ``[B]``)."""
        pool = self.shard(split)
        if pool.size == 0:
            raise ValueError(f'process {self.process_index} has no examples of split {split!r}')
        idx = rng.choice(pool, size=batch_size, replace=batch_size > pool.size)
        return self.get(split, idx)

    def labels(self, split: str) -> np.ndarray:
        """All labels of ``split``, int32 ``[N]`` (images are not decoded); cached."""
        if split not in self._labels:
            if split in self._cache:
                self._labels[split] = self._cache[split][1]
            else:
                import tensorflow_datasets as tfds

                source = tfds.data_source(
                    self._spec,
                    split=split,
                    data_dir=self.data_dir,
                    download=False,
                    decoders={'image': tfds.decode.SkipDecoding()},
                )
                examples = source.__getitems__(list(range(len(source))))
                self._labels[split] = np.asarray([e['label'] for e in examples], np.int32)
        return self._labels[split]

    def per_class_index(self, split: str = 'train', *, local: bool = True) -> list[np.ndarray]:
        """Indices of ``split`` per class: ``num_classes`` int64 arrays (sorted).

        ``local=True`` keeps only this process's shard (for sampling); a class can then be
        empty when there are more processes than examples of it.
        """
        labels = self.labels(split)
        pool = self.shard(split) if local else np.arange(labels.shape[0], dtype=np.int64)
        pool_labels = labels[pool]
        return [pool[pool_labels == c] for c in range(self.info.num_classes)]

    def sample_classes(
        self,
        rng: np.random.Generator,
        classes: Sequence[int] | np.ndarray,
        n_per_class: int,
        split: str = 'train',
    ) -> np.ndarray:
        """``n_per_class`` images of each of ``classes [G]`` from this process's shard ->
        float32 ``[G, n_per_class, H, W, C]`` (with replacement only when a class is small)."""
        index = self.per_class_index(split)
        picks = []
        for c in np.asarray(classes).reshape(-1):
            pool = index[int(c)]
            if pool.size == 0:
                raise ValueError(f'class {int(c)} has no examples in this shard of {split!r}')
            picks.append(rng.choice(pool, size=n_per_class, replace=n_per_class > pool.size))
        flat = np.concatenate(picks) if picks else np.zeros((0,), np.int64)
        images, _ = self.get(split, flat)
        return images.reshape(len(picks), n_per_class, *self.info.image_shape)

    def class_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Every example of ``split`` (all processes): float32 ``[N,H,W,C]``, int32 ``[N]``.

        Meant for small datasets (memory bank, evaluation): the split is decoded once and
        kept as uint8; later ``get``/``sample`` calls on it read from memory.
        """
        if split not in self._cache:
            images, labels = self.get_uint8(split, np.arange(self.num_examples(split)))
            self._cache[split] = (images, labels)
        images, labels = self._cache[split]
        return self.to_float(images), labels.copy()


def load_image_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    *,
    value_range: tuple[float, float] = DEFAULT_VALUE_RANGE,
    process_index: int | None = None,
    process_count: int | None = None,
) -> ImageData:
    """Opens a prepared image dataset by name (``ImageData``).

    'digits' (scikit-learn's bundled 8x8 digits) is built into ``data_dir`` on first use,
    offline. Any other name must be prepared (``python -m drift_jax.data.build``) unless
    ``download`` is True; otherwise ``FileNotFoundError`` is raised at once.
    """
    data_dir = os.fspath(data_dir) if data_dir else default_data_dir()
    base = name.partition(':')[0]
    if base in BUILTIN_DATASETS and prepared_version(name, data_dir) is None:
        try:
            build_builtin(base, data_dir)
        except Exception:
            # Another process sharing data_dir may have finished the same build first.
            if prepared_version(name, data_dir) is None:
                raise
    return ImageData(
        name,
        data_dir,
        download=download,
        value_range=value_range,
        process_index=process_index,
        process_count=process_count,
    )


def build_builtin(name: str, data_dir: str | os.PathLike) -> Mapping[str, int]:
    """Prepares a built-in dataset (``BUILTIN_DATASETS``) offline -> split sizes."""
    import tensorflow_datasets as tfds

    from drift_jax.data import builders

    classes = {'digits': builders.Digits}
    if name not in classes:
        raise ValueError(f'no built-in dataset {name!r}; built-ins: {", ".join(classes)}')
    builder = classes[name](data_dir=os.fspath(data_dir), file_format=builders.FILE_FORMAT)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    return {s: int(v.num_examples) for s, v in builder.info.splits.items()}
