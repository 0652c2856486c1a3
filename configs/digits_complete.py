"""Completing 8x8 digits from their upper half: conditional GAN + L1 against L1 alone.

python -m drift_jax.main --config=configs/digits_complete.py                             # cGAN + L1
python -m drift_jax.main --config=configs/digits_complete.py --config.complete.loss=l1  # L1 only

Both train the same U-Net (the `denoiser` block) for the same steps; the evaluation scores
completions of held-out digits with the image evaluator (class accuracy, spread ratio, FD)
and logs `completion_l1` on the hidden rows.
"""

from drift_jax import defaults


def get_config():
    c = defaults.image_config()
    c.method = 'complete'
    c.data.name = 'digits'
    # The U-Net completing the images and the discriminator at 16 base channels, the
    # size of the DDPM U-Net on digits.
    c.denoiser.base_channels = 16
    c.model.base_channels = 16
    c.train.steps = 1500
    c.train.batch_size = 128
    c.train.checkpoint_every = 500
    c.eval.every = 500
    c.optim.learning_rate = 2e-4
    c.optim.b1 = 0.5
    return c
