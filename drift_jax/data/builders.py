"""TFDS builders that prepare small image datasets offline, without TensorFlow.

``Digits`` wraps scikit-learn's bundled 8x8 digits; ``make_local_builder`` writes a user's
images (class folders, ``.npz``, MNIST IDX files or ``mnist.pkl.gz``, read by ``sources``)
under any dataset name.
"""

from __future__ import annotations

import io
import os
import re
import types
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image as PILImage

# Sources (user files read into memory) live in `sources`; these names are re-exported.
from drift_jax.data.sources import (  # noqa: F401
    CHANNEL_MODES,
    DEFAULT_TEST_FRACTION,
    IMAGE_EXTENSIONS,
    MODE_CHANNELS,
    SOURCE_KINDS,
    SPLIT_SEED,
    SourceData,
    SourceError,
    detect_source_kind,
    read_source,
    stratified_split,
    to_uint8_images,
)

# Every builder here writes array_record (read back through ``tfds.data_source``)
# and encodes images to PNG with PIL: TFDS' own numpy encoder needs TensorFlow.
FILE_FORMAT: str = 'array_record'
LOCAL_VERSION: str = '1.0.0'
DIGITS_TEST_FRACTION: float = 1.0 / 6.0  # ~300 of the 1797 digits
DIGITS_MAX_VALUE: int = 16  # sklearn digits hold integers 0..16
_NAME_RE = re.compile(r'^[a-z][a-z0-9_]*$')


def encode_png(image: np.ndarray) -> bytes:
    """uint8 ``[H, W, C]`` (C in 1, 3, 4) -> PNG bytes, as ``tfds.features.Image`` stores them."""
    channels = image.shape[-1]
    pil = PILImage.fromarray(image[..., 0] if channels == 1 else image, CHANNEL_MODES[channels])
    buf = io.BytesIO()
    pil.save(buf, format='PNG')
    return buf.getvalue()


def image_features(
    image_shape: Sequence[int], num_classes: int, class_names: Sequence[str] | None = None
) -> tfds.features.FeaturesDict:
    """The features every builder here writes: ``{'image': Image(H,W,C), 'label': ClassLabel}``."""
    label = (
        tfds.features.ClassLabel(names=list(class_names))
        if class_names is not None
        else tfds.features.ClassLabel(num_classes=num_classes)
    )
    return tfds.features.FeaturesDict(
        {
            'image': tfds.features.Image(shape=tuple(int(d) for d in image_shape), dtype=np.uint8),
            'label': label,
        }
    )


class _ArrayImageBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Writes in-memory ``SourceData`` as PNG-encoded examples, keeping the given order."""

    VERSION = tfds.core.Version(LOCAL_VERSION)

    def _source_data(self) -> SourceData:
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        data = self._source_data()
        return tfds.core.DatasetInfo(
            builder=self,
            description=data.description,
            features=image_features(data.image_shape, data.num_classes, data.class_names),
            supervised_keys=('image', 'label'),
            # Keep example i of a split equal to row i of its arrays (tests and users rely
            # on it); TFDS would otherwise reorder examples by a hash of their key.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[int, dict]]]:
        del dl_manager  # Everything is local; nothing is downloaded.
        return {
            split: self._generate_examples(images, labels)
            for split, (images, labels) in self._source_data().splits.items()
        }

    def _generate_examples(
        self, images: np.ndarray, labels: np.ndarray
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        for i in range(images.shape[0]):
            yield i, {'image': encode_png(images[i]), 'label': int(labels[i])}


def digits_split_indices() -> dict[str, np.ndarray]:
    """The fixed split of sklearn's 1797 digits: ``{'train': idx [1497], 'test': idx [300]}``."""
    from sklearn.datasets import load_digits

    labels = load_digits().target
    train_idx, test_idx = stratified_split(labels, DIGITS_TEST_FRACTION, SPLIT_SEED)
    return {'train': train_idx, 'test': test_idx}


def digits_arrays() -> SourceData:
    """sklearn digits as uint8 ``[n, 8, 8, 1]`` (0..16 rescaled to 0..255) in the fixed split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / DIGITS_MAX_VALUE)).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int64)
    splits = {s: (images[idx], labels[idx]) for s, idx in digits_split_indices().items()}
    return SourceData(
        splits=splits,
        num_classes=10,
        description='scikit-learn 8x8 handwritten digits (UCI optdigits test set), '
        'pixel values 0..16 rescaled to 0..255; fixed seeded stratified train/test split.',
    )


class Digits(_ArrayImageBuilder):
    """scikit-learn's bundled 8x8 digits: image ``(8, 8, 1)`` uint8, 10 classes, offline."""

    name = 'digits'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Initial release.'}

    def _source_data(self) -> SourceData:
        if not hasattr(self, '_cached_data'):
            self._cached_data = digits_arrays()
        return self._cached_data


class LocalImages(_ArrayImageBuilder, skip_registration=True):
    """Base of the builders ``make_local_builder`` creates; each gets its own dataset name."""

    def __init__(self, *, source_data: SourceData, **kwargs: Any):
        """Stores ``source_data`` then defers to ``GeneratorBasedBuilder`` (``data_dir``...)."""
        self._data = source_data
        super().__init__(**kwargs)

    def _source_data(self) -> SourceData:
        return self._data


def check_dataset_name(name: str) -> None:
    """Raises ``ValueError`` unless ``name`` is a lower_snake_case TFDS dataset name."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f'invalid dataset name {name!r}: use lower case letters, digits and underscores, '
            'starting with a letter (e.g. mnist, my_faces)'
        )


def make_local_builder(
    name: str, source_data: SourceData, data_dir: str | os.PathLike
) -> tfds.core.GeneratorBasedBuilder:
    """A builder named ``name`` that writes ``source_data`` to ``data_dir/name/1.0.0``.

    The class is not registered with TFDS, so ``name`` may shadow a catalogue dataset
    ('mnist'): readers open it from its files (``tfds.data_source('mnist:1.0.0', ...)``).
    """
    check_dataset_name(name)
    source_data.validate(name)
    cls_name = ''.join(part.capitalize() for part in name.split('_')) or 'Local'
    cls = types.new_class(
        cls_name,
        (LocalImages,),
        {'skip_registration': True},
        lambda ns: ns.update({'name': name, '__module__': __name__}),
    )
    return cls(source_data=source_data, data_dir=os.fspath(data_dir), file_format=FILE_FORMAT)
