"""GAN, conditional GAN and denoising diffusion GAN: losses, posterior, runs, resume."""

from __future__ import annotations

import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drift_jax import defaults, train
from drift_jax.methods import adversarial, ddgan
from drift_jax.methods.gan import GAN
from drift_jax.models.discriminators import ConvDiscriminator, MLPDiscriminator


def test_losses_against_hand_computed_values():
    # softplus(0) = log 2: an undecided discriminator.
    zero = jnp.zeros(4)
    assert float(adversarial.discriminator_loss(zero, zero)) == pytest.approx(2 * math.log(2))
    assert float(adversarial.generator_loss(zero)) == pytest.approx(math.log(2))
    real, fake = jnp.array([2.0, -1.0]), jnp.array([0.5, -3.0])
    d = np.mean(np.log1p(np.exp([-2.0, 1.0]))) + np.mean(np.log1p(np.exp([0.5, -3.0])))
    g = np.mean(np.log1p(np.exp([-0.5, 3.0])))
    assert float(adversarial.discriminator_loss(real, fake)) == pytest.approx(d, rel=1e-6)
    assert float(adversarial.generator_loss(fake)) == pytest.approx(g, rel=1e-6)
    stats = adversarial.discriminator_stats(real, fake)
    sig = lambda v: 1 / (1 + np.exp(-np.asarray(v)))  # noqa: E731
    assert float(stats['d_real']) == pytest.approx(np.mean(sig([2.0, -1.0])), rel=1e-6)


def test_r1_penalty_of_known_discriminators():
    w = jnp.array([1.0, -2.0, 0.5])
    x = jax.random.normal(jax.random.PRNGKey(0), (7, 3))
    # Linear: the gradient is w everywhere.
    assert float(adversarial.r1_penalty(lambda x: x @ w, x)) == pytest.approx(5.25, rel=1e-6)
    # The whole discriminator objective: the loss plus (gamma / 2) R1.
    fake = x + 1.0
    loss, stats = adversarial.discriminator_objective(lambda x: x @ w, x, fake, 0.5)
    plain = adversarial.discriminator_loss(x @ w, fake @ w)
    assert float(loss) == pytest.approx(float(plain) + 0.25 * 5.25, rel=1e-6)
    assert float(stats['r1']) == pytest.approx(5.25, rel=1e-6) and 'd_fake' in stats
    assert 'r1' not in adversarial.discriminator_objective(lambda x: x @ w, x, fake, 0.0)[1]
    # Quadratic sum(x^2): gradient 2x, so E ||2x||^2.
    quad = adversarial.r1_penalty(lambda x: jnp.sum(x**2, -1), x)
    assert float(quad) == pytest.approx(float(jnp.mean(jnp.sum(4 * x**2, -1))), rel=1e-5)


def test_divergence_watch_needs_consecutive_steps():
    watch = adversarial.DivergenceWatch(3, 'gan')
    won, even = {'d_real': 0.999, 'd_fake': 0.001}, {'d_real': 0.6, 'd_fake': 0.4}
    assert watch(won) is None and watch(won) is None
    assert watch(even) is None  # the count restarts
    assert watch(won) is None and watch(won) is None
    message = watch(won)
    assert 'won outright for 3 steps' in message and 'gan.r1_gamma' in message
    assert adversarial.DivergenceWatch(0, 'gan')(won) is None


def test_discriminators_project_labels_and_take_context():
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (5, 8, 8, 1))
    labels = jnp.array([0, 1, 2, 3, 4])
    conv = ConvDiscriminator(base_channels=8, num_classes=10)
    params = jax.jit(conv.init)(key, x, context=x, t=jnp.zeros(5), labels=labels)
    apply = jax.jit(conv.apply)
    out = apply(params, x, context=x, t=jnp.arange(5.0), labels=labels)
    assert out.shape == (5,)
    # The label changes the logit (projection).
    other = apply(params, x, context=x, t=jnp.arange(5.0), labels=(labels + 1) % 10)
    assert not np.allclose(out, other)
    mlp = MLPDiscriminator(width=16, depth=2)
    p = mlp.init(key, jnp.zeros((3, 2)))
    assert mlp.apply(p, jnp.ones((3, 2))).shape == (3,)


def test_ddgan_betas_and_posterior_against_gaussian_conditioning():
    betas = ddgan.ddgan_betas(4)
    t = np.arange(1, 5)
    expected = 1 - np.exp(-0.1 / 4 - 0.5 * 19.9 * (2 * t - 1) / 16)
    np.testing.assert_allclose(betas, expected, rtol=1e-12)
    assert np.all(np.diff(betas) > 0) and betas[-1] < 1
    # T = 1: one step straight to (almost) pure noise.
    assert 1 - ddgan.ddgan_betas(1)[0] < 1e-4

    c = tiny_config('ddgan')
    run = train.make_run(c)
    method = run.method
    abar = np.cumprod(1 - betas)
    x0, x_t = np.array([[0.7, -0.3]]), np.array([[0.2, 0.9]])
    for i in range(4):
        # q(x_{t-1} | x_0) = N(sqrt(abar_prev) x0, 1 - abar_prev); q(x_t | x_{t-1}) =
        # N(sqrt(1 - beta) x_{t-1}, beta): condition the joint Gaussian on x_t.
        a_prev = abar[i - 1] if i > 0 else 1.0
        b = betas[i]
        if i == 0:
            mean, var = x0, 0.0
        else:
            var = 1 / (1 / (1 - a_prev) + (1 - b) / b)
            mean = var * (np.sqrt(a_prev) * x0 / (1 - a_prev) + np.sqrt(1 - b) * x_t / b)
        tt = jnp.array([i])
        got = method.posterior_sample(jnp.asarray(x_t), tt, jnp.asarray(x0), jnp.zeros((1, 2)))
        np.testing.assert_allclose(np.asarray(got), mean, rtol=1e-5, atol=1e-6)
        unit = method.posterior_sample(jnp.asarray(x_t), tt, jnp.asarray(x0), jnp.ones((1, 2)))
        np.testing.assert_allclose(np.asarray(unit - got), np.sqrt(var), rtol=1e-4, atol=1e-6)

    # The real pairs have the forward marginals: x_t ~ N(sqrt(abar_t) x0, 1 - abar_t).
    n = 200_000
    x0s = jnp.full((n, 2), 0.5)
    tt = jnp.full((n,), 2)
    prev, cur = method.real_pair(jax.random.PRNGKey(1), x0s, tt)
    np.testing.assert_allclose(np.mean(cur), np.sqrt(abar[2]) * 0.5, atol=0.01)
    np.testing.assert_allclose(np.var(cur), 1 - abar[2], rtol=0.02)
    np.testing.assert_allclose(np.var(prev), 1 - abar[1], rtol=0.02)


def tiny_config(method: str, **overrides):
    c = defaults.toy_config()
    c.method = method
    del c['method_settings']
    c.model.width = c.model.depth = c.denoiser.width = 32
    c.model.depth = c.denoiser.depth = 2
    c.model.noise_dim = c.ddgan.latent_dim = 4
    c.train.steps, c.train.batch_size = 8, 64
    c.train.log_every, c.train.checkpoint_every, c.train.max_to_keep = 4, 4, 5
    c.eval.every, c.eval.num_samples, c.eval.plot_points, c.eval.draws = 8, 100, 100, 2
    for key, value in overrides.items():
        section, _, name = key.rpartition('.')
        (c[section] if section else c)[name] = value
    return c


@pytest.mark.parametrize(
    'method, overrides, message',
    [
        ('gan', {'gan.r1_gamma': -1.0}, 'gan.r1_gamma must be >= 0, got -1.0'),
        ('gan', {'gan.disc_learning_rate': -1e-3}, 'gan.disc_learning_rate must be >= 0'),
        ('gan', {'gan.stop_patience': -1}, 'gan.stop_patience must be an integer >= 0, got -1'),
        ('ddgan', {'ddgan.steps': 0}, r'ddgan.steps must be an integer in \[1, 8\], got 0'),
        ('ddgan', {'ddgan.steps': 9}, r'ddgan.steps must be an integer in \[1, 8\], got 9'),
        ('ddgan', {'ddgan.beta_min': 30.0}, 'beta_min < beta_max, got 30.0 and 20.0'),
        ('ddgan', {'ddgan.latent_dim': 0}, 'ddgan.latent_dim must be a positive integer'),
    ],
)
def test_bad_options_are_refused_before_any_compile(method, overrides, message):
    with pytest.raises(ValueError, match=message):
        train.validate_config(tiny_config(method, **overrides))


@pytest.mark.parametrize('method, nfe', [('gan', 1), ('ddgan', 4)])
def test_toy_run_both_networks_move_and_resume_exactly(tmp_path, method, nfe):
    config = tiny_config(method)
    workdir = str(tmp_path / 'run')
    result = train.train_and_evaluate(config, workdir)
    assert result['nfe'] == nfe and np.isfinite(result['energy_ratio'])
    run, state, _ = train.load_run(workdir)
    init = train.create_train_state(run, config.train.seed)
    for name in ('generator', 'discriminator'):
        moved = jax.tree.map(
            lambda a, b: float(jnp.max(jnp.abs(a - b))), state.params[name], init.params[name]
        )
        assert max(jax.tree.leaves(moved)) > 0, name

    crashed = str(tmp_path / 'crashed')
    shutil.copytree(workdir, crashed)
    shutil.rmtree(os.path.join(crashed, 'checkpoints', '8'))
    train.train_and_evaluate(config, crashed)
    leaves = [jax.tree.leaves(train.load_run(w)[1]) for w in (workdir, crashed)]
    for a, b in zip(*leaves, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    x = train.sample_workdir(workdir, 9, seed=0)
    assert x.shape == (9, 2) and np.all(np.isfinite(x))
    with pytest.raises(ValueError, match='labels apply to labelled data'):
        train.sample(run, state.ema_params, jax.random.PRNGKey(0), 3, labels=[1, 2, 3])
    if method == 'ddgan':
        assert train.sample_workdir(workdir, 3, steps=4).shape == (3, 2)
        with pytest.raises(ValueError, match='samples with the 4 steps it was trained with'):
            train.sample_workdir(workdir, 3, steps=2)
    else:
        with pytest.raises(ValueError, match='--steps applies to multi-step methods'):
            train.sample_workdir(workdir, 3, steps=2)


def test_a_discriminator_that_wins_stops_the_run(tmp_path, monkeypatch):
    # The watch itself is tested above; here the loop must turn its verdict into a stop
    # naming the step and the last good checkpoint.
    def diagnose(self, values):
        assert 'd_real' in values and 'd_fake' in values
        return self.watch({'d_real': 1.0, 'd_fake': 0.0})

    monkeypatch.setattr(GAN, 'diagnose', diagnose)
    config = tiny_config('gan', **{'gan.stop_patience': 6})
    with pytest.raises(FloatingPointError) as err:
        train.train_and_evaluate(config, str(tmp_path / 'w'))
    text = str(err.value)
    assert 'diverged at step 6' in text and 'won outright for 6 steps' in text
    assert 'last good checkpoint (step 4) is kept' in text


def _tiny_digits(data_dir, method):
    c = defaults.image_config()
    c.method = method
    del c['method_settings']
    c.data.data_dir = data_dir
    c.model.base_channels = c.denoiser.base_channels = 8
    c.denoiser.mults = (1,)  # one level: half the compile time of two
    c.model.noise_dim, c.ddgan.latent_dim, c.ddgan.steps = 8, 2, 2
    c.train.steps, c.train.batch_size = 2, 16
    c.train.log_every = c.train.checkpoint_every = c.eval.every = 2
    c.eval.num_samples, c.eval.classifier_steps, c.eval.grid_per_class = 20, 5, 2
    return c


def test_class_conditional_gan_on_digits(tmp_path, digits_data_dir):
    config = _tiny_digits(digits_data_dir, 'gan')
    result = train.train_and_evaluate(config, str(tmp_path / 'w'))
    assert result['nfe'] == 1 and np.isfinite(result['fd'])
    run, state, _ = train.load_run(str(tmp_path / 'w'))
    x = train.sample(run, state.ema_params, jax.random.PRNGKey(0), 4, labels=[3, 7, 3, 7])
    assert x.shape == (4, 8, 8, 1) and x.min() >= 0 and x.max() <= 1
    with pytest.raises(ValueError, match='alpha .guidance. does not apply'):
        train.sample(run, state.ema_params, jax.random.PRNGKey(0), 2, alpha=2.0)


def test_class_conditional_ddgan_step_and_sampling_on_digits(digits_data_dir):
    # The full loop on images is the GAN's test above; here one step of the conditional
    # denoising diffusion GAN and its 2-step sampler.
    run = train.make_run(_tiny_digits(digits_data_dir, 'ddgan'))
    state = train.create_train_state(run, 0)
    batch = run.task.host_batch(1, run.method.host_batch_size)
    state, metrics = train.make_train_step(run)(state, batch)
    assert set(metrics) >= {'loss/discriminator', 'loss/generator', 'd_real', 'r1'}
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert run.method.nfe() == 2
    x = train.sample(run, state.ema_params, jax.random.PRNGKey(0), 4, labels=[3, 7, 3, 7])
    assert x.shape == (4, 8, 8, 1) and x.min() >= 0 and x.max() <= 1
