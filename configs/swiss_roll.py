"""Toy 'swiss_roll' in 2-D.

python -m drift_jax.main --config=configs/swiss_roll.py
"""

from drift_jax import defaults


def get_config():
    c = defaults.toy_config()
    c.data.name = 'swiss_roll'
    return c
