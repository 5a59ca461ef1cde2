"""The per-device protocol, REDUCED: a batch-size sweep that fits a 2-core CPU.

(The README's main job is ``configs/sweep_statistics_quick.py``.)

BN against GN (8 groups) at {32, 16, 8, 4, 2} images per device on 8
simulated devices with per-device statistics (the GN paper's protocol,
GUIDE §4), one seed. Reduced to fit 90 minutes on 2 CPU cores:

* ResNet-8 (one basic block per stage, widths 16/32/64) instead of
  ResNet-20+;
* 6 epochs (cosine LR after a half-epoch warm-up) instead of the full
  schedule — GN converges more slowly early on, so this short schedule
  favours BN at large batches.

Everything else follows the protocol: all 50k training images, LR
0.1·batch/128, momentum 0.9, weight decay 1e-4, flip + crop, γ = 0 for the
last norm of each block, the same number of epochs at every batch size.

    python -m experiments.sweep --config configs/sweep_quick.py --workdir runs/sweep_quick
"""

import ml_collections

from experiments.config import default_config


def get_config():
  sweep = ml_collections.ConfigDict()
  sweep.name = "CIFAR-10 ResNet-8, 6 epochs (reduced)"
  base = default_config()
  base.depth = 8
  base.width = 16
  base.num_devices = 8
  base.epochs = 6
  base.schedule = "cosine"
  base.warmup_epochs = 0.5
  base.report_last_evals = 2
  base.progress = True
  sweep.base = base
  sweep.axes = [
    [("bn", {"norm": "bn"}), ("gn", {"norm": "gn", "norm_kwargs": {"num_groups": 8}})],
    [(f"b{b}", {"per_device_batch": b}) for b in (32, 16, 8, 4, 2)],
  ]
  return sweep
