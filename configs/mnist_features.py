"""Class-conditional MNIST with the loss in the features of the MAE encoder of mae_mnist.py.

    python -m drift_jax.main --config=configs/mae_mnist.py --workdir=workdirs/mae_mnist
    python -m drift_jax.main --config=configs/mnist_features.py
"""

from drift_jax import defaults


def get_config():
    c = defaults.image_config()
    c.data.name = 'mnist'
    c.encoder.name = 'mae'
    c.encoder.workdir = 'workdirs/mae_mnist'
    c.train.steps = 3000
    c.train.bank_capacity = 512
    c.eval.every = 1000
    c.eval.num_samples = 2000
    return c
