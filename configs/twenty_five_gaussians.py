"""Toy 'twenty_five_gaussians' in 2-D.

    python -m drift_jax.main --config=configs/twenty_five_gaussians.py
"""

from drift_jax import defaults


def get_config():
    c = defaults.toy_config()
    c.data.name = 'twenty_five_gaussians'
    # The paper's field (as eight_gaussians) with a wider generator and no coarse 0.2
    # temperature: 25 tight modes need a sharper map than 3 x 256 gives, and the RMS-normalised
    # coarse field keeps scattering samples between modes. ED/floor after 2000 steps (seeds
    # 0/1/2): 3.2/5.6/7.3 here, against 8.1 (seed 0) for 3 x 256 with (0.02, 0.05, 0.2).
    # Without a temperature above 0.05 the samples never reach the outer modes (ED/floor > 2000).
    defaults.use_paper_field(c)
    c.drift.temperatures = (0.02, 0.05, 0.1)
    c.model.width = 512
    c.model.depth = 4
    return c
