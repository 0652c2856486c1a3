"""How this machine's speed moves: kinds of work timed side by side, over and over.

On a shared machine the arithmetic throughput a process gets can drop for a while (another
tenant on the same physical cores, or a lower clock) while memory bandwidth hardly
changes. Compute-bound code (matmuls, exponentials in cache: the blocked drifting field)
then slows far more than memory-bound code (the naive dense field, which streams several
N x M matrices through memory), so the ratio of the two depends on when it is measured.

Each iteration times, one after another: the blocked field's distance matmuls alone (a
scan of [4096, 66] x [66, 128] products), exponentials on 1 MB in cache, a 256 MB memory
stream, and the blocked and naive fields (4096 x 8192, D=64, one temperature, paper
options; each gets a warm-up call first, as in `drift_field.py`'s rounds). The summary
gives each kind's 10th / 50th / 90th percentile, the same for the per-iteration speed-up
naive / blocked (timed seconds apart) with the fraction of iterations at 3x or more, and
how the blocked field's time correlates with the other kinds'.

    python benchmarks/contention.py --iters 80 --json /tmp/contention.json --plot /tmp/c.png
    python benchmarks/contention.py --replot /tmp/contention.json --plot docs/contention.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import drift_field as bench  # noqa: E402

from drift_jax import plotting  # noqa: E402  (drift_field put the repo on the path)

KINDS = ('matmul', 'exp_in_cache', 'memory_stream', 'blocked', 'naive')


def _timer(f: Callable, args: tuple, warm: bool) -> Callable[[], float]:
    """() -> wall ms of one call of compiled f (after a warm-up call when warm)."""

    def run():
        if warm:
            jax.block_until_ready(f(*args))
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        return 1e3 * (time.perf_counter() - t0)

    return run


def make_timers(
    n: int = 4096, m: int = 8192, d: int = 64, temps: tuple[float, ...] = (0.05,)
) -> dict[str, Callable[[], float]]:
    """{kind: () -> ms} for KINDS (the fields at n queries x m targets, dimension d)."""
    x, y_pos, y_neg, self_mask = bench.inputs(n, m, d)
    fields = {}
    for impl in ('blocked', 'naive'):
        if impl == 'naive':

            def fn(x, yp, yn):
                return bench.naive(x, yp, yn, temps, self_mask, True)
        else:
            fn = bench.library(impl, None, temps, self_mask, True)
        fields[impl] = jax.jit(fn).lower(x, y_pos, y_neg).compile()
    small = jax.random.normal(jax.random.key(3), (256, 1024))  # 1 MB
    exp = (
        jax.jit(lambda s: jax.lax.fori_loop(0, 200, lambda i, s: jnp.exp(-jnp.abs(s)) + 0.5 * s, s))
        .lower(small)
        .compile()
    )
    big = jax.random.normal(jax.random.key(4), (64, 1024, 1024))  # 256 MB
    stream = jax.jit(lambda g: jnp.sum(1.5 * g + 1.0)).lower(big).compile()
    a = jax.random.normal(jax.random.key(7), (n, d + 2))
    b = jax.random.normal(jax.random.key(8), (m // 128, 128, d + 2))
    mm = (
        jax.jit(
            lambda a, b: jax.lax.scan(
                lambda c, bk: (c + jnp.sum(a @ bk.T), None), jnp.zeros(()), b
            )[0]
        )
        .lower(a, b)
        .compile()
    )
    timers = {
        'matmul': _timer(mm, (a, b), warm=False),
        'exp_in_cache': _timer(exp, (small,), warm=False),
        'memory_stream': _timer(stream, (big,), warm=False),
    }
    for impl, f in fields.items():
        timers[impl] = _timer(f, (x, y_pos, y_neg), warm=True)
    return timers


def _percentiles(values: list[float]) -> list[float]:
    """[10th, 50th, 90th] percentile of values."""
    q = statistics.quantiles(values, n=10, method='inclusive') if len(values) > 1 else []
    return [q[0], statistics.median(values), q[-1]] if q else [values[0]] * 3


def summarize(rows: list[dict]) -> dict:
    """{kind: [p10, p50, p90] ms} for KINDS, 'speedup': [p10, p50, p90] of naive / blocked per
    iteration, 'at_least_3x': the fraction of iterations with a speed-up >= 3, and
    'correlation_with_blocked': {kind: Pearson r over the iterations} (3+ iterations)."""
    out = {k: _percentiles([r[k] for r in rows]) for k in KINDS}
    ratios = [r['naive'] / r['blocked'] for r in rows]
    out['speedup'] = _percentiles(ratios)
    out['at_least_3x'] = sum(v >= 3 for v in ratios) / len(ratios)
    if len(rows) > 2:
        blocked = [r['blocked'] for r in rows]
        out['correlation_with_blocked'] = {
            k: _correlation([r[k] for r in rows], blocked) for k in KINDS if k != 'blocked'
        }
    return out


def _correlation(a: list[float], b: list[float]) -> float:
    """Pearson r of a and b (nan where either is constant)."""
    if len(set(a)) < 2 or len(set(b)) < 2:
        return float('nan')
    return statistics.correlation(a, b)


def plot(rows: list[dict], path: str) -> str:
    """Two panels over the iterations: each kind's time over its own median, and the speed-up
    naive / blocked with the 3x line. Writes a PNG to path and returns path."""
    fig = plotting.new_figure(figsize=(9, 5.2), dpi=110)
    top, bottom = fig.subplots(2, 1, sharex=True)
    it = range(len(rows))
    for k in KINDS:
        values = [r[k] for r in rows]
        med = statistics.median(values)
        top.plot(
            it, [v / med for v in values], '.-', lw=0.8, ms=3, label=f'{k} (median {med:.0f} ms)'
        )
    top.axhline(1.0, color='grey', lw=0.6)
    low, high = top.get_ylim()
    top.set_ylim(low, high + 0.45 * (high - low))  # room for the legend
    top.set_ylabel('time / own median')
    top.legend(fontsize=7, ncol=3, loc='upper left')
    top.set_title('4096 x 8192, D=64, one temperature: calls timed seconds apart', fontsize=9)
    ratios = [r['naive'] / r['blocked'] for r in rows]
    bottom.plot(it, ratios, 'o-', ms=3, lw=0.8, color='tab:purple')
    bottom.axhline(3.0, color='tab:red', ls='--', lw=0.8, label='3x')
    bottom.set_ylabel('naive / blocked')
    bottom.set_xlabel('iteration')
    bottom.legend(fontsize=7, loc='lower left')
    fig.tight_layout()
    return plotting.save_figure(fig, path)


def main(argv: list[str] | None = None) -> tuple[list[dict], dict]:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--iters', type=int, default=60, help='iterations (about 2.5 s each)')
    p.add_argument('--json', default=None, help='write the rows and the summary here')
    p.add_argument('--plot', default=None, help='write a PNG of the iterations here')
    p.add_argument(
        '--replot',
        default=None,
        help="summarize and plot the rows of an earlier run's --json file (no timing)",
    )
    args = p.parse_args(argv)
    if args.iters < 1:
        p.error(f'--iters must be >= 1, got {args.iters}')
    if args.replot:
        try:
            rows = json.loads(Path(args.replot).read_text())['rows']
        except (OSError, ValueError, KeyError) as e:
            p.error(f'--replot {args.replot}: not a contention.py --json file ({e})')
        if not rows or any(set(KINDS) - set(r) for r in rows):
            p.error(f'--replot {args.replot}: rows need the keys {", ".join(KINDS)}')
    else:
        rows = measure(args.iters)
    summary = summarize(rows)
    print(
        'percentiles 10 / 50 / 90 (ms): '
        + ', '.join(f'{k} ' + ' / '.join(f'{v:.1f}' for v in summary[k]) for k in KINDS)
    )
    print(
        'speed-up naive / blocked per iteration: '
        + ' / '.join(f'{v:.2f}' for v in summary['speedup'])
        + f'; at least 3x in {100 * summary["at_least_3x"]:.0f}% of the iterations'
    )
    if 'correlation_with_blocked' in summary:
        print(
            "correlation with the blocked field's time: "
            + ', '.join(f'{k} {v:.2f}' for k, v in summary['correlation_with_blocked'].items())
        )
    if args.json:
        Path(args.json).write_text(json.dumps({'rows': rows, 'summary': summary}, indent=1))
    if args.plot:
        print('plot:', plot(rows, args.plot))
    return rows, summary


def measure(iters: int) -> list[dict]:
    """Times KINDS iters times over (printing each iteration); returns the rows."""
    timers = make_timers()
    for t in timers.values():
        t()
    rows = []
    print('iter ' + ' '.join(f'{k:>13s}' for k in KINDS) + '  naive/blocked  (ms)')
    for i in range(iters):
        rows.append({k: timers[k]() for k in KINDS})
        r = rows[-1]
        print(
            f'{i:4d} '
            + ' '.join(f'{r[k]:13.1f}' for k in KINDS)
            + f'  {r["naive"] / r["blocked"]:13.2f}',
            flush=True,
        )
    return rows


if __name__ == '__main__':
    main()
