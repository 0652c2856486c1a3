"""Class-conditional 8x8 digits (scikit-learn's bundled set), pixel space; no download.

    python -m drift_jax.main --config=configs/digits.py
"""

from drift_jax import defaults


def get_config():
    c = defaults.image_config()
    c.data.name = 'digits'
    c.train.steps = 1500
    c.optim.learning_rate = 1e-3
    c.eval.every = 500
    return c
