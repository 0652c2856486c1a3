"""Matmul floor of the blocked drifting field: its matrix products timed on their own.

The blocked field streams over blocks of b targets. Per block it multiplies the queries
[N, D + 2] by the block's [D + 2, b] (squared distances; twice when the distance scale needs a
first pass) and the block's kernel weights [N, b] by [b, D + 1] (the field, once per
temperature). This script times exactly those products, streamed the same way, so the
field's time can be compared with the least its matmuls cost here.

    python benchmarks/matmul_floor.py                  # N=4096, M=8192, D=64, b=128
    python benchmarks/matmul_floor.py --d 2,64,784 --block 256
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp


def _median_ms(fn, args, repeats: int) -> float:
    """Median wall time in ms of a compiled fn over `repeats` runs after one warm-up."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def floor_case(n: int, m: int, d: int, block: int, repeats: int) -> dict:
    """Times one streamed distance matmul and one streamed field matmul for (N, M, D, b)."""
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    nb = -(-m // block)
    q = jax.random.normal(k1, (n, d + 2))
    t = jax.random.normal(k2, (nb, block, d + 2))
    g = jax.random.uniform(k3, (nb, n, block))
    aug = jax.random.normal(k2, (nb, block, d + 1))
    hp = jax.lax.Precision.HIGHEST

    def distances(q, t):
        # Reduce each block's product so that it is computed but never stored whole.
        def body(c, tb):
            sq = jax.lax.dot_general(q, tb, (((1,), (1,)), ((), ())), precision=hp)
            return c + jnp.sum(sq, axis=1), None

        return jax.lax.scan(body, jnp.zeros(n), t)[0]

    def field(g, aug):
        def body(c, blk):
            return c + jnp.dot(blk[0], blk[1], precision=hp), None

        return jax.lax.scan(body, jnp.zeros((n, d + 1)), (g, aug))[0]

    dist_ms = _median_ms(jax.jit(distances), (q, t), repeats)
    field_ms = _median_ms(jax.jit(field), (g, aug), repeats)
    return dict(
        n=n,
        m=m,
        d=d,
        block=block,
        distance_matmul_ms=dist_ms,
        distance_gflops=2 * n * nb * block * (d + 2) / dist_ms / 1e6,
        field_matmul_ms=field_ms,
        field_gflops=2 * n * nb * block * (d + 1) / field_ms / 1e6,
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--n', type=int, default=4096, help='queries')
    p.add_argument('--m', type=int, default=8192, help='targets')
    p.add_argument('--d', default='64', help='comma-separated dimensions')
    p.add_argument('--block', type=int, default=128, help='targets per block')
    p.add_argument('--repeats', type=int, default=7, help='timed runs (>= 5)')
    p.add_argument('--json', default=None, help='write the records here')
    args = p.parse_args(argv)
    if args.repeats < 5:
        p.error('--repeats must be >= 5')
    if args.block < 1:
        p.error(f'--block must be a positive number of targets, got {args.block}')
    records = []
    print(
        '   n      m    d block  dist_ms dist_GF/s field_ms field_GF/s  floor_T1 floor_T3'
        '  (floors: paper options, two distance passes + T field matmuls)'
    )
    for d in (int(v) for v in args.d.split(',')):
        r = floor_case(args.n, args.m, d, args.block, args.repeats)
        r['floor_paper_t1_ms'] = 2 * r['distance_matmul_ms'] + r['field_matmul_ms']
        r['floor_paper_t3_ms'] = 2 * r['distance_matmul_ms'] + 3 * r['field_matmul_ms']
        records.append(r)
        print(
            f'{r["n"]:5d} {r["m"]:6d} {r["d"]:4d} {r["block"]:5d} '
            f'{r["distance_matmul_ms"]:8.1f} {r["distance_gflops"]:9.1f} '
            f'{r["field_matmul_ms"]:8.1f} {r["field_gflops"]:10.1f} '
            f'{r["floor_paper_t1_ms"]:9.1f} {r["floor_paper_t3_ms"]:8.1f}',
            flush=True,
        )
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(records, f, indent=1)
    return records


if __name__ == '__main__':
    main()
