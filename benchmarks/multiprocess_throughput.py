"""Training throughput of 2 processes x 2 CPU devices against 1 process x 4 devices.

    python benchmarks/multiprocess_throughput.py --steps=300 --batch_size=1024

Both runs train configs/spiral.py with the same global batch on 4 devices in total; steps per
second come from the step timestamps in metrics.jsonl, after the first (compiling) log line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STEPS = flags.DEFINE_integer('steps', 300, 'Training steps per run.')
_BATCH = flags.DEFINE_integer('batch_size', 1024, 'Global generated batch (= positives).')
_JSON = flags.DEFINE_string('json', None, 'Write the records to this JSON file.')


def _env(devices: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith('DRIFT_JAX_')}
    env['PYTHONPATH'] = os.pathsep.join(p for p in (ROOT, env.get('PYTHONPATH')) if p)
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
    env['JAX_PLATFORMS'] = 'cpu'
    return env


def _run(cmd, env, workdir) -> dict:
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        times = [json.loads(ln) for ln in f if ln.strip()]
    logs = [e for e in times if 'wall_time' in e and 'loss' in e]
    first, last = logs[0], logs[-1]
    steps_per_s = (last['step'] - first['step']) / (last['wall_time'] - first['wall_time'])
    return {'wall_s': round(wall, 1), 'steps_per_s': round(steps_per_s, 2)}


def main(argv):
    del argv
    steps, b = _STEPS.value, _BATCH.value
    args = [
        '--config=configs/spiral.py',
        f'--config.train.steps={steps}',
        f'--config.train.batch_size={b}',
        f'--config.train.num_pos={b}',
        '--config.train.log_every=10',
        f'--config.eval.every={steps}',
        f'--config.train.checkpoint_every={steps}',
    ]
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        one = os.path.join(tmp, 'one')
        rec = _run(
            [sys.executable, '-m', 'drift_jax.main', f'--workdir={one}', *args], _env(4), one
        )
        records.append({'layout': '1 process x 4 devices', **rec})
        two = os.path.join(tmp, 'two')
        rec = _run(
            [
                'bash',
                os.path.join(ROOT, 'launch', 'local_multiprocess.sh'),
                '2',
                '--devices_per_process',
                '2',
                '--',
                sys.executable,
                '-m',
                'drift_jax.main',
                f'--workdir={two}',
                *args,
            ],
            _env(2),
            two,
        )
        records.append({'layout': '2 processes x 2 devices', **rec})
    print('\n| layout | steps / s | wall s (incl. start-up) |')
    print('|---|---|---|')
    for r in records:
        print(f'| {r["layout"]} | {r["steps_per_s"]} | {r["wall_s"]} |')
    ratio = records[1]['steps_per_s'] / records[0]['steps_per_s']
    print(f'ratio 2-process / 1-process: {ratio:.2f}')
    if _JSON.value:
        with open(_JSON.value, 'w') as f:
            json.dump(records, f, indent=1)


if __name__ == '__main__':
    app.run(main)
