"""Toy 'moons' in 2-D.

    python -m drift_jax.main --config=configs/moons.py
"""

from drift_jax import defaults


def get_config():
    c = defaults.toy_config()
    c.data.name = 'moons'
    return c
