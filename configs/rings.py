"""Toy 'rings' in 2-D.

python -m drift_jax.main --config=configs/rings.py
"""

from drift_jax import defaults


def get_config():
    c = defaults.toy_config()
    c.data.name = 'rings'
    # Separated thin modes: the paper's field (three temperatures on scale-normalised
    # distances, each RMS-normalised) with a higher learning rate and a slower EMA leaves
    # fewer samples on the bridges a continuous generator draws between modes.
    defaults.use_paper_field(c)
    return c
