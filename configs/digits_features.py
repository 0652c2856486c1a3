"""Class-conditional digits with the drifting loss in the features of a frozen MAE encoder.

Train the encoder first (configs/mae_digits.py), then:

    python -m drift_jax.main --config=configs/digits_features.py \
        --config.encoder.workdir=workdirs/mae_digits
"""

from drift_jax import defaults


def get_config():
    c = defaults.image_config()
    c.data.name = 'digits'
    c.encoder.name = 'mae'
    c.encoder.workdir = 'workdirs/mae_digits'
    c.train.steps = 1500
    c.eval.every = 500
    return c
