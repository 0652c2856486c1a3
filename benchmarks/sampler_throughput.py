"""Sampling throughput of two trained runs, timed in alternating pairs, and the spread of
their ratio.

`drift_jax.compare` times each run's sampler once; on a shared CPU that single figure moves
with the machine's load. This loads two workdirs (any methods), times their default samplers
alternately `--pairs` times (`comparison.samples_per_second`: one warm-up call, then
`--repeats` calls of `--batch` samples) and prints each run's median samples / s and the
10th, 50th and 90th percentiles of the ratio first / second.

    python benchmarks/sampler_throughput.py OUT/runs/spiral_drifting OUT/runs/spiral_gan
    python benchmarks/sampler_throughput.py A B --pairs 40 --batch 100
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from drift_jax import comparison, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('first', help='workdir of a trained run')
    parser.add_argument('second', help='workdir of another trained run')
    parser.add_argument('--pairs', type=int, default=20)
    parser.add_argument('--batch', type=int, default=1000)
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args()
    if min(args.pairs, args.batch, args.repeats) < 1:
        parser.error('--pairs, --batch and --repeats must be >= 1')
    try:
        runs = [train.load_run(w) for w in (args.first, args.second)]
    except FileNotFoundError as e:
        parser.error(str(e))
    rates = np.zeros((args.pairs, 2))
    for i in range(args.pairs):
        for j, (run, state, _) in enumerate(runs):
            rates[i, j] = comparison.samples_per_second(
                run, state.ema_params, args.batch, args.repeats, seed=i
            )
    ratio = rates[:, 0] / rates[:, 1]
    p10, p50, p90 = np.percentile(ratio, [10, 50, 90])
    device = jax.devices()[0].device_kind
    print(f'device: {device}; {args.pairs} pairs of {args.repeats} calls x {args.batch}')
    for w, col in zip((args.first, args.second), rates.T, strict=True):
        print(f'{w}: median {np.median(col):,.0f} samples/s')
    print(f'ratio first / second: p10 {p10:.2f}, p50 {p50:.2f}, p90 {p90:.2f}')


if __name__ == '__main__':
    main()
