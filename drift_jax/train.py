"""Training: one jitted pure train step, the loop around it, evaluation and checkpoints.

`train_and_evaluate(config, workdir)` is the whole run; the pieces (`create_train_state`,
`make_train_step`, `sample`) are importable on their own for notebooks and benchmarks.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from drift_jax import checkpointing, data, field, writers
from drift_jax.eval import points as metrics
from drift_jax.models.mlp import mlp as models

SCHEDULES = ('cosine', 'constant')
# config.task -> 'module:Class' of the task ('' = this module). Tasks import lazily.
TASKS = {'toy': ':ToyTask', 'image': 'drift_jax.tasks.images:ImageTask',
         'mae': 'drift_jax.tasks.images:MAETask'}


@flax.struct.dataclass
class TrainState:
    """Everything needed to continue a run exactly: a pytree, checkpointed whole."""

    step: jax.Array          # int32 []
    params: Any
    ema_params: Any          # exponential moving average of params; used for samples
    opt_state: Any
    rng: jax.Array           # uint32 [2]; per-step keys are fold_in(rng, step)
    extra: Any = None        # task-held state, e.g. the image memory bank


# ----------------------------------------------------------------------------- config


def _positive(value, name, kind=float):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError(f'{name} must be a positive {kind.__name__}, got {value!r}.')
    if kind is int and int(value) != value:
        raise ValueError(f'{name} must be an integer, got {value!r}.')


def validate_config(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Checks every value a run depends on; raises ValueError naming value and choices.

    Runs before anything is compiled, so a typo fails in a second, not after a compile.
    """
    task = config.get('task', 'toy')
    if task not in TASKS:
        raise ValueError(f'task={task!r} is unknown; choose one of {tuple(TASKS)}.')
    _task_class(task).validate(config)
    o, t, e = config.optim, config.train, config.eval
    _positive(o.learning_rate, 'optim.learning_rate')
    if o.schedule not in SCHEDULES:
        raise ValueError(f'optim.schedule={o.schedule!r} is unknown; choose one of {SCHEDULES}.')
    if o.warmup_steps < 0 or o.grad_clip < 0 or o.weight_decay < 0:
        raise ValueError('optim.warmup_steps, optim.grad_clip and optim.weight_decay must be '
                         f'>= 0, got {o.warmup_steps}, {o.grad_clip}, {o.weight_decay}.')
    if not 0 <= o.final_lr_fraction <= 1:
        raise ValueError(f'optim.final_lr_fraction must be in [0, 1], got {o.final_lr_fraction}.')
    for name in ('steps', 'batch_size', 'log_every', 'checkpoint_every', 'max_to_keep'):
        _positive(t[name], f'train.{name}', int)
    if not 0 <= t.ema_decay < 1:
        raise ValueError(f'train.ema_decay must be in [0, 1), got {t.ema_decay}.')
    _positive(e.every, 'eval.every', int)
    _positive(e.num_samples, 'eval.num_samples', int)
    if 'draws' in e:
        _positive(e.draws, 'eval.draws', int)
    n_data = mesh_shape(config.mesh, num_devices)[0]
    if t.batch_size % n_data:
        raise ValueError(f'train.batch_size={t.batch_size} is not divisible by the {n_data} '
                         "devices of the mesh's data axis; use a multiple of "
                         f'{n_data}.')


def mesh_shape(mesh_config, num_devices: int | None = None) -> tuple[int, int]:
    """(data, fsdp) sizes from `config.mesh`; -1 takes the remaining devices."""
    n = jax.device_count() if num_devices is None else num_devices
    d, f = int(mesh_config.data), int(mesh_config.fsdp)
    if f == -1 and d == -1:
        raise ValueError('Only one of mesh.data and mesh.fsdp may be -1.')
    if d == -1:
        d = n // f if f > 0 and n % f == 0 else 0
    if f == -1:
        f = n // d if d > 0 and n % d == 0 else 0
    if d <= 0 or f <= 0 or d * f != n:
        raise ValueError(f'mesh data={mesh_config.data} x fsdp={mesh_config.fsdp} does not '
                         f'match the {n} available devices; their product must be {n} '
                         '(use -1 for "the rest").')
    return d, f


def make_mesh(mesh_config) -> jax.sharding.Mesh:
    """A ('data', 'fsdp') mesh over all devices, GSPMD-style (Auto) axes."""
    shape = mesh_shape(mesh_config)
    auto = jax.sharding.AxisType.Auto
    return jax.make_mesh(shape, ('data', 'fsdp'), axis_types=(auto, auto))


# ----------------------------------------------------------------------------- pieces


def make_optimizer(optim_config, total_steps: int) -> optax.GradientTransformation:
    """AdamW with linear warmup, cosine (or constant) decay and global-norm clipping."""
    o = optim_config
    warmup = int(min(o.warmup_steps, max(total_steps - 1, 0)))
    if o.schedule == 'cosine':
        schedule = optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup else o.learning_rate, peak_value=o.learning_rate,
            warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1),
            end_value=o.learning_rate * o.final_lr_fraction)
    else:
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, o.learning_rate, max(warmup, 1)),
             optax.constant_schedule(o.learning_rate)], [max(warmup, 1)])
    parts = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip else []
    parts.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay))
    return optax.chain(*parts)


class ToyTask:
    """Low-dimensional data (2-D toys, a user's point cloud) with an MLP generator.

    A task is what the one train loop is parameterised by: how to initialise parameters,
    the pure loss of one step, how to evaluate and how to sample.
    """

    @staticmethod
    def validate(config: ml_collections.ConfigDict) -> None:
        """Toy-specific checks (data, model, drift options, positives per step)."""
        data.validate_data_config(config.data)
        models.validate_model_config(config.model)
        field.options_from_config(config.drift)
        _positive(config.train.num_pos, 'train.num_pos', int)
        if config.model.init != 'default':
            if config.data.name != 'bimodal':
                raise ValueError(f'model.init={config.model.init!r} is only defined for '
                                 "data.name='bimodal'; use 'default'.")
            data.bimodal_init(config.model.init)

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.dataset = data.make_dataset(config.data)
        offset = None
        out_scale = config.model.out_scale
        if config.model.init != 'default':
            offset, out_scale = data.bimodal_init(config.model.init)
        model_cfg = ml_collections.ConfigDict(config.model.to_dict())
        model_cfg.out_scale = float(out_scale)
        self.model = models.make_generator(model_cfg, self.dataset.dim, out_offset=offset)
        self.noise_dim = int(config.model.noise_dim)
        self.drift_options = field.options_from_config(config.drift)
        self.mesh = make_mesh(config.mesh)
        self.tx = make_optimizer(config.optim, config.train.steps)

    def init(self, key: jax.Array) -> tuple[Any, Any]:
        """(params, extra): generator parameters and task-held state (none for toys)."""
        return self.model.init(key, jnp.zeros((1, self.noise_dim))), {}

    def loss(self, params, extra, key: jax.Array, batch) -> tuple[jax.Array, tuple]:
        """Drifting loss of one step; positives are drawn inside the step (pure JAX)."""
        del batch
        k_noise, k_data = jax.random.split(key)
        cfg = self.config.train
        y_pos = self.dataset.sample(k_data, cfg.num_pos)
        x = generate(self.model, params, k_noise, cfg.batch_size, self.noise_dim, self.mesh)
        loss, stats = drift_loss_on_mesh(x, y_pos, None, self.drift_options, self.mesh)
        return loss, (stats, extra)

    def host_batch(self, step: int):
        """Host-side data for `step` (None: toy data are sampled inside the step)."""
        del step

    def make_evaluator(self, seed: int) -> ToyEvaluator:
        return ToyEvaluator(self, seed)

    def sample(self, params, key: jax.Array, n: int) -> np.ndarray:
        """n samples [n, D] from the generator with `params`, in the user's coordinates."""
        x = _generate_jit(self.model, params, key, n, self.noise_dim)
        return np.asarray(self.dataset.to_data_space(np.asarray(x)))


def drift_loss_on_mesh(x, y_pos, y_neg, opts, mesh, **weights):
    """`field.drift_loss`, sharded over the mesh's `data` axis when it has several devices.

    The sharded form splits the queries over devices, gathers the targets and combines the
    query-side normalisation across devices; it equals the single-device loss.
    """
    if mesh.shape['data'] > 1:
        from drift_jax.field import sharded
        return sharded.sharded_drift_loss(x, y_pos, y_neg, opts, mesh, **weights)
    return field.drift_loss(x, y_pos, y_neg, opts, **weights)


def _task_class(name: str):
    module, _, cls = TASKS[name].partition(':')
    return globals()[cls] if not module else getattr(importlib.import_module(module), cls)


def make_task(config: ml_collections.ConfigDict):
    """Validates `config` (before any compile) and builds its task (`config.task`)."""
    validate_config(config)
    return _task_class(config.get('task', 'toy'))(config)


def _init_fn(task):
    def init(key):
        k_init, k_run = jax.random.split(key)
        params, extra = task.init(k_init)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                          opt_state=task.tx.init(params), rng=k_run, extra=extra)
    return init


def abstract_train_state(setup) -> TrainState:
    """Shapes, dtypes and shardings of the train state, without allocating it."""
    abstract = jax.eval_shape(_init_fn(setup), jax.random.PRNGKey(0))
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, state_shardings(setup.mesh, abstract))


def create_train_state(setup, seed: int) -> TrainState:
    """Initialises the train state directly with its shardings (never whole on one device)."""
    key = jax.random.PRNGKey(seed)
    shardings = state_shardings(setup.mesh, jax.eval_shape(_init_fn(setup), key))
    return jax.jit(_init_fn(setup), out_shardings=shardings)(key)


def state_shardings(mesh, abstract_state):
    """Shardings of the train state.

    Matrices whose first dimension divides by the mesh's `fsdp` size are split along it
    (parameters, EMA and optimiser moments alike); everything else is replicated.
    """
    fsdp = mesh.shape['fsdp']

    def rule(x):
        if fsdp > 1 and x.ndim >= 2 and x.shape[0] % fsdp == 0:
            return NamedSharding(mesh, P('fsdp'))
        return NamedSharding(mesh, P())

    return jax.tree.map(rule, abstract_state)


def generate(model, params, key: jax.Array, n: int, noise_dim: int, mesh=None) -> jax.Array:
    """Draws n samples [n, D] in training coordinates (noise sharded over `data`)."""
    eps = jax.random.normal(key, (n, noise_dim))
    if mesh is not None and n % mesh.shape['data'] == 0:
        eps = jax.lax.with_sharding_constraint(eps, NamedSharding(mesh, P('data')))
    return model.apply(params, eps)


# Shared by sampling and evaluation: one compile per (model, n), not one per call.
_generate_jit = jax.jit(generate, static_argnums=(0, 3, 4))


def make_train_step(task) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """Returns the jitted pure step `(state, batch) -> (state, metrics)`.

    `batch` is the task's host data for the step (None for toy data, which are sampled
    inside the step). Per-step keys are `fold_in(state.rng, state.step)`. The state is
    donated and keeps its shardings.
    """
    tx, ema_decay = task.tx, task.config.train.ema_decay

    def step_fn(state: TrainState, batch):
        key = jax.random.fold_in(state.rng, state.step)
        grad_fn = jax.value_and_grad(task.loss, has_aux=True)
        (loss, (stats, extra)), grads = grad_fn(state.params, state.extra, key, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # EMA with a short ramp so early evaluations are not dominated by the random init.
        decay = jnp.minimum(ema_decay, (1.0 + state.step) / (10.0 + state.step))
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
        new_state = state.replace(step=state.step + 1, params=params, ema_params=ema,
                                  opt_state=opt_state, extra=extra)
        out = {'loss': loss, 'grad_norm': optax.tree.norm(grads), **stats}
        return new_state, out

    shardings = jax.tree.map(lambda a: a.sharding, abstract_train_state(task))
    return jax.jit(step_fn, donate_argnums=(0,), out_shardings=(shardings, None))


def sample(task, params, key: jax.Array, n: int, **kwargs) -> np.ndarray:
    """n samples from the generator with `params`, in the user's data coordinates."""
    return task.sample(params, key, n, **kwargs)


# ----------------------------------------------------------------------------- evaluation


class ToyEvaluator:
    """Energy distance of EMA samples against held-out data, next to its noise floor.

    Fixed keys, so figures from different steps are comparable. `energy_distance` is the
    mean over `eval.draws` pairs (generated draw k, held-out data draw k) of the V-statistic
    between `eval.num_samples` points each; `energy_floor` is the expected value of that
    same statistic between two independent data draws of that size
    (`metrics.expected_energy_floor`, from min(10000, max(2000, 2n)) further held-out
    points). A single pair of data draws scatters too widely to divide by (for 25
    Gaussians, 0.4x to 3x of its expectation), and so does a single generated draw, so both
    sides are averaged; a generator that samples the data distribution scores ~1.
    """

    def __init__(self, task: ToyTask, seed: int):
        self.task = task
        cfg = task.config.eval
        n, draws = cfg.num_samples, cfg.get('draws', 1)
        base = jax.random.fold_in(jax.random.PRNGKey(seed), 0x5EED)
        k_gen, k_ref, k_floor = jax.random.split(base, 3)
        self.gen_keys = list(jax.random.split(k_gen, draws))
        ds = task.dataset
        self.references = [np.asarray(ds.sample(k, n, split='eval'))
                           for k in jax.random.split(k_ref, draws)]
        self.reference = self.references[0]
        pool = np.asarray(ds.sample(k_floor, min(10000, max(2000, 2 * n)), split='eval'))
        self.floor = metrics.expected_energy_floor(pool, n, n)

    def score(self, generated: list[np.ndarray]) -> dict[str, float]:
        """ED (mean over draws), floor and ratio of generated draws [eval.draws][n, D]."""
        if len(generated) != len(self.references):
            raise ValueError(f'Expected {len(self.references)} generated draws, got '
                             f'{len(generated)}.')
        ed = float(np.mean([metrics.energy_distance(g, r, unbiased=False)
                            for g, r in zip(generated, self.references, strict=True)]))
        return {'energy_distance': ed, 'energy_floor': self.floor,
                'energy_ratio': ed / max(self.floor, 1e-12)}

    def __call__(self, state: TrainState, step: int, sample_dir: str | None = None
                 ) -> dict[str, float]:
        """Metrics of the EMA generator; also plots samples over data into `sample_dir`."""
        cfg = self.task.config
        draws = [np.asarray(_generate_jit(self.task.model, state.ema_params, k,
                                          cfg.eval.num_samples, self.task.noise_dim))
                 for k in self.gen_keys]
        if not all(np.all(np.isfinite(g)) for g in draws):
            raise FloatingPointError(f'The EMA generator produced NaN/inf samples at step '
                                     f'{step}.')
        gen = draws[0]
        out = self.score(draws)
        if cfg.data.name == 'bimodal':
            f0, f1 = data.bimodal_mode_fractions(gen)
            out.update(mode_fraction_0=float(f0), mode_fraction_1=float(f1))
        if sample_dir is not None:
            from drift_jax import plotting
            k, to_data = cfg.eval.plot_points, self.task.dataset.to_data_space
            plotting.plot_samples(
                os.path.join(sample_dir, f'step_{step:07d}.png'), to_data(gen[:k]),
                to_data(self.reference[:k]),
                title=f'{cfg.data.name}, step {step}, ED/floor {out["energy_ratio"]:.2f}')
        return out


# ----------------------------------------------------------------------------- the loop


class _StopRequest:
    """Turns SIGTERM (schedulers, preemption) into a request to checkpoint and stop."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _global_batch(batch, mesh):
    """Per-process host data -> global arrays sharded over `data` (multi-process only)."""
    if batch is None or jax.process_count() == 1:
        return batch
    sharding = NamedSharding(mesh, P('data'))
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def _check_finite(step: int, values: dict[str, float], last_saved: int | None) -> None:
    bad = {k: v for k, v in values.items() if not np.isfinite(v)}
    if bad:
        raise FloatingPointError(
            f'Training diverged at step {step}: {bad}. The last good checkpoint '
            f'(step {last_saved}) is kept; lower optim.learning_rate or set optim.grad_clip.')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (or resumes) the run described by `config` in `workdir`.

    Writes `<workdir>/config.json`, `checkpoints/`, `metrics.jsonl`, TensorBoard events and
    `samples/`. Re-running with the same workdir continues from the newest checkpoint.

    Returns:
      The final evaluation metrics (dict with 'step', 'energy_distance', 'energy_floor',
      'energy_ratio').
    """
    setup = make_task(config)                  # validates everything before any compile
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    writers.check_writable(workdir)
    changed = writers.config_changes(config, workdir)
    if changed and is_main:
        # Resuming with other settings is allowed (e.g. more steps) but never silent.
        logging.warning('Config differs from the run saved in %s: %s', workdir, changed)
        print(f'drift_jax: WARNING: config differs from the saved run in {workdir}: '
              + '; '.join(changed), flush=True)
    if is_main:
        writers.save_config(config, workdir)
    total = int(config.train.steps)

    ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                      max_to_keep=config.train.max_to_keep)
    restored = ckpt.restore(abstract_train_state(setup))
    if restored is not None:
        state, start = restored
        logging.info('Resumed from step %d in %s', start, workdir)
        if is_main:
            print(f'drift_jax: resumed from step {start} of {total}', flush=True)
    else:
        state, start = create_train_state(setup, config.train.seed), 0
        if hasattr(setup, 'warm_start'):
            state = setup.warm_start(state)   # e.g. fill the memory bank before step 1
    last_saved = start if restored is not None else None
    writer = writers.MetricWriter(workdir, enabled=is_main, resume_step=start)
    sample_dir = os.path.join(workdir, 'samples')
    train_step = make_train_step(setup)
    evaluator = setup.make_evaluator(config.train.seed)
    last_eval: dict[str, Any] = {}
    progress = writers.progress_bar(total, start, enabled=is_main)

    def run_eval(step: int) -> dict[str, Any]:
        values = {'step': step, **evaluator(state, step, sample_dir if is_main else None)}
        writer.write(step, values)
        return values

    pending = None                                  # (step, device metrics) not yet fetched

    def drain():
        nonlocal pending
        if pending is None:
            return
        step, m = pending
        pending = None
        values = {k: float(v) for k, v in jax.device_get(m).items()}
        _check_finite(step, {'loss': values['loss'], 'grad_norm': values['grad_norm']},
                      last_saved)
        if step % config.train.log_every == 0 or step == total:
            writer.write(step, {'step': step, **values})
        shown = {'loss': f'{values["loss"]:.4g}'}
        for key in ('energy_ratio', 'fd_ratio', 'class_accuracy'):
            if key in last_eval:
                shown[key] = f'{last_eval[key]:.3g}'
        progress.set_postfix(shown, refresh=False)

    stopping = False
    try:
        with _StopRequest() as stop:
            for step in range(start + 1, total + 1):
                state, m = train_step(state, _global_batch(setup.host_batch(step), setup.mesh))
                drain()                            # fetch step-1 while step runs
                pending = (step, m)
                progress.update(1)
                final = step == total
                stopping = stop.requested          # read once: a signal may land any time
                do_save = final or stopping or step % config.train.checkpoint_every == 0
                do_eval = final or step % config.eval.every == 0
                if do_save or do_eval:
                    drain()                        # checks finiteness before saving
                if do_save:
                    ckpt.save(step, state, force=True)
                    last_saved = step
                if do_eval:
                    last_eval = run_eval(step)
                if stopping:
                    logging.warning('SIGTERM: saved a checkpoint at step %d; stopping.', step)
                    break
            drain()
            if start >= total and not last_eval:
                last_eval = run_eval(total)         # already finished: report again
    finally:
        progress.close()
        ckpt.close()                                 # waits for in-flight async saves
        writer.close()
    if is_main and not stopping:
        writers.finish_samples(sample_dir)
    return last_eval


def load_run(workdir: str) -> tuple[Any, TrainState, int]:
    """Rebuilds the setup from `<workdir>/config.json` and restores the newest checkpoint."""
    path = os.path.join(workdir, 'config.json')
    if not os.path.exists(path):
        raise FileNotFoundError(f'{path} does not exist: is {workdir!r} a drift_jax workdir?')
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    setup = make_task(config)
    abstract = abstract_train_state(setup)
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'), use_async=False)
    try:
        restored = ckpt.restore(abstract)
    finally:
        ckpt.close()
    if restored is None:
        raise FileNotFoundError(f'No checkpoint in {workdir}/checkpoints yet.')
    state, step = restored
    return setup, state, step
