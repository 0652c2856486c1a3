"""Class-conditional 8x8 digits (scikit-learn's bundled set), pixel space; no download.

python -m drift_jax.main --config=configs/digits.py
"""

from drift_jax import defaults


def get_config():
    c = defaults.image_config()
    c.data.name = 'digits'
    c.train.steps = 800  # about 3 minutes on 2 CPU cores
    c.eval.every = 400
    return c
