"""Class-conditional Fashion-MNIST in pixel space (prepare it first, e.g. from IDX files:
`python -m drift_jax.data.build --name=fashion_mnist --source=DIR`).

    python -m drift_jax.main --config=configs/fashion_mnist.py

Conv generator (base 48 channels): several seconds per step on a 2-core CPU, so meant for an
accelerator; on a CPU, the residual-MLP setup of configs/mnist.py is what fits in minutes.
"""

from drift_jax import defaults


def get_config():
    c = defaults.image_config()
    c.data.name = 'fashion_mnist'
    c.model.base_channels = 48
    c.train.steps = 5000
    c.train.bank_capacity = 512
    c.eval.every = 1000
    c.eval.num_samples = 2000
    return c
