"""Toy 'checkerboard' in 2-D.

python -m drift_jax.main --config=configs/checkerboard.py
"""

from drift_jax import defaults


def get_config():
    c = defaults.toy_config()
    c.data.name = 'checkerboard'
    return c
