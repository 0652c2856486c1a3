"""Methods: what a run learns, chosen by `config.method` (`--config.method=NAME`).

`METHODS` maps each name to its class (`base.Method`). The data side is the task's
(`drift_jax.tasks`): any method runs on any task kind it lists in `task_kinds`. A config
file may carry per-method settings in `config.method_settings.<name>`, applied by
`resolve_config` when that method is chosen.
"""

from __future__ import annotations

import re

import ml_collections

from drift_jax.methods.base import Method, Update
from drift_jax.methods.complete import Complete
from drift_jax.methods.ddgan import DDGAN
from drift_jax.methods.ddpm import DDPM
from drift_jax.methods.drifting import Drifting
from drift_jax.methods.flow import Flow
from drift_jax.methods.gan import GAN
from drift_jax.methods.mae import MAE
from drift_jax.methods.ncsn import NCSN

METHODS: dict[str, type[Method]] = {
    'drifting': Drifting,
    'ddpm': DDPM,
    'ncsn': NCSN,
    'gan': GAN,
    'ddgan': DDGAN,
    'flow': Flow,
    'complete': Complete,
    'mae': MAE,
}
DEFAULT_METHOD = 'drifting'

__all__ = [
    'METHODS',
    'Method',
    'Update',
    'command_line_overrides',
    'method_class',
    'resolve_config',
]


def method_class(name: str) -> type[Method]:
    """The class of method `name`; ValueError listing the valid names for an unknown one."""
    if name not in METHODS:
        raise ValueError(f'method={name!r} is unknown; choose one of {tuple(METHODS)}.')
    return METHODS[name]


def _override(config: ml_collections.ConfigDict, settings, keep: frozenset, path: str = ''):
    for key, value in settings.items():
        name = f'{path}{key}'
        if name in keep:
            continue
        if (
            isinstance(value, ml_collections.ConfigDict)
            and key in config
            and isinstance(config[key], ml_collections.ConfigDict)
        ):
            _override(config[key], value, keep, name + '.')
        elif key not in config:
            raise ValueError(f'method_settings sets {name!r}, which the config does not have.')
        else:
            config[key] = value


def resolve_config(config: ml_collections.ConfigDict, keep=()) -> ml_collections.ConfigDict:
    """The config a run uses: `config.method_settings[config.method]` applied, except for the
    dotted names in `keep` (those given on the command line win).

    Returns a copy without `method_settings`, so resolving again changes nothing (saved
    `config.json` files hold resolved configs). Configs written before methods existed
    (`task='mae'`, no `method`) are read as the method they ran.
    """
    out = ml_collections.ConfigDict(config.to_dict())
    if out.get('task') == 'mae':
        out.task = 'image'
        out.method = 'mae'
    if 'method' not in out:
        out.method = DEFAULT_METHOD
    method_class(out.method)
    settings = out.get('method_settings') or ml_collections.ConfigDict()
    if 'method_settings' in out:
        del out['method_settings']
    chosen = settings.get(out.method)
    if chosen:
        _override(out, chosen, frozenset(keep))
    return out


def command_line_overrides(argv: list[str]) -> tuple[str, ...]:
    """Dotted config names set on the command line (`--config.train.steps=5` -> train.steps).

    They win over a config file's `method_settings` for the chosen method.
    """
    names = []
    for arg in argv:
        m = re.match(r'--config\.([\w.]+)', arg)
        if m:
            names.append(m.group(1))
    return tuple(names)
