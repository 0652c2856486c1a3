"""Toy 'eight_gaussians' in 2-D.

python -m drift_jax.main --config=configs/eight_gaussians.py
"""

from drift_jax import defaults


def get_config():
    c = defaults.toy_config()
    c.data.name = 'eight_gaussians'
    # Separated thin modes: the paper's field (three temperatures on scale-normalised
    # distances, each RMS-normalised) with a higher learning rate and a slower EMA leaves
    # fewer samples on the bridges a continuous generator draws between modes.
    defaults.use_paper_field(c)
    # 3000 steps (about 90 s here): ED/floor 2.17 at 2000, 1.21 at 3000.
    c.train.steps = 3000
    c.eval.every = 750
    c.train.checkpoint_every = 750
    return c
