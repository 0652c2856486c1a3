"""Side effects of a run: metrics.jsonl, TensorBoard events, config.json, progress bar, GIF,
metric curve.

Only process 0 writes (the trainer passes `enabled`); everything here is cheap and host-side.
"""

from __future__ import annotations

import glob
import json
import os
import time
from typing import Any

import ml_collections
from tqdm.auto import tqdm


def check_writable(workdir: str) -> None:
    """Fails at start-up, with the path in the message, if `workdir` cannot be written."""
    probe = os.path.join(workdir, f'.write_test_{os.getpid()}')
    try:
        with open(probe, 'w') as f:
            f.write('ok')
        os.remove(probe)
    except OSError as e:
        raise OSError(f'The workdir {workdir!r} is not writable: {e}') from e


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes `<workdir>/config.json` (atomically)."""
    path = os.path.join(workdir, 'config.json')
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    os.replace(tmp, path)


def config_changes(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """Fields whose value differs from `<workdir>/config.json` ('a.b: old -> new'); [] if none.

    Returns [] when there is no saved config (a new run).
    """
    path = os.path.join(workdir, 'config.json')
    if not os.path.exists(path):
        return []
    with open(path) as f:
        old = json.load(f)
    new = json.loads(config.to_json_best_effort(sort_keys=True))

    def flat(d, prefix=''):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f'{prefix}{k}.'))
            else:
                out[f'{prefix}{k}'] = v
        return out

    a, b = flat(old), flat(new)
    return [
        f'{k}: {a.get(k, "(unset)")!r} -> {b.get(k, "(unset)")!r}'
        for k in sorted(set(a) | set(b))
        if a.get(k, None) != b.get(k, None)
    ]


class MetricWriter:
    """Appends one JSON object per event to metrics.jsonl and mirrors scalars to TensorBoard.

    On resume, lines with a step beyond the restored checkpoint (written after it, then lost
    to a crash) are dropped, so the file describes exactly one run history.
    """

    def __init__(self, workdir: str, enabled: bool = True, resume_step: int = 0):
        self.enabled = enabled
        self.path = os.path.join(workdir, 'metrics.jsonl')
        self._tb = None
        if not enabled:
            return
        if os.path.exists(self.path):
            with open(self.path) as f:
                lines = [ln for ln in f if ln.strip()]
            kept = [ln for ln in lines if _line_step(ln) <= resume_step]
            if len(kept) != len(lines):
                with open(self.path, 'w') as f:
                    f.writelines(kept)
        self._file = open(self.path, 'a')  # noqa: SIM115 - held open for the whole run
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))
        except ImportError:  # TensorBoard events are optional
            self._tb = None

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {'step': int(step), **values, 'wall_time': round(time.time(), 3)}
        self._file.write(json.dumps(record) + '\n')
        self._file.flush()
        if self._tb is not None:
            for k, v in values.items():
                if k not in ('step', 'wall_time') and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()


TRAIN_SECONDS_FILE = 'train_seconds.json'


def save_train_seconds(workdir: str, step: int, seconds: float) -> None:
    """Records that the run had trained `seconds` (evaluations excluded) at checkpoint `step`.

    `<workdir>/train_seconds.json` maps each checkpointed step to its seconds, so a run that
    resumes from any kept checkpoint knows the training time behind it (written atomically).
    """
    path = os.path.join(workdir, TRAIN_SECONDS_FILE)
    record = _read_json(path)
    record[str(int(step))] = round(float(seconds), 3)
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(dict(sorted(record.items(), key=lambda kv: int(kv[0]))), f, indent=0)
    os.replace(tmp, path)


def read_train_seconds(workdir: str, step: int) -> float | None:
    """Training seconds recorded at checkpoint `step` (`save_train_seconds`), or at the newest
    recorded step before it when `step` has none; None when nothing is recorded."""
    record = train_seconds_record(workdir)
    earlier = [s for s in record if s <= step]
    return record[max(earlier)] if earlier else None


def train_seconds_record(workdir: str) -> dict[int, float]:
    """Every checkpointed step's training seconds (`save_train_seconds`), in step order; empty
    when the run recorded none."""
    saved = _read_json(os.path.join(workdir, TRAIN_SECONDS_FILE))
    return dict(sorted((int(k), float(v)) for k, v in saved.items()))


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _line_step(line: str) -> int:
    try:
        return int(json.loads(line).get('step', 0))
    except (ValueError, AttributeError):
        return 0


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """All events of `<workdir>/metrics.jsonl` as dicts, in order."""
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        return [json.loads(ln) for ln in f if ln.strip()]


def progress_bar(total: int, initial: int, enabled: bool = True):
    """A tqdm bar over training steps (disabled on processes other than 0)."""
    return tqdm(
        total=total,
        initial=initial,
        disable=not enabled,
        desc='train',
        unit='step',
        dynamic_ncols=True,
        mininterval=1.0,
    )


#: Evaluation metrics plotted by `finish_samples`, in order of preference: the first one
#: present in the run's eval events is drawn.
HEADLINE_METRICS: tuple[str, ...] = ('energy_ratio', 'fd_ratio', 'mae_test_loss')
#: Headline metrics that are ratios to their noise floor (1 = as close as a second data sample).
RATIO_METRICS: tuple[str, ...] = ('energy_ratio', 'fd_ratio')


def headline_metric(
    events: list[dict[str, Any]],
) -> tuple[str, list[int], list[float]] | None:
    """The headline evaluation metric of a run's events (as from `read_metrics`).

    Picks the first name of `HEADLINE_METRICS` that any event holds and returns
    `(name, steps [k], values [k])` of the `k` events that hold it, in file order; None
    when no event holds any of them.
    """
    for name in HEADLINE_METRICS:
        rows = [e for e in events if isinstance(e.get(name), (int, float))]
        if rows:
            return name, [int(e['step']) for e in rows], [float(e[name]) for e in rows]
    return None


def plot_headline_metric(workdir: str, path: str) -> str | None:
    """Draws the headline metric of `<workdir>/metrics.jsonl` over steps into the PNG `path`.

    Ratio metrics (`RATIO_METRICS`) get their noise floor drawn at 1.0. Returns `path`, or
    None when there is no metrics file or no event with a headline metric.
    """
    if not os.path.exists(os.path.join(workdir, 'metrics.jsonl')):
        return None
    found = headline_metric(read_metrics(workdir))
    if found is None:
        return None
    name, steps, values = found
    from drift_jax import plotting

    ratio = name in RATIO_METRICS
    return plotting.plot_metric_curve(
        path,
        steps,
        values,
        floor=1.0 if ratio else None,
        ylabel=name,
        title=f'{name} (1 = as close as a second data sample)' if ratio else name,
    )


def finish_samples(sample_dir: str, workdir: str | None = None) -> str | None:
    """Post-run pictures in `sample_dir`: the sample evolution GIF and the metric curve.

    Assembles the per-eval sample plots `step_*.png` into `<sample_dir>/evolution.gif`.
    With `workdir`, also draws the headline evaluation metric of `<workdir>/metrics.jsonl`
    (see `plot_headline_metric`) over steps into `<sample_dir>/metrics.png`.

    Returns:
      The GIF's path, or None when there are no sample frames.
    """
    if workdir is not None:
        plot_headline_metric(workdir, os.path.join(sample_dir, 'metrics.png'))
    frames = sorted(glob.glob(os.path.join(sample_dir, 'step_*.png')))
    if not frames:
        return None
    from drift_jax import plotting

    return plotting.make_gif(frames, os.path.join(sample_dir, 'evolution.gif'))
