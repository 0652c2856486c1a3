"""A user's own point cloud (.npy or .csv, shape [num_points, dim], any dim).

Coordinates are standardised for training and mapped back for samples. `data.columns`
picks the coordinate columns of a table (header names, or 0-based indices for a .npy or a
.csv without header); the other columns may hold text:

    python -m drift_jax.main --config=configs/points.py --config.data.path=cloud.npy
    python -m drift_jax.main --config=configs/points.py --config.data.path=cities.csv \
        --config.data.columns=longitude,latitude
"""

from drift_jax import defaults


def get_config():
    c = defaults.toy_config()
    c.data.name = 'points'
    c.data.path = ''
    # Any dimension: the paper's field normalises distances by their batch mean, so its
    # temperatures need no retuning per dataset.
    defaults.use_paper_field(c)
    return c
