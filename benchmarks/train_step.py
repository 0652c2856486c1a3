"""Steps per second of the spiral train step at several batch sizes, or of any config's step.

    python benchmarks/train_step.py --batch_sizes=1024,2048,4096 --json=train_step.json
    python benchmarks/train_step.py --config=configs/mnist_features.py --steps=5 --repeats=3 \
        --set=encoder.bank_features=false

Each figure is the median over `--repeats` timed windows of `--steps` steps after a warm-up
(compile excluded), all measured in this one run. With `--config` the config's own batch is
used (`--batch_sizes` is ignored), the memory bank is filled first as in training, and the
host batches of every step are drawn inside the timed window, as the train loop does.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_configs import apply_overrides, load_config  # noqa: E402  (beside this script)

_BATCHES = flags.DEFINE_list('batch_sizes', ['1024', '2048', '4096'], 'Generated batch sizes.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Steps per timed window.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed windows per batch size.')
_JSON = flags.DEFINE_string('json', None, 'Write the records to this JSON file.')
_SET = flags.DEFINE_multi_string('set', [], 'Config overrides section.name=json_value.')
_CONFIG = flags.DEFINE_string(
    'config',
    None,
    'A config file (e.g. configs/mnist_features.py) '
    'whose train step is timed instead of the spiral at '
    '--batch_sizes.',
)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    import jax

    from drift_jax import defaults, methods, train

    records = []
    for b in [None] if _CONFIG.value else map(int, _BATCHES.value):
        if _CONFIG.value:
            config = load_config(_CONFIG.value)
        else:
            config = defaults.toy_config()
            config.train.batch_size = b
            config.train.num_pos = b
        # The config's method settings first, so that --set wins over them.
        config = methods.resolve_config(config)
        apply_overrides(config, _SET.value)
        run = train.make_run(config)
        state = run.method.warm_start(train.create_train_state(run, 0))
        step = train.make_train_step(run)

        def host(i, run=run):
            return run.task.host_batch(i, run.method.host_batch_size)

        t0 = time.perf_counter()
        state, m = step(state, host(1))
        jax.block_until_ready(m)
        compile_s = time.perf_counter() - t0
        times, i = [], 1
        for _ in range(_REPEATS.value):
            t0 = time.perf_counter()
            for _ in range(_STEPS.value):
                i += 1
                state, m = step(state, host(i))
            jax.block_until_ready(m)
            times.append((time.perf_counter() - t0) / _STEPS.value)
        ms = 1e3 * statistics.median(times)
        rec = {
            'config': _CONFIG.value or 'spiral',
            'overrides': list(_SET.value),
            'batch_size': config.train.batch_size,
            'num_pos': config.train.get('num_pos'),
            'ms_per_step': round(ms, 2),
            'steps_per_s': round(1e3 / ms, 2),
            'compile_s': round(compile_s, 2),
            'devices': jax.device_count(),
        }
        records.append(rec)
        print(json.dumps(rec), flush=True)
    print(f'\n{records[0]["config"]} {" ".join(_SET.value)}')
    print('| batch (generated) | ms / step | steps / s | compile s |')
    print('|---|---|---|---|')
    for r in records:
        print(f'| {r["batch_size"]} | {r["ms_per_step"]} | {r["steps_per_s"]} | {r["compile_s"]} |')
    if _JSON.value:
        with open(_JSON.value, 'w') as f:
            json.dump(records, f, indent=1)


if __name__ == '__main__':
    app.run(main)
