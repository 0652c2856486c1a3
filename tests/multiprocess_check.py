"""Runs inside each process of `launch/local_multiprocess.sh` (tests/test_distributed.py).

Joins the run via `drift_jax.distributed`, checks process and device counts, does cross-process
sums and prints `MULTIPROCESS_OK ...` lines. `--die_after` makes one process exit mid-run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> None:
    """Joins, checks counts, sums across processes; optionally kills one process mid-run."""
    parser = argparse.ArgumentParser()
    parser.add_argument(
        '--die_after',
        type=float,
        default=None,
        help='--die_process exits abruptly after this many seconds; the other '
        'keeps doing collectives and reports how long it took to notice.',
    )
    parser.add_argument('--die_process', type=int, default=1, help='which process dies.')
    parser.add_argument('--heartbeat_timeout', type=int, default=None)
    args = parser.parse_args()

    from drift_jax import distributed

    distributed.initialize(distributed.detect(), heartbeat_timeout_seconds=args.heartbeat_timeout)
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    pid = jax.process_index()
    assert jax.process_count() == 2, jax.process_count()
    assert jax.device_count() == 4, jax.devices()
    assert jax.local_device_count() == 2, jax.local_devices()
    assert distributed.is_main_process() == (pid == 0)

    mesh = Mesh(np.array(jax.devices()), ('data',))
    sharding = NamedSharding(mesh, PartitionSpec('data'))
    local = np.arange(4, dtype=np.float32) + 100 * pid  # 2 rows per device
    x = jax.make_array_from_process_local_data(sharding, local)
    assert x.shape == (8,), x.shape
    total = float(jax.jit(jnp.sum)(x))  # 0+1+2+3 + 100+101+102+103 = 412
    gathered = multihost_utils.process_allgather(np.array([pid + 1.0]))
    print(
        f'MULTIPROCESS_OK process={pid} count={jax.process_count()} '
        f'devices={jax.device_count()} sum={total:g} gathered={gathered.ravel().tolist()}',
        flush=True,
    )

    if args.die_after is None:
        return
    start = time.monotonic()
    step = jax.jit(lambda a: jnp.sum(a) * 0 + a)
    while True:
        if pid == args.die_process and time.monotonic() - start > args.die_after:
            print('DYING', flush=True)
            os._exit(7)
        t0 = time.monotonic()
        try:
            x = step(x)
            x.block_until_ready()
        except Exception as e:  # report whatever the runtime raises
            print(
                f'COLLECTIVE_FAILED after {time.monotonic() - t0:.1f}s in the call, '
                f'{time.monotonic() - start:.1f}s since start: {type(e).__name__}: '
                f'{str(e)[:300]}',
                flush=True,
            )
            sys.exit(3)
        time.sleep(0.05)


if __name__ == '__main__':
    main()
