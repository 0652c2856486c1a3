"""Base configuration that every config file in `configs/` starts from.

Config files import this and override only what differs (STYLE.md). Every field that a
user may set on the command line (`--config.train.steps=100`) exists here.
"""

from __future__ import annotations

import ml_collections


def toy_config() -> ml_collections.ConfigDict:
    """Base config for low-dimensional data (toy shapes and a user's point cloud)."""
    c = ml_collections.ConfigDict()

    c.data = ml_collections.ConfigDict()
    c.data.name = 'spiral'        # one of drift_jax.data.DATASET_NAMES
    c.data.path = ''              # .npy or .csv point cloud, for name='points'

    c.model = ml_collections.ConfigDict()
    c.model.name = 'mlp'
    c.model.noise_dim = 32
    c.model.width = 256
    c.model.depth = 3
    c.model.activation = 'silu'
    c.model.init = 'default'      # bimodal study: 'middle' | 'far' | 'collapsed'
    c.model.out_scale = 1.0       # spread of the initial generated distribution

    # The simple form on raw 2-D coordinates (DESIGN.md section 4): one temperature, no
    # scale or RMS normalisation. The paper's image setting uses (0.02, 0.05, 0.2) with both.
    c.drift = ml_collections.ConfigDict()
    c.drift.temperatures = (0.05,)
    c.drift.kernel = 'laplace'
    c.drift.normalize = 'both'
    c.drift.self_mask = True
    c.drift.scale_dist = False
    c.drift.normalize_drift = False
    c.drift.block_size = 0

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 100
    c.optim.schedule = 'cosine'   # 'cosine' | 'constant'
    c.optim.final_lr_fraction = 0.05
    c.optim.grad_clip = 1.0       # global norm; 0 disables
    c.optim.weight_decay = 0.0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999

    c.train = ml_collections.ConfigDict()
    c.train.steps = 2000
    c.train.batch_size = 1024     # generated samples per step
    c.train.num_pos = 1024        # data samples (positives) per step
    c.train.seed = 0
    c.train.ema_decay = 0.995
    c.train.log_every = 50
    c.train.checkpoint_every = 500
    c.train.max_to_keep = 3

    c.eval = ml_collections.ConfigDict()
    c.eval.every = 500
    c.eval.num_samples = 5000
    c.eval.plot_points = 2000     # points drawn in each sample plot

    # Device mesh: `data` shards the batch (-1 = all devices), `fsdp` shards parameters.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    return c
