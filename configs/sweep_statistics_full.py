"""The statistics-batch protocol on the full CIFAR-10 training set, within
2.5 hours on 2 CPU cores, two seeds, with a convergence check.

Same question and protocol as the README's main job
(``configs/sweep_statistics_quick.py``): a fixed optimization — a global
batch of 128 images (4 simulated devices × 32), learning rate 0.1, cosine
schedule annealed to zero, the same 3,120 steps at every point — and only
the number of examples per BN statistics batch varies, 32, 16, 8, 4, 2
(ghost batches). GN trains once per seed and fills every column.

Data: all 50,000 training images with pad-4 random crop and horizontal
flip; the test error is measured on all 10,000 test images.

Sizing, from a pilot on the 2-core Intel Xeon development machine (jax
0.10.2; ResNet-8 of widths 16/32/64, 100 steps of 128 images each, steady
state after compilation):
  - BN, statistics over 2: 8.3 steps/s (1,060 img/s);
  - BN, statistics over 32: 6.7 steps/s (860 img/s);
  so an epoch of 390 steps takes 47–59 s, ~55 s on average, plus ~4 s per
  evaluation of the test set and ~15 s of compilation per run.
  - Grid: 2 seeds × (GN + BN at 5 statistics batches) = 12 runs × 8 epochs
    ≈ 12 × (8 × 55 + 5 × 4 + 15) s ≈ 5,500 s;
  - convergence check: BN at 32 and GN (seed 0) once more at 16 epochs
    ≈ 2 × (16 × 55 + 8 × 4 + 15) s ≈ 1,900 s;
  - total ≈ 7,400 s ≈ 2.1 hours (budget: 2.5 hours).
  12 epochs (the largest budget the grid alone would allow) would leave no
  room for the convergence check, which says how far from converged the
  result is; 8 epochs is the largest that fits both.

Each cell is the median test error of the last 3 epochs; the test set is
also evaluated every 2 epochs for the curves; mean ± std over the seeds.

Differs from the paper (ImageNet, ResNet-50, 100 epochs, 8 GPUs): a CIFAR
ResNet-8 of widths 16/32/64, 8 epochs, and ghost batches inside one device's
32 images in place of per-GPU batches (the statistics-batch protocol, which
keeps the optimization fixed).

    python -m experiments.sweep --config configs/sweep_statistics_full.py --workdir runs/statistics_full
"""

import ml_collections

from experiments.config import default_config

STATISTICS_BATCHES = (32, 16, 8, 4, 2)
SEEDS = (0, 1)


def get_config():
  sweep = ml_collections.ConfigDict()
  sweep.name = "CIFAR-10 ResNet-8, statistics-batch protocol, all 50,000 images × 8 epochs, flip + crop, 2 seeds"
  base = default_config()
  base.depth = 8
  base.width = 16
  base.num_devices = 4
  base.per_device_batch = 32
  base.train_examples = 0  # all 50,000
  base.augment = True
  base.epochs = 8
  base.schedule = "cosine"
  base.warmup_epochs = 0.5
  base.report_last_evals = 3
  base.eval_every = 2
  base.checkpoint = True
  base.progress = True
  sweep.base = base
  sweep.axes = [
    [(f"s{seed}", {"seed": seed}) for seed in SEEDS],
    [("gn", {"norm": "gn", "norm_kwargs": {"num_groups": 8}}), ("bn", {"norm": "bn"})],
    [(f"k{k}", {"statistics_batch": k}) for k in STATISTICS_BATCHES],
  ]
  sweep.convergence_check = ml_collections.ConfigDict({"points": ["s0__bn__k32", "s0__gn__k32"], "epochs_factor": 2})
  return sweep
