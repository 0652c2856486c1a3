"""Class-conditional MNIST in pixel space (prepare MNIST first, see README).

    python -m drift_jax.main --config=configs/mnist.py

Sized for a 2-core CPU (about 15 minutes): a residual MLP generator (a conv generator costs
~4 s per step here), 64 generated, 128 positive and 64 unconditional images per class and
step, guidance trained on alpha in [1, 3] and evaluated at eval.alpha.
"""

from drift_jax import defaults


def get_config():
    c = defaults.image_config()
    c.data.name = 'mnist'
    c.model.name = 'mlp'
    c.model.hidden = 1024
    c.model.depth = 3
    c.train.steps = 4000
    c.train.gen_per_class = 64
    c.train.pos_per_class = 128
    c.train.uncond_per_class = 64
    c.train.batch_size = 640  # classes_per_step x gen_per_class
    c.train.bank_capacity = 512
    c.guidance.alpha_max = 3.0
    c.eval.alpha = 2.0
    c.eval.every = 1000
    c.eval.num_samples = 2000
    return c
