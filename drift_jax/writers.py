"""Side effects of a run: metrics.jsonl, TensorBoard events, config.json, progress bar, GIF.

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


def finish_samples(sample_dir: str) -> str | None:
    """Assembles the per-eval sample plots into `<sample_dir>/evolution.gif`."""
    frames = sorted(glob.glob(os.path.join(sample_dir, 'step_*.png')))
    if not frames:
        return None
    from drift_jax import plotting

    return plotting.make_gif(frames, os.path.join(sample_dir, 'evolution.gif'))
