"""Depth experiment, REDUCED to fit ~35 minutes on 2 CPU cores.

Plain CNNs without shortcuts (20 and 56 layers) and ResNet-56, each with no
normalizer, BN, GN and LN, at a small grid of constant learning rates
(experiments/depth.py). Reduced: width 8 (8/16/32 channels instead of
16/32/64), 120 SGD steps of batch 64 (one pass over the first 7,680 CIFAR-10
training images), no augmentation, no weight decay, one seed.

    python -m experiments.depth --config configs/depth_reduced.py \
        --workdir experiments/results/depth_reduced
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.name = "Depth, normalization and trainability (reduced)"
  c.data_dir = ""  # '' -> $JAXNORM_DATA, else ~/.cache/jaxnorm
  c.download = True
  c.train_examples = 7680  # the first N training images: one pass (a reduced run)
  c.width = 8  # channels of the first stage
  c.archs = ("plain20", "plain56", "resnet56")  # 'plain' or 'resnet' + depth 6n+2
  c.norms = ("none", "bn", "gn", "ln")  # jaxnorm.create_norm names
  c.norm_kwargs = {"gn": {"num_groups": 4}}  # per normalizer name
  # He et al.'s ResNet starts every block's last γ at 1; with γ = 0 (this
  # project's training default) the blocks' gradients are exactly 0 at init.
  c.resnet_zero_init_last = False
  # Training's keys, with training's meaning (experiments/config.py): the
  # global batch is num_devices × per_device_batch; the runs train through
  # training's engine on one physical device.
  c.num_devices = 1
  c.per_device_batch = 64
  c.sync_batch_stats = False
  c.augment = False
  c.execution = "vmap"  # per step: the runs stop and probe mid-epoch
  c.steps = 120  # SGD steps per run
  c.momentum = 0.9
  c.learning_rates = (0.02, 0.1, 0.5, 2.0)  # constant, no warm-up
  c.reference_lr = 0.1  # the run whose loss curve and probes are compared
  c.probe_steps = (0, 10, 30, 60, 120)  # diagnostics on a fixed batch (reference_lr only)
  c.trains_threshold = 2.0  # "trains": mean loss of the last trains_window steps below this
  c.trains_window = 20
  c.seed = 0
  c.progress = True  # tqdm bar over all steps
  return c
