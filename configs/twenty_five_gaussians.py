"""Toy 'twenty_five_gaussians' in 2-D.

    python -m drift_jax.main --config=configs/twenty_five_gaussians.py
"""

from drift_jax import defaults


def get_config():
    c = defaults.toy_config()
    c.data.name = 'twenty_five_gaussians'
    return c
