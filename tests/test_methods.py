"""The trainer's method interface: the registry, per-method settings, a two-network method
(state with two optimisers, alternating updates, exact resume, sampling through the loop)
and checkpoints of the single-network layout written before methods existed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from drift_jax import checkpointing, defaults, methods, train, writers
from drift_jax.methods.base import Method, Update

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
    c = defaults.toy_config()
    c.model.width, c.model.depth, c.model.noise_dim = 32, 2, 8
    c.train.steps, c.train.batch_size, c.train.num_pos = 12, 64, 64
    c.train.log_every, c.train.checkpoint_every, c.train.max_to_keep = 3, 6, 5
    c.eval.every, c.eval.num_samples, c.eval.plot_points, c.eval.draws = 6, 200, 200, 2
    for key, value in overrides.items():
        section, _, name = key.rpartition('.')
        (c[section] if section else c)[name] = value
    return c


# ----------------------------------------------------------------------------- registry


def test_drifting_is_the_default_method():
    assert methods.METHODS['drifting'] is methods.Drifting
    config = tiny_config()
    del config['method']
    assert methods.resolve_config(config).method == 'drifting'


def test_unknown_method_fails_before_any_compile_with_the_valid_names():
    with pytest.raises(ValueError, match=r"method='ddpn' is unknown; choose one of \('drifting'"):
        train.make_run(tiny_config(method='ddpn'))


def test_unknown_method_on_the_command_line_is_a_usage_error(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            '-m',
            'drift_jax.main',
            '--config=configs/spiral.py',
            '--config.method=nope',
            f'--workdir={tmp_path / "w"}',
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "method='nope' is unknown" in proc.stderr and "'drifting'" in proc.stderr
    assert not (tmp_path / 'w').exists()


def test_a_method_refuses_a_task_kind_it_does_not_train_on():
    with pytest.raises(ValueError, match="method='mae' does not train on points"):
        train.make_run(tiny_config(method='mae'))


# ----------------------------------------------------------------------------- settings


def _with_settings():
    c = tiny_config()
    c.method_settings.drifting = ml_collections.ConfigDict(
        {'train': {'steps': 7}, 'optim': {'learning_rate': 5e-4}}
    )
    c.method_settings.other = ml_collections.ConfigDict({'train': {'steps': 99}})
    return c


def test_method_settings_apply_to_the_chosen_method_only():
    resolved = methods.resolve_config(_with_settings())
    assert resolved.train.steps == 7 and resolved.optim.learning_rate == 5e-4
    assert 'method_settings' not in resolved
    assert methods.resolve_config(resolved).to_dict() == resolved.to_dict()  # idempotent


def test_command_line_values_win_over_method_settings():
    resolved = methods.resolve_config(_with_settings(), keep=('train.steps',))
    assert resolved.train.steps == 12 and resolved.optim.learning_rate == 5e-4


def test_method_settings_naming_a_missing_field_are_rejected():
    c = tiny_config()
    c.method_settings.drifting = ml_collections.ConfigDict({'train': {'stpes': 3}})
    with pytest.raises(ValueError, match="sets 'train.stpes'"):
        methods.resolve_config(c)


def test_command_line_overrides_are_collected():
    argv = ['x', '--config=c.py', '--config.train.steps=5', '--config.method', 'drifting']
    assert methods.command_line_overrides(argv) == ('train.steps', 'method')


def test_saved_configs_of_the_mae_task_read_as_the_mae_method():
    c = tiny_config()
    c.task = 'mae'
    del c['method']
    resolved = methods.resolve_config(c)
    assert (resolved.task, resolved.method) == ('image', 'mae')


# ----------------------------------------------------------------------------- two networks


class _MLP(nn.Module):
    width: int
    out: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.out)(nn.silu(nn.Dense(self.width)(x)))


class TwoNetworkGAN(Method):
    """A tiny non-saturating GAN on points: two networks, two optimisers, two updates."""

    name = 'tiny_gan'
    task_kinds = ('points',)

    def __init__(self, config, task, mesh):
        super().__init__(config, task, mesh)
        self.dim = task.data_shape[0]
        self.gen, self.disc = _MLP(32, self.dim), _MLP(32, 1)

    def init(self, key):
        kg, kd = jax.random.split(key)
        return {
            'generator': self.gen.init(kg, jnp.zeros((1, 8))),
            'discriminator': self.disc.init(kd, jnp.zeros((1, self.dim))),
        }, {}

    def optimizers(self, networks):
        return {'generator': optax.adam(1e-3), 'discriminator': optax.adam(2e-3, b1=0.5)}

    def _fake(self, params, key):
        return self.gen.apply(
            params['generator'], jax.random.normal(key, (self.config.train.batch_size, 8))
        )

    def _d_loss(self, params, extra, key, batch):
        k_fake, k_real = jax.random.split(key)
        real = self.task.draw(k_real, self.config.train.num_pos)
        fake = jax.lax.stop_gradient(self._fake(params, k_fake))
        d = lambda x: self.disc.apply(params['discriminator'], x)  # noqa: E731
        loss = jnp.mean(jax.nn.softplus(-d(real))) + jnp.mean(jax.nn.softplus(d(fake)))
        return loss, ({'d_real': jnp.mean(d(real))}, extra)

    def _g_loss(self, params, extra, key, batch):
        fake = self._fake(params, key)
        loss = jnp.mean(jax.nn.softplus(-self.disc.apply(params['discriminator'], fake)))
        return loss, ({}, extra)

    def updates(self):
        return (Update('discriminator', self._d_loss), Update('generator', self._g_loss))

    def sample(self, params, key, n, labels=None, **options):
        return np.asarray(self.gen.apply(params['generator'], jax.random.normal(key, (n, 8))))


@pytest.fixture
def tiny_gan(monkeypatch):
    monkeypatch.setitem(methods.METHODS, 'tiny_gan', TwoNetworkGAN)
    return tiny_config(method='tiny_gan')


def _leaves(workdir):
    _, state, step = train.load_run(workdir)
    return step, state, [np.asarray(x) for x in jax.tree.leaves(state)]


def test_two_networks_train_resume_exactly_and_sample(tiny_gan, tmp_path):
    workdir = str(tmp_path / 'straight')
    result = train.train_and_evaluate(tiny_gan, workdir)
    assert result['step'] == 12 and np.isfinite(result['energy_ratio']) and result['nfe'] == 1
    assert result['samples_per_second'] > 0  # timed over the evaluator's later draws
    logs = [e for e in writers.read_metrics(workdir) if 'loss/generator' in e]
    assert [e['step'] for e in logs] == [3, 6, 9, 12]
    assert all(np.isfinite(e['loss/discriminator']) and 'd_real' in e for e in logs)

    step, state, straight = _leaves(workdir)
    assert step == 12
    assert set(state.params) == set(state.opt_state) == {'generator', 'discriminator'}
    # Each network has its own optimiser: Adam's step counts are there for both.
    init = train.create_train_state(train.make_run(tiny_gan), 0)
    for name in ('generator', 'discriminator'):
        moved = jax.tree.map(
            lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
            init.params[name],
            state.params[name],
        )
        assert all(jax.tree.leaves(moved)), name

    crashed = str(tmp_path / 'crashed')
    shutil.copytree(workdir, crashed)
    shutil.rmtree(os.path.join(crashed, 'checkpoints', '12'))
    train.train_and_evaluate(tiny_gan, crashed)
    step, _, resumed = _leaves(crashed)
    assert step == 12 and len(resumed) == len(straight)
    for a, b in zip(straight, resumed, strict=True):
        np.testing.assert_array_equal(a, b)

    run, state, _ = train.load_run(workdir)
    x = train.sample(run, state.ema_params, jax.random.PRNGKey(0), 50)
    assert x.shape == (50, 2) and np.all(np.isfinite(x))


def test_a_nan_in_any_update_stops_the_run(tiny_gan, tmp_path):
    tiny_gan.train.steps = 4
    tiny_gan.train.checkpoint_every = 2
    broken = type(
        'Broken',
        (TwoNetworkGAN,),
        {'_d_loss': lambda self, p, e, k, b: (jnp.float32(jnp.nan), ({}, e))},
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(methods.METHODS, 'tiny_gan', broken)
        with pytest.raises(FloatingPointError, match=r"'loss/discriminator': nan"):
            train.train_and_evaluate(tiny_gan, str(tmp_path / 'w'))


# ----------------------------------------------------------------------------- old layout


def test_a_checkpoint_of_the_single_network_layout_loads(tmp_path):
    """A workdir written before the state held named networks (params at the top, no
    `method` in config.json) restores into the drifting generator unchanged."""
    config = tiny_config()
    run = train.make_run(config)
    state = train.create_train_state(run, 3)
    state = state.replace(step=jnp.int32(12))
    old = state.replace(
        params=state.params['generator'],
        ema_params=state.ema_params['generator'],
        opt_state=state.opt_state['generator'],
    )
    workdir = tmp_path / 'old'
    ckpt = checkpointing.Checkpointer(str(workdir / 'checkpoints'), use_async=False)
    ckpt.save(12, old, force=True)
    ckpt.close()
    saved = run.config.to_dict()
    del saved['method']  # written before methods and evaluation extras existed
    del saved['eval']['extra_metrics']
    (workdir / 'config.json').write_text(json.dumps(saved))

    _, restored, step = train.load_run(str(workdir))
    assert step == 12
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_checkpoint_of_another_network_fails_with_a_message(tmp_path):
    workdir = str(tmp_path / 'w')
    train.train_and_evaluate(
        tiny_config(**{'train.steps': 2, 'eval.every': 2, 'train.checkpoint_every': 2}), workdir
    )
    with open(os.path.join(workdir, 'config.json')) as f:
        saved = json.load(f)
    saved['model']['width'] = 48
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
        json.dump(saved, f)
    with pytest.raises(RuntimeError, match='does not fit this config'):
        train.load_run(workdir)
