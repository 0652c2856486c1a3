"""Drifting: a one-step generator trained by regressing onto `stop_gradient(x + V(x))`.

    L = mean_i || phi(x_i) - stop_gradient(phi(x_i) + V(phi(x_i))) ||^2,   x_i = f(eps_i),

with V the drifting field (`drift_jax.field`) toward data and away from the generated
batch, and phi the identity or a frozen encoder's feature sets (`features.py`). Points: an
MLP generator, positives drawn in the step. Images: a class-conditional generator, per-class
positives from a memory bank and classifier-free guidance in training (`guidance.py`).
Sampling is one network evaluation (NFE = 1).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from drift_jax import data, field
from drift_jax.data import memory_bank
from drift_jax.methods import guidance
from drift_jax.methods.base import Method, Update, check_int
from drift_jax.models import image as image_models
from drift_jax.models import mlp

ENCODERS = ('none', 'mae')
_IMAGE_COUNTS = (
    'classes_per_step',
    'gen_per_class',
    'pos_per_class',
    'uncond_per_class',
    'bank_capacity',
    'bank_push',
)


def drift_loss_on_mesh(x, y_pos, y_neg, opts: field.DriftOptions, mesh, **weights):
    """`field.drift_loss`, sharded over the mesh's `data` axis when it has several devices.

    The sharded form splits the queries over devices, gathers the targets and combines the
    query-side normalisation across devices; it equals the single-device loss.
    """
    if mesh.shape['data'] > 1:
        return field.sharded_drift_loss(x, y_pos, y_neg, opts, mesh, **weights)
    return field.drift_loss(x, y_pos, y_neg, opts, **weights)


def generate(model, params, key: jax.Array, n: int, noise_dim: int, mesh=None) -> jax.Array:
    """Draws n samples [n, D] from an MLP generator (noise sharded over `data`)."""
    eps = jax.random.normal(key, (n, noise_dim))
    if mesh is not None and n % mesh.shape['data'] == 0:
        eps = jax.lax.with_sharding_constraint(eps, NamedSharding(mesh, P('data')))
    return model.apply(params, eps)


# Shared by sampling and evaluation: one compile per (model, n), not one per call.
_generate_jit = jax.jit(generate, static_argnums=(0, 3, 4))


class Drifting(Method):
    """The drifting method on points (MLP generator) and images (conditional generator)."""

    name = 'drifting'

    @staticmethod
    def validate(config: ml_collections.ConfigDict, task_kind: str) -> None:
        field.options_from_config(config.drift)
        t = config.train
        if task_kind == 'points':
            mlp.validate_model_config(config.model)
            check_int(t.num_pos, 'train.num_pos')
            if config.model.init != 'default':
                if config.data.name != 'bimodal':
                    raise ValueError(
                        f'model.init={config.model.init!r} is only defined for '
                        "data.name='bimodal'; use 'default'."
                    )
                data.bimodal_init(config.model.init)
            return
        g = config.guidance
        for name in _IMAGE_COUNTS:
            check_int(t[name], f'train.{name}')
        if t.batch_size != t.classes_per_step * t.gen_per_class:
            raise ValueError(
                f'train.batch_size={t.batch_size} must equal classes_per_step x '
                f'gen_per_class = {t.classes_per_step * t.gen_per_class}.'
            )
        if t.gen_per_class < 2:
            raise ValueError('train.gen_per_class must be >= 2 (samples repel each other).')
        if not g.alpha_max >= 1:
            raise ValueError(f'guidance.alpha_max must be >= 1, got {g.alpha_max}.')
        if not config.eval.alpha >= 1:
            raise ValueError(f'eval.alpha must be >= 1, got {config.eval.alpha}.')
        if config.encoder.name not in ENCODERS:
            raise ValueError(
                f'encoder.name={config.encoder.name!r} is unknown; choose one of {ENCODERS}.'
            )
        from drift_jax.methods import features

        unknown = set(config.encoder.feature_sets) - set(features.FEATURE_SET_KINDS)
        if unknown:
            raise ValueError(
                f'encoder.feature_sets has unknown {sorted(unknown)}; choose from '
                f'{features.FEATURE_SET_KINDS}.'
            )
        if config.encoder.name == 'mae' and not config.encoder.workdir:
            raise ValueError(
                "encoder.name='mae' needs encoder.workdir, the workdir of a "
                'finished configs/mae_*.py run.'
            )

    def __init__(self, config: ml_collections.ConfigDict, task: Any, mesh):
        super().__init__(config, task, mesh)
        self.drift_options = field.options_from_config(config.drift)
        if task.kind == 'points':
            self._init_points()
        else:
            self._init_images()
        floor = self.drift_options.affinity_floor
        sharded = mesh.shape['data'] > 1 and getattr(self, 'encoder', None) is None
        if floor and sharded:
            # Checked here, before any compile: the sharded field refuses a floor.
            raise ValueError(
                f"drift.affinity_floor={floor:g} needs the single-device field, but the mesh's "
                f'data axis has {mesh.shape["data"]} devices (the sharded field does not '
                'implement the floor). Use --config.mesh.data=1 --config.mesh.fsdp=-1 or '
                'drift.affinity_floor=0.'
            )

    # -- points --------------------------------------------------------------------------

    def _init_points(self) -> None:
        config = self.config
        offset, out_scale = None, config.model.out_scale
        if config.model.init != 'default':
            offset, out_scale = data.bimodal_init(config.model.init)
        model_cfg = ml_collections.ConfigDict(config.model.to_dict())
        model_cfg.out_scale = float(out_scale)
        self.model = mlp.make_generator(model_cfg, self.task.data_shape[0], out_offset=offset)
        self.noise_dim = int(config.model.noise_dim)

    def _points_loss(self, params, extra, key: jax.Array, batch) -> tuple[jax.Array, tuple]:
        """Drifting loss of one step; positives are drawn inside the step (pure JAX)."""
        del batch
        k_noise, k_data = jax.random.split(key)
        cfg = self.config.train
        y_pos = self.task.draw(k_data, cfg.num_pos)
        x = generate(
            self.model, params['generator'], k_noise, cfg.batch_size, self.noise_dim, self.mesh
        )
        loss, stats = drift_loss_on_mesh(x, y_pos, None, self.drift_options, self.mesh)
        return loss, (stats, extra)

    # -- images --------------------------------------------------------------------------

    def _init_images(self) -> None:
        from drift_jax.methods import features

        config, task = self.config, self.task
        self.image_shape = tuple(task.image_shape)
        self.num_classes = task.num_classes
        self.model = image_models.make_image_generator(
            config.model, self.image_shape, self.num_classes
        )
        self.noise_shape = tuple(self.model.noise_shape)
        self.encoder = features.load_frozen_encoder(config, self.image_shape)
        # With a frozen encoder the bank can hold the real images' features, computed once
        # when an image is pushed, instead of encoding every drawn positive and negative at
        # every step (same loss: the encoder never changes).
        self.bank_features = self.encoder is not None and bool(
            config.encoder.get('bank_features', False)
        )  # runs saved before it: images
        self.host_batch_size = int(config.train.bank_push)
        self._generate = jax.jit(self.generate_images)

    def bank_entry(self, images: jax.Array) -> Any:
        """What the bank stores for real images [B, H, W, C]: the images themselves, or
        (encoder.bank_features) their feature sets, dict name -> [B, T, D]."""
        return self.encoder.features(images) if self.bank_features else images

    def generate_images(self, params, key: jax.Array, labels: jax.Array, alpha: jax.Array):
        """Images [B, H, W, C] in [-1, 1] for labels [B] and guidance alpha [B]."""
        noise = jax.random.normal(key, (labels.shape[0], *self.noise_shape))
        return self.model.apply(params, noise, labels, alpha)

    def _images_loss(self, params, bank, key: jax.Array, batch) -> tuple[jax.Array, tuple]:
        """Class-conditional drifting with guidance: per step `classes_per_step` labels, each
        with `gen_per_class` generated samples, `pos_per_class` real ones of that class from
        the bank and `uncond_per_class` real ones of any class among the negatives with
        weight `(alpha - 1)(gen_per_class - 1) / uncond_per_class`."""
        t, g = self.config.train, self.config.guidance
        bank = memory_bank.push(bank, self.bank_entry(batch['images']), batch['labels'])
        k_lab, k_alpha, k_noise, k_pos, k_unc = jax.random.split(key, 5)
        n_c, n_gen = t.classes_per_step, t.gen_per_class
        if n_c <= self.num_classes:
            labels = jax.random.permutation(k_lab, self.num_classes)[:n_c]
        else:
            labels = jax.random.randint(k_lab, (n_c,), 0, self.num_classes)
        alpha = guidance.power_law_alpha(k_alpha, (n_c,), g.alpha_max, g.exponent)
        x = self.generate_images(
            params['generator'], k_noise, jnp.repeat(labels, n_gen), jnp.repeat(alpha, n_gen)
        )
        x = x.reshape(n_c, n_gen, *self.image_shape)
        y_pos = memory_bank.sample_pos(bank, k_pos, labels, t.pos_per_class)
        y_unc = jax.tree_util.tree_map(
            lambda a: a.reshape(n_c, t.uncond_per_class, *a.shape[1:]),
            memory_bank.sample_uncond(bank, k_unc, n_c * t.uncond_per_class),
        )
        w_unc = guidance.cfg_negative_weight(alpha, n_gen, t.uncond_per_class)  # [G]
        w_neg = jnp.concatenate(
            [jnp.ones((n_c, n_gen)), jnp.broadcast_to(w_unc[:, None], (n_c, t.uncond_per_class))],
            axis=1,
        )
        loss, stats = self.image_drift_loss(x, y_pos, y_unc, w_neg)
        stats['alpha_mean'] = jnp.mean(alpha)
        return loss, (stats, bank)

    def image_drift_loss(self, x, y_pos, y_unc, w_neg):
        """Loss of generated x [G, N, H, W, C] against positives and weighted negatives.

        y_pos [G, N+, H, W, C] and y_unc [G, Nu, H, W, C] are real images, or (with
        `bank_features`) their feature sets, dicts name -> [G, N+, T, D] and [G, Nu, T, D].
        """
        opts = self.drift_options
        if self.encoder is None:

            def flat(a):
                return a.reshape(a.shape[0], a.shape[1], -1)

            xf = flat(x)
            y_neg = jnp.concatenate([jax.lax.stop_gradient(xf), flat(y_unc)], axis=1)
            return drift_loss_on_mesh(xf, flat(y_pos), y_neg, opts, self.mesh, weights_neg=w_neg)
        return self.encoder.loss(x, y_pos, y_unc, w_neg, opts, real_are_features=self.bank_features)

    def warm_start(self, state):
        """Fills the memory bank before step 1 so no class starts empty (images)."""
        if self.task.kind != 'images':
            return state
        t, task = self.config.train, self.task
        per_class = task.data.per_class_index('train')
        rng = np.random.default_rng((t.seed, 0xBA2C))
        idx = np.concatenate(
            [rng.choice(ix, size=min(len(ix), t.bank_capacity), replace=False) for ix in per_class]
        )
        rng.shuffle(idx)
        push = jax.jit(lambda b, x, y: memory_bank.push(b, self.bank_entry(x), y))
        bank = state.extra
        for chunk in np.array_split(idx, max(1, len(idx) // 2048)):
            x, y = task.data.get('train', chunk)
            bank = push(bank, x, y)
        return state.replace(extra=bank)

    # -- the method's hooks ----------------------------------------------------------------

    def init(self, key: jax.Array) -> tuple[dict[str, Any], Any]:
        """({'generator': params}, extra): no extra state for points, the bank for images."""
        if self.task.kind == 'points':
            return {'generator': self.model.init(key, jnp.zeros((1, self.noise_dim)))}, {}
        t = self.config.train
        params = self.model.init(
            key,
            jnp.zeros((1, *self.noise_shape)),
            jnp.zeros((1,), jnp.int32),
            jnp.ones((1,), jnp.float32),
        )
        shape = self.image_shape
        if self.bank_features:
            probe = jax.ShapeDtypeStruct((1, *self.image_shape), jnp.float32)
            shape = {
                k: v.shape[1:] for k, v in jax.eval_shape(self.encoder.features, probe).items()
            }
        bank = memory_bank.init_bank(self.num_classes, t.bank_capacity, t.bank_capacity, shape)
        return {'generator': params}, bank

    def updates(self) -> tuple[Update, ...]:
        loss = self._points_loss if self.task.kind == 'points' else self._images_loss
        return (Update('generator', loss),)

    def sample(
        self,
        params: dict[str, Any],
        key: jax.Array,
        n: int,
        labels=None,
        alpha: float | None = None,
    ) -> np.ndarray:
        """n samples in training coordinates. Images: labels [n] (default: cycling over the
        classes) and guidance scale alpha >= 1 (default `eval.alpha`)."""
        gen = params['generator']
        if self.task.kind == 'points':
            if labels is not None or alpha not in (None, 1.0):
                raise ValueError('labels and alpha apply to image data only.')
            return np.asarray(_generate_jit(self.model, gen, key, n, self.noise_dim))
        from drift_jax.tasks.images import check_labels

        labels = check_labels(labels, n, self.num_classes)
        alpha = self.config.eval.alpha if alpha is None else alpha
        if not alpha >= 1:
            raise ValueError(f'alpha must be >= 1, got {alpha}.')
        out = []
        for start in range(0, n, 1000):
            lab = jnp.asarray(labels[start : start + 1000])
            x = self._generate(
                gen, jax.random.fold_in(key, start), lab, jnp.full(lab.shape, alpha, jnp.float32)
            )
            out.append(np.asarray(x))
        return np.concatenate(out)
