"""The field benchmarks' own logic (benchmarks/drift_field.py, benchmarks/contention.py): the
naive baseline and the grouped case agree with the library, the contention summary on
synthetic rows, refused arguments and the replot."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from _drift_reference import max_rel_error as _rel

from drift_jax import field

PAPER = (0.02, 0.05, 0.2)
BENCHMARKS = Path(__file__).resolve().parents[1] / 'benchmarks'


def _benchmark(name: str):
    """The module benchmarks/NAME.py (the folder is not a package)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


@pytest.mark.parametrize('paper', [True, False])
def test_benchmark_naive_baseline_equals_library(paper: bool) -> None:
    """The benchmark's naive baseline computes the same field as the library."""
    bench = _benchmark('drift_field')
    x, y_pos, y_neg, self_mask = bench.inputs(48, 112, 6)
    temps = PAPER if paper else (0.05,)
    want = bench.naive(x, y_pos, y_neg, temps, self_mask, paper)
    for form in ('dense', 'blocked', 'blocked_twoexp', 'blocked_yneg'):
        got = jax.jit(bench.library(form, 16, temps, self_mask, paper))(x, y_pos, y_neg)
        assert _rel(got, want) < 1e-4, form


def test_benchmark_grouped_case_agrees_across_impls(monkeypatch) -> None:
    """--groups: the vmapped naive baseline, all groups at once, and groups in chunks (two
    per chunk, one left over) give the same fields; records carry the group count."""
    bench = _benchmark('drift_field')
    monkeypatch.setattr(field.driver, 'GROUP_CHUNK_ENTRIES', 2 * 12 * 40)
    records = bench.run_case(
        12, 40, 5, PAPER, ['naive', 'dense_allgroups', 'dense'], None, 3, groups=3, rounds=2
    )
    assert [r['impl'] for r in records] == ['naive', 'dense_allgroups', 'dense']
    for r in records:
        assert r['groups'] == 3 and r['max_rel_diff'] < 1e-4, r
        assert len(r['round_ms']) == 2 and len(r['speedup_rounds']) == 2, r
    assert records[0]['speedup_rounds'] == [1.0, 1.0]
    assert field.driver.GROUP_CHUNK_ENTRIES == 2 * 12 * 40
    with pytest.raises(SystemExit):  # 2 x 2 < 5 timed runs
        bench.main(['--repeats', '2', '--rounds', '2'])


def test_contention_summary_percentiles_speedups_and_correlations() -> None:
    """benchmarks/contention.py's summary of per-iteration timings (synthetic rows)."""
    contention = _benchmark('contention')
    rows = [
        {
            'matmul': 10.0 + i,
            'exp_in_cache': 30.0 - i,
            'memory_stream': 5.0,
            'blocked': 100.0 + 10 * i,
            'naive': 400.0,
        }
        for i in range(11)
    ]
    s = contention.summarize(rows)
    np.testing.assert_allclose(s['blocked'], [110.0, 150.0, 190.0])
    np.testing.assert_allclose(s['speedup'], [400 / 190, 400 / 150, 400 / 110])
    assert s['at_least_3x'] == 4 / 11  # blocked 100, 110, 120 and 130 ms
    corr = s['correlation_with_blocked']
    np.testing.assert_allclose([corr['matmul'], corr['exp_in_cache']], [1.0, -1.0])
    assert np.isnan(corr['memory_stream']) and np.isnan(corr['naive'])
    assert contention.summarize(rows[:1])['speedup'] == [4.0] * 3


def test_contention_refuses_bad_arguments_with_messages(tmp_path, capsys) -> None:
    """--iters below 1 and a --replot file that is missing or not JSON exit with a usage
    message naming the problem (before anything is compiled)."""
    contention = _benchmark('contention')
    with pytest.raises(SystemExit):
        contention.main(['--iters', '0'])
    assert '--iters must be >= 1, got 0' in capsys.readouterr().err
    missing = tmp_path / 'missing.json'
    with pytest.raises(SystemExit):
        contention.main(['--replot', str(missing)])
    assert f'--replot {missing}: not a contention.py --json file' in capsys.readouterr().err
    garbled = tmp_path / 'garbled.json'
    garbled.write_text('{not json')
    with pytest.raises(SystemExit):
        contention.main(['--replot', str(garbled)])
    assert 'not a contention.py --json file' in capsys.readouterr().err


def test_contention_replot_writes_summary_and_png(tmp_path, capsys) -> None:
    """--replot summarizes an earlier --json file and --plot draws it; a file without the
    rows' keys is refused with its name."""
    contention = _benchmark('contention')
    rows = [
        {
            'matmul': 30.0,
            'exp_in_cache': 13.0,
            'memory_stream': 14.0 + i,
            'blocked': 120.0 + 40 * (i % 2),
            'naive': 420.0,
        }
        for i in range(6)
    ]
    src = tmp_path / 'c.json'
    src.write_text(json.dumps({'rows': rows}))
    png = tmp_path / 'sub' / 'c.png'
    _, summary = contention.main(['--replot', str(src), '--plot', str(png)])
    assert summary['at_least_3x'] == 0.5 and png.stat().st_size > 10_000
    assert 'at least 3x in 50% of the iterations' in capsys.readouterr().out
    src.write_text(json.dumps({'rows': [{'matmul': 1.0}]}))
    with pytest.raises(SystemExit):
        contention.main(['--replot', str(src)])
    assert 'rows need the keys' in capsys.readouterr().err
