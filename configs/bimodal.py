"""Two Gaussian modes, from one of the paper's three starting states (its Figure 3).

The generator starts between the modes (`middle`), far from both (`far`) or collapsed on
one of them (`collapsed`); drifting should end with both modes equally covered.

    python -m drift_jax.main --config=configs/bimodal.py:collapsed
    python -m drift_jax.main --config=configs/bimodal.py --config.model.init=far
"""

from drift_jax import defaults


def get_config(init: str = 'middle'):
    c = defaults.toy_config()
    c.data.name = 'bimodal'
    c.model.init = init
    # The paper's field: three temperatures on scale-normalised distances, each RMS-normalised.
    # One temperature of 0.05 on raw coordinates sees only the nearest mode (exp(-3/0.05)
    # ~ 1e-26 across the gap): measured, a collapsed start stayed collapsed.
    c.drift.temperatures = (0.02, 0.05, 0.2)
    c.drift.scale_dist = True
    c.drift.normalize_drift = True
    return c
