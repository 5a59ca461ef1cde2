"""The full batch-size sweep for a GPU or TPU: every normalizer, 3 seeds.

The GN paper's protocol on CIFAR-10 (Wu & He 2018, adapted; GUIDE §4):
ResNet-20, 8 devices with per-device statistics, images per device
{32, 16, 8, 4, 2}, LR 0.1·batch/128 with linear scaling, step decay (÷10 at
50% and 75%) after a 1-epoch warm-up, weight decay 1e-4, flip + crop, γ = 0
for the last norm of each block, 160 epochs at every batch size.

Ghost BN is left out: under per-device statistics every BN already computes
its statistics over ghost batches of the per-device size.

    python -m experiments.sweep --config configs/sweep_paper.py --workdir runs/paper
"""

import ml_collections

from experiments.config import default_config

GROUPED = {"num_groups": 8}  # 16/32/64 channels: the GN paper's CIFAR setting

NORMALIZERS = [
  ("bn", {"norm": "bn"}),
  ("gn", {"norm": "gn", "norm_kwargs": GROUPED}),
  ("ln", {"norm": "ln"}),
  ("in", {"norm": "in"}),
  ("rms", {"norm": "rms"}),
  ("brn", {"norm": "brn"}),
  ("frn", {"norm": "frn"}),
  ("evonorm_b0", {"norm": "evonorm_b0"}),
  ("evonorm_s0", {"norm": "evonorm_s0", "norm_kwargs": GROUPED}),
  ("bn+ws", {"norm": "bn+ws"}),
  ("gn+ws", {"norm": "gn+ws", "norm_kwargs": GROUPED}),
  ("none", {"norm": "none"}),
]


def get_config():
  sweep = ml_collections.ConfigDict()
  sweep.name = "CIFAR-10 ResNet-20, full protocol"
  base = default_config()
  base.depth = 20
  base.num_devices = 8
  base.epochs = 160
  base.schedule = "step"
  base.warmup_epochs = 1.0
  base.eval_with_batch_stats = False
  base.progress = False
  sweep.base = base
  sweep.axes = [
    NORMALIZERS,
    [(f"b{b}", {"per_device_batch": b}) for b in (32, 16, 8, 4, 2)],
    [(f"seed{s}", {"seed": s}) for s in (0, 1, 2)],
  ]
  return sweep
