"""Class-conditional MNIST with the loss in the features of the MAE encoder of mae_mnist.py.

    python -m drift_jax.main --config=configs/mae_mnist.py --workdir=workdirs/mae_mnist
    python -m drift_jax.main --config=configs/mnist_features.py

The paper's multi-scale feature sets of the frozen encoder plus the raw pixels. Same generator
and guidance as configs/mnist.py; each step pushes every generated image through the encoder
(forward and backward), so per-class batches are halved and the run is shorter to stay near
20 minutes on a 2-core CPU (19 min 42 s measured on 2026-12-01, see the README).
"""

from drift_jax import defaults


def get_config():
    c = defaults.image_config()
    c.data.name = 'mnist'
    c.encoder.name = 'mae'
    c.encoder.workdir = 'workdirs/mae_mnist'
    c.model.name = 'mlp'
    c.model.hidden = 1024
    c.model.depth = 3
    c.train.steps = 1600
    c.train.gen_per_class = 32
    c.train.pos_per_class = 64
    c.train.uncond_per_class = 32
    c.train.batch_size = 320  # classes_per_step x gen_per_class
    c.train.bank_capacity = 512
    c.guidance.alpha_max = 3.0
    c.eval.alpha = 2.0
    c.eval.every = 800
    c.eval.num_samples = 2000
    return c
