"""What the comparison (`comparison.compare`) measures of one trained run.

`score_sampler`: the task's evaluation of a sampler at chosen options (e.g. `steps=S`).
`samples_per_second`: the default sampler's throughput at one batch size. `count_parameters`:
the networks that sample. `time_curve`: a run's evaluations against its training seconds.
These are re-exported by `drift_jax.comparison`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from drift_jax import train, writers

#: Networks that only train the sampler (not counted in `params`).
TRAINING_ONLY_NETWORKS: tuple[str, ...] = ('discriminator',)


def score_sampler(
    run: train.Run, params: dict[str, Any], step: int = 0, evaluator=None, **options
) -> dict[str, float]:
    """The task's evaluation of `run.method.sample(params, ..., **options)` (e.g. `steps=S`):
    the figures the trainer logs (points: 'energy_ratio', images: 'fd_ratio', ...), plus
    'sample_seconds', the time spent in the sampler.

    `evaluator`: `run.task.make_evaluator(seed)`, reused between calls (default: a new one
    with the run's seed, the same draws and floor as the run's own evaluations).
    """
    evaluator = evaluator or run.task.make_evaluator(run.config.train.seed)
    seconds = []

    def sampler(key, n, labels=None):
        start = time.perf_counter()
        x = np.asarray(run.method.sample(params, key, n, labels=labels, **options))
        seconds.append(time.perf_counter() - start)
        return x

    out = dict(evaluator(sampler, step, None))
    out['sample_seconds'] = float(sum(seconds))
    return out


def throughput_problem(
    batch: int,
    repeats: int,
    max_seconds: float | None,
    names: tuple[str, str, str] = ('batch', 'repeats', 'max_seconds'),
) -> str | None:
    """What is wrong with `samples_per_second`'s settings (one sentence naming them by
    `names`: the comparison passes its own argument names), or None when they are usable."""
    if batch < 1 or repeats < 1:
        return f'{names[0]} and {names[1]} must be >= 1, got {batch} and {repeats}.'
    if max_seconds is not None and not max_seconds > 0:
        return f'{names[2]} must be > 0 or None, got {max_seconds}.'
    return None


def samples_per_second(
    run: train.Run,
    params: dict[str, Any],
    batch: int,
    repeats: int = 3,
    seed: int = 0,
    max_seconds: float | None = None,
) -> float:
    """Samples per second of the method's default sampler drawing `batch` samples per call:
    one warm-up call (it compiles), then up to `repeats` timed calls.

    `max_seconds`: the timed calls stop once this many seconds have passed (at least one call
    is timed), so a slow sampler (1000 network evaluations per sample on a CPU) costs one call
    rather than `repeats`. None: always `repeats` calls.
    """
    problem = throughput_problem(batch, repeats, max_seconds)
    if problem:
        raise ValueError(problem)
    key = jax.random.PRNGKey(seed)
    np.asarray(run.method.sample(params, key, batch))
    calls = 0
    start = time.perf_counter()
    while calls < repeats:
        np.asarray(run.method.sample(params, jax.random.fold_in(key, calls + 1), batch))
        calls += 1
        if max_seconds is not None and time.perf_counter() - start >= max_seconds:
            break
    return batch * calls / (time.perf_counter() - start)


def count_parameters(params: Mapping[str, Any]) -> tuple[int, tuple[str, ...]]:
    """(parameter count, names) of the networks in `params` (network name -> pytree) that
    sample: all but `TRAINING_ONLY_NETWORKS` (a GAN's discriminator)."""
    names = tuple(n for n in params if n not in TRAINING_ONLY_NETWORKS)
    count = sum(int(np.prod(x.shape)) for n in names for x in jax.tree.leaves(params[n]))
    return count, names


def numbers(d: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of a metrics record (booleans and 'wall_time' left out)."""
    return {
        k: v
        for k, v in d.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != 'wall_time'
    }


def time_curve(workdir: str, ratio_key: str) -> dict[str, list[float]]:
    """{'seconds': [k], 'ratio': [k]}: the run's evaluations in `metrics.jsonl` against its
    training seconds at their steps.

    Training seconds are those the trainer records at each checkpoint
    (`train_seconds.json`: compiles count, evaluations and pauses between a stop and a
    resume do not), interpolated linearly between checkpoints, so a method is not charged for
    how long its own evaluations sample and the last point sits at the table's
    `train_seconds`. A run without that record falls back to wall-clock seconds since its
    first logged metrics.
    """
    has_metrics = os.path.exists(os.path.join(workdir, 'metrics.jsonl'))
    events = writers.read_metrics(workdir) if has_metrics else []
    rows = [e for e in events if isinstance(e.get(ratio_key), (int, float))]
    if not rows:
        return {'seconds': [], 'ratio': []}
    record = writers.train_seconds_record(workdir)
    if record:
        steps = [0, *record]
        seconds = [0.0, *record.values()]
        xs = [float(np.interp(e['step'], steps, seconds)) for e in rows]
    else:
        t0 = events[0]['wall_time']
        xs = [e['wall_time'] - t0 for e in rows]
    return {
        'seconds': [round(x, 3) for x in xs],
        'ratio': [float(e[ratio_key]) for e in rows],
    }
