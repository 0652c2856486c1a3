"""Spiral in 2-D: the first thing to run.

python -m drift_jax.main --config=configs/spiral.py
"""

from drift_jax import defaults


def get_config():
    c = defaults.toy_config()
    c.data.name = 'spiral'
    return c
