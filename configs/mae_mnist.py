"""Feature encoder for MNIST: a ResNet trained as a masked autoencoder.

MNIST must be prepared once (offline from local files, see README):
    python -m drift_jax.data.build --name=mnist --source=/path/to/mnist.pkl.gz
then:
    python -m drift_jax.main --config=configs/mae_mnist.py --workdir=workdirs/mae_mnist
"""

from drift_jax import defaults


def get_config():
    c = defaults.mae_config()
    c.data.name = 'mnist'
    c.mae.widths = (32, 64, 128)
    c.train.steps = 3000
    c.eval.every = 1000
    return c
