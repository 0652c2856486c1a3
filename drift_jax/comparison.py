"""One comparison of every generative method on a suite of datasets (docs/compare.md).

`compare(out, suite='toy')` trains each method on each dataset with its config's tuned
settings (runs in `<out>/runs/<data>_<method>`, resumed or skipped when re-run), scores all
of them with the task's evaluator, measures sampling throughput on one batch size and
device (`comparison_measures`), and writes `results.json`, `table.md`, `table.csv` and the figures
(`comparison_report`). `python -m drift_jax.compare` is the command-line front door.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from drift_jax import comparison_report as report
from drift_jax import methods as methods_lib
from drift_jax import tasks, train, writers
from drift_jax.comparison_measures import (  # noqa: F401 (re-exported)
    TRAINING_ONLY_NETWORKS,
    count_parameters,
    numbers,
    samples_per_second,
    score_sampler,
    throughput_problem,
    time_curve,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS_DIR = os.path.join(ROOT, 'configs')

#: Methods that do not sample the data distribution, and why (never compared).
NOT_COMPARED: dict[str, str] = {
    'complete': 'it fills in hidden rows of a given image',
    'mae': 'it trains a feature encoder and has no sampler',
}
COMPARED: tuple[str, ...] = tuple(m for m in methods_lib.METHODS if m not in NOT_COMPARED)
RATIO_KEYS = {'points': 'energy_ratio', 'images': 'fd_ratio'}
CACHE_FILE = 'comparison.json'  # a run's cached row, in its workdir
SAMPLES_FILE = report.SAMPLES_FILE


class ComparisonError(ValueError):
    """A refused argument (unknown method or data, missing file or dataset, bad override)."""


class ComparisonStopped(RuntimeError):
    """SIGTERM stopped the comparison: an interrupted run kept its checkpoint, finished runs
    their rows; the same call again continues where it stopped."""


@dataclasses.dataclass(frozen=True)
class Suite:
    """The datasets of a suite (config file names in `configs/`) and its default sweeps.

    `sampling_steps[method]`: the `steps` values of that method's sampler scored for quality
    against NFE (ddpm: DDIM steps; ncsn: Langevin steps per noise level). `ddgan_steps`: the
    T of the extra denoising diffusion GAN runs (T is fixed at training).
    """

    data: tuple[str, ...]
    sampling_steps: Mapping[str, tuple[int, ...]]
    ddgan_steps: tuple[int, ...] = ()


TOY_DATA = (
    'spiral',
    'checkerboard',
    'swiss_roll',
    'moons',
    'eight_gaussians',
    'twenty_five_gaussians',
    'rings',
)
_TOY_SWEEPS = {'ddpm': (10, 20, 50, 100, 1000), 'ncsn': (1, 3, 10, 30, 100)}
_IMAGE_SWEEPS = {'ddpm': (10, 20, 50, 100), 'ncsn': (1, 5, 20)}
SUITES: dict[str, Suite] = {
    'toy': Suite(TOY_DATA, _TOY_SWEEPS, ddgan_steps=(1, 2, 4, 8)),
    'digits': Suite(('digits',), _IMAGE_SWEEPS),
    'mnist': Suite(('mnist',), _IMAGE_SWEEPS),
}


@dataclasses.dataclass
class RunSpec:
    """One training run of the comparison.

    Attributes:
      name: its workdir under `<out>/runs`: '<data>_<method>', or '<data>_ddgan_T<T>' for
        the extra denoising diffusion GAN runs.
      method, data: the method and the dataset (a config name, or 'points').
      config: the resolved config with the overrides applied.
      main: False for the extra runs, which only add points to quality against NFE.
    """

    name: str
    method: str
    data: str
    config: ml_collections.ConfigDict
    main: bool = True


# ----------------------------------------------------------------------------- configs


def load_config(name: str, configs_dir: str | None = None) -> ml_collections.ConfigDict:
    """`get_config()` of `<configs_dir>/<name>.py` (default: the checkout's `configs/`)."""
    path = os.path.join(configs_dir or CONFIGS_DIR, f'{name}.py')
    if not os.path.exists(path):
        raise ComparisonError(f'config {name!r} does not exist ({path}).')
    spec = importlib.util.spec_from_file_location(f'drift_jax_config_{name}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def parse_override(text: str) -> tuple[str | None, str, Any]:
    """'[METHOD:]dotted.name=value' -> (METHOD or None, 'dotted.name', value); the value is
    read as JSON when it parses (numbers, true/false, lists), else kept as a string."""
    method, sep, rest = text.partition(':')
    if not sep or '=' in method:
        method, rest = None, text
    key, eq, raw = rest.partition('=')
    if not eq or not key:
        raise ComparisonError(f'--override={text!r} is not [METHOD:]section.name=value.')
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return method, key, value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
    """Sets each 'dotted.name' of `overrides` in `config` (in place); the field must exist.

    A list becomes a tuple where the field holds a tuple.
    """
    for key, value in overrides.items():
        *path, name = key.split('.')
        node = config
        for part in path:
            node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            raise ComparisonError(f'override {key!r}: the config has no field {key!r}.')
        if isinstance(node[name], tuple) and isinstance(value, list):
            value = tuple(value)
        try:
            node[name] = value
        except (TypeError, ValueError) as e:
            raise ComparisonError(f'override {key}={value!r}: {e}') from e


def _names(kind: str, given: Sequence[str], valid: Sequence[str], more: str = '') -> list[str]:
    out = []
    for name in given:
        if name not in valid:
            raise ComparisonError(f'unknown {kind} {name!r}; choose from {", ".join(valid)}{more}.')
        if name not in out:
            out.append(name)
    return out


def plan(
    suite: str = 'toy',
    data: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    points: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    method_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    budget_seconds: float = 0.0,
    ddgan_steps: Sequence[int] | None = None,
    configs_dir: str | None = None,
) -> list[RunSpec]:
    """The runs of a comparison, every config resolved and validated (nothing compiled).

    Order: each dataset in turn, its methods in the given order, each ddgan run followed by
    its extra runs at the other `ddgan_steps` (None: the suite's). `overrides` apply to every
    run after its `method_settings`, then `method_overrides[method]`; `budget_seconds` > 0
    sets `train.time_budget` of every run.

    Raises:
      ComparisonError: an unknown suite, method or dataset, a missing points file or image
        dataset, an override of a field the config lacks, or a config the trainer refuses.
    """
    if suite not in SUITES:
        raise ComparisonError(f'unknown suite {suite!r}; choose from {", ".join(SUITES)}.')
    chosen = list(methods or COMPARED)
    for name in chosen:
        if name in NOT_COMPARED:
            raise ComparisonError(
                f'method {name!r} is not compared: {NOT_COMPARED[name]}; choose from '
                f'{", ".join(COMPARED)}.'
            )
    chosen = _names('method', chosen, COMPARED)
    others = '; '.join(f'--suite={s}: {", ".join(v.data)}' for s, v in SUITES.items() if s != suite)
    datasets = _names('data', data or SUITES[suite].data, SUITES[suite].data, f' ({others})')
    if points:
        if not os.path.isfile(points):
            raise ComparisonError(f'--points={points!r}: no such file.')
        datasets.append('points')
    t_list = SUITES[suite].ddgan_steps if ddgan_steps is None else tuple(ddgan_steps)
    specs = []
    for name in datasets:
        for method in chosen:
            config = _run_config(
                name, method, points, overrides, method_overrides, budget_seconds, configs_dir
            )
            specs.append(RunSpec(f'{name}_{method}', method, name, config))
            if method != 'ddgan':
                continue
            for t in dict.fromkeys(int(t) for t in t_list):
                if t != config.ddgan.steps:
                    extra = ml_collections.ConfigDict(config.to_dict())
                    apply_overrides(extra, {'ddgan.steps': t})
                    specs.append(RunSpec(f'{name}_ddgan_T{t}', method, name, extra, main=False))
    for spec in specs:
        try:
            train.validate_config(spec.config)
        except (ValueError, FileNotFoundError) as e:
            raise ComparisonError(f'{spec.name}: {e}') from e
    return specs


def _run_config(
    name: str,
    method: str,
    points: str | None,
    overrides: Mapping[str, Any] | None,
    method_overrides: Mapping[str, Mapping[str, Any]] | None,
    budget: float,
    configs_dir: str | None,
) -> ml_collections.ConfigDict:
    """configs/<name>.py for `method`: its method_settings, then the overrides, resolved."""
    config = load_config(name, configs_dir)
    config.method = method
    if name == 'points':
        config.data.path = os.path.abspath(points)
    try:
        config = methods_lib.resolve_config(config)
    except ValueError as e:
        raise ComparisonError(f'{name}_{method}: {e}') from e
    apply_overrides(config, dict(overrides or {}))
    apply_overrides(config, dict((method_overrides or {}).get(method, {})))
    if budget:
        apply_overrides(config, {'train.time_budget': float(budget)})
    return config


# ----------------------------------------------------------------------------- one run


@dataclasses.dataclass(frozen=True)
class _Measures:
    sampling_steps: Mapping[str, tuple[int, ...]]
    throughput_batch: int
    throughput_repeats: int
    throughput_seconds: float | None
    grid_points: int
    grid_per_class: int

    def key(self, spec: RunSpec) -> str:
        """Digest of what a run's cached evaluation depends on (`throughput_seconds` only
        bounds how long the throughput measure may take, so it is left out)."""
        blob = json.dumps(
            {
                'config': json.loads(spec.config.to_json_best_effort(sort_keys=True)),
                'steps': list(self.sampling_steps.get(spec.method, ())),
                'measures': [
                    self.throughput_batch,
                    self.throughput_repeats,
                    self.grid_points,
                    self.grid_per_class,
                ],
            },
            sort_keys=True,
        )
        return hashlib.sha1(blob.encode()).hexdigest()


def _read_json(path: str) -> Any:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _reached_end(spec: RunSpec, workdir: str, step: int) -> bool:
    """Whether a run at `step` is done: train.steps reached, or its time budget spent."""
    budget = float(spec.config.train.get('time_budget', 0.0))
    seconds = writers.read_train_seconds(workdir, step) or 0.0
    return step >= spec.config.train.steps or bool(budget and seconds >= budget)


def _finished(
    spec: RunSpec, workdir: str, echo: Callable[[str], None]
) -> tuple[train.Run, train.TrainState, int] | None:
    """(run, state, step) of a workdir that reached its end (train.steps, or its time budget
    spent), or None when it has to train (no checkpoint yet, or not finished)."""
    if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
        return None
    try:
        run, state, step = train.load_run(workdir)
    except FileNotFoundError:
        return None
    if not _reached_end(spec, workdir, step):
        return None
    changed = writers.config_changes(spec.config, workdir)
    if changed:
        echo(
            f'  WARNING: {spec.name} finished with other settings, kept (delete it to '
            f'retrain): {"; ".join(changed)}'
        )
    return run, state, step


def _evaluate(
    spec: RunSpec,
    workdir: str,
    run: train.Run,
    state: train.TrainState,
    step: int,
    m: _Measures,
    echo: Callable[[str], None],
) -> dict[str, Any]:
    """The cached record of a finished run: its row (without the curve and the NFE sweep of
    other runs) and its quality at the other sampling steps; writes the grid samples."""
    kind = run.task.kind
    ratio_key = RATIO_KEYS[kind]
    params = state.ema_params
    evaluator = None
    finals = [e for e in writers.read_metrics(workdir) if e.get('step') == step]
    final = next((e for e in reversed(finals) if ratio_key in e), None)
    if final is None:  # no evaluation logged at the last step: score it now
        evaluator = run.task.make_evaluator(run.config.train.seed)
        final = score_sampler(run, params, step, evaluator)
    count, networks = count_parameters(params)
    row = {
        'method': spec.method,
        'data': spec.data,
        'run': spec.name,
        'ratio_key': ratio_key,
        'ratio': float(final[ratio_key]),
        'nfe': int(run.method.nfe()),
        'train_steps': int(step),
        'train_seconds': writers.read_train_seconds(workdir, step),
        'samples_per_second': samples_per_second(
            run,
            params,
            m.throughput_batch,
            m.throughput_repeats,
            max_seconds=m.throughput_seconds,
        ),
        'params': count,
        'sampling_networks': list(networks),
        'device': jax.devices()[0].device_kind,
    }
    if 'class_accuracy' in final:
        row['class_accuracy'] = float(final['class_accuracy'])
    row['eval'] = numbers(final)
    sweep = {row['nfe']: {'nfe': row['nfe'], 'ratio': row['ratio'], 'sampling': 'default'}}
    for s in m.sampling_steps.get(spec.method, ()):
        try:
            nfe = int(run.method.nfe(steps=s))
        except ValueError as e:  # e.g. more DDIM steps than ddpm.timesteps
            echo(f'  {spec.name}: steps={s} left out of quality against NFE: {e}')
            continue
        if nfe not in sweep:
            evaluator = evaluator or run.task.make_evaluator(run.config.train.seed)
            scored = score_sampler(run, params, step, evaluator, steps=s)
            sweep[nfe] = {'nfe': nfe, 'ratio': float(scored[ratio_key]), 'sampling': f'steps={s}'}
    row['nfe_sweep'] = [sweep[k] for k in sorted(sweep)]
    _write_grid_samples(run, params, workdir, m)
    return row


def _write_grid_samples(run: train.Run, params: dict[str, Any], workdir: str, m: _Measures) -> None:
    """`<workdir>/comparison_samples.npz`: 'samples' in the user's coordinates (points
    [n, D] and held-out 'data' [n, D]; images [K * per_class, H, W, C] sorted by class, and
    'per_class')."""
    key = jax.random.PRNGKey(run.config.train.seed + 1)
    if run.task.kind == 'points':
        n = m.grid_points
        out = {
            'samples': train.sample(run, params, key, n),
            'data': run.task.to_user(run.task.dataset.sample(key, n, split='eval')),
        }
    else:
        labels = np.repeat(np.arange(run.task.num_classes), m.grid_per_class).astype(np.int32)
        samples = train.sample(run, params, key, len(labels), labels=labels)
        out = {'samples': samples, 'per_class': np.asarray(m.grid_per_class)}
    np.savez(os.path.join(workdir, SAMPLES_FILE), **out)


def run_one(
    spec: RunSpec, out: str, m: _Measures, echo: Callable[[str], None], label: str
) -> dict[str, Any]:
    """Trains (or resumes, or skips) one run and returns its row, cached in its workdir.

    A run that diverges (the trainer's FloatingPointError: a NaN, a discriminator that wins
    outright, NaN samples) gets a row with its 'error' and no numbers, cached like the
    others so the comparison goes on and a re-run does not train it again.

    Raises:
      ComparisonStopped: SIGTERM stopped the training before its end (nothing is cached;
        the checkpoint is where a re-run continues).
    """
    workdir = os.path.join(out, 'runs', spec.name)
    cache_path = os.path.join(workdir, CACHE_FILE)
    key = m.key(spec)
    cached = _read_json(cache_path)
    if cached and cached.get('key') == key:
        row = cached['row']
        if 'error' in row or os.path.exists(os.path.join(workdir, SAMPLES_FILE)):
            echo(f'{label}: {"failed" if "error" in row else "finished"}, evaluated (cached)')
            return row
    try:
        done = _finished(spec, workdir, echo)
        if done is None:
            resuming = os.path.isdir(os.path.join(workdir, 'checkpoints'))
            echo(f'{label}: {"resuming" if resuming else "training"} in {workdir}')
            train.train_and_evaluate(spec.config, workdir)
            done = train.load_run(workdir)
            if not _reached_end(spec, workdir, done[2]):  # the trainer stopped on SIGTERM
                raise ComparisonStopped(
                    f'{label}: SIGTERM stopped training at step {done[2]} of '
                    f'{spec.config.train.steps} (checkpoint saved in {workdir}); run the same '
                    'command again to continue.'
                )
        else:
            echo(f'{label}: finished, evaluating')
        row = _evaluate(spec, workdir, *done, m, echo)
    except FloatingPointError as e:
        echo(f'{label}: FAILED (delete {workdir} to try again): {e}')
        kind = tasks.task_class(spec.config.task).kind
        row = {'method': spec.method, 'data': spec.data, 'run': spec.name}
        row.update({'ratio_key': RATIO_KEYS[kind], 'ratio': None, 'nfe': None, 'error': str(e)})
    report.write_json(cache_path, {'key': key, 'row': row})
    return row


# ----------------------------------------------------------------------------- all runs


def _rows(specs: Sequence[RunSpec], done: Mapping[str, dict], out: str) -> list[dict]:
    """The results rows (main runs done so far): each with its time curve, and for ddgan the
    NFE sweep over its runs at every T."""
    rows = []
    for spec in specs:
        if not spec.main or spec.name not in done:
            continue
        row = dict(done[spec.name])
        row['curve'] = time_curve(os.path.join(out, 'runs', spec.name), row['ratio_key'])
        if spec.method == 'ddgan':
            sweep = [
                {
                    'nfe': done[s.name]['nfe'],
                    'ratio': done[s.name]['ratio'],
                    'sampling': f'run {s.name}',
                    'train_seconds': done[s.name]['train_seconds'],
                }
                for s in specs
                if s.method == 'ddgan'
                and s.data == spec.data
                and s.name in done
                and done[s.name]['ratio'] is not None
            ]
            row['nfe_sweep'] = sorted(sweep, key=lambda p: p['nfe'])
        rows.append(row)
    return rows


def compare(
    out: str,
    suite: str = 'toy',
    *,
    data: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    points: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    method_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    budget_seconds: float = 0.0,
    ddgan_steps: Sequence[int] | None = None,
    sampling_steps: Mapping[str, Sequence[int]] | None = None,
    throughput_batch: int = 1000,
    throughput_repeats: int = 3,
    throughput_seconds: float | None = 60.0,
    grid_points: int = 1000,
    grid_per_class: int = 4,
    configs_dir: str | None = None,
    figures: bool = True,
    echo: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Trains, evaluates and tabulates every method on every dataset of `suite` into `out`.

    Args:
      out: the output folder: results.json, table.md, table.csv, the figures (PNG) and
        `runs/<name>/` (a trainer workdir each, plus the cached evaluation).
      suite: 'toy', 'digits' or 'mnist' (`SUITES`).
      data: the suite's datasets to run (default all); `points`: a .npy/.csv point cloud
        added as dataset 'points' (configs/points.py).
      methods: default `COMPARED` (every method that samples the data distribution).
      overrides: 'dotted.name' -> value for every run, applied after the config's
        `method_settings`; `method_overrides[method]` then applies to that method's runs.
      budget_seconds: > 0: every run trains for this many seconds (`train.time_budget`)
        instead of its step count (the learning-rate schedule still spans `train.steps`).
      ddgan_steps: T of the extra ddgan runs (None: the suite's; () none).
      sampling_steps: method -> `steps` values of its sampler scored for quality against NFE
        (a method left out: the suite's; () none).
      throughput_batch, throughput_repeats: samples per call and timed calls (after one
        warm-up call) of the comparison's own `samples_per_second`; `throughput_seconds`:
        no further timed call starts after this many seconds (None: no limit).
      grid_points, grid_per_class: samples per cell of the sample grid (points; images of
        each class).
      figures: also draw the figures (`comparison_report.write_figures`).
      echo: progress lines (default: print).

    Returns:
      The rows of results.json, one per (method, data), in run order.

    Raises:
      ComparisonError: before anything trains, for a refused argument (see `plan`).
      ComparisonStopped: on SIGTERM, before the next run or when the trainer stopped one
        (the tables hold the runs finished so far; the same call again continues).
    """
    echo = echo or (lambda line: print(f'drift_jax.compare: {line}', flush=True))
    specs = plan(
        suite,
        data,
        methods,
        points,
        overrides,
        method_overrides,
        budget_seconds,
        ddgan_steps,
        configs_dir,
    )
    steps = dict(SUITES[suite].sampling_steps)
    steps.update({k: tuple(int(s) for s in v) for k, v in (sampling_steps or {}).items()})
    problem = throughput_problem(
        throughput_batch,
        throughput_repeats,
        throughput_seconds,
        names=('throughput_batch', 'throughput_repeats', 'throughput_seconds'),
    )
    if problem:
        raise ComparisonError(problem)
    measures = _Measures(
        steps, throughput_batch, throughput_repeats, throughput_seconds, grid_points, grid_per_class
    )
    os.makedirs(out, exist_ok=True)
    done: dict[str, dict] = {}
    with train.StopRequest() as sigterm:
        for i, spec in enumerate(specs):
            label = f'[{i + 1}/{len(specs)}] {spec.method} on {spec.data}'
            if not spec.main:
                label += f' (T={spec.config.ddgan.steps}, for quality against NFE)'
            if sigterm.requested:
                raise ComparisonStopped(
                    f'SIGTERM: stopped before {label}; run the same command again to continue '
                    f'(the {len(done)} finished runs are kept).'
                )
            done[spec.name] = run_one(spec, out, measures, echo, label)
            report.write_tables(_rows(specs, done, out), out)
    rows = _rows(specs, done, out)
    if figures:
        for path in report.write_figures(rows, out):
            echo(f'wrote {path}')
    echo(f'wrote {os.path.join(out, report.TABLE_MD)}')
    return rows
