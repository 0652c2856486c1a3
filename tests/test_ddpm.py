"""DDPM and DDIM: the forward process, the posterior, the samplers against closed forms,
NFE counts, bad options refused before any compile, and tiny runs through the trainer."""

from __future__ import annotations

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drift_jax import defaults, train
from drift_jax.methods import ddpm

T = 50


def _diffusion(kind='linear'):
    return ddpm.Diffusion(ddpm.beta_schedule(kind, T, 1e-3, 0.2))


def test_schedule_ends_and_cumulative_products():
    betas = ddpm.beta_schedule('linear', 1000, 1e-4, 0.02)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    d = ddpm.Diffusion(betas)
    np.testing.assert_allclose(d.abar, np.cumprod(1 - betas), rtol=1e-6)
    cos = ddpm.beta_schedule('cosine', 1000)
    assert np.all(cos > 0) and np.all(cos <= 0.999) and np.all(np.diff(np.cumprod(1 - cos)) < 0)
    assert np.cumprod(1 - cos)[-1] < 1e-4


def test_q_sample_mean_and_variance():
    d = _diffusion()
    x0 = jnp.asarray([[0.7, -1.3]])
    for t in (0, 17, T - 1):
        tt = jnp.asarray([t])
        mean = d.q_sample(x0, tt, jnp.zeros_like(x0))
        unit = d.q_sample(x0, tt, jnp.ones_like(x0)) - mean
        abar = np.prod(1 - ddpm.beta_schedule('linear', T, 1e-3, 0.2)[: t + 1])
        np.testing.assert_allclose(mean, np.sqrt(abar) * np.asarray(x0), rtol=1e-5)
        np.testing.assert_allclose(unit, np.sqrt(1 - abar), rtol=1e-5)


def test_posterior_equals_gaussian_conditioning():
    """q(x_{t-1} | x_t, x_0) from conditioning the joint Gaussian of (x_{t-1}, x_t) | x_0."""
    betas = ddpm.beta_schedule('linear', T, 1e-3, 0.2)
    d = ddpm.Diffusion(betas)
    abar = np.cumprod(1 - betas)
    x0, xt = 0.9, -0.4
    for t in (1, 10, T - 1):
        # x_{t-1} = sqrt(abar_{t-1}) x0 + e1 (var 1 - abar_{t-1}); x_t = sqrt(1 - b) x_{t-1} + e2.
        var1 = 1 - abar[t - 1]
        cov12 = np.sqrt(1 - betas[t]) * var1
        var2 = (1 - betas[t]) * var1 + betas[t]
        mu1, mu2 = np.sqrt(abar[t - 1]) * x0, np.sqrt(abar[t]) * x0
        mean = mu1 + cov12 / var2 * (xt - mu2)
        var = var1 - cov12**2 / var2
        eps = (xt - np.sqrt(abar[t]) * x0) / np.sqrt(1 - abar[t])  # so that x0_hat = x0
        tt = jnp.asarray([t])
        got_mean = d.ancestral_step(
            jnp.asarray([[xt]]), tt, jnp.asarray([[eps]]), jnp.zeros((1, 1))
        )
        got_unit = d.ancestral_step(jnp.asarray([[xt]]), tt, jnp.asarray([[eps]]), jnp.ones((1, 1)))
        assert float(got_mean[0, 0]) == pytest.approx(mean, rel=1e-4, abs=1e-6)
        assert float(got_unit[0, 0] - got_mean[0, 0]) == pytest.approx(np.sqrt(var), rel=1e-4)
        # The epsilon form of the same mean (Ho et al. eq. 11).
        eps_form = (xt - betas[t] / np.sqrt(1 - abar[t]) * eps) / np.sqrt(1 - betas[t])
        assert float(got_mean[0, 0]) == pytest.approx(eps_form, rel=1e-4, abs=1e-6)


def test_ddim_with_eta_one_on_all_steps_is_the_ancestral_update():
    d = _diffusion('cosine')
    rng = np.random.default_rng(0)
    x, eps, z = (jnp.asarray(rng.normal(size=(5, 3)), jnp.float32) for _ in range(3))
    for t in (1, 7, T - 1):
        tt = jnp.full((5,), t)
        a = d.ancestral_step(x, tt, eps, z)
        b = d.ddim_step(x, tt, tt - 1, eps, z, eta=1.0)
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    # The last step (to x_0) adds no noise in either.
    t0 = jnp.zeros((5,), jnp.int32)
    np.testing.assert_allclose(
        d.ancestral_step(x, t0, eps, z),
        d.ddim_step(x, t0, t0 - 1, eps, z, 1.0),
        rtol=1e-5,
        atol=1e-6,
    )


def test_ddim_timesteps():
    ts = ddpm.ddim_timesteps(1000, 50)
    assert len(ts) == 50 and ts[0] == 999 and ts[-1] == 0 and np.all(np.diff(ts) < 0)
    assert list(ddpm.ddim_timesteps(10, 10)) == list(range(9, -1, -1))


def tiny_config(**overrides):
    c = defaults.toy_config()
    c.method = 'ddpm'
    del c['method_settings']  # the tiny sizes below, not the tuned toy settings
    c.denoiser.width, c.denoiser.depth = 32, 2
    c.ddpm.timesteps = 20
    c.train.steps, c.train.batch_size = 8, 64
    c.train.log_every, c.train.checkpoint_every, c.train.max_to_keep = 4, 4, 5
    c.eval.every, c.eval.num_samples, c.eval.plot_points, c.eval.draws = 8, 100, 100, 2
    for key, value in overrides.items():
        section, _, name = key.rpartition('.')
        (c[section] if section else c)[name] = value
    return c


@pytest.mark.parametrize(
    'overrides, message',
    [
        ({'eval.sample_steps': 21}, 'eval.sample_steps=21 is more than the 20 diffusion steps'),
        ({'ddpm.beta_start': 0.05, 'ddpm.beta_end': 0.01}, 'beta_start < beta_end'),
        ({'ddpm.schedule': 'sigmoid'}, "ddpm.schedule='sigmoid' is unknown"),
        ({'ddpm.timesteps': 1}, 'ddpm.timesteps must be an integer >= 2'),
        ({'ddpm.eta': 1.5}, 'ddpm.eta must be in'),
    ],
)
def test_bad_options_are_refused_before_any_compile(overrides, message):
    with pytest.raises(ValueError, match=message):
        train.validate_config(tiny_config(**overrides))


def test_toy_run_nfe_resume_and_sampler_options(tmp_path):
    config = tiny_config()
    workdir = str(tmp_path / 'run')
    result = train.train_and_evaluate(config, workdir)
    assert result['nfe'] == 20 and np.isfinite(result['energy_ratio'])

    crashed = str(tmp_path / 'crashed')
    shutil.copytree(workdir, crashed)
    shutil.rmtree(os.path.join(crashed, 'checkpoints', '8'))
    train.train_and_evaluate(config, crashed)
    leaves = [jax.tree.leaves(train.load_run(w)[1]) for w in (workdir, crashed)]
    for a, b in zip(*leaves, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    run, state, _ = train.load_run(workdir)
    key = jax.random.PRNGKey(0)
    assert run.method.nfe() == 20 and run.method.nfe(steps=5) == 5
    x5 = train.sample(run, state.ema_params, key, 30, steps=5)
    assert x5.shape == (30, 2) and np.all(np.isfinite(x5))
    # DDIM with eta = 0 is deterministic given x_T; ancestral sampling draws noise per step.
    np.testing.assert_array_equal(x5, train.sample(run, state.ema_params, key, 30, steps=5))
    with pytest.raises(ValueError, match='steps=21 is more than the 20'):
        train.sample(run, state.ema_params, key, 3, steps=21)
    with pytest.raises(ValueError, match='alpha .guidance. applies to labelled data'):
        train.sample(run, state.ema_params, key, 3, alpha=2.0)

    cli = train.sample_workdir(workdir, 7, seed=0, steps=4)
    assert cli.shape == (7, 2) and np.all(np.isfinite(cli))


def test_steps_are_refused_for_a_one_step_method(tmp_path):
    c = defaults.toy_config()
    c.train.steps = c.eval.every = c.train.checkpoint_every = 2
    c.train.batch_size = c.train.num_pos = 64
    c.eval.num_samples, c.eval.plot_points, c.eval.draws = 50, 50, 1
    train.train_and_evaluate(c, str(tmp_path / 'w'))
    with pytest.raises(ValueError, match="--steps applies to multi-step methods.*'drifting'"):
        train.sample_workdir(str(tmp_path / 'w'), 5, steps=10)


def test_class_conditional_digits_with_guidance(tmp_path, digits_data_dir):
    c = defaults.image_config()
    c.method = 'ddpm'
    del c['method_settings']
    c.data.data_dir = digits_data_dir
    c.denoiser.base_channels, c.denoiser.mults = 8, (1,)  # one level: a cheaper compile
    c.ddpm.timesteps = 10
    c.train.steps, c.train.batch_size = 2, 16
    c.train.log_every = c.train.checkpoint_every = c.eval.every = 2
    c.eval.num_samples, c.eval.classifier_steps, c.eval.grid_per_class = 20, 5, 2
    result = train.train_and_evaluate(c, str(tmp_path / 'w'))
    assert result['nfe'] == 10 and np.isfinite(result['fd'])
    run, state, _ = train.load_run(str(tmp_path / 'w'))
    assert run.method.nfe(alpha=2.0) == 20
    x = train.sample(
        run, state.ema_params, jax.random.PRNGKey(0), 4, labels=[3, 7], alpha=2.0, steps=3
    )
    assert x.shape == (4, 8, 8, 1) and x.min() >= 0 and x.max() <= 1
