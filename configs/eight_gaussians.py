"""Toy 'eight_gaussians' in 2-D.

    python -m drift_jax.main --config=configs/eight_gaussians.py
"""

from drift_jax import defaults


def get_config():
    c = defaults.toy_config()
    c.data.name = 'eight_gaussians'
    return c
