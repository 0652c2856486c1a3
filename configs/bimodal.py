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
    return c
