"""How far the official floored affinity moves the field: cosine to the exact field per D.

The official loss takes sqrt(max(row softmax * column softmax, 1e-6)) (`affinity_floor`);
the library's default is the exact log-space geometric mean. On the same inputs (queries
N(0, I); positives N(0, I) shifted by 0.5 per coordinate, or for D = 2 also the spiral),
with the paper's field otherwise (three temperatures, scale and RMS normalisation), this
prints the cosine between the two fields, their relative difference and, per temperature,
the share of query-target pairs whose softmax product lies below the floor.

    python benchmarks/affinity_floor.py                   # D = 2, 64, 784; 3 seeds
    python benchmarks/affinity_floor.py --dims 2 --floor 1e-8 --seeds 5
"""

from __future__ import annotations

import argparse
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np

from drift_jax.data import toy
from drift_jax.field import DriftOptions, compute_drift_field_with, pairwise_distances

PAPER_TEMPERATURES = (0.02, 0.05, 0.2)


@functools.partial(jax.jit, static_argnames=('opts',))
def _field(x, y_pos, opts: DriftOptions):
    return compute_drift_field_with(x, y_pos, None, opts)


@functools.partial(jax.jit, static_argnames=('temperatures',))
def share_below_floor(x, y_pos, floor, temperatures):
    """[T] share of the pairs (self pairs excluded) whose row * column softmax < floor.

    Distances over [x; y_pos] divided by their mean, the queries' self pairs masked.
    """
    y = jnp.concatenate([x, y_pos])
    d = pairwise_distances(x, y)
    n, m = d.shape
    self_pair = jnp.arange(n)[:, None] == jnp.arange(m)[None, :]
    d = d / jnp.sum(jnp.where(self_pair, 0.0, d)) * (n * m - n)
    shares = []
    for tau in temperatures:
        logits = jnp.where(self_pair, -jnp.inf, -d / tau)
        log_p = jax.nn.log_softmax(logits, axis=1) + jax.nn.log_softmax(logits, axis=0)
        below = (log_p < jnp.log(floor)) & ~self_pair
        shares.append(jnp.sum(below) / (n * m - n))
    return jnp.stack(shares)


def inputs(data: str, n: int, m: int, d: int, seed: int):
    """Queries [n, d] ~ N(0, I) and positives [m, d]: 'shift' or (d = 2) 'spiral'."""
    kx, ky = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (n, d))
    if data == 'spiral':
        return x, toy.sample_toy('spiral', ky, m)
    return x, jax.random.normal(ky, (m, d)) + 0.5


def case(data: str, n: int, m: int, d: int, floor: float, seeds: int) -> dict:
    exact_opts = DriftOptions(temperatures=PAPER_TEMPERATURES)
    floor_opts = DriftOptions(temperatures=PAPER_TEMPERATURES, affinity_floor=floor)
    cosines, diffs, shares = [], [], []
    for seed in range(seeds):
        x, y = inputs(data, n, m, d, seed)
        exact = np.asarray(_field(x, y, exact_opts), np.float64).ravel()
        floored = np.asarray(_field(x, y, floor_opts), np.float64).ravel()
        cosines.append(exact @ floored / (np.linalg.norm(exact) * np.linalg.norm(floored)))
        diffs.append(np.linalg.norm(floored - exact) / np.linalg.norm(exact))
        shares.append(np.asarray(share_below_floor(x, y, floor, PAPER_TEMPERATURES)))
    share = np.mean(shares, axis=0)
    return {
        'data': data,
        'n': n,
        'm_pos': m,
        'd': d,
        'floor': floor,
        'cosine': float(np.mean(cosines)),
        'cosine_min': float(np.min(cosines)),
        'rel_diff': float(np.mean(diffs)),
        'share_below_floor': {
            f'{t:g}': round(float(s), 4) for t, s in zip(PAPER_TEMPERATURES, share, strict=True)
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--dims', default='2,64,784', help='comma-separated dimensions')
    parser.add_argument('--sizes', default='128x256,256x512', help='queries x positives')
    parser.add_argument('--floor', type=float, default=1e-6)
    parser.add_argument('--seeds', type=int, default=3)
    parser.add_argument('--json', action='store_true', help='one JSON object per case')
    args = parser.parse_args()
    print(
        f'{"data":>7} {"N":>5} {"M+":>5} {"D":>4}  {"cosine":>8} {"min":>8} {"|dV|/|V|":>9}'
        '  share of pairs below the floor (tau 0.02 / 0.05 / 0.2)'
    )
    for d in (int(v) for v in args.dims.split(',')):
        for size in args.sizes.split(','):
            n, m = (int(v) for v in size.split('x'))
            for data in ('shift', 'spiral') if d == 2 else ('shift',):
                r = case(data, n, m, d, args.floor, args.seeds)
                if args.json:
                    print(json.dumps(r))
                    continue
                share = ' / '.join(f'{s:.3f}' for s in r['share_below_floor'].values())
                print(
                    f'{data:>7} {n:>5} {m:>5} {d:>4}  {r["cosine"]:8.5f} {r["cosine_min"]:8.5f} '
                    f'{r["rel_diff"]:9.4f}  {share}'
                )


if __name__ == '__main__':
    main()
