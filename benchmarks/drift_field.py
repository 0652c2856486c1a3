"""Benchmark of the drifting-field engine: naive dense baseline vs dense vs blocked forms.

Times each case (--rounds rounds over its impls, each timing --repeats runs of an impl after a
warm-up, block_until_ready; the median over all runs), and reports
kernel entries/s, GFLOP/s, % of a same-shape float32 matmul measured in the same run, peak
memory from XLA's compiled memory analysis and the speedup over the naive baseline.

    python benchmarks/drift_field.py                 # default sizes (< 10 min on 2 cores)
    python benchmarks/drift_field.py --big --json /tmp/drift_bench.json
    # many small groups, as in the feature-space loss (one group per class and token):
    python benchmarks/drift_field.py --groups 1960 --n 32 --m 128 --dims 16 \
        --temps 0.02,0.05,0.2 --options paper --impls naive,dense_allgroups,dense
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from drift_jax import field as field_lib  # noqa: E402

PAPER = (0.02, 0.05, 0.2)


def naive(x, y_pos, y_neg, temps, self_mask=True, paper=True):
    """The straightforward dense formulation (kept verbatim as the baseline).

    cdist by expansion, then per temperature: exp of the masked logits through a row and
    a column log_softmax, geometric mean in log space (no 1e-6 floor), the two matmuls.
    paper=True: distances divided by their mean over valid pairs (self pairs masked) and
    each temperature's field divided by its RMS; paper=False: the simple form (raw
    distances, fields summed as they are).
    """
    n, m_neg = x.shape[0], y_neg.shape[0]
    targets = jnp.concatenate([y_neg, y_pos], 0)
    sq = jnp.sum(x**2, -1)[:, None] + jnp.sum(targets**2, -1)[None] - 2 * x @ targets.T
    dist = jnp.sqrt(jnp.maximum(sq, 1e-12))
    eye = jnp.arange(n)[:, None] == jnp.arange(targets.shape[0])[None]
    eye = eye & self_mask
    scale = 1.0
    if paper:
        scale = jnp.sum(jnp.where(eye, 0.0, dist)) / (dist.size - self_mask * min(n, m_neg))
        dist = dist / scale
    y_scaled = targets * (math.sqrt(x.shape[1]) / scale) if paper else targets
    v = 0.0
    for t in temps:
        logits = jnp.where(eye, -1e30, -dist / t)
        log_a = 0.5 * (jax.nn.log_softmax(logits, 1) + jax.nn.log_softmax(logits, 0))
        a = jnp.where(eye, 0.0, jnp.exp(log_a))
        a_neg, a_pos = a[:, :m_neg], a[:, m_neg:]
        v_t = a_neg.sum(1, keepdims=True) * (a_pos @ y_scaled[m_neg:]) - a_pos.sum(
            1, keepdims=True
        ) * (a_neg @ y_scaled[:m_neg])
        v = v + (v_t / jnp.sqrt(jnp.mean(v_t**2)) if paper else v_t)
    return v * (scale / math.sqrt(x.shape[1])) if paper else v


def library(form, block_size, temps, self_mask=True, paper=True):
    """compute_drift_field with the dense or blocked form forced (paper or simple options).

    With self_mask the negatives are the queries themselves (see `inputs`), and the library
    is called as the train step calls it, with y_neg=None (which lets the blocked form use
    the symmetry of the negatives' distances in its first pass).

    form 'dense_allgroups': the dense form with every group vectorised at once (no chunks
    of groups, see field_lib.group_chunk), to show what the chunking buys; 'blocked_twoexp':
    the blocked form without its one-exp block terms (one_exp.one_exp_terms);
    'blocked_yneg': the blocked form given the negatives explicitly (y_neg=x, so no
    symmetric first pass).
    """
    opts = field_lib.DriftOptions(
        temperatures=temps,
        self_mask=self_mask,
        block_size=block_size,
        scale_dist=paper,
        normalize_drift=paper,
    )
    forms = {'dense_allgroups': 'dense', 'blocked_twoexp': 'blocked', 'blocked_yneg': 'blocked'}

    def field(x, y_pos, y_neg):
        no_negs = self_mask and form != 'blocked_yneg'
        _, v, coord_scale, _, _ = field_lib.driver.field_scaled(
            x,
            y_pos,
            None if no_negs else y_neg,
            None,
            None,
            opts,
            form=forms.get(form, form),
            chunk_groups=form != 'dense_allgroups',
            one_exp=form != 'blocked_twoexp',
        )
        v = v * coord_scale[:, None, None]
        return v if x.ndim == 3 else v[0]

    return field


def inputs(n, m, d, seed=0, groups=1):
    """(x [n, d], y_pos, y_neg, self_mask): m - n positives and the queries as negatives
    (self-masked, as in training) when m > n; else m / 2 random negatives and positives.
    With groups > 1 every array gets a leading [groups] axis."""
    k = jax.random.split(jax.random.key(seed), 3)
    g = (groups,) if groups > 1 else ()
    x = jax.random.normal(k[0], g + (n, d))
    if m > n:
        return x, jax.random.normal(k[1], g + (m - n, d)) + 0.3, x, True
    y_neg = jax.random.normal(k[2], g + (m // 2, d))
    return x, jax.random.normal(k[1], g + (m - m // 2, d)) + 0.3, y_neg, False


def peak_mb(compiled):
    """Temp + output bytes of XLA's compiled memory analysis, in MiB (None if absent)."""
    try:
        mem = compiled.memory_analysis()
        return (mem.temp_size_in_bytes + mem.output_size_in_bytes) / 2**20
    except Exception:  # noqa: BLE001 - not every backend reports it.
        return None


def timed(fns, repeats, rounds=1):
    """Median wall and process-CPU ms of each compiled fn, and its per-round medians:
    {name: (ms, cpu_ms, [round ms, ...])}.

    In each round every fn in turn gets one warm-up call, then `repeats` consecutive timed
    calls; the medians are over all rounds' timed calls. (Interleaving the fns call by call
    made each pay for the previous one's memory traffic: in an ad-hoc script on 2026-12-01
    the blocked D=64 field took 252 ms right after the naive one and 138-162 ms after
    itself. Rounds spread each fn's runs over the whole case, so that a slow spell of this
    shared machine does not land on one fn only.)
    """
    walls = {k: [] for k in fns}
    cpus = {k: [] for k in fns}
    per_round = {k: [] for k in fns}
    for _ in range(rounds):
        for name, (f, args) in fns.items():
            jax.block_until_ready(f(*args))
            round_walls = []
            for _ in range(repeats):
                c0, t0 = time.process_time(), time.perf_counter()
                jax.block_until_ready(f(*args))
                round_walls.append(time.perf_counter() - t0)
                cpus[name].append(time.process_time() - c0)
            walls[name] += round_walls
            per_round[name].append(1e3 * statistics.median(round_walls))
    return {
        k: (1e3 * statistics.median(walls[k]), 1e3 * statistics.median(cpus[k]), per_round[k])
        for k in fns
    }


def run_case(n, m, d, temps, impls, block_size, repeats, paper=True, groups=1, rounds=1):
    """Benchmarks every impl on one (n, m, d, temps, options) case; returns records.

    groups > 1: that many independent [n] x [m] problems in one call (the naive baseline
    vmapped over them), and the reference matmul is the same-shape batched product.
    """
    x, y_pos, y_neg, self_mask = inputs(n, m, d, groups=groups)
    # The same N x D x M matmul (per group), timed alongside; capped at 8192 x 8192 outputs.
    g = (groups,) if groups > 1 else ()
    a = jax.random.normal(jax.random.key(1), g + (min(n, 8192), d))
    b = jax.random.normal(jax.random.key(2), g + (d, min(m, 8192)))
    fns = {'matmul': (jax.jit(jnp.matmul).lower(a, b).compile(), (a, b))}
    for impl in impls:
        if impl == 'naive':

            def fn(x, yp, yn):
                one = lambda x, yp, yn: naive(x, yp, yn, temps, self_mask, paper)  # noqa: E731
                return jax.vmap(one)(x, yp, yn) if groups > 1 else one(x, yp, yn)
        else:
            fn = library(impl, block_size, temps, self_mask, paper)
        fns[impl] = (jax.jit(fn).lower(x, y_pos, y_neg).compile(), (x, y_pos, y_neg))
    times = timed(fns, repeats, rounds)
    mm_gflops = groups * 2 * a.shape[-2] * b.shape[-1] * d / (times['matmul'][0] * 1e-3) / 1e9
    records, outputs = [], {}
    for impl in impls:
        compiled, args = fns[impl]
        ms, cpu_ms, round_ms = times[impl]
        outputs[impl] = compiled(*args)
        flops = (2 + 2 * len(temps)) * n * m * d * groups
        records.append(
            dict(
                impl=impl,
                options='paper' if paper else 'simple',
                groups=groups,
                n=n,
                m=m,
                d=d,
                temps=list(temps),
                ms=ms,
                cpu_ms=cpu_ms,
                round_ms=round_ms,
                entries_per_s=groups * n * m * len(temps) / (ms * 1e-3),
                gflops=flops / (ms * 1e-3) / 1e9,
                pct_matmul=100 * flops / (ms * 1e-3) / 1e9 / mm_gflops,
                matmul_gflops=mm_gflops,
                peak_mb=peak_mb(compiled),
                speedup_vs_naive=None,
                speedup_rounds=None,
                max_rel_diff=None,
            )
        )
    ref = outputs.get('dense', outputs.get('naive'))
    base = next((r for r in records if r['impl'] == 'naive'), None)
    for r in records:
        if base is not None:
            r['speedup_vs_naive'] = base['ms'] / r['ms']
            r['speedup_rounds'] = [
                b / t for b, t in zip(base['round_ms'], r['round_ms'], strict=True)
            ]
        if ref is not None:
            out = outputs[r['impl']]
            r['max_rel_diff'] = float(jnp.max(jnp.abs(out - ref)) / jnp.max(jnp.abs(ref)))
    return records


def fmt(v, spec):
    return '-' if v is None else format(v, spec)


def print_table(records):
    head = (
        f'{"impl":15s} {"options":7s} {"G":>5s} {"n":>6s} {"m":>6s} {"d":>4s} {"T":>2s} '
        f'{"ms":>9s} '
        f'{"cpu_ms":>9s} '
        f'{"Mentry/s":>9s} {"GFLOP/s":>8s} {"%mm":>6s} {"peak_MB":>8s} {"vs naive":>8s} '
        f'{"rel_diff":>9s} {"rounds vs naive":>15s}'
    )
    # %mm: % of the same-shape matmul's GFLOP/s; rel_diff: vs dense (or naive); rounds vs
    # naive: the smallest and largest speed-up among the rounds' medians.
    print(head)
    print('-' * len(head))
    for r in records:
        print(
            f'{r["impl"]:15s} {r["options"]:7s} {r.get("groups", 1):5d} {r["n"]:6d} '
            f'{r["m"]:6d} {r["d"]:4d} '
            f'{len(r["temps"]):2d} {r["ms"]:9.1f} {r["cpu_ms"]:9.1f} '
            f'{r["entries_per_s"] / 1e6:9.1f} '
            f'{r["gflops"]:8.1f} {r["pct_matmul"]:6.1f} {fmt(r["peak_mb"], "8.0f")} '
            f'{fmt(r["speedup_vs_naive"], "8.2f")} {fmt(r["max_rel_diff"], "9.1e")} '
            f'{_spread(r["speedup_rounds"]):>15s}',
            flush=True,
        )


def _spread(values):
    """'lo-hi' of a list of speed-ups ('-' when there is none)."""
    if not values:
        return '-'
    return f'{min(values):.2f}-{max(values):.2f}'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--n', type=int, default=4096, help='queries')
    p.add_argument(
        '--m',
        type=int,
        default=8192,
        help='targets: the n queries as negatives + m - n positives (if m > n)',
    )
    p.add_argument('--dims', default='2,64,784', help='comma-separated dimensions')
    p.add_argument(
        '--temps',
        nargs='+',
        default=['0.05', ','.join(map(str, PAPER))],
        help='temperature sets, each comma-separated',
    )
    p.add_argument(
        '--impls',
        default='naive,dense,blocked',
        help='naive, dense, blocked, dense_allgroups (dense, groups not '
        'chunked), blocked_twoexp (blocked, two exps per entry everywhere), '
        'blocked_yneg (blocked, negatives passed explicitly: no symmetric first '
        'pass)',
    )
    p.add_argument(
        '--groups',
        type=int,
        default=1,
        help='independent problems per call (the grouped [G, N, D] form)',
    )
    p.add_argument(
        '--options',
        default='paper,simple',
        help='paper: scale and RMS normalisation (every temperature set); simple: '
        'raw distances, no RMS normalisation (one-temperature sets only, the '
        "toy configs' form)",
    )
    p.add_argument('--block_size', type=int, default=0, help='0: automatic')
    p.add_argument(
        '--repeats',
        type=int,
        default=3,
        help='timed runs of each impl per round (rounds x repeats >= 5)',
    )
    p.add_argument(
        '--rounds',
        type=int,
        default=3,
        help='rounds over the impls of a case; times are medians over all runs',
    )
    p.add_argument(
        '--big',
        action='store_true',
        help='also run 65536 x 65536, D=64, paper temperatures, blocked only',
    )
    p.add_argument('--json', default=None, help='write the records here')
    args = p.parse_args(argv)
    if args.repeats < 1 or args.rounds < 1 or args.repeats * args.rounds < 5:
        p.error(
            f'need --repeats >= 1, --rounds >= 1 and at least 5 timed runs in all, got '
            f'--repeats {args.repeats} --rounds {args.rounds}'
        )
    if args.groups < 1:
        p.error('--groups must be >= 1')
    impls = args.impls.split(',')
    temp_sets = [tuple(float(t) for t in s.split(',')) for s in args.temps]
    print(
        f'jax {jax.__version__} on {jax.default_backend()} ({platform.processor() or "?"},'
        f' {jax.devices()[0].device_kind}); times: median of {args.rounds} rounds x'
        f' {args.repeats} runs; peak_MB:'
        ' XLA compiled memory analysis, temp + output',
        flush=True,
    )
    records = []
    option_sets = args.options.split(',')
    for d in (int(v) for v in args.dims.split(',')):
        for temps in temp_sets:
            for options in option_sets:
                if options == 'simple' and len(temps) > 1:
                    continue
                records += run_case(
                    args.n,
                    args.m,
                    d,
                    temps,
                    impls,
                    args.block_size or None,
                    args.repeats,
                    paper=options == 'paper',
                    groups=args.groups,
                    rounds=args.rounds,
                )
    print_table(records)
    if args.big:
        # One implementation, ~70 s a call here: one round of 5 timed calls.
        big = run_case(
            65536,
            65536,
            64,
            PAPER,
            ['blocked'],
            args.block_size or None,
            max(5, args.repeats),
            rounds=1,
        )
        print_table(big)
        records += big
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))
    return records


if __name__ == '__main__':
    main()
