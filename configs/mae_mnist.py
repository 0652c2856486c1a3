"""Feature encoder for MNIST: a ResNet trained as a masked autoencoder.

Sized for a CPU: widths (16, 32, 64) behind a stride-2 stem (maps 14x14, 7x7, 4x4), so the
generator run that drifts in its features (configs/mnist_features.py) stays affordable.
MNIST must be prepared once (offline from local files, see README):
    python -m drift_jax.data.build --name=mnist --source=/path/to/mnist.pkl.gz
then:
    python -m drift_jax.main --config=configs/mae_mnist.py --workdir=workdirs/mae_mnist
"""

from drift_jax import defaults


def get_config():
    c = defaults.mae_config()
    c.data.name = 'mnist'
    c.mae.widths = (16, 32, 64)
    c.mae.stem_stride = 2
    c.mae.decoder_width = 32
    c.train.steps = 1500
    c.eval.every = 500
    return c
