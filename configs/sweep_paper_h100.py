"""The GN paper's protocol (BN against GN, 32 → 2 images per device) sized
for one H100 lease: ResNet-20, 8 simulated devices with per-device
statistics, LR 0.1·N/32 for N images per device (base_lr 0.1 at a global
batch of 256), step decay (÷10 at 50 % and 75 %) after a 1-epoch warm-up,
weight decay 1e-4, flip + crop, γ = 0 for the last norm of each block, the
scan engine (the data, its order, the augmentation and the evaluation on
the device, an epoch per compiled call).

The points run in the order 32, 2, 8, 16, 4 images per device, BN then GN
at each, so a lease cut short still holds both ends of the curve. A point
that finishes is complete on its own (result.json with its hardware), and
points from several leases merge into one report:

    python -m experiments.sweep --config configs/sweep_paper_h100.py --workdir runs/paper_h100
    python -m experiments.report --workdir runs/paper_h100

Sizing (the arithmetic; figures measured on one H100 in the first lease,
see experiments/results/ and the README): EPOCHS below.
"""

import ml_collections

from experiments.config import default_config

PER_DEVICE_BATCHES = (32, 2, 8, 16, 4)  # both ends first
SEEDS = (0,)
EPOCHS = 2


def get_config():
  sweep = ml_collections.ConfigDict()
  sweep.name = f"CIFAR-10 ResNet-20, GN paper protocol, {EPOCHS} epochs, {len(SEEDS)} seed(s) (reduced: one H100 lease)"
  base = default_config()
  base.depth = 20
  base.num_devices = 8
  base.lr_reference_batch = 256  # 0.1·N/32 with 8 devices of N images
  base.epochs = EPOCHS
  base.schedule = "step"
  base.warmup_epochs = 1.0
  base.execution = "auto"  # scan on GPU/TPU
  base.checkpoint = False  # a point is shorter than the lease; rerunning a point restarts it
  base.report_last_evals = 1
  base.progress = False
  sweep.base = base
  sweep.axes = [
      [(f"s{seed}", {"seed": seed}) for seed in SEEDS],
      [(f"b{b}", {"per_device_batch": b}) for b in PER_DEVICE_BATCHES],
      [("bn", {"norm": "bn"}), ("gn", {"norm": "gn", "norm_kwargs": {"num_groups": 8}})],
  ]
  return sweep
