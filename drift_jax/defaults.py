"""Base configuration that every config file in `configs/` starts from.

Config files import this and override only what differs. Every field that a
user may set on the command line (`--config.train.steps=100`) exists here.
"""

from __future__ import annotations

import ml_collections


def toy_config() -> ml_collections.ConfigDict:
    """Base config for low-dimensional data (toy shapes and a user's point cloud)."""
    c = ml_collections.ConfigDict()
    # What is learned (drift_jax.methods.METHODS); the task ('toy' here) is the data side.
    c.method = 'drifting'
    c.task = 'toy'
    # Per-method settings applied when that method is chosen, e.g.
    # c.method_settings.NAME = ml_collections.ConfigDict({'train': {'steps': 5000}});
    # values given on the command line win over them.
    c.method_settings = ml_collections.ConfigDict()

    c.data = ml_collections.ConfigDict()
    c.data.name = 'spiral'  # one of drift_jax.data.DATASET_NAMES
    c.data.path = ''  # .npy or .csv point cloud, for name='points'
    c.data.columns = ()  # columns of data.path to read: names or 0-based indices; () = all

    c.model = ml_collections.ConfigDict()
    c.model.name = 'mlp'
    c.model.noise_dim = 32
    c.model.width = 256
    c.model.depth = 3
    c.model.activation = 'silu'
    c.model.init = 'default'  # bimodal study: 'middle' | 'far' | 'collapsed'
    c.model.out_scale = 1.0  # spread of the initial generated distribution

    # The simple form on raw 2-D coordinates (docs/field.md): one temperature, no
    # scale or RMS normalisation. The paper's image setting uses (0.02, 0.05, 0.2) with both.
    c.drift = ml_collections.ConfigDict()
    c.drift.temperatures = (0.05,)
    c.drift.kernel = 'laplace'
    c.drift.normalize = 'both'
    c.drift.self_mask = True
    c.drift.scale_dist = False
    c.drift.normalize_drift = False
    c.drift.block_size = 0
    c.drift.affinity_floor = 0.0  # > 0: the official floored affinity (1e-6); docs/field.md
    c.drift.loss_reduction = 'sum'  # over coordinates; 'mean' is the official release's

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 100
    c.optim.schedule = 'cosine'  # 'cosine' | 'constant'
    c.optim.final_lr_fraction = 0.05
    c.optim.grad_clip = 1.0  # global norm; 0 disables
    c.optim.weight_decay = 0.0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999

    c.train = ml_collections.ConfigDict()
    c.train.steps = 2000
    c.train.batch_size = 1024  # generated samples per step
    c.train.num_pos = 1024  # data samples (positives) per step
    c.train.seed = 0
    # EMA decay actually used at step t: min(ema_decay, (1 + t) / (10 + t)), so a value above
    # ~0.995 only takes effect after ~2000 steps (0.999 after ~9000).
    c.train.ema_decay = 0.995
    c.train.log_every = 50
    c.train.checkpoint_every = 500
    c.train.max_to_keep = 3
    c.train.time_budget = 0.0  # seconds of training (evaluations excluded); 0 = none

    c.eval = ml_collections.ConfigDict()
    c.eval.every = 500
    c.eval.num_samples = 5000
    # Generated / held-out draw pairs averaged into energy_distance (one draw scatters widely).
    c.eval.draws = 8
    c.eval.plot_points = 2000  # points drawn in each sample plot
    c.eval.extra_metrics = ()  # also log 'mmd' and/or 'sliced_wasserstein' (first draw)
    c.eval.sample_steps = 0  # multi-step methods: sampling steps (0 = the method's default)

    # Networks of the multi-step methods (ddpm, ncsn): an MLP with a noise-level embedding,
    # as wide and deep as the drifting generator above.
    c.denoiser = ml_collections.ConfigDict()
    c.denoiser.width = 256
    c.denoiser.depth = 3

    # DDPM (method='ddpm'): schedule, label dropout for guidance, DDIM's eta.
    c.ddpm = ml_collections.ConfigDict()
    c.ddpm.timesteps = 1000
    c.ddpm.schedule = 'linear'  # 'linear' | 'cosine'
    c.ddpm.beta_start = 1e-4
    c.ddpm.beta_end = 0.02
    c.ddpm.label_dropout = 0.1  # labelled data: share of null labels in training
    c.ddpm.eta = 0.0  # DDIM noise (fewer steps than timesteps); 0 = deterministic

    # NCSN (method='ncsn'): noise levels, loss, annealed Langevin sampling.
    c.ncsn = ml_collections.ConfigDict()
    c.ncsn.levels = 10
    c.ncsn.sigma_max = 0.0  # 0: the largest pairwise distance of 2000 training examples
    c.ncsn.sigma_min = 0.01
    c.ncsn.loss = 'dsm'  # 'dsm' (denoising) | 'ssm' (sliced, low-dimensional data)
    c.ncsn.steps_per_level = 100  # Langevin steps per level (eval.sample_steps overrides)
    c.ncsn.step_eps = 2e-5  # step size at sigma_L; a_i = step_eps sigma_i^2 / sigma_L^2
    c.ncsn.final_denoise = True  # one last step x + sigma_L^2 s(x, sigma_L)
    c.ncsn.label_dropout = 0.1  # labelled data: share of null labels in training

    # GAN (method='gan'): the drifting generator (`model`) against a discriminator of the
    # same size; non-saturating loss, R1 on the reals, the generator's EMA for samples.
    c.gan = ml_collections.ConfigDict()
    c.gan.r1_gamma = 0.1  # weight of (gamma / 2) E ||grad_x D(real)||^2; 0 disables
    c.gan.disc_learning_rate = 0.0  # discriminator's learning rate; 0 = optim.learning_rate
    c.gan.stop_patience = 1000  # stop when D wins outright this many steps in a row; 0 = never

    # Denoising diffusion GAN (method='ddgan'): T GAN-modelled reverse steps; the generator
    # is the `denoiser` network taking [x_t, z], the discriminator and its loss settings are
    # the GAN's (`gan` block).
    c.ddgan = ml_collections.ConfigDict()
    c.ddgan.steps = 4  # T, 1..8; NFE = T
    c.ddgan.beta_min = 0.1  # the variance-preserving schedule's ends
    c.ddgan.beta_max = 20.0
    c.ddgan.latent_dim = 32  # z: coordinates (points) or channels (images; 4 in image_config)

    # Settings of the multi-step baselines on low-dimensional data (applied when the method
    # is chosen). Tried so far: only these first settings (5000 steps at batch 1024, the
    # optimiser, EMA and network of the drifting generator); results in docs/ddpm.md and
    # docs/ncsn.md. Their samplers take ~1000 network evaluations, so they evaluate once, at
    # the end.
    for name in ('ddpm', 'ncsn'):
        c.method_settings[name] = ml_collections.ConfigDict(
            {
                'train': {'steps': 5000, 'checkpoint_every': 1000},
                'eval': {'every': 5000},
            }
        )

    # The adversarial methods on low-dimensional data: 5000 steps of one discriminator and
    # one generator update, Adam with lr 2e-4 and beta1 0.5 (the usual GAN setting), R1 0.1,
    # the generator's EMA (train.ema_decay) for samples. Tried on the spiral (docs/gan.md,
    # docs/ddgan.md): lr 2e-4 with R1 0.1 reaches the energy floor; ablations there.
    # The denoising diffusion GAN's step costs 60 to 75 ms here (two networks and R1 on
    # (x_{t-1}, x_t) pairs), so its toy step count trades quality against a 5-minute run.
    # Tried (train seconds, ED / floor spiral, moons): 5000 steps 305 s, 1.65, 2.34; 4500
    # 315-352 s, 1.76, 2.50; 4000 257-269 s, 2.02, 3.03.
    for name, steps in (('gan', 5000), ('ddgan', 4250)):
        c.method_settings[name] = ml_collections.ConfigDict(
            {
                'train': {'steps': steps, 'checkpoint_every': 1000},
                'eval': {'every': 1000},
                'optim': {'learning_rate': 2e-4, 'b1': 0.5},
            }
        )

    # RealNVP coupling flow (method='flow', docs/flow.md): `layers` affine couplings with
    # alternating masks, each conditioner an MLP of `depth` hidden layers of `width`:
    # 16 x (2 -> 64 -> 64 -> 64 -> 4) and the ActNorms are 140,416 parameters (the drifting
    # generator above: 140,546). Tuned on spiral, 3000 steps at batch 1024, single runs,
    # held-out NLL / ED-floor at the end: these settings 0.711 / 0.82; lr 1e-3 0.741 / 1.03
    # (5000 steps: 0.732 / 1.21), lr 3e-3 0.725 / 0.92; scale 1.0 0.730 / 1.14 with a
    # spike mid-run, scale 3.0 unstable (0.807 / 7.0); no ActNorm 0.711 / 0.96 (no gain
    # either way); 8 couplings of width 128, depth 2 (139k, half the time per step) 0.824 /
    # 1.08 at lr 1e-3. About 4.5 minutes per toy here, three evaluations included.
    c.flow = ml_collections.ConfigDict()
    c.flow.layers = 16
    c.flow.width = 64
    c.flow.depth = 3
    c.flow.scale = 2.0  # bound on log s: log s = scale * tanh(raw / scale)
    c.flow.actnorm = True  # a learned per-dimension affine (identity init) before each coupling
    c.method_settings.flow = ml_collections.ConfigDict(
        {
            'optim': {'learning_rate': 2e-3},
            'train': {'steps': 3000, 'checkpoint_every': 1000},
            'eval': {'every': 1000},
        }
    )

    # Device mesh: `data` shards the batch (-1 = all devices), `fsdp` shards parameters.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    return c


def use_paper_field(
    c: ml_collections.ConfigDict, drifting_only: bool = False
) -> ml_collections.ConfigDict:
    """Switches a toy config to the paper's field: temperatures (0.02, 0.05, 0.2) on
    scale-normalised distances, each RMS-normalised, with lr 2e-3 and a slower EMA (0.999).

    Needed where modes are separated (a collapsed bimodal start, thin Gaussian modes): one
    raw temperature of 0.05 only sees the nearest mode; on the other toys it also ends
    closer to the data in the same steps. `drifting_only`: store them as the drifting
    method's settings (`method_settings.drifting`), so the config's other methods keep the
    base optimiser and EMA. Returns `c` (changed in place).
    """
    settings = {
        'drift': {'temperatures': (0.02, 0.05, 0.2), 'scale_dist': True, 'normalize_drift': True},
        'optim': {'learning_rate': 2e-3},
        'train': {'ema_decay': 0.999},
    }
    if drifting_only and 'drifting' not in c.method_settings:
        c.method_settings.drifting = ml_collections.ConfigDict()
    target = c.method_settings.drifting if drifting_only else c
    for section, values in settings.items():
        if section not in target:
            target[section] = ml_collections.ConfigDict()
        target[section].update(values)
    return c


def image_config() -> ml_collections.ConfigDict:
    """Base config for class-conditional image generation (pixel or encoder feature space)."""
    c = toy_config()
    c.task = 'image'
    c.data = ml_collections.ConfigDict()
    c.data.name = 'digits'  # any prepared TFDS image dataset with a label
    c.data.data_dir = ''  # default: $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.data.download = False  # never reach the network unless asked

    c.model = ml_collections.ConfigDict()
    c.model.name = 'conv'  # 'conv' | 'dit' | 'mlp'
    c.model.noise_dim = 64
    c.model.base_channels = 32
    c.model.num_res_blocks = 1
    c.model.max_channel_mult = 4
    c.model.cond_dim = 128
    c.model.tanh_output = True
    c.model.patch_size = 4  # dit only
    c.model.hidden = 256  # dit width; mlp hidden width
    c.model.depth = 6  # dit blocks; mlp residual blocks
    c.model.heads = 4
    c.model.num_style_tokens = 0
    c.model.mlp_ratio = 4

    c.drift.temperatures = (0.02, 0.05, 0.2)
    c.drift.scale_dist = True
    c.drift.normalize_drift = True

    # The multi-step methods' U-Net (levels of base_channels x mults, skips).
    c.denoiser = ml_collections.ConfigDict()
    c.denoiser.base_channels = 32
    c.denoiser.mults = (1, 2)
    c.denoiser.num_res_blocks = 1

    # The multi-step baselines on images: batches of 128 real images with their labels, one
    # evaluation at the end with a shortened sampler (DDIM, 100 steps; NCSN, 20 Langevin
    # steps per level), since 1000 U-Net evaluations per image take minutes on a CPU.
    # The U-Net at base_channels 32 trains at ~2.5 steps/s on 8x8 digits here; 16 channels
    # (below) runs ~3x faster and meets the digits goal (docs/ddpm.md).
    c.method_settings = ml_collections.ConfigDict()
    for name, sample_steps in (('ddpm', 100), ('ncsn', 20)):
        c.method_settings[name] = ml_collections.ConfigDict(
            {
                'train': {'steps': 3000, 'batch_size': 128, 'checkpoint_every': 1000},
                'eval': {'every': 3000, 'sample_steps': sample_steps},
                'denoiser': {'base_channels': 16},
            }
        )
    # The adversarial methods on images: batches of 128 real images (the generated batch
    # takes their labels), the GAN optimiser of the toys.
    for name in ('gan', 'ddgan'):
        c.method_settings[name] = ml_collections.ConfigDict(
            {
                'train': {'steps': 3000, 'batch_size': 128, 'checkpoint_every': 1000},
                'eval': {'every': 1000},
                'optim': {'learning_rate': 2e-4, 'b1': 0.5},
            }
        )
    c.method_settings.ddgan.denoiser = ml_collections.ConfigDict({'base_channels': 16})

    # The coupling flow on images (method='flow'): `levels` squeezes, each with `blocks`
    # checkerboard and `blocks` channel couplings, half the channels factored out between
    # levels; conv conditioners of `width` channels and `depth` residual blocks: 285,024
    # parameters on digits and MNIST (the drifting conv generator: 381k on digits), sized
    # for 2 CPU cores. On digits, 3000 steps of 64 images (7.4 min here): FD/floor 1.03,
    # class accuracy 0.98, but held-out bits/dim is best at step 1000 (5.35) and rises to
    # 6.03 as the flow overfits the 1497 training images; width 16 overfits less (5.45 at
    # 2000, 5.55 at 3000) with worse samples (FD/floor 1.41). On MNIST a step takes ~2 s here
    # (4.96 bits/dim after 240 s, docs/compare.md): meant for an accelerator there.
    c.flow = ml_collections.ConfigDict()
    c.flow.levels = 2  # 8x8 and 28x28 images allow 2 (H and W divisible by 2**levels)
    c.flow.blocks = 2
    c.flow.width = 32
    c.flow.depth = 1
    c.flow.scale = 2.0
    c.flow.actnorm = True
    c.method_settings.flow = ml_collections.ConfigDict(
        {
            'train': {'steps': 3000, 'batch_size': 64, 'checkpoint_every': 1000},
            'eval': {'every': 1000},
        }
    )

    # Image completion (method='complete', configs/digits_complete.py): the lower rows are
    # hidden and the U-Net (`denoiser`) fills them in, trained as a conditional GAN with an
    # L1 term ('gan_l1'; discriminator and R1 from the `gan` block) or with L1 alone ('l1').
    c.complete = ml_collections.ConfigDict()
    c.complete.loss = 'gan_l1'  # 'gan_l1' | 'l1'
    c.complete.l1_weight = 100.0  # lambda of the L1 term
    c.complete.keep_rows = 0.5  # share of rows shown, from the top
    c.complete.latent_channels = 1  # noise channels given to the generator (0: none)
    c.ddgan.latent_dim = 4  # noise channels of the denoising diffusion GAN's U-Net

    c.guidance = ml_collections.ConfigDict()
    c.guidance.alpha_max = 1.0  # 1 = no guidance in training
    c.guidance.exponent = 1.0  # p(alpha) ~ alpha^-exponent on [1, alpha_max]

    c.encoder = ml_collections.ConfigDict()
    c.encoder.name = 'none'  # 'none' (pixel space) | 'mae'
    c.encoder.workdir = ''  # workdir of a finished MAE run
    c.encoder.feature_sets = ('locations', 'global', 'patch2', 'patch4', 'raw', 'energy')
    c.encoder.bank_features = True  # bank holds real images' features (encoded once, at push)

    c.train.classes_per_step = 10
    c.train.gen_per_class = 32
    c.train.pos_per_class = 32
    c.train.uncond_per_class = 16
    c.train.batch_size = 320  # classes_per_step x gen_per_class
    c.train.bank_capacity = 256  # real images kept per class (and unconditional)
    c.train.bank_push = 64  # real images pushed into the bank per step
    del c.train['num_pos']

    c.eval.num_samples = 1000
    c.eval.alpha = 1.0
    c.eval.grid_per_class = 10
    c.eval.classifier_steps = 600
    # Inception FID and IS (docs/fid.md): reference statistics from `python -m drift_jax.fid
    # stats`; '' = not computed. Weights: a file, or '' = $DRIFT_JAX_INCEPTION or
    # ~/.cache/drift_jax/inception_fid.npz.
    c.eval.fid_stats = ''
    c.eval.inception_weights = ''
    del c.eval['plot_points']
    del c.eval['extra_metrics']
    del c.eval['draws']
    return c


def mae_config() -> ml_collections.ConfigDict:
    """Base config for training the feature encoder as a masked autoencoder."""
    c = image_config()
    c.method = 'mae'
    c.mae = ml_collections.ConfigDict()
    c.mae.widths = (32, 64, 128)
    c.mae.blocks_per_stage = 1
    c.mae.decoder_width = 64
    c.mae.stem_stride = 1  # 2 halves the encoder's resolution first (4x cheaper)
    c.mae.mask_ratio = 0.5
    c.mae.patch_size = 2
    c.train.batch_size = 128
    c.eval.num_samples = 512
    return c
