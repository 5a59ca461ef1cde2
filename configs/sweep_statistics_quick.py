"""The README's main job: the statistics-batch protocol, REDUCED to fit
15 minutes on 2 CPU cores.

The question: does BN get worse when it computes its statistics over fewer
examples, while GN, which needs none, does not? Everything about the
optimization is fixed — a global batch of 128 images (4 simulated devices ×
32), learning rate 0.1·128/128, cosine schedule, steps — and only the number
of examples per BN statistics batch varies, 32, 16, 8, 4, 2, as ghost
batches inside each device's 32 (``statistics_batch``). GN's training does
not depend on it, so the sweep trains GN once and reports that run in every
column (``tests/experiments/test_train.py`` checks the invariance bitwise).

Reduced: ResNet-8 (widths 16/32/64), the first 12,800 training images, 3
epochs (300 steps), one seed — far from converged; the test error is the
median of the last 2 epoch evaluations on the full 10,000-image test set.
About 12 minutes on 2 CPU cores.

    python -m experiments.sweep --config configs/sweep_statistics_quick.py --workdir runs/statistics_quick
"""

import ml_collections

from experiments.config import default_config

STATISTICS_BATCHES = (32, 16, 8, 4, 2)


def get_config():
  sweep = ml_collections.ConfigDict()
  sweep.name = "CIFAR-10 ResNet-8, statistics-batch protocol, 12.8k images × 3 epochs (reduced)"
  base = default_config()
  base.depth = 8
  base.width = 16
  base.num_devices = 4
  base.per_device_batch = 32
  base.train_examples = 12_800
  base.epochs = 3
  base.schedule = "cosine"
  base.warmup_epochs = 0.5
  base.report_last_evals = 2
  base.checkpoint = True
  base.progress = True
  sweep.base = base
  sweep.axes = [
    [("bn", {"norm": "bn"}), ("gn", {"norm": "gn", "norm_kwargs": {"num_groups": 8}})],
    [(f"k{k}", {"statistics_batch": k}) for k in STATISTICS_BATCHES],
  ]
  return sweep
