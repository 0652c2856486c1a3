"""Config loading shared by the benchmark scripts (they run as scripts, so this sits beside them).

load_config('spiral')                 # configs/spiral.py
load_config('bimodal:far')            # get_config('far')
load_config('configs/mnist.py')       # any config file by path
apply_overrides(config, ['train.steps=100', 'encoder.bank_features=false'])
"""

from __future__ import annotations

import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(spec: str):
    """The ConfigDict of a config: NAME[:ARG] in configs/, or a path to a .py file[:ARG]."""
    target, _, arg = spec.partition(':')
    path = target if target.endswith('.py') else os.path.join(ROOT, 'configs', f'{target}.py')
    if not os.path.exists(path):
        raise FileNotFoundError(f'config {target!r} does not exist ({path}).')
    module_spec = importlib.util.spec_from_file_location(
        os.path.splitext(os.path.basename(path))[0], path
    )
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def apply_overrides(config, overrides) -> None:
    """Applies 'section.name=json_value' items in place (cast to the field's current type)."""
    for item in overrides:
        key, value = item.split('=', 1)
        section, field = key.split('.')
        new = json.loads(value)
        old = config[section][field]
        config[section][field] = new if old is None else type(old)(new)
