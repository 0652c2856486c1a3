"""Steps per second of the spiral train step at several batch sizes.

    python benchmarks/train_step.py --batch_sizes=1024,2048,4096 --json=train_step.json

Each figure is the median over `--repeats` timed windows of `--steps` steps after a warm-up
(compile excluded), all measured in this one run.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_BATCHES = flags.DEFINE_list('batch_sizes', ['1024', '2048', '4096'], 'Generated batch sizes.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Steps per timed window.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed windows per batch size.')
_JSON = flags.DEFINE_string('json', None, 'Write the records to this JSON file.')
_SET = flags.DEFINE_multi_string('set', [], 'Config overrides section.name=json_value.')


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    import jax

    from drift_jax import defaults, train
    records = []
    for b in map(int, _BATCHES.value):
        config = defaults.toy_config()
        config.train.batch_size = b
        config.train.num_pos = b
        for item in _SET.value:
            key, value = item.split('=', 1)
            section, field = key.split('.')
            config[section][field] = json.loads(value)
        setup = train.make_task(config)
        state = train.create_train_state(setup, 0)
        step = train.make_train_step(setup)
        t0 = time.perf_counter()
        state, m = step(state, None)
        jax.block_until_ready(m)
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(_REPEATS.value):
            t0 = time.perf_counter()
            for _ in range(_STEPS.value):
                state, m = step(state, None)
            jax.block_until_ready(m)
            times.append((time.perf_counter() - t0) / _STEPS.value)
        ms = 1e3 * statistics.median(times)
        rec = {'batch_size': b, 'num_pos': b, 'ms_per_step': round(ms, 2),
               'steps_per_s': round(1e3 / ms, 2), 'compile_s': round(compile_s, 2),
               'devices': jax.device_count()}
        records.append(rec)
        print(json.dumps(rec), flush=True)
    print('\n| batch (gen = pos) | ms / step | steps / s | compile s |')
    print('|---|---|---|---|')
    for r in records:
        print(f"| {r['batch_size']} | {r['ms_per_step']} | {r['steps_per_s']} | "
              f"{r['compile_s']} |")
    if _JSON.value:
        with open(_JSON.value, 'w') as f:
            json.dump(records, f, indent=1)


if __name__ == '__main__':
    app.run(main)
