"""The trainer: one jitted pure train step, the loop around it, evaluation and checkpoints.

A run is a task (the data and its evaluator, `drift_jax.tasks`) and a method (what is
learned, `drift_jax.methods`). `train_and_evaluate(config, workdir)` is the whole run; the
pieces (`make_run`, `create_train_state`, `make_train_step`, `sample`, `load_run`) are
importable on their own for notebooks and benchmarks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import os
import signal
import threading
import time
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

from drift_jax import checkpointing, methods, tasks, writers
from drift_jax import mesh as mesh_lib


@flax.struct.dataclass
class TrainState:
    """Everything needed to continue a run exactly: a pytree, checkpointed whole.

    `params`, `ema_params` and `opt_state` map each network's name (e.g. 'generator', or a
    GAN's 'generator' and 'discriminator') to its parameters, their exponential moving
    average (used for samples) and its optimiser state.
    """

    step: jax.Array  # int32 []
    params: Any
    ema_params: Any
    opt_state: Any
    rng: jax.Array  # uint32 [2]; per-step keys are fold_in(rng, step)
    extra: Any = None  # method-held state, e.g. the image memory bank


@dataclasses.dataclass
class Run:
    """A validated config with its task, method, mesh and optimisers."""

    config: ml_collections.ConfigDict
    task: Any
    method: methods.Method
    mesh: jax.sharding.Mesh
    optimizers: dict[str, optax.GradientTransformation] = dataclasses.field(default_factory=dict)


# ----------------------------------------------------------------------------- config


def _positive(value, name, kind=float):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError(f'{name} must be a positive {kind.__name__}, got {value!r}.')
    if kind is int and int(value) != value:
        raise ValueError(f'{name} must be an integer, got {value!r}.')


def validate_config(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Checks every value a run depends on; raises ValueError naming value and choices.

    Runs before anything is compiled, so a typo fails in a second, not after a compile.
    `config` is a resolved config (`methods.resolve_config`).
    """
    method = methods.method_class(config.get('method', methods.DEFAULT_METHOD))
    task = tasks.task_class(config.get('task', 'toy'))
    if task.kind not in method.task_kinds:
        raise ValueError(
            f'method={method.name!r} does not train on {task.kind} data '
            f'(task={config.get("task", "toy")!r}); it takes '
            f'{method.task_kinds}.'
        )
    task.validate(config)
    method.validate(config, task.kind)
    t, e = config.train, config.eval
    mesh_lib.validate_optim(config.optim)
    for name in ('steps', 'batch_size', 'log_every', 'checkpoint_every', 'max_to_keep'):
        _positive(t[name], f'train.{name}', int)
    if not 0 <= t.ema_decay < 1:
        raise ValueError(f'train.ema_decay must be in [0, 1), got {t.ema_decay}.')
    budget = t.get('time_budget', 0.0)
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget >= 0:
        raise ValueError(f'train.time_budget must be seconds >= 0 (0: none), got {budget!r}.')
    _positive(e.every, 'eval.every', int)
    _positive(e.num_samples, 'eval.num_samples', int)
    n_data = mesh_lib.mesh_shape(config.mesh, num_devices)[0]
    if t.batch_size % n_data:
        raise ValueError(
            f'train.batch_size={t.batch_size} is not divisible by the {n_data} '
            "devices of the mesh's data axis; use a multiple of "
            f'{n_data}.'
        )


def make_run(config: ml_collections.ConfigDict) -> Run:
    """Resolves and validates `config` (before any compile), then builds task and method."""
    config = methods.resolve_config(config)
    validate_config(config)
    mesh = mesh_lib.make_mesh(config.mesh)
    task = tasks.task_class(config.get('task', 'toy'))(config)
    method = methods.method_class(config.method)(config, task, mesh)
    return Run(config, task, method, mesh)


# ----------------------------------------------------------------------------- state


def _init_fn(run: Run):
    def init(key):
        k_init, k_run = jax.random.split(key)
        params, extra = run.method.init(k_init)
        txs = _optimizers(run, tuple(params))
        opt_state = {name: txs[name].init(p) for name, p in params.items()}
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            ema_params=params,
            opt_state=opt_state,
            rng=k_run,
            extra=extra,
        )

    return init


def _optimizers(run: Run, networks: tuple[str, ...]) -> dict[str, optax.GradientTransformation]:
    if not run.optimizers:
        run.optimizers = run.method.optimizers(networks)
        missing = set(networks) - set(run.optimizers)
        if missing:
            raise ValueError(
                f'method {run.method.name!r} gives no optimiser for its networks {sorted(missing)}.'
            )
    return run.optimizers


def abstract_train_state(run: Run) -> TrainState:
    """Shapes, dtypes and shardings of the train state, without allocating it."""
    abstract = jax.eval_shape(_init_fn(run), jax.random.PRNGKey(0))
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract,
        mesh_lib.state_shardings(run.mesh, abstract),
    )


def create_train_state(run: Run, seed: int) -> TrainState:
    """Initialises the train state directly with its shardings (never whole on one device)."""
    key = jax.random.PRNGKey(seed)
    shardings = mesh_lib.state_shardings(run.mesh, jax.eval_shape(_init_fn(run), key))
    return jax.jit(_init_fn(run), out_shardings=shardings)(key)


def make_train_step(run: Run) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """Returns the jitted pure step `(state, batch) -> (state, metrics)`.

    Applies the method's updates in order, each to its own network with its own optimiser,
    then the EMA of every network. `batch` is the task's host data for the step (None for
    toy data, drawn inside the step). Per-step keys are `fold_in(state.rng, state.step)`
    (and `fold_in` of that by the update's index after the first). The state is donated and
    keeps its shardings. Metrics: 'loss' and 'grad_norm' for a single update, else
    'loss/NETWORK' and 'grad_norm/NETWORK' per update; plus the losses' stats.
    """
    updates = run.method.updates()
    ema_decay = run.config.train.ema_decay
    abstract = abstract_train_state(run)
    txs = _optimizers(run, tuple(abstract.params))
    single = len(updates) == 1

    def step_fn(state: TrainState, batch):
        key = jax.random.fold_in(state.rng, state.step)
        params, opt_state, extra = dict(state.params), dict(state.opt_state), state.extra
        out = {}
        for i, update in enumerate(updates):
            name = update.network
            k = key if i == 0 else jax.random.fold_in(key, i)

            def loss_of(p, name=name, update=update, k=k, extra=extra):
                return update.loss({**params, name: p}, extra, k, batch)

            (loss, (stats, extra)), grads = jax.value_and_grad(loss_of, has_aux=True)(params[name])
            deltas, opt_state[name] = txs[name].update(grads, opt_state[name], params[name])
            params[name] = optax.apply_updates(params[name], deltas)
            suffix = '' if single else f'/{name}'
            out.update(
                {f'loss{suffix}': loss, f'grad_norm{suffix}': optax.tree.norm(grads), **stats}
            )
        # EMA with a short ramp so early evaluations are not dominated by the random init.
        decay = jnp.minimum(ema_decay, (1.0 + state.step) / (10.0 + state.step))
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
        new_state = state.replace(
            step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state, extra=extra
        )
        return new_state, out

    shardings = jax.tree.map(lambda a: a.sharding, abstract)
    return jax.jit(step_fn, donate_argnums=(0,), out_shardings=(shardings, None))


def sample(run: Run, params: dict[str, Any], key: jax.Array, n: int, **options) -> np.ndarray:
    """n samples of the method with `params` (e.g. `state.ema_params`), in the user's
    coordinates: points [n, D], or images [n, H, W, C] in [0, 1] (`labels`, `alpha`)."""
    return run.task.to_user(run.method.sample(params, key, n, **options))


# ----------------------------------------------------------------------------- the loop


class StopRequest:
    """Turns SIGTERM (schedulers, preemption) into a request to checkpoint and stop:
    `with StopRequest() as stop:` ... `if stop.requested:` (main thread only; elsewhere it
    never changes the handler).

    A request is passed on to the handler it replaced (a Python function, e.g. the
    comparison's) when the loop ends, so a caller also learns of a signal that landed during
    the last step's evaluation; one nested in another starts with the outer one's request.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            outer = getattr(self._previous, '__self__', None)
            if isinstance(outer, StopRequest) and outer.requested:
                self.requested = True  # a request made before this one took over
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            if self.requested and callable(self._previous):
                self._previous(signal.SIGTERM, None)


def _global_batch(batch, mesh):
    """Per-process host data -> global arrays sharded over `data` (multi-process only)."""
    if batch is None or jax.process_count() == 1:
        return batch
    sharding = NamedSharding(mesh, P('data'))
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def _check_finite(step: int, values: dict[str, float], last_saved: int | None, method=None) -> None:
    """Raises FloatingPointError naming the step, the last good checkpoint and what to try
    when a loss or gradient norm is not finite, or when `method.diagnose` finds a failure."""
    watched = {k: v for k, v in values.items() if k.startswith(('loss', 'grad_norm'))}
    bad = {k: v for k, v in watched.items() if not np.isfinite(v)}
    if bad:
        raise FloatingPointError(
            f'Training diverged at step {step}: {bad}. The last good checkpoint '
            f'(step {last_saved}) is kept; lower optim.learning_rate or set optim.grad_clip.'
        )
    problem = method.diagnose(values) if method is not None else None
    if problem:
        raise FloatingPointError(
            f'Training diverged at step {step}: {problem} The last good checkpoint '
            f'(step {last_saved}) is kept.'
        )


class _TrainClock:
    """Seconds a run has spent training: those recorded with the checkpoint it resumed from,
    plus this process's time in the loop, evaluations excluded (`paused`)."""

    def __init__(self, before: float):
        self._before = before
        self._start = time.perf_counter()
        self._paused = 0.0

    def seconds(self) -> float:
        return self._before + time.perf_counter() - self._start - self._paused

    @contextlib.contextmanager
    def paused(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self._paused += time.perf_counter() - start


def _out_of_time(clock: _TrainClock, budget: float, step: int, every: int) -> bool:
    """Whether `train.time_budget` is spent. Every process takes process 0's answer; with
    several processes that costs a collective, so they ask only every `every` steps."""
    if not budget:
        return False
    if jax.process_count() == 1:
        return clock.seconds() >= budget
    if step % every:
        return False
    from jax.experimental import multihost_utils

    spent = np.asarray(clock.seconds() >= budget)
    return bool(multihost_utils.broadcast_one_to_all(spent))


def _restore(ckpt: checkpointing.Checkpointer, run: Run):
    """(state, step) from the newest readable checkpoint, or None.

    Checkpoints written before the state held several networks (one generator, its
    parameters at the top of `params`) are read into the method's single network.
    """
    abstract = abstract_train_state(run)
    legacy = None
    if len(abstract.params) == 1:
        (name,) = abstract.params
        legacy = (
            abstract.replace(
                params=abstract.params[name],
                ema_params=abstract.ema_params[name],
                opt_state=abstract.opt_state[name],
            ),
            lambda s: s.replace(
                params={name: s.params},
                ema_params={name: s.ema_params},
                opt_state={name: s.opt_state},
            ),
        )
    return ckpt.restore(abstract, legacy=legacy)


def _evaluator(run: Run, seed: int):
    """evaluate(state, step, sample_dir) -> metrics: the task's evaluator on the method's
    sampler (EMA parameters), the NFE and the sampling throughput, and the method's own
    figures.

    `samples_per_second` counts the sampler calls after the first of an evaluation (the
    first may compile); with a single call, that call.
    """
    method = run.method
    task_eval = run.task.make_evaluator(seed) if method.generative else None

    def evaluate(state: TrainState, step: int, sample_dir: str | None) -> dict[str, Any]:
        out = {}
        if task_eval is not None:
            calls = []

            def sampler(key, n, labels=None):
                start = time.perf_counter()
                x = np.asarray(method.sample(state.ema_params, key, n, labels=labels))
                calls.append((n, time.perf_counter() - start))
                return x

            out.update(task_eval(sampler, step, sample_dir))
            timed = calls[1:] or calls
            seconds = sum(s for _, s in timed)
            out['nfe'] = method.nfe()
            if seconds > 0:
                out['samples_per_second'] = sum(n for n, _ in timed) / seconds
        out.update(method.evaluate(state.ema_params, step))
        return out

    return evaluate


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (or resumes) the run described by `config` in `workdir`.

    Writes `<workdir>/config.json`, `checkpoints/`, `metrics.jsonl`, TensorBoard events,
    `samples/` and `train_seconds.json` (training seconds at each checkpoint). Re-running
    with the same workdir continues from the newest checkpoint.

    With `train.time_budget` > 0 the loop stops at the first step after that many seconds of
    training (evaluations excluded, earlier processes of the run included), saves a
    checkpoint and evaluates; a resumed run gets what is left of the budget, and one whose
    budget is spent only evaluates again.

    Returns:
      The final evaluation metrics (points: 'step', 'energy_distance', 'energy_floor',
      'energy_ratio', 'nfe'; images: FD, its floor, precision, recall, class accuracy).
    """
    run = make_run(config)  # validates everything before any compile
    config = run.config
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    writers.check_writable(workdir)
    changed = writers.config_changes(config, workdir)
    if changed and is_main:
        # Resuming with other settings is allowed (e.g. more steps) but never silent.
        logging.warning('Config differs from the run saved in %s: %s', workdir, changed)
        print(
            f'drift_jax: WARNING: config differs from the saved run in {workdir}: '
            + '; '.join(changed),
            flush=True,
        )
    if is_main:
        writers.save_config(config, workdir)
    total = int(config.train.steps)

    ckpt = checkpointing.Checkpointer(
        os.path.join(workdir, 'checkpoints'), max_to_keep=config.train.max_to_keep
    )
    restored = _restore(ckpt, run)
    if restored is not None:
        state, start = restored
        logging.info('Resumed from step %d in %s', start, workdir)
        if is_main:
            print(f'drift_jax: resumed from step {start} of {total}', flush=True)
    else:
        state, start = create_train_state(run, config.train.seed), 0
        state = run.method.warm_start(state)  # e.g. fill the memory bank before step 1
    last_saved = start if restored is not None else None
    writer = writers.MetricWriter(workdir, enabled=is_main, resume_step=start)
    sample_dir = os.path.join(workdir, 'samples')
    train_step = make_train_step(run)
    evaluator = _evaluator(run, config.train.seed)
    host_n = run.method.host_batch_size
    last_eval: dict[str, Any] = {}
    progress = writers.progress_bar(total, start, enabled=is_main)

    def run_eval(step: int) -> dict[str, Any]:
        values = {'step': step, **evaluator(state, step, sample_dir if is_main else None)}
        writer.write(step, values)
        return values

    pending = None  # (step, device metrics) not yet fetched

    def drain():
        nonlocal pending
        if pending is None:
            return
        step, m = pending
        pending = None
        values = {k: float(v) for k, v in jax.device_get(m).items()}
        _check_finite(step, values, last_saved, run.method)
        if step % config.train.log_every == 0 or step == total or out_of_time:
            writer.write(step, {'step': step, **values})
        shown = {k: f'{v:.4g}' for k, v in values.items() if k.startswith('loss')}
        for key in ('energy_ratio', 'fd_ratio', 'class_accuracy'):
            if key in last_eval:
                shown[key] = f'{last_eval[key]:.3g}'
        progress.set_postfix(shown, refresh=False)

    budget = float(config.train.get('time_budget', 0.0))
    before = writers.read_train_seconds(workdir, start) if restored is not None else None
    clock = _TrainClock(before or 0.0)  # from here on: compiles count, evaluations do not
    spent = budget > 0 and (before or 0.0) >= budget  # resumed after its budget ran out
    stopping = out_of_time = False
    try:
        with StopRequest() as stop:
            for step in range(start + 1, (start if spent else total) + 1):
                batch = _global_batch(run.task.host_batch(step, host_n), run.mesh)
                state, m = train_step(state, batch)
                drain()  # fetch step-1 while step runs
                pending = (step, m)
                progress.update(1)
                out_of_time = step < total and _out_of_time(
                    clock, budget, step, config.train.log_every
                )
                final = step == total or out_of_time
                stopping = stop.requested  # read once: a signal may land any time
                do_save = final or stopping or step % config.train.checkpoint_every == 0
                do_eval = final or step % config.eval.every == 0
                if do_save or do_eval:
                    drain()  # checks finiteness before saving
                if do_save:
                    ckpt.save(step, state, force=True)
                    last_saved = step
                    if is_main:
                        writers.save_train_seconds(workdir, step, clock.seconds())
                if do_eval:
                    with clock.paused():
                        last_eval = run_eval(step)
                if stopping:
                    logging.warning('SIGTERM: saved a checkpoint at step %d; stopping.', step)
                    break
                if out_of_time:
                    if is_main:
                        print(
                            f'drift_jax: time budget of {budget:g} s spent at step {step} '
                            f'of {total}; stopped',
                            flush=True,
                        )
                    break
            drain()
            if (start >= total or spent) and not last_eval:
                last_eval = run_eval(min(start, total))  # already finished: report again
    finally:
        progress.close()
        ckpt.close()  # waits for in-flight async saves
        writer.close()
    if is_main and not stopping:
        writers.finish_samples(sample_dir, workdir)
    return last_eval


def load_run(workdir: str) -> tuple[Run, TrainState, int]:
    """Rebuilds the run from `<workdir>/config.json` and restores the newest checkpoint."""
    path = os.path.join(workdir, 'config.json')
    if not os.path.exists(path):
        raise FileNotFoundError(f'{path} does not exist: is {workdir!r} a drift_jax workdir?')
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    run = make_run(config)
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'), use_async=False)
    try:
        restored = _restore(ckpt, run)
    finally:
        ckpt.close()
    if restored is None:
        raise FileNotFoundError(f'No checkpoint in {workdir}/checkpoints yet.')
    state, step = restored
    return run, state, step


def sample_workdir(
    workdir: str,
    num: int,
    seed: int = 0,
    labels=None,
    alpha: float | None = None,
    steps: int = 0,
) -> np.ndarray:
    """num samples from the newest checkpoint's EMA parameters (`steps`: sampling steps of
    a multi-step method, 0 for its default).

    Returns [num, D] points in data coordinates, or [num, H, W, C] images in [0, 1].
    """
    if num <= 0:
        raise ValueError(f'--num must be positive, got {num}.')
    run, state, _ = load_run(workdir)
    key = jax.random.PRNGKey(seed)
    options = {}
    if steps:
        if 'steps' not in inspect.signature(run.method.sample).parameters:
            raise ValueError(
                f'--steps applies to multi-step methods; this workdir holds a '
                f'{run.method.name!r} run.'
            )
        options['steps'] = steps
    if run.task.kind == 'images':
        return sample(
            run,
            state.ema_params,
            key,
            num,
            labels=labels,
            alpha=1.0 if alpha is None else alpha,
            **options,
        )
    if labels is not None or alpha not in (None, 1.0):
        raise ValueError('--labels and --alpha apply to image workdirs only.')
    return sample(run, state.ema_params, key, num, **options)
