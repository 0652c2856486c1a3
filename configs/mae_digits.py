"""Feature encoder for digits: a small ResNet trained as a masked autoencoder (no download).

python -m drift_jax.main --config=configs/mae_digits.py --workdir=workdirs/mae_digits
"""

from drift_jax import defaults


def get_config():
    c = defaults.mae_config()
    c.data.name = 'digits'
    c.mae.widths = (32, 64)
    c.train.steps = 1000
    c.eval.every = 500
    return c
