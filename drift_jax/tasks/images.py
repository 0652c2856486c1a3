"""Image tasks for the one train loop: class-conditional drifting with guidance, and MAE.

`ImageTask` trains a conditional image generator with the drifting loss in pixel space or in
the feature space of a frozen encoder; `MAETask` trains that encoder as a masked autoencoder.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from drift_jax import field
from drift_jax.models import image as image_models
from drift_jax.data import memory_bank
from drift_jax.data import images as image_data

ENCODERS = ('none', 'mae')


def _open_data(config: ml_collections.ConfigDict) -> image_data.ImageData:
    d = config.data
    return image_data.load_image_dataset(d.name, d.data_dir or None, download=d.download)


def _check_common(config: ml_collections.ConfigDict) -> image_data.ImageData:
    """Opens the dataset (fails at once when missing) and returns it."""
    if not config.data.name:
        raise ValueError('data.name is empty; give a TFDS image dataset name, e.g. digits.')
    return _open_data(config)


class ImageTask:
    """Class-conditional drifting on images with classifier-free guidance in training.

    Per step: `classes_per_step` labels, each with `gen_per_class` generated samples,
    `pos_per_class` real samples of that class from the memory bank, and
    `uncond_per_class` real samples of any class that join the negatives with weight
    `(alpha - 1)(gen_per_class - 1) / uncond_per_class`; alpha per label is drawn from a power
    law on [1, guidance.alpha_max] and fed to the generator.
    """

    @staticmethod
    def validate(config: ml_collections.ConfigDict) -> None:
        ds = _check_common(config)
        t, g = config.train, config.guidance
        for name in ('classes_per_step', 'gen_per_class', 'pos_per_class', 'uncond_per_class',
                     'bank_capacity', 'bank_push'):
            if not isinstance(t[name], int) or t[name] <= 0:
                raise ValueError(f'train.{name} must be a positive integer, got {t[name]!r}.')
        if t.batch_size != t.classes_per_step * t.gen_per_class:
            raise ValueError(f'train.batch_size={t.batch_size} must equal classes_per_step x '
                             f'gen_per_class = {t.classes_per_step * t.gen_per_class}.')
        if t.gen_per_class < 2:
            raise ValueError('train.gen_per_class must be >= 2 (samples repel each other).')
        if not g.alpha_max >= 1:
            raise ValueError(f'guidance.alpha_max must be >= 1, got {g.alpha_max}.')
        if not config.eval.alpha >= 1:
            raise ValueError(f'eval.alpha must be >= 1, got {config.eval.alpha}.')
        if config.encoder.name not in ENCODERS:
            raise ValueError(f'encoder.name={config.encoder.name!r} is unknown; choose one '
                             f'of {ENCODERS}.')
        from drift_jax.models import encoders
        unknown = set(config.encoder.feature_sets) - set(encoders.FEATURE_SET_KINDS)
        if unknown:
            raise ValueError(f'encoder.feature_sets has unknown {sorted(unknown)}; choose from '
                             f'{encoders.FEATURE_SET_KINDS}.')
        if config.encoder.name == 'mae' and not config.encoder.workdir:
            raise ValueError("encoder.name='mae' needs encoder.workdir, the workdir of a "
                             'finished configs/mae_*.py run.')
        field.options_from_config(config.drift)
        image_models.make_image_generator(config.model, ds.info.image_shape,
                                          ds.info.num_classes)

    def __init__(self, config: ml_collections.ConfigDict):
        from drift_jax import train
        self.config = config
        self.data = _open_data(config)
        self.image_shape = tuple(self.data.info.image_shape)
        self.num_classes = self.data.info.num_classes
        self.model = image_models.make_image_generator(config.model, self.image_shape,
                                                       self.num_classes)
        self.noise_shape = tuple(self.model.noise_shape)
        self.drift_options = field.options_from_config(config.drift)
        self.mesh = train.make_mesh(config.mesh)
        self.tx = train.make_optimizer(config.optim, config.train.steps)
        self.encoder = load_frozen_encoder(config, self.image_shape)
        # With a frozen encoder the bank can hold the real images' features, computed once
        # when an image is pushed, instead of encoding every drawn positive and negative at
        # every step (same loss: the encoder never changes).
        self.bank_features = self.encoder is not None and bool(
            config.encoder.get('bank_features', False))   # runs saved before it: images
        self._generate = jax.jit(self.generate)   # one compile for every eval and sample call

    # -- state ---------------------------------------------------------------------------

    def init(self, key: jax.Array) -> tuple[Any, Any]:
        """(generator params, empty memory bank)."""
        t = self.config.train
        b = jnp.zeros((1,), jnp.int32)
        params = self.model.init(key, jnp.zeros((1, *self.noise_shape)), b,
                                 jnp.ones((1,), jnp.float32))
        shape = self.image_shape
        if self.bank_features:
            probe = jax.ShapeDtypeStruct((1, *self.image_shape), jnp.float32)
            shape = {k: v.shape[1:] for k, v in
                     jax.eval_shape(self.encoder.features, probe).items()}
        bank = memory_bank.init_bank(self.num_classes, t.bank_capacity, t.bank_capacity,
                                     shape)
        return params, bank

    def bank_entry(self, images: jax.Array) -> Any:
        """What the bank stores for real images [B, H, W, C]: the images themselves, or
        (encoder.bank_features) their feature sets, dict name -> [B, T, D]."""
        return self.encoder.features(images) if self.bank_features else images

    def host_batch(self, step: int) -> dict[str, np.ndarray]:
        """Real images pushed into the memory bank at `step` (seeded by step: resumable)."""
        rng = np.random.default_rng((self.config.train.seed, step))
        x, y = self.data.sample(rng, self.config.train.bank_push)
        return {'images': x, 'labels': y}

    def warm_start(self, state):
        """Fills the memory bank before step 1 so no class starts empty."""
        t = self.config.train
        per_class = self.data.per_class_index('train')
        rng = np.random.default_rng((t.seed, 0xBA2C))
        idx = np.concatenate([rng.choice(ix, size=min(len(ix), t.bank_capacity), replace=False)
                              for ix in per_class])
        rng.shuffle(idx)
        push = jax.jit(lambda b, x, y: memory_bank.push(b, self.bank_entry(x), y))
        bank = state.extra
        for chunk in np.array_split(idx, max(1, len(idx) // 2048)):
            x, y = self.data.get('train', chunk)
            bank = push(bank, x, y)
        return state.replace(extra=bank)

    # -- the step ------------------------------------------------------------------------

    def generate(self, params, key: jax.Array, labels: jax.Array, alpha: jax.Array):
        """Images [B, H, W, C] in [-1, 1] for labels [B] and guidance alpha [B]."""
        noise = jax.random.normal(key, (labels.shape[0], *self.noise_shape))
        return self.model.apply(params, noise, labels, alpha)

    def loss(self, params, bank, key: jax.Array, batch) -> tuple[jax.Array, tuple]:
        t, g = self.config.train, self.config.guidance
        bank = memory_bank.push(bank, self.bank_entry(batch['images']), batch['labels'])
        k_lab, k_alpha, k_noise, k_pos, k_unc = jax.random.split(key, 5)
        n_c, n_gen = t.classes_per_step, t.gen_per_class
        if n_c <= self.num_classes:
            labels = jax.random.permutation(k_lab, self.num_classes)[:n_c]
        else:
            labels = jax.random.randint(k_lab, (n_c,), 0, self.num_classes)
        alpha = memory_bank.power_law_alpha(k_alpha, (n_c,), g.alpha_max, g.exponent)
        x = self.generate(params, k_noise, jnp.repeat(labels, n_gen), jnp.repeat(alpha, n_gen))
        x = x.reshape(n_c, n_gen, *self.image_shape)
        y_pos = memory_bank.sample_pos(bank, k_pos, labels, t.pos_per_class)
        y_unc = jax.tree_util.tree_map(
            lambda a: a.reshape(n_c, t.uncond_per_class, *a.shape[1:]),
            memory_bank.sample_uncond(bank, k_unc, n_c * t.uncond_per_class))
        w_unc = memory_bank.cfg_negative_weight(alpha, n_gen, t.uncond_per_class)   # [G]
        w_neg = jnp.concatenate([jnp.ones((n_c, n_gen)),
                                 jnp.broadcast_to(w_unc[:, None], (n_c, t.uncond_per_class))],
                                axis=1)
        loss, stats = self.drift_loss(x, y_pos, y_unc, w_neg)
        stats['alpha_mean'] = jnp.mean(alpha)
        return loss, (stats, bank)

    def drift_loss(self, x, y_pos, y_unc, w_neg):
        """Loss of generated x [G, N, H, W, C] against positives and weighted negatives.

        y_pos [G, N+, H, W, C] and y_unc [G, Nu, H, W, C] are real images, or (with
        `bank_features`) their feature sets, dicts name -> [G, N+, T, D] and [G, Nu, T, D].
        """
        from drift_jax import train
        opts = self.drift_options
        if self.encoder is None:
            flat = lambda a: a.reshape(a.shape[0], a.shape[1], -1)  # noqa: E731
            xf = flat(x)
            y_neg = jnp.concatenate([jax.lax.stop_gradient(xf), flat(y_unc)], axis=1)
            return train.drift_loss_on_mesh(xf, flat(y_pos), y_neg, opts, self.mesh,
                                            weights_neg=w_neg)
        return self.encoder.loss(x, y_pos, y_unc, w_neg, opts, real_are_features=self.bank_features)

    # -- evaluation and sampling ----------------------------------------------------------

    def make_evaluator(self, seed: int):
        return ImageTaskEvaluator(self, seed)

    def sample(self, params, key: jax.Array, n: int, labels=None, alpha: float = 1.0
               ) -> np.ndarray:
        """n images [n, H, W, C] in [0, 1]; labels [n] (default: cycling over classes)."""
        labels = check_labels(labels, n, self.num_classes)
        if not alpha >= 1:
            raise ValueError(f'alpha must be >= 1, got {alpha}.')
        out = []
        for start in range(0, n, 1000):
            lab = jnp.asarray(labels[start:start + 1000])
            x = self._generate(params, jax.random.fold_in(key, start), lab,
                    jnp.full(lab.shape, alpha, jnp.float32))
            out.append(np.asarray(x))
        return np.clip((np.concatenate(out) + 1.0) / 2.0, 0.0, 1.0)


def upscale(images: np.ndarray, min_side: int = 32) -> np.ndarray:
    """Nearest-neighbour upscaling of [N, H, W, C] so small images stay visible in grids."""
    f = max(1, min_side // images.shape[1])
    return images.repeat(f, axis=1).repeat(f, axis=2) if f > 1 else images


def check_labels(labels, n: int, num_classes: int) -> np.ndarray:
    """Labels [n] as int32, checked against the class count (default: 0, 1, 2, ... cycling)."""
    if labels is None:
        return (np.arange(n) % num_classes).astype(np.int32)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ValueError(f'labels {sorted(set(bad.tolist()))[:10]} are outside the '
                         f'{num_classes} classes [0, {num_classes - 1}].')
    if labels.size != n:
        labels = np.resize(labels, n)
    return labels.astype(np.int32)


class ImageTaskEvaluator:
    """FD (with its train-vs-test floor), precision/recall and class accuracy of EMA samples."""

    def __init__(self, task: ImageTask, seed: int):
        from drift_jax.eval import images as image_eval
        self.task = task
        cfg = task.config
        train_x, train_y = task.data.class_arrays('train')
        test_split = 'test' if 'test' in task.data.info.split_sizes else 'validation'
        test_x, test_y = task.data.class_arrays(test_split)
        cache = os.path.join(task.data._data_dir, 'drift_jax_eval_cache')  # noqa: SLF001
        self.evaluator = image_eval.ImageEvaluator(
            train_x, train_y, test_x, test_y, task.num_classes, seed=seed,
            steps=cfg.eval.classifier_steps, cache_dir=cache)
        self.key = jax.random.fold_in(jax.random.PRNGKey(seed), 0xE7A1)

    def __call__(self, state, step: int, sample_dir: str | None = None) -> dict[str, float]:
        cfg, task = self.task.config, self.task
        n = cfg.eval.num_samples
        labels = (np.arange(n) % task.num_classes).astype(np.int32)
        x01 = task.sample(state.ema_params, self.key, n, labels=labels, alpha=cfg.eval.alpha)
        if not np.all(np.isfinite(x01)):
            raise FloatingPointError(f'The EMA generator produced NaN/inf images at step {step}.')
        out = self.evaluator(x01 * 2.0 - 1.0, labels)
        if sample_dir is not None:
            from drift_jax import plotting
            k = cfg.eval.grid_per_class
            order = np.argsort(labels, kind='stable')
            grid = np.concatenate([x01[order][labels[order] == c][:k]
                                   for c in range(task.num_classes)])
            os.makedirs(sample_dir, exist_ok=True)
            plotting.image_grid(upscale(grid), os.path.join(sample_dir, f'step_{step:07d}.png'),
                                nrow=k)
        return out


# ----------------------------------------------------------------------------- encoders


class FrozenEncoder:
    """A trained MAE encoder held fixed; the drifting loss is summed over its feature sets."""

    def __init__(self, encoder, encoder_params, feature_sets: tuple[str, ...]):
        self.encoder, self.params, self.feature_sets = encoder, encoder_params, feature_sets

    def features(self, images):
        """Feature sets of images [B, H, W, C]: dict name -> [B, T, D]."""
        from drift_jax.models import encoders
        return encoders.extract_feature_sets(self.encoder, self.params, images,
                                             include=self.feature_sets)

    def loss(self, x, y_pos, y_unc, w_neg, opts, real_are_features: bool = False):
        """Sum over feature sets of the drifting loss.

        Args:
          x: generated images [G, N, H, W, C] (differentiable).
          y_pos, y_unc: real images [G, N+, H, W, C] and [G, Nu, H, W, C]; or, with
            `real_are_features`, their feature sets already computed, dicts name ->
            [G, N+, T, D] and [G, Nu, T, D].
          w_neg: weights of the negatives [G, N + Nu] (generated first).
          opts: drift options.
        """
        from drift_jax.models import encoders
        g = x.shape[0]
        flat = lambda a: a.reshape(-1, *a.shape[2:])  # noqa: E731

        def grouped(a):
            return {k: v.reshape(g, a.shape[1], *v.shape[1:])
                    for k, v in self.features(flat(a)).items()}

        gen = grouped(x)
        pos, unc = (y_pos, y_unc) if real_are_features else (grouped(y_pos), grouped(y_unc))
        neg = {k: jnp.concatenate([jax.lax.stop_gradient(gen[k]), unc[k]], axis=1) for k in gen}
        loss, stats = encoders.feature_drift_loss(gen, pos, neg, opts, weights_neg=w_neg)
        keep = {k: v for k, v in stats.items() if '/' not in k}   # per-set stats: too many
        return loss, keep


def load_frozen_encoder(config: ml_collections.ConfigDict, image_shape) -> FrozenEncoder | None:
    """Loads the MAE encoder named by `config.encoder.workdir` (None for pixel space)."""
    if config.encoder.name == 'none':
        return None
    from drift_jax import train
    workdir = config.encoder.workdir
    path = os.path.join(workdir, 'config.json')
    if not os.path.exists(path):
        raise FileNotFoundError(f'encoder.workdir={workdir!r} has no config.json: train the '
                                'encoder first (python -m drift_jax.main '
                                '--config=configs/mae_mnist.py --workdir=...).')
    with open(path) as f:
        enc_cfg = json.load(f)
    if enc_cfg.get('task') != 'mae' or enc_cfg['data']['name'] != config.data.name:
        raise ValueError(f'encoder.workdir={workdir!r} holds a {enc_cfg.get("task")!r} run on '
                         f'{enc_cfg["data"]["name"]!r}; expected an MAE run on '
                         f'{config.data.name!r}.')
    task, state, _ = train.load_run(workdir)
    if tuple(task.image_shape) != tuple(image_shape):
        raise ValueError(f'The encoder in {workdir!r} was trained on images of shape '
                         f'{task.image_shape}, not {tuple(image_shape)}.')
    return FrozenEncoder(task.model.encoder, state.ema_params['params']['encoder'],
                         tuple(config.encoder.feature_sets))


class MAETask:
    """Trains the ResNet-style feature encoder as a masked autoencoder on the same images."""

    @staticmethod
    def validate(config: ml_collections.ConfigDict) -> None:
        _check_common(config)
        if not 0 < config.mae.mask_ratio < 1:
            raise ValueError(f'mae.mask_ratio must be in (0, 1), got {config.mae.mask_ratio}.')
        stride = config.mae.get('stem_stride', 1)
        if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
            raise ValueError(f'mae.stem_stride must be a positive integer, got {stride!r}.')

    def __init__(self, config: ml_collections.ConfigDict):
        from drift_jax import train
        from drift_jax.models import encoders
        self.config = config
        self.data = _open_data(config)
        self.image_shape = tuple(self.data.info.image_shape)
        self.model = encoders.make_mae(self.image_shape[-1], widths=tuple(config.mae.widths),
                                       blocks_per_stage=config.mae.blocks_per_stage,
                                       decoder_width=config.mae.decoder_width,
                                       stem_stride=config.mae.get('stem_stride', 1))
        self.mesh = train.make_mesh(config.mesh)
        self.tx = train.make_optimizer(config.optim, config.train.steps)

    def init(self, key):
        return self.model.init(key, jnp.zeros((1, *self.image_shape))), {}

    def host_batch(self, step: int):
        rng = np.random.default_rng((self.config.train.seed, step))
        x, _ = self.data.sample(rng, self.config.train.batch_size)
        return {'images': x}

    def loss(self, params, extra, key, batch):
        from drift_jax.models import encoders
        m = self.config.mae
        loss, stats = encoders.mae_loss(params['params'], self.model, batch['images'], key,
                                        m.mask_ratio, m.patch_size)
        return loss, (dict(stats), extra)

    def make_evaluator(self, seed: int):
        """Masked-reconstruction loss of the EMA encoder on held-out images (fixed mask)."""
        from drift_jax.models import encoders
        split = 'test' if 'test' in self.data.info.split_sizes else 'validation'
        images = self.data.class_arrays(split)[0][:self.config.eval.num_samples]
        m = self.config.mae
        loss_fn = jax.jit(lambda p: encoders.mae_loss(
            p, self.model, images, jax.random.PRNGKey(seed), m.mask_ratio, m.patch_size)[0])

        def evaluate(state, step, sample_dir=None):
            del step, sample_dir
            return {'mae_test_loss': float(loss_fn(state.ema_params['params']))}
        return evaluate

    def sample(self, params, key, n, **kwargs):
        raise ValueError('An MAE workdir holds a feature encoder, not a generator.')
