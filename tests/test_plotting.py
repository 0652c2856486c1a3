"""Tests for drift_jax.plotting (PNG/GIF sizes, axis limits and scales, plotted data) and for
the post-run pictures of ``writers.finish_samples``.

Also checks that no pyplot figure is left open afterwards.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from drift_jax import plotting, writers


@pytest.fixture(autouse=True)
def no_open_figures():
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    yield
    assert set(plt.get_fignums()) == before == set()


@pytest.fixture
def saved_axes(monkeypatch):
    """State of the first axes of every figure written by ``plotting.save_figure``.

    Recorded before the figure is saved (and cleared): limits, y scale, title and lines.
    """
    recorded = []
    save = plotting.save_figure

    def record(fig, path):
        ax = fig.axes[0]
        recorded.append(
            {
                'xlim': ax.get_xlim(),
                'ylim': ax.get_ylim(),
                'yscale': ax.get_yscale(),
                'title': ax.get_title(),
                'lines': [
                    {'x': ln.get_xdata(), 'y': ln.get_ydata(), 'label': ln.get_label()}
                    for ln in ax.get_lines()
                ],
            }
        )
        return save(fig, path)

    monkeypatch.setattr(plotting, 'save_figure', record)
    return recorded


def _cloud(n: int, d: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def _png_size(path: str) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == 'PNG'
        im.load()
        return im.size


def test_plot_samples_2d(tmp_path):
    out = plotting.plot_samples(
        str(tmp_path / 's.png'), _cloud(300) + 1, _cloud(500, seed=1), title='step 0'
    )
    assert out == str(tmp_path / 's.png')
    assert _png_size(out) == (500, 500)


def test_plot_samples_explicit_limits_and_high_dim_title(tmp_path, saved_axes):
    plotting.plot_samples(
        str(tmp_path / 'sub' / 'hd.png'),
        _cloud(200, 5),
        _cloud(200, 5, seed=2),
        title='run',
        limits=(-3.0, 3.0),
    )
    plotting.plot_samples(
        str(tmp_path / 'lim.png'), _cloud(50), _cloud(50), limits=((-1, 1), (-2, 2))
    )
    hd, lim = saved_axes
    assert hd['xlim'] == pytest.approx((-3.0, 3.0)) and hd['ylim'] == pytest.approx((-3.0, 3.0))
    assert hd['title'] == 'run (first 2 of 5 dims)'
    assert lim['xlim'] == pytest.approx((-1.0, 1.0)) and lim['ylim'] == pytest.approx((-2.0, 2.0))
    assert _png_size(str(tmp_path / 'sub' / 'hd.png')) == (500, 500)


def test_plot_samples_default_limits_follow_data(tmp_path, saved_axes):
    # Data fill x in [0, 10] and y in [4, 6]: percentiles 0.5 / 99.5 are 0.05 / 9.95 and
    # 4.01 / 5.99, so the square view is centred on (5, 5) with half-width 9.9 / 2 * 1.2.
    rng = np.random.default_rng(0)
    data = np.stack([np.linspace(0, 10, 1001), rng.permutation(np.linspace(4, 6, 1001))], 1)
    far = data + 50.0  # generated samples far away do not move the view
    plotting.plot_samples(str(tmp_path / 'a.png'), far, data)
    # Without data the view follows the generated points: x in [0, 1], y in [0, 3] give
    # centre (0.5, 1.5) and half-width (2.985 - 0.015) / 2 * 1.2 from the wider y range.
    gen = np.stack([np.linspace(0, 1, 201), rng.permutation(np.linspace(0, 3, 201))], 1)
    plotting.plot_samples(str(tmp_path / 'b.png'), gen, None)
    with_data, alone = saved_axes
    assert with_data['xlim'] == pytest.approx((5 - 5.94, 5 + 5.94))
    assert with_data['ylim'] == pytest.approx((5 - 5.94, 5 + 5.94))
    assert alone['xlim'] == pytest.approx((0.5 - 1.782, 0.5 + 1.782))
    assert alone['ylim'] == pytest.approx((1.5 - 1.782, 1.5 + 1.782))


def test_plot_samples_rejects_1d(tmp_path):
    with pytest.raises(ValueError):
        plotting.plot_samples(str(tmp_path / 'bad.png'), np.zeros((10, 1)), np.zeros((10, 1)))


def test_drift_field_on_axes_subsamples():
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot(1, 1, 1)
    x = _cloud(1000)
    q = plotting.plot_drift_field(ax, x, -x, data=_cloud(100, seed=3), max_arrows=50)
    assert q.N == 50
    q2 = plotting.plot_drift_field(ax, x[:20], -x[:20])
    assert q2.N == 20


def test_save_drift_field(tmp_path):
    x = _cloud(600)
    out = plotting.save_drift_field(
        str(tmp_path / 'f.png'), x, 0.1 * -x, _cloud(300, seed=4), title='field'
    )
    assert _png_size(out) == (500, 500)
    _png_size(plotting.save_drift_field(str(tmp_path / 'g.png'), x, -x))


def test_make_gif(tmp_path):
    frames = []
    for i in range(4):
        shift = np.array([i * 0.5, 0.0], dtype=np.float32)
        frames.append(
            plotting.plot_samples(
                str(tmp_path / f'f{i}.png'), _cloud(100) + shift, _cloud(100, seed=5)
            )
        )
    # A frame of another size is resized to the first frame's size.
    odd = tmp_path / 'odd.png'
    Image.new('RGB', (123, 77), (0, 128, 255)).save(odd)
    frames.append(str(odd))
    out = plotting.make_gif(frames, str(tmp_path / 'anim.gif'), duration_ms=100)
    with Image.open(out) as im:
        assert im.format == 'GIF'
        assert im.n_frames == len(frames)
        assert im.size == _png_size(frames[0])


def test_make_gif_empty_raises(tmp_path):
    with pytest.raises(ValueError):
        plotting.make_gif([], str(tmp_path / 'x.gif'))


@pytest.mark.parametrize(
    'values,floor,log,yscale',
    [
        (np.exp(-np.linspace(0, 5, 20)), 0.01, True, 'log'),  # all positive
        (np.linspace(-0.01, 1.0, 20), None, True, 'symlog'),  # dips below zero
        (np.linspace(1.0, 2.0, 200), 1.5, False, 'linear'),
    ],
)
def test_plot_metric_curve(tmp_path, saved_axes, values, floor, log, yscale):
    steps = np.arange(len(values)) * 100
    out = plotting.plot_metric_curve(
        str(tmp_path / 'm.png'),
        steps,
        values,
        floor=floor,
        ylabel='energy distance',
        title='ED',
        log=log,
    )
    assert _png_size(out) == (600, 400)
    (axes,) = saved_axes
    assert axes['yscale'] == yscale
    assert axes['title'] == 'ED'
    curve = axes['lines'][0]
    assert curve['label'] == 'energy distance'
    np.testing.assert_allclose(curve['x'], steps)
    np.testing.assert_allclose(curve['y'], values)
    floors = [ln for ln in axes['lines'] if ln['label'] == 'noise floor']
    if floor is None:
        assert not floors
    else:
        (line,) = floors
        np.testing.assert_allclose(line['y'], floor)


def test_plot_metric_curve_rejects_mismatched_lengths(tmp_path):
    with pytest.raises(ValueError, match='differ in length'):
        plotting.plot_metric_curve(str(tmp_path / 'm.png'), [0, 1, 2], [1.0, 2.0])


@pytest.mark.parametrize(
    'shape,nrow,expected_wh',
    [
        ((10, 8, 6, 3), 4, (4 * 8 + 2, 3 * 10 + 2)),  # 4 per row -> 3 rows
        ((9, 5, 5), None, (3 * 7 + 2, 3 * 7 + 2)),  # grayscale, default 3 x 3
        ((3, 4, 4, 1), 5, (3 * 6 + 2, 1 * 6 + 2)),  # nrow > n -> one row of 3
        ((2, 6, 6, 4), 1, (8 + 2, 2 * 8 + 2)),  # RGBA, one per row
    ],
)
def test_image_grid_layout(tmp_path, shape, nrow, expected_wh):
    images = np.random.default_rng(0).uniform(size=shape)
    out = plotting.image_grid(images, str(tmp_path / 'grid.png'), nrow=nrow)
    assert _png_size(out) == expected_wh


def test_image_grid_pixels(tmp_path):
    images = np.zeros((2, 3, 3, 3))
    images[1] = 1.0
    out = plotting.image_grid(images, str(tmp_path / 'px.png'), nrow=2, padding=0)
    with Image.open(out) as im:
        arr = np.asarray(im.convert('RGB'))
    assert arr.shape == (3, 6, 3)
    assert arr[:, :3].max() == 0 and arr[:, 3:].min() == 255


def test_image_grid_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError):
        plotting.image_grid(np.zeros((0, 4, 4, 3)), str(tmp_path / 'e.png'))
    with pytest.raises(ValueError):
        plotting.image_grid(np.zeros((2, 4, 4, 2)), str(tmp_path / 'e.png'))


# ---------------------------------------------------------------------------------------------
# After a run: writers.finish_samples draws the GIF and the headline metric curve.


def _write_events(workdir, events) -> None:
    with open(workdir / 'metrics.jsonl', 'w') as f:
        for e in events:
            f.write(json.dumps({**e, 'wall_time': 0.0}) + '\n')


# Train events (losses) interleaved with eval events; the evals also carry an MAE loss, which
# must lose to the ratio (energy_ratio comes first in writers.HEADLINE_METRICS).
RUN_EVENTS = [
    {'step': 10, 'loss': 3.0},
    {'step': 20, 'loss': 2.0},
    {'step': 20, 'energy_distance': 0.8, 'energy_ratio': 40.0, 'mae_test_loss': 0.5},
    {'step': 30, 'loss': 1.5},
    {'step': 40, 'energy_distance': 0.1, 'energy_ratio': 5.0, 'mae_test_loss': 0.4},
    {'step': 60, 'energy_distance': 0.03, 'energy_ratio': 1.5, 'mae_test_loss': 0.3},
]


@pytest.fixture
def metric_curves(monkeypatch):
    """Arguments of every ``plotting.plot_metric_curve`` call (the PNG is still written)."""
    calls = []
    plot = plotting.plot_metric_curve

    def record(path, steps, values, **kwargs):
        calls.append({'path': path, 'steps': list(steps), 'values': list(values), **kwargs})
        return plot(path, steps, values, **kwargs)

    monkeypatch.setattr(plotting, 'plot_metric_curve', record)
    return calls


def test_finish_samples_plots_headline_ratio_over_eval_events(tmp_path, metric_curves):
    _write_events(tmp_path, RUN_EVENTS)
    sample_dir = tmp_path / 'samples'
    assert writers.finish_samples(str(sample_dir), workdir=str(tmp_path)) is None  # no frames
    (call,) = metric_curves
    assert call['path'] == str(sample_dir / 'metrics.png')
    assert call['steps'] == [20, 40, 60]
    assert call['values'] == [40.0, 5.0, 1.5]
    assert call['floor'] == 1.0
    assert call['ylabel'] == 'energy_ratio'


@pytest.mark.parametrize(
    'key,floor', [('fd_ratio', 1.0), ('mae_test_loss', None)], ids=['images', 'mae']
)
def test_finish_samples_headline_fallbacks(tmp_path, metric_curves, key, floor):
    _write_events(
        tmp_path,
        [{'step': 5, 'loss': 1.0}, {'step': 5, key: 9.0}, {'step': 9, key: 3.0}],
    )
    writers.finish_samples(str(tmp_path / 'samples'), str(tmp_path))
    (call,) = metric_curves
    assert (call['steps'], call['values']) == ([5, 9], [9.0, 3.0])
    assert call['floor'] == floor and call['ylabel'] == key


def test_finish_samples_writes_metric_png_and_gif(tmp_path):
    _write_events(tmp_path, RUN_EVENTS)
    sample_dir = tmp_path / 'samples'
    for i in range(2):
        plotting.plot_samples(str(sample_dir / f'step_{i:07d}.png'), _cloud(50) + i, _cloud(50))
    gif = writers.finish_samples(str(sample_dir), workdir=str(tmp_path))
    assert gif == str(sample_dir / 'evolution.gif')
    with Image.open(gif) as im:
        assert im.n_frames == 2
    png = str(sample_dir / 'metrics.png')
    assert _png_size(png) == (600, 400)
    with Image.open(png) as im:
        rgb = np.asarray(im.convert('RGB')).astype(np.int64)
    # The curve is drawn in matplotlib's first colour (#1f77b4): about 900 pixels of it here,
    # against about 70 (the legend entry) when no point is drawn.
    curve = np.all(np.abs(rgb - np.array([0x1F, 0x77, 0xB4])) < 40, axis=-1)
    assert curve.sum() > 400


def test_finish_samples_without_metrics_draws_no_curve(tmp_path):
    sample_dir = tmp_path / 'samples'
    plotting.plot_samples(str(sample_dir / 'step_0000001.png'), _cloud(50), _cloud(50))
    assert writers.finish_samples(str(sample_dir)) == str(sample_dir / 'evolution.gif')
    assert not (sample_dir / 'metrics.png').exists()  # no workdir given
    writers.finish_samples(str(sample_dir), workdir=str(tmp_path))  # no metrics.jsonl
    assert not (sample_dir / 'metrics.png').exists()
    _write_events(tmp_path, [{'step': 1, 'loss': 1.0}])  # train events only
    writers.finish_samples(str(sample_dir), workdir=str(tmp_path))
    assert not (sample_dir / 'metrics.png').exists()
