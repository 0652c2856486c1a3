"""Tests for drift_jax.plotting: every function writes a readable PNG or GIF of the right size.

Also checks that no pyplot figure is left open afterwards.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from drift_jax import plotting


@pytest.fixture(autouse=True)
def no_open_figures():
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    yield
    assert set(plt.get_fignums()) == before == set()


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


def test_plot_samples_high_dim_and_limits(tmp_path):
    out = plotting.plot_samples(
        str(tmp_path / 'sub' / 'hd.png'),
        _cloud(200, 5),
        _cloud(200, 5, seed=2),
        limits=(-3.0, 3.0),
    )
    _png_size(out)
    out2 = plotting.plot_samples(
        str(tmp_path / 'lim.png'), _cloud(50), _cloud(50), limits=((-1, 1), (-2, 2))
    )
    _png_size(out2)


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
    'values,floor,log',
    [
        (np.exp(-np.linspace(0, 5, 20)), 0.01, True),
        (np.linspace(-0.01, 1.0, 20), None, True),
        (np.linspace(1.0, 2.0, 200), 1.5, False),
    ],
)
def test_plot_metric_curve(tmp_path, values, floor, log):
    steps = np.arange(len(values)) * 100
    out = plotting.plot_metric_curve(
        str(tmp_path / 'm.png'), steps, values, floor=floor, ylabel='energy distance', log=log
    )
    assert _png_size(out) == (600, 400)


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
