"""NCSN: noise levels, the two score-matching losses against hand computations, annealed
Langevin dynamics with an exact score, NFE counts, bad options and a tiny run."""

from __future__ import annotations

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drift_jax import defaults, train
from drift_jax.methods import ncsn


def test_geometric_sigmas_ends_and_ratio():
    s = ncsn.geometric_sigmas(5.0, 0.01, 10)
    assert s[0] == pytest.approx(5.0) and s[-1] == pytest.approx(0.01)
    np.testing.assert_allclose(s[1:] / s[:-1], (0.01 / 5.0) ** (1 / 9), rtol=1e-12)
    assert list(ncsn.geometric_sigmas(2.0, 0.1, 1)) == [2.0]


def test_max_pairwise_distance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(700, 3))
    want = max(np.linalg.norm(a - b) for a in x[:50] for b in x)  # a subset of rows, first
    full = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1)).max()
    assert ncsn.max_pairwise_distance(x, chunk=64) == pytest.approx(full, rel=1e-9)
    assert full >= want


def test_dsm_loss_is_the_weighted_distance_to_the_dsm_target():
    rng = np.random.default_rng(1)
    x, z = (jnp.asarray(rng.normal(size=(6, 3)), jnp.float32) for _ in range(2))
    sigma = jnp.asarray(rng.uniform(0.1, 2.0, size=6), jnp.float32)
    score = lambda a, s: jnp.tanh(a) * 0.3 - a / (1.0 + s[:, None])  # noqa: E731
    x_t = x + sigma[:, None] * z
    target = -(x_t - x) / sigma[:, None] ** 2  # -(x~ - x) / sigma^2
    want = np.mean(sigma**2 / 2 * np.sum((score(x_t, sigma) - target) ** 2, axis=1))
    assert float(ncsn.dsm_loss(score, x, sigma, z)) == pytest.approx(float(want), rel=1e-5)


def test_ssm_loss_of_a_linear_score():
    """s(x) = A x: v^T J v = v^T A v, so the loss is sigma^2 (v^T A v + (v^T A x~)^2 / 2)."""
    rng = np.random.default_rng(2)
    a = jnp.asarray(rng.normal(size=(3, 3)), jnp.float32)
    x, z, v = (jnp.asarray(rng.normal(size=(5, 3)), jnp.float32) for _ in range(3))
    sigma = jnp.asarray(rng.uniform(0.2, 1.0, size=5), jnp.float32)
    score = lambda b, s: b @ a.T  # noqa: E731
    x_t = x + sigma[:, None] * z
    per = np.einsum('bi,ij,bj->b', v, a, v) + 0.5 * np.einsum('bi,bi->b', v, x_t @ a.T) ** 2
    want = np.mean(np.asarray(sigma) ** 2 * per)
    assert float(ncsn.ssm_loss(score, x, sigma, z, v)) == pytest.approx(float(want), rel=1e-5)


def tiny_config(**overrides):
    c = defaults.toy_config()
    c.method = 'ncsn'
    del c['method_settings']  # the tiny sizes below, not the tuned toy settings
    c.denoiser.width, c.denoiser.depth = 32, 2
    c.ncsn.levels, c.ncsn.steps_per_level = 4, 3
    c.train.steps, c.train.batch_size = 6, 64
    c.train.log_every, c.train.checkpoint_every = 3, 3
    c.eval.every, c.eval.num_samples, c.eval.plot_points, c.eval.draws = 6, 100, 100, 2
    for key, value in overrides.items():
        section, _, name = key.rpartition('.')
        (c[section] if section else c)[name] = value
    return c


@pytest.mark.parametrize(
    'overrides, message',
    [
        ({'ncsn.sigma_max': 0.5, 'ncsn.sigma_min': 0.5}, 'sigma_min=0.5 must be below'),
        ({'ncsn.levels': 0}, 'ncsn.levels must be a positive integer, got 0'),
        ({'ncsn.loss': 'ism'}, "ncsn.loss='ism' is unknown"),
        ({'ncsn.steps_per_level': 0}, 'steps_per_level must be a positive integer'),
    ],
)
def test_bad_options_are_refused_before_any_compile(overrides, message):
    with pytest.raises(ValueError, match=message):
        train.validate_config(tiny_config(**overrides))


def test_sigma_min_above_the_data_scale_is_refused():
    with pytest.raises(ValueError, match=r'sigma_min=50.0 must be below sigma_1='):
        train.make_run(tiny_config(**{'ncsn.sigma_min': 50.0}))


def test_annealed_langevin_with_the_exact_score_samples_the_data(monkeypatch):
    """Data N(0, I): the score of the noised data is -x / (1 + sigma^2); the sampler must end
    near unit variance from its start at sigma_1."""
    config = tiny_config(
        **{
            'ncsn.levels': 8,
            'ncsn.sigma_max': 10.0,
            'ncsn.sigma_min': 0.05,
            'ncsn.step_eps': 5e-3,
            'ncsn.final_denoise': False,
        }
    )
    run = train.make_run(config)
    method = run.method
    monkeypatch.setattr(method, 'score', lambda p, x, s, labels=None: -x / (1.0 + s[:, None] ** 2))
    x = method.sample({'score': {}}, jax.random.PRNGKey(0), 4000, steps=100)
    assert method.nfe(steps=100) == 800
    assert np.abs(x.mean(0)).max() < 0.1
    np.testing.assert_allclose(x.std(0), 1.0, atol=0.08)


def test_toy_run_nfe_resume_and_sampling(tmp_path):
    result = train.train_and_evaluate(tiny_config(), str(tmp_path / 'w'))
    crashed = str(tmp_path / 'crashed')
    shutil.copytree(str(tmp_path / 'w'), crashed)
    shutil.rmtree(os.path.join(crashed, 'checkpoints', '6'))
    train.train_and_evaluate(tiny_config(), crashed)
    leaves = [jax.tree.leaves(train.load_run(w)[1]) for w in (str(tmp_path / 'w'), crashed)]
    for a, b in zip(*leaves, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert result['nfe'] == 4 * 3 + 1 and np.isfinite(result['energy_ratio'])
    run, state, _ = train.load_run(str(tmp_path / 'w'))
    assert float(run.method.sigmas[0]) > 1.0 and float(run.method.sigmas[-1]) == pytest.approx(0.01)
    x = train.sample(run, state.ema_params, jax.random.PRNGKey(1), 20, steps=2)
    assert x.shape == (20, 2) and np.all(np.isfinite(x))
    assert run.method.nfe(steps=2) == 9


def test_sliced_score_matching_trains(tmp_path):
    result = train.train_and_evaluate(tiny_config(**{'ncsn.loss': 'ssm'}), str(tmp_path / 'w'))
    assert np.isfinite(result['energy_ratio'])


def test_guidance_mixes_conditional_and_null_predictions():
    from drift_jax.methods import conditioning

    calls = []

    def fn(labels):
        calls.append(np.asarray(labels))
        return jnp.where(labels[:, None] == 10, 1.0, 3.0) * jnp.ones((3, 2))

    labels = jnp.asarray([0, 4, 9])
    np.testing.assert_allclose(conditioning.guided(fn, labels, 1.0, 10), 3.0)
    assert len(calls) == 1 and conditioning.guided_nfe(7, 1.0) == 7
    # out_u + alpha (out_c - out_u) = 1 + 2.5 (3 - 1)
    np.testing.assert_allclose(conditioning.guided(fn, labels, 2.5, 10), 6.0)
    assert list(calls[-1]) == [10, 10, 10] and conditioning.guided_nfe(7, 2.5) == 14
    with pytest.raises(ValueError, match='alpha must be >= 0, got -1.0'):
        conditioning.guidance_scale(-1.0, 1.0, 10)
    with pytest.raises(ValueError, match='applies to labelled data only'):
        conditioning.guidance_scale(2.0, 1.0, 0)
    dropped = conditioning.drop_labels(jax.random.PRNGKey(0), jnp.zeros(4000, jnp.int32), 0.1, 10)
    assert 0.08 < float(jnp.mean(dropped == 10)) < 0.12 and set(np.unique(dropped)) == {0, 10}
