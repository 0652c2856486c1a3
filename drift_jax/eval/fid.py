"""Paper-grade image metrics in Inception features: FID, Inception Score, precision/recall.

FID compares Gaussians fitted to the pool features of `drift_jax.eval.inception` (the
network pytorch-fid uses), so its numbers are comparable with published ones given the
same reference statistics. Reference statistics of a dataset (`dataset_stats`, saved by
`save_stats` in pytorch-fid's ``mu``/``sigma`` format) are made once; generated images are
scored against them (`InceptionMetrics`, `score_workdir`). Not to be confused with the
``fd`` of `drift_jax.eval.images`, which uses the library's own small classifier.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging

from drift_jax.eval import inception as inception_lib
from drift_jax.eval import inception_weights
from drift_jax.eval.images import precision_recall

# ----------------------------------------------------------------------------------------------
# Metrics.


def feature_stats(features: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[F]`` and unbiased covariance ``[F, F]`` of ``features [N, F]`` (float64, N >= 2)."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f'features must be [N >= 2, F], got {f.shape}')
    return f.mean(axis=0), np.cov(f, rowvar=False)


def fid_from_stats(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, *, eps: float = 1e-6) -> float:
    """Frechet distance ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})`` in float64.

    The square root is ``scipy.linalg.sqrtm`` of ``S1 S2``, as pytorch-fid computes it: where
    that fails (non-finite entries, a near-singular product) both covariances get ``eps`` on
    the diagonal and it is taken again; a complex result is accepted only when the imaginary
    parts of its diagonal are below 1e-3 (numerical noise), and its real part is used.

    Args:
      mu1, mu2: means ``[F]``.
      sigma1, sigma2: covariances ``[F, F]``.
      eps: diagonal offset of the fallback.

    Returns:
      The distance (may be slightly negative for identical inputs, by rounding).
    """
    import scipy.linalg

    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    s1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    s2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(
            f'shape mismatch: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}'
        )
    with warnings.catch_warnings():
        # A singular product is handled below; scipy's own warning about it is noise here.
        warnings.simplefilter('ignore', scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(s1 @ s2)
        if not np.all(np.isfinite(root)):
            logging.warning('FID: singular covariance product; adding %g to the diagonals', eps)
            offset = eps * np.eye(s1.shape[0])
            root = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(root):
        imag = np.abs(np.diagonal(root).imag)
        if np.any(imag > 1e-3):
            raise ValueError(
                f'FID: the matrix square root has imaginary parts up to {imag.max():g}'
            )
        root = root.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(root))


def inception_score(logits: Any, splits: int = 10) -> tuple[float, float]:
    """Inception Score ``exp(E_x KL(p(y|x) || p(y)))`` over ``splits`` consecutive parts.

    ``p(y|x)`` is the softmax of each row, ``p(y)`` its mean over the part; the score of each
    part is computed in float64 and the mean and standard deviation over parts returned (the
    protocol of Salimans et al., 2016, with 10 parts of 50,000 images, on the 1008 logits
    without the classifier's bias, ``logits_unbiased``).

    Args:
      logits: ``[N, K]``, N >= splits.
      splits: number of parts.

    Returns:
      ``(mean, std)``.
    """
    lg = np.asarray(logits, np.float64)
    n = lg.shape[0]
    if lg.ndim != 2 or splits < 1 or n < splits:
        raise ValueError(f'need logits [N >= splits, K], got {lg.shape} with splits={splits}')
    lg = lg - lg.max(axis=1, keepdims=True)
    log_p = lg - np.log(np.sum(np.exp(lg), axis=1, keepdims=True))
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        part = slice(i * n // splits, (i + 1) * n // splits)
        part_p, part_log = p[part], log_p[part]
        log_marginal = np.log(part_p.mean(axis=0))
        kl = np.sum(part_p * (part_log - log_marginal[None, :]), axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


# ----------------------------------------------------------------------------------------------
# Reference statistics.


def save_stats(
    path: str,
    mu: Any,
    sigma: Any,
    num_images: int,
    features: Any = None,
    **meta: Any,
) -> None:
    """Writes statistics as ``.npz``: ``mu [F]``, ``sigma [F, F]`` (the keys pytorch-fid reads),
    ``num_images``, optionally ``features [n, F]`` (a subset for precision/recall) and
    string/number metadata (e.g. ``data``, ``split``)."""
    arrays = {
        'mu': np.asarray(mu, np.float64),
        'sigma': np.asarray(sigma, np.float64),
        'num_images': np.asarray(num_images, np.int64),
    }
    if features is not None:
        arrays['features'] = np.asarray(features, np.float32)
    arrays.update({f'meta_{k}': np.asarray(v) for k, v in meta.items()})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'wb') as f:
        np.savez(f, **arrays)


def load_stats(path: str) -> dict[str, Any]:
    """Reads statistics written by `save_stats` or by pytorch-fid (``mu``, ``sigma`` only).

    Returns ``mu``, ``sigma``, ``num_images`` (0 when unknown), ``features`` (or None).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f'FID statistics {path!r} do not exist; make them with python -m drift_jax.fid '
            'stats --data=NAME --split=train --out=PATH'
        )
    with np.load(path) as f:
        if 'mu' not in f or 'sigma' not in f:
            raise ValueError(f'{path} has no mu and sigma: not FID statistics')
        return {
            'mu': f['mu'].astype(np.float64),
            'sigma': f['sigma'].astype(np.float64),
            'num_images': int(f['num_images']) if 'num_images' in f else 0,
            'features': f.get('features'),
        }


def dataset_stats(
    name: str,
    extractor: inception_lib.InceptionExtractor,
    *,
    split: str = 'train',
    data_dir: str | None = None,
    num: int = 0,
    pr_num: int = 10_000,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Statistics of the pool features of a prepared TFDS image dataset's split.

    Images are read as uint8 and divided by 255 (as pytorch-fid reads PNG files) in batches
    of ``extractor.batch_size``.

    Args:
      name: dataset name (as ``config.data.name``).
      extractor: the Inception network.
      split: which split ('train' for the usual CIFAR-10 protocol).
      data_dir: TFDS data dir (``config.data.data_dir``; default ``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``).
      num: use the first ``num`` images (0 = all).
      pr_num: keep the features of this many images, drawn at random with ``seed``, for
        precision/recall (0 = none).
      progress: show a progress bar.

    Returns:
      ``mu [F]``, ``sigma [F, F]``, ``num_images``, ``features [min(pr_num, N), F]`` or None.
    """
    from tqdm.auto import tqdm

    from drift_jax.data import images as image_data

    data = image_data.load_image_dataset(name, data_dir or None, process_index=0, process_count=1)
    total = data.num_examples(split)
    n = min(num, total) if num else total
    if n < 2:
        raise ValueError(f'{name}/{split} has {n} images; statistics need at least 2')
    bs = extractor.batch_size
    feats = np.empty((n, extractor.feature_dim), np.float32)
    for s in tqdm(range(0, n, bs), desc=f'{name}/{split}', disable=not progress):
        images_u8, _ = data.get_uint8(split, np.arange(s, min(s + bs, n)))
        feats[s : s + images_u8.shape[0]], _ = extractor.batch(images_u8.astype(np.float32) / 255.0)
    mu, sigma = feature_stats(feats)
    keep = None
    if pr_num:
        idx = np.sort(np.random.default_rng(seed).choice(n, min(pr_num, n), replace=False))
        keep = feats[idx]
    return {'mu': mu, 'sigma': sigma, 'num_images': n, 'features': keep}


# ----------------------------------------------------------------------------------------------
# Scoring generated images.


class InceptionMetrics:
    """FID and Inception Score of images against reference statistics (and precision/recall
    where the statistics carry features).

    Attributes:
      stats: `load_stats` of the reference.
      extractor: the `InceptionExtractor`.
    """

    def __init__(self, stats: str | Mapping[str, Any], extractor: inception_lib.InceptionExtractor):
        self.stats = load_stats(stats) if isinstance(stats, str) else dict(stats)
        self.extractor = extractor
        if self.stats['mu'].shape != (extractor.feature_dim,):
            raise ValueError(
                f'the statistics have {self.stats["mu"].shape[0]} features but the Inception '
                f'network gives {extractor.feature_dim}: they were made with other weights'
            )

    def from_features(
        self, pool: Any, logits_unbiased: Any, *, precision_recall_k: int = 0, splits: int = 10
    ) -> dict[str, float]:
        """Metrics of features already extracted: ``pool [N, F]``, ``logits_unbiased [N, K]``.

        Returns ``fid``, ``inception_score``, ``inception_score_std`` and, with
        ``precision_recall_k > 0`` and reference features, ``precision``/``recall``
        (Kynkaanniemi et al.: k-NN manifolds; equal set sizes, the first
        ``min(N, n_ref)`` of each).
        """
        mu, sigma = feature_stats(pool)
        out = {'fid': fid_from_stats(mu, sigma, self.stats['mu'], self.stats['sigma'])}
        is_mean, is_std = inception_score(logits_unbiased, splits=min(splits, len(pool)))
        out['inception_score'], out['inception_score_std'] = is_mean, is_std
        ref = self.stats.get('features')
        if precision_recall_k and ref is not None:
            m = min(len(ref), len(pool))
            out['precision'], out['recall'] = precision_recall(
                ref[:m], np.asarray(pool)[:m], k=precision_recall_k
            )
        return out

    def __call__(self, images: Any, progress: bool = False, **kwargs) -> dict[str, float]:
        """Metrics of ``images [N, H, W, C]`` in [0, 1]; kwargs as `from_features`."""
        f = self.extractor(images, progress=progress)
        return self.from_features(f['pool'], f['logits_unbiased'], **kwargs)


def validate_config_paths(eval_config: Any) -> None:
    """For a config whose ``eval.fid_stats`` is set: ValueError when the statistics or the
    Inception weights (``eval.inception_weights`` / `inception_weights.find_weights`) are
    missing."""
    stats = eval_config.get('fid_stats', '')
    if not stats:
        return
    if not os.path.isfile(os.path.expanduser(stats)):
        raise ValueError(
            f'eval.fid_stats={stats!r} does not exist; make it with python -m drift_jax.fid '
            'stats --data=NAME --split=train --out=PATH, or leave eval.fid_stats empty.'
        )
    try:
        inception_weights.find_weights(eval_config.get('inception_weights', ''))
    except FileNotFoundError as e:
        raise ValueError(f'eval.fid_stats is set, but {e}') from None


def metrics_for_config(eval_config: Any) -> InceptionMetrics | None:
    """The `InceptionMetrics` an image config asks for (``eval.fid_stats``), or None."""
    stats = eval_config.get('fid_stats', '')
    if not stats:
        return None
    validate_config_paths(eval_config)
    extractor = inception_lib.InceptionExtractor.from_file(eval_config.get('inception_weights', ''))
    return InceptionMetrics(os.path.expanduser(stats), extractor)


def sample_features(
    workdir: str,
    num: int,
    extractor: inception_lib.InceptionExtractor,
    *,
    seed: int = 0,
    labels: Any = None,
    alpha: float = 1.0,
    steps: int = 0,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Samples ``num`` images from a workdir's EMA generator in batches of
    ``extractor.batch_size`` and returns their ``pool [num, F]`` and ``logits_unbiased
    [num, K]`` (images are not kept).

    Args:
      workdir: an image run.
      num: number of images.
      seed: noise seed (batch i uses ``fold_in(PRNGKey(seed), i)``).
      labels: classes cycled over the samples (default: all classes in turn).
      alpha: guidance scale >= 1.
      steps: sampling steps of a multi-step method (0: its default).
    """
    import jax
    from tqdm.auto import tqdm

    from drift_jax import train
    from drift_jax.tasks import images as image_task

    if num < 2:
        raise ValueError(f'num must be >= 2, got {num}')
    run, state, _ = train.load_run(workdir)
    if run.task.kind != 'images':
        raise ValueError(f'{workdir} is not an image run (task {run.task.kind!r})')
    options = {}
    if steps:
        if 'steps' not in inspect.signature(run.method.sample).parameters:
            raise ValueError(
                f'--steps applies to multi-step methods; {workdir} holds a {run.method.name!r} run.'
            )
        options['steps'] = steps
    all_labels = image_task.check_labels(labels, num, run.task.num_classes)
    bs = extractor.batch_size
    key = jax.random.PRNGKey(seed)
    pools, logits = [], []
    for i, s in enumerate(tqdm(range(0, num, bs), desc='samples', disable=not progress)):
        lab = all_labels[s : s + bs]
        b = lab.shape[0]
        lab = np.resize(lab, bs)  # a full batch every time: the sampler compiles once
        x = train.sample(
            run,
            state.ema_params,
            jax.random.fold_in(key, i),
            bs,
            labels=lab,
            alpha=alpha,
            **options,
        )
        p, lg = extractor.batch(np.asarray(x)[:b])
        pools.append(p)
        logits.append(lg - extractor.fc_bias)
    return {'pool': np.concatenate(pools), 'logits_unbiased': np.concatenate(logits)}


def score_workdir(
    workdir: str,
    stats: str | Mapping[str, Any],
    extractor: inception_lib.InceptionExtractor,
    num: int = 50_000,
    *,
    precision_recall_k: int = 3,
    **sample_kwargs: Any,
) -> dict[str, float]:
    """FID, IS (mean, std), precision and recall of ``num`` samples of a workdir.

    ``sample_kwargs`` as `sample_features` (seed, labels, alpha, steps, progress).
    """
    metrics = InceptionMetrics(stats, extractor)
    f = sample_features(workdir, num, extractor, **sample_kwargs)
    out = metrics.from_features(
        f['pool'], f['logits_unbiased'], precision_recall_k=precision_recall_k
    )
    out['num'] = num
    return out
