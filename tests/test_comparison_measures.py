"""The comparison's measures of one run (drift_jax/comparison_measures.py)."""

from __future__ import annotations

import types

import numpy as np
import pytest

from drift_jax import comparison, comparison_measures


class _SlowSampler:
    """A method whose `sample` advances a fake clock by `seconds` per call."""

    def __init__(self, clock, seconds):
        self.clock, self.seconds, self.calls = clock, seconds, []

    def sample(self, params, key, n, labels=None):
        self.calls.append(n)
        self.clock[0] += self.seconds
        return np.zeros((n, 2), np.float32)


@pytest.fixture
def fake_clock(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(comparison_measures.time, 'perf_counter', lambda: clock[0])
    return clock


def test_samples_per_second_times_repeats_calls_after_a_warm_up(fake_clock):
    method = _SlowSampler(fake_clock, 0.5)
    rate = comparison_measures.samples_per_second(types.SimpleNamespace(method=method), {}, 100)
    assert method.calls == [100] * 4  # one warm-up call, three timed
    assert rate == pytest.approx(300 / 1.5)


def test_samples_per_second_stops_timing_after_max_seconds(fake_clock):
    method = _SlowSampler(fake_clock, 40.0)
    run = types.SimpleNamespace(method=method)
    rate = comparison_measures.samples_per_second(run, {}, 10, repeats=3, max_seconds=60.0)
    assert len(method.calls) == 3  # warm-up, then two timed calls: 80 s passed after the second
    assert rate == pytest.approx(20 / 80.0)
    method.calls.clear()
    rate = comparison_measures.samples_per_second(run, {}, 10, repeats=3, max_seconds=1.0)
    assert len(method.calls) == 2  # at least one timed call
    assert rate == pytest.approx(10 / 40.0)


@pytest.mark.parametrize(
    'kwargs, message',
    [
        ({'batch': 0}, 'batch and repeats must be >= 1, got 0 and 3'),
        ({'batch': 5, 'repeats': 0}, 'batch and repeats must be >= 1, got 5 and 0'),
        ({'batch': 5, 'max_seconds': 0.0}, 'max_seconds must be > 0 or None, got 0.0'),
    ],
)
def test_samples_per_second_refuses_bad_arguments(kwargs, message):
    method = _SlowSampler([0.0], 1.0)
    with pytest.raises(ValueError, match=message):
        comparison_measures.samples_per_second(types.SimpleNamespace(method=method), {}, **kwargs)
    assert method.calls == []  # refused before sampling


def test_count_parameters_leaves_out_the_discriminator():
    params = {
        'generator': {'w': np.zeros((3, 4)), 'b': np.zeros(4)},
        'discriminator': {'w': np.zeros((100, 100))},
    }
    assert comparison_measures.count_parameters(params) == (16, ('generator',))


def test_numbers_keeps_numeric_metrics_only():
    record = {'step': 3, 'fd': 1.5, 'wall_time': 9.0, 'nan_stop': False, 'note': 'x'}
    assert comparison_measures.numbers(record) == {'step': 3, 'fd': 1.5}


def test_comparison_re_exports_the_measures():
    for name in ('score_sampler', 'samples_per_second', 'count_parameters', 'time_curve'):
        assert getattr(comparison, name) is getattr(comparison_measures, name)


@pytest.mark.parametrize(
    'kwargs, message',
    [
        ({'throughput_batch': 0}, 'throughput_batch and throughput_repeats must be >= 1'),
        ({'throughput_seconds': -1.0}, 'throughput_seconds must be > 0 or None, got -1.0'),
    ],
)
def test_compare_refuses_bad_throughput_settings_before_training(tmp_path, kwargs, message):
    with pytest.raises(comparison.ComparisonError, match=message):
        comparison.compare(
            str(tmp_path / 'out'), 'toy', data=['spiral'], methods=['drifting'], **kwargs
        )
    assert not (tmp_path / 'out').exists()
