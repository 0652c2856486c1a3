"""A user's own point cloud (.npy or .csv, shape [num_points, dim], any dim).

Coordinates are standardised for training and mapped back for samples.

    python -m drift_jax.main --config=configs/points.py --config.data.path=cloud.npy
"""

from drift_jax import defaults


def get_config():
    c = defaults.toy_config()
    c.data.name = 'points'
    c.data.path = ''
    # Any dimension: the paper's field normalises distances by their batch mean, so its
    # temperatures need no retuning per dataset.
    c.drift.temperatures = (0.02, 0.05, 0.2)
    c.drift.scale_dist = True
    c.drift.normalize_drift = True
    c.optim.learning_rate = 2e-3
    c.train.ema_decay = 0.999
    return c
