"""The GN paper's protocol (BN against GN, 32 → 2 images per device) sized
for one H100 lease: ResNet-20, 8 simulated devices with per-device
statistics, LR 0.1·N/32 for N images per device (base_lr 0.1 at a global
batch of 256), step decay (÷10 at 50 % and 75 %) after a 1-epoch warm-up,
weight decay 1e-4, flip + crop, γ = 0 for the last norm of each block, the
scan engine (the data, its order, the augmentation and the evaluation on
the device, an epoch per compiled call).

The points run in the order 32, 2, 8, 16, 4 images per device, BN then GN
at each, so a lease cut short still holds both ends of the curve. A point
that finishes is complete on its own (result.json with its hardware).
Rerunning the sweep into the same directory skips finished points, and
points from several leases or machines merge into one report, which names
where each point trained:

    python -m experiments.sweep --config configs/sweep_paper_h100.py --workdir runs/paper_h100
    python -m experiments.report --workdir runs/paper_h100

On a device lease: experiments/device_sweep.sh (it rebuilds the data there
and packs the finished points into $OUT).

Sizing, from the first H100 lease (NVIDIA H100 80GB HBM3, jax 0.11.2, scan
engine; experiments/results/paper_h100_8epochs_reduced/). Steady images/s,
BN / GN, and seconds per 50,000-image epoch:

    images per device    32            16            8             4             2
    BN  img/s, s/epoch   69,600  0.72  38,000  1.32  25,900  1.93  14,200  3.53  7,970  6.27
    GN  img/s, s/epoch   71,100  0.70  54,000  0.93  31,400  1.59  21,000  2.38  8,730  5.73

  one epoch of all ten points, evaluation included: 25.4 s (13.8 s BN and
  11.3 s GN of training, the rest the ten test-set evaluations)
  fixed cost per point (compiling the epoch and evaluation programs, loading
  the data, starting the run): 316 s measured for the eight-epoch sweep,
  - 8 × 25.4 s = 113 s for ten points, about 11 s each
  7 minutes (420 s): (420 - 113) / 25.4 = 12.1  ->  EPOCHS = 12, one seed
  (predicted wall time 113 + 12 × 25.4 = 418 s)

A second seed halves the epochs (6). The first lease ran this config at
8 epochs (--config.base.epochs=8): the device check had taken 6 of its 15
minutes, and 5.5 minutes were left.
"""

import ml_collections

from experiments.config import default_config

PER_DEVICE_BATCHES = (32, 2, 8, 16, 4)  # both ends first
SEEDS = (0,)
EPOCHS = 12  # sized above: 7 minutes of one H100


def get_config():
  sweep = ml_collections.ConfigDict()
  sweep.name = "CIFAR-10 ResNet-20, GN paper protocol, sized for one H100 lease (reduced)"
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
