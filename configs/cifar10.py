"""Class-conditional CIFAR-10 with a DiT-style generator and guidance, for one accelerator.

Needs: a GPU or TPU with >= 16 GB (the field at 64 x 64 samples per class over 3072-dim
pixels is matmul-bound), the prepared dataset (`python -m drift_jax.data.build
--name=cifar10 --source=...` or `--config.data.download=true` where TensorFlow and network
exist), and a few hours. Not sized for CPU.

    python -m drift_jax.main --config=configs/cifar10.py --workdir=workdirs/cifar10
"""

from drift_jax import defaults


def get_config():
    c = defaults.image_config()
    c.data.name = 'cifar10'
    c.model.name = 'dit'
    c.model.patch_size = 4
    c.model.hidden = 384
    c.model.depth = 8
    c.model.heads = 6
    c.model.num_style_tokens = 8
    c.guidance.alpha_max = 4.0
    c.train.classes_per_step = 10
    c.train.gen_per_class = 64
    c.train.pos_per_class = 64
    c.train.uncond_per_class = 32
    c.train.batch_size = 640
    c.train.bank_capacity = 1024
    c.train.bank_push = 256
    c.train.steps = 100_000
    c.train.checkpoint_every = 2000
    c.optim.learning_rate = 2e-4
    c.optim.warmup_steps = 2000
    c.eval.every = 5000
    c.eval.num_samples = 10_000
    c.eval.classifier_steps = 3000
    # Inception FID / IS as papers report them (docs/fid.md): make the reference statistics
    # once, `python -m drift_jax.fid stats --data=cifar10 --split=train --out=cifar10_train.npz`,
    # put the converted weights at ~/.cache/drift_jax/inception_fid.npz, then run with
    # --config.eval.fid_stats=cifar10_train.npz (or set it here).
    c.eval.fid_stats = ''
    # The coupling flow (--config.method=flow): 3 levels of 3 checkerboard and 3 channel
    # couplings, conditioners of 96 channels and 4 residual blocks: 18.4M parameters (the DiT
    # generator above: 21.8M), batches of 64 real images at lr 1e-3. Not run yet.
    c.method_settings.flow = {
        'flow': {'levels': 3, 'blocks': 3, 'width': 96, 'depth': 4},
        'optim': {'learning_rate': 1e-3},
        'train': {'steps': 100_000, 'batch_size': 64, 'checkpoint_every': 2000},
        'eval': {'every': 5000},
    }
    return c
