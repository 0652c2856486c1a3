"""Class-conditional MNIST in pixel space (prepare MNIST first, see README).

    python -m drift_jax.main --config=configs/mnist.py
"""

from drift_jax import defaults


def get_config():
    c = defaults.image_config()
    c.data.name = 'mnist'
    c.model.base_channels = 32
    c.train.steps = 3000
    c.train.bank_capacity = 512
    c.eval.every = 1000
    c.eval.num_samples = 2000
    return c
