"""Image sources a user hands us, read into memory: class folders, ``.npz`` files, MNIST IDX
files and ``mnist.pkl.gz``, as ``SourceData`` (uint8 images and labels per split).

``builders`` writes them as TFDS datasets; the seeded train / test split lives here too.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import re
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image as PILImage

SPLIT_SEED: int = 0
DEFAULT_TEST_FRACTION: float = 0.1
IMAGE_EXTENSIONS: tuple[str, ...] = tuple(
    ['.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff', '.ppm', '.pgm']
)
MODE_CHANNELS: dict[str, int] = {'L': 1, 'RGB': 3, 'RGBA': 4}
SOURCE_KINDS: tuple[str, ...] = ('folder', 'npz', 'idx', 'mnist_pickle')
CHANNEL_MODES: dict[int, str] = {c: m for m, c in MODE_CHANNELS.items()}
_IDX_SPLITS: dict[str, str] = {'train': 'train', 't10k': 'test'}
_IDX_DTYPES: dict[int, str] = {
    0x08: '>u1',
    0x09: '>i1',
    0x0B: '>i2',
    0x0C: '>i4',
    0x0D: '>f4',
    0x0E: '>f8',
}


class SourceError(ValueError):
    """A source that cannot become an image dataset; the message names the file and problem."""


@dataclasses.dataclass
class SourceData:
    """Images and labels of every split of a source, ready to be written by a builder.

    Attributes:
      splits: split name -> (uint8 images ``[n, H, W, C]``, int64 labels ``[n]``).
      num_classes: number of classes; every label lies in ``[0, num_classes)``.
      class_names: optional names of the classes (length ``num_classes``).
      description: one line saying where the data came from.
    """

    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    num_classes: int
    class_names: tuple[str, ...] | None = None
    description: str = ''

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` shared by every split."""
        images = next(iter(self.splits.values()))[0]
        return tuple(int(d) for d in images.shape[1:])  # type: ignore[return-value]

    def validate(self, origin: str = 'source') -> None:
        """Raises ``SourceError`` unless every split is uint8 ``[n,H,W,C]`` with labels in range."""
        if not self.splits:
            raise SourceError(f'{origin}: no splits')
        if self.num_classes < 1:
            raise SourceError(f'{origin}: num_classes must be >= 1, got {self.num_classes}')
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise SourceError(
                f'{origin}: {len(self.class_names)} class names for {self.num_classes} classes'
            )
        shape = None
        for split, (images, labels) in self.splits.items():
            if images.dtype != np.uint8 or images.ndim != 4:
                raise SourceError(
                    f'{origin}: split {split!r} images must be uint8 [n, H, W, C], got '
                    f'{images.dtype} {list(images.shape)}'
                )
            if images.shape[-1] not in CHANNEL_MODES:
                raise SourceError(
                    f'{origin}: split {split!r} has {images.shape[-1]} channels; '
                    'expected 1 (grey), 3 (RGB) or 4 (RGBA)'
                )
            if shape is not None and images.shape[1:] != shape:
                raise SourceError(
                    f'{origin}: split {split!r} images have shape {list(images.shape[1:])} '
                    f'but another split has {list(shape)}'
                )
            shape = images.shape[1:]
            _check_labels(labels, images.shape[0], self.num_classes, f'{origin} ({split})')
            if images.shape[0] == 0:
                raise SourceError(f'{origin}: split {split!r} is empty')


def _check_labels(
    labels: np.ndarray, num_images: int, num_classes: int | None, origin: str
) -> None:
    """Raises ``SourceError`` unless ``labels`` is integer ``[num_images]`` in range.

    With ``num_classes=None`` only non-negativity is checked (the count comes from the labels).
    """
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise SourceError(
            f'{origin}: labels must be integers of shape [n], got {labels.dtype} '
            f'{list(labels.shape)}'
        )
    if labels.shape[0] != num_images:
        raise SourceError(
            f'{origin}: {labels.shape[0]} labels for {num_images} images; the counts must match'
        )
    if num_classes is None:
        if labels.size and labels.min() < 0:
            raise SourceError(
                f'{origin}: labels out of range: found {labels.min()}; labels must be >= 0'
            )
        return
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise SourceError(
            f'{origin}: labels out of range: found [{labels.min()}, {labels.max()}], '
            f'expected [0, {num_classes - 1}] for {num_classes} classes'
        )


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split of ``labels [n]`` -> sorted (train indices, test indices).

    Each class gives ``round(test_fraction * count)`` examples to test; at least one example
    lands in each split when ``n >= 2``.
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    if n < 2:
        raise SourceError(f'cannot split {n} example(s) into train and test; need at least 2')
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f'test_fraction must be in (0, 1), got {test_fraction}')
    rng = np.random.default_rng(seed)
    test: list[np.ndarray] = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        members = members[rng.permutation(members.shape[0])]
        test.append(members[: int(round(test_fraction * members.shape[0]))])
    test_idx = np.sort(np.concatenate(test))
    if test_idx.size == 0:
        test_idx = np.sort(rng.permutation(n)[:1])
    elif test_idx.size == n:
        test_idx = np.sort(test_idx[rng.permutation(n)[1:]])
    train_mask = np.ones(n, dtype=bool)
    train_mask[test_idx] = False
    return np.flatnonzero(train_mask), test_idx


def _max_label(splits: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> int:
    return int(max(lab.max(initial=-1) for _, lab in splits.values()))


def _with_test_split(data: SourceData, origin: str, test_fraction: float, seed: int) -> SourceData:
    """`data` with a seeded test split cut from train when it has none, validated."""
    if 'test' not in data.splits:
        data = dataclasses.replace(
            data, splits=_split_arrays(*data.splits['train'], test_fraction, seed)
        )
    data.validate(origin)
    return data


def _split_arrays(
    images: np.ndarray, labels: np.ndarray, test_fraction: float, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    train_idx, test_idx = stratified_split(labels, test_fraction, seed)
    return {
        'train': (images[train_idx], labels[train_idx]),
        'test': (images[test_idx], labels[test_idx]),
    }


def to_uint8_images(images: np.ndarray, origin: str) -> np.ndarray:
    """``[n,H,W]`` or ``[n,H,W,C]``, uint8 or float in [0,1] -> uint8 ``[n,H,W,C]``."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise SourceError(
            f'{origin}: images must have shape [n, H, W] or [n, H, W, C], got {list(images.shape)}'
        )
    if images.dtype == np.uint8:
        return images
    if np.issubdtype(images.dtype, np.floating):
        finite = np.isfinite(images).all()
        if not finite or images.min(initial=0.0) < -1e-6 or images.max(initial=0.0) > 1 + 1e-6:
            raise SourceError(
                f'{origin}: float images must lie in [0, 1] (found '
                f'[{np.nanmin(images):.4g}, {np.nanmax(images):.4g}]'
                f'{"" if finite else ", with non-finite values"}); '
                'rescale them or store uint8 0..255'
            )
        return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise SourceError(
        f'{origin}: images must be uint8 (0..255) or float in [0, 1], got {images.dtype}'
    )


def _is_image_file(path: str) -> bool:
    base = os.path.basename(path)
    return not base.startswith('.') and base.lower().endswith(IMAGE_EXTENSIONS)


def _subdirs(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith('.'))


def _read_class_folders(root: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """``root/<class>/<image>`` -> (uint8 ``[n,H,W,C]``, int64 ``[n]``, sorted class names)."""
    class_names = tuple(_subdirs(root))
    if not class_names:
        raise SourceError(f'{root}: no class sub-folders (expected {root}/<class>/<image>)')
    images: list[np.ndarray] = []
    labels: list[int] = []
    first: tuple[str, tuple[int, int], str] | None = None
    for label, cls in enumerate(class_names):
        folder = os.path.join(root, cls)
        files = sorted(f for f in os.listdir(folder) if _is_image_file(f))
        if not files:
            raise SourceError(
                f'{folder}: class folder holds no images ({", ".join(IMAGE_EXTENSIONS)})'
            )
        for fname in files:
            path = os.path.join(folder, fname)
            try:
                with PILImage.open(path) as img:
                    img.load()
                    size, mode = img.size, img.mode
                    array = np.asarray(img)
            except (OSError, SyntaxError, ValueError) as e:
                raise SourceError(f'{path}: cannot read image: {e}') from e
            if mode not in MODE_CHANNELS:
                raise SourceError(
                    f'{path}: image mode {mode!r} is not supported; convert the images to '
                    f'one of {", ".join(MODE_CHANNELS)} (grey, RGB, RGBA)'
                )
            if first is None:
                first = (path, size, mode)
            elif (size, mode) != first[1:]:
                raise SourceError(
                    f'{path}: image is {size[0]}x{size[1]} (WxH) mode {mode!r} but {first[0]} '
                    f'is {first[1][0]}x{first[1][1]} mode {first[2]!r}; all images must share '
                    'size and mode'
                )
            images.append(array.reshape(size[1], size[0], MODE_CHANNELS[mode]))
            labels.append(label)
    return np.stack(images).astype(np.uint8), np.asarray(labels, np.int64), class_names


def read_image_folder(
    path: str, test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = SPLIT_SEED
) -> SourceData:
    """A folder of class folders -> ``SourceData``; labels are the sorted class names' ranks.

    If ``path`` holds ``train/`` (and optionally ``test/``, ``validation/``) each with the same
    class folders, those are the splits; otherwise a seeded stratified split is made.
    """
    subdirs = _subdirs(path)
    split_names = [s for s in ('train', 'validation', 'test') if s in subdirs]
    if 'train' in split_names and set(subdirs) == set(split_names):
        splits = {}
        names: tuple[str, ...] | None = None
        for split in split_names:
            images, labels, class_names = _read_class_folders(os.path.join(path, split))
            if names is not None and class_names != names:
                raise SourceError(
                    f'{os.path.join(path, split)}: class folders {list(class_names)} differ '
                    f'from those of the train split {list(names)}'
                )
            names = class_names
            splits[split] = (images, labels)
        shapes = {s: a.shape[1:] for s, (a, _) in splits.items()}
        if len(set(shapes.values())) > 1:
            raise SourceError(f'{path}: splits have different image shapes {shapes}')
        if 'test' not in splits:
            images, labels = splits.pop('train')
            splits = {**_split_arrays(images, labels, test_fraction, seed), **splits}
    else:
        images, labels, names = _read_class_folders(path)
        splits = _split_arrays(images, labels, test_fraction, seed)
    assert names is not None
    return SourceData(
        splits=splits,
        num_classes=len(names),
        class_names=names,
        description=f'Images from the class folders of {os.path.abspath(path)}.',
    )


def read_npz(
    path: str, test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = SPLIT_SEED
) -> SourceData:
    """An ``.npz`` with ``images``/``labels`` (optional ``test_images``/``test_labels``,
    ``class_names``) -> ``SourceData``; images ``[n,H,W(,C)]`` uint8 or float in [0, 1]."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as e:
        raise SourceError(f'{path}: cannot read .npz: {e}') from e
    missing = [k for k in ('images', 'labels') if k not in arrays]
    if missing:
        raise SourceError(
            f'{path}: missing array(s) {missing}; found {sorted(arrays)}; expected images '
            '[n, H, W(, C)] and labels [n] (optionally test_images, test_labels, class_names)'
        )
    if ('test_images' in arrays) != ('test_labels' in arrays):
        raise SourceError(f'{path}: test_images and test_labels must come together')
    pairs = {'train': ('images', 'labels')}
    if 'test_images' in arrays:
        pairs['test'] = ('test_images', 'test_labels')
    splits = {}
    for split, (ki, kl) in pairs.items():
        images = to_uint8_images(arrays[ki], f'{path} [{ki}]')
        labels = np.asarray(arrays[kl])
        _check_labels(labels, images.shape[0], None, f'{path} [{kl}]')
        splits[split] = (images, labels.astype(np.int64))
    class_names = None
    if 'class_names' in arrays:
        class_names = tuple(str(c) for c in np.asarray(arrays['class_names']).reshape(-1))
        num_classes = len(class_names)
    else:
        num_classes = _max_label(splits) + 1
    return _with_test_split(
        SourceData(splits, num_classes, class_names, f'Images from {os.path.abspath(path)}.'),
        path,
        test_fraction,
        seed,
    )


def _open_maybe_gz(path: str) -> bytes:
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rb') as f:
        return f.read()


def read_idx_file(path: str) -> np.ndarray:
    """One IDX file (``.gz`` or not) -> its array, e.g. uint8 ``[60000, 28, 28]``."""
    raw = _open_maybe_gz(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise SourceError(f'{path}: not an IDX file (bad magic number {raw[:4].hex()})')
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise SourceError(f'{path}: truncated IDX header')
    dims = struct.unpack(f'>{ndim}I', raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise SourceError(
            f'{path}: IDX header says {list(dims)} ({expected} bytes of data) but the file '
            f'holds {len(raw) - header}'
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder('='))


def _find_idx(folder: str, prefix: str, kind: str) -> str | None:
    """Path of ``{prefix}-{kind}-idx?-ubyte[.gz]`` (or ``.idx?-ubyte``) in ``folder``."""
    pattern = re.compile(rf'^{prefix}-{kind}[-.]idx\d-ubyte(\.gz)?$')
    hits = sorted(f for f in os.listdir(folder) if pattern.match(f))
    return os.path.join(folder, hits[0]) if hits else None


def read_idx_folder(
    path: str, test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = SPLIT_SEED
) -> SourceData:
    """A folder with MNIST-style IDX files (``train-images-idx3-ubyte[.gz]``, ``t10k-*``) ->
    ``SourceData``; without ``t10k-*`` files a seeded test split is made."""
    splits = {}
    for prefix, split in _IDX_SPLITS.items():
        images_path = _find_idx(path, prefix, 'images')
        labels_path = _find_idx(path, prefix, 'labels')
        if images_path is None and labels_path is None:
            continue
        if images_path is None or labels_path is None:
            raise SourceError(
                f'{path}: found {images_path or labels_path} but not its '
                f'{"images" if images_path is None else "labels"} file'
            )
        images = read_idx_file(images_path)
        if images.dtype != np.uint8:
            raise SourceError(f'{images_path}: expected unsigned-byte images, got {images.dtype}')
        labels = read_idx_file(labels_path).astype(np.int64)
        _check_labels(labels, images.shape[0], None, labels_path)
        splits[split] = (to_uint8_images(images, images_path), labels)
    if 'train' not in splits:
        raise SourceError(f'{path}: no train-images-idx3-ubyte[.gz] file')
    return _with_test_split(
        SourceData(
            splits,
            _max_label(splits) + 1,
            description=f'Images from the IDX files in {os.path.abspath(path)}.',
        ),
        path,
        test_fraction,
        seed,
    )


def read_mnist_pickle(path: str) -> SourceData:
    """``mnist.pkl.gz``: ``(train, valid, test)`` of (float ``[n, 784]`` in [0,1], labels) ->
    ``SourceData`` with splits train / validation / test of 28x28x1 images.

    Unpickling runs code from the file: only use files you trust.
    """
    try:
        raw = _open_maybe_gz(path)
        parts = pickle.loads(raw, encoding='latin1')
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as e:
        raise SourceError(f'{path}: cannot unpickle: {e}') from e
    if not isinstance(parts, (tuple, list)) or len(parts) != 3:
        raise SourceError(
            f'{path}: expected a (train, valid, test) tuple of (images, labels) pairs, got '
            f'{type(parts).__name__}'
        )
    splits = {}
    for split, part in zip(('train', 'validation', 'test'), parts, strict=True):
        if not isinstance(part, (tuple, list)) or len(part) != 2:
            raise SourceError(f'{path}: split {split!r} is not an (images, labels) pair')
        flat = np.asarray(part[0])
        side = int(round(np.sqrt(flat.shape[-1]))) if flat.ndim == 2 else 0
        if flat.ndim != 2 or side * side != flat.shape[1]:
            raise SourceError(
                f'{path}: split {split!r} images must be [n, side*side], got {list(flat.shape)}'
            )
        images = to_uint8_images(flat.reshape(-1, side, side), f'{path} ({split})')
        labels = np.asarray(part[1])
        _check_labels(labels, images.shape[0], None, f'{path} ({split})')
        splits[split] = (images, labels.astype(np.int64))
    num_classes = _max_label(splits) + 1
    data = SourceData(
        splits=splits,
        num_classes=num_classes,
        description=f'Images from the pickled MNIST {os.path.abspath(path)}.',
    )
    data.validate(path)
    return data


def detect_source_kind(path: str) -> str:
    """One of ``SOURCE_KINDS`` for ``path``, or ``SourceError`` saying what was expected."""
    if not os.path.exists(path):
        raise FileNotFoundError(f'source {path!r} does not exist')
    lower = os.path.basename(path.rstrip(os.sep)).lower()
    if os.path.isfile(path):
        if lower.endswith('.npz'):
            return 'npz'
        if lower.endswith(('.pkl', '.pkl.gz', '.pickle', '.pickle.gz')):
            return 'mnist_pickle'
    elif os.path.isdir(path):
        if _find_idx(path, 'train', 'images') or _find_idx(path, 'train', 'labels'):
            return 'idx'
        subdirs = _subdirs(path)
        if subdirs:
            return 'folder'
    raise SourceError(
        f'cannot tell what kind of image source {path!r} is; expected one of: a folder with '
        'one sub-folder of images per class; an .npz with arrays images and labels; a folder '
        'with MNIST IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], '
        't10k-...); a pickled mnist.pkl.gz'
    )


def read_source(
    path: str,
    kind: str | None = None,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = SPLIT_SEED,
) -> SourceData:
    """Reads any supported source (kind detected when ``None``) into validated ``SourceData``."""
    kind = kind or detect_source_kind(path)
    readers: Mapping[str, Any] = {
        'folder': lambda: read_image_folder(path, test_fraction, seed),
        'npz': lambda: read_npz(path, test_fraction, seed),
        'idx': lambda: read_idx_folder(path, test_fraction, seed),
        'mnist_pickle': lambda: read_mnist_pickle(path),
    }
    if kind not in readers:
        raise ValueError(f'unknown source kind {kind!r}; valid kinds: {", ".join(SOURCE_KINDS)}')
    data = readers[kind]()
    data.validate(path)
    return data
