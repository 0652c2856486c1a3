"""Toy 'swiss_roll' in 2-D.

python -m drift_jax.main --config=configs/swiss_roll.py
"""

from drift_jax import defaults


def get_config():
    c = defaults.toy_config()
    c.data.name = 'swiss_roll'
    # Drifting uses the paper's field (three temperatures on scale-normalised distances, each
    # RMS-normalised, lr 2e-3, EMA 0.999): ED/floor 1.001 / 1.134 at seeds 0 / 1, against
    # 1.43 / 1.86 with the simple form of toy_config (one raw temperature of 0.05, lr 1e-3,
    # EMA 0.995), 2000 steps, benchmarks/toy_quality.py, 2026-12-07.
    defaults.use_paper_field(c, drifting_only=True)
    return c
