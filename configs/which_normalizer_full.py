"""Which normalizer at small batch: every norm with statistics over 2
examples (where it has batch statistics), on the full CIFAR-10 training set.

The companion of ``configs/sweep_statistics_full.py`` (whose BN and GN
points this table shares): the same model (ResNet-8, widths 16/32/64), the
same data (all 50,000 training images, pad-4 crop and flip; all 10,000
test images), the same optimization (global batch 128, learning rate 0.1,
cosine schedule annealed to zero after half an epoch of warm-up, 8 epochs
= 3,120 steps) and the same evaluation (median test error of the last 3
epochs). One seed (0): the budget of one 2.5-hour CPU run holds six new
trainings, not twelve.

The new points:

* ``brn``: batch renormalization (Ioffe 2017) with statistics over 2
  examples. Its module has no ghost batches, so the 128 images are spread
  over 64 simulated devices of 2 with per-device statistics — the same
  global batch, learning rate and steps; per device, the statistics of 2
  examples, as BN's ghost batches of 2. Clipping schedule: the paper's
  (r_max = 1, d_max = 0 for 5k steps, r_max reaches 3 at 40k and d_max 5 at
  25k) scaled by 3,120/40,000 so that r_max reaches 3 at the last step:
  warm-up delay 390 steps, r_max ramp 2,730, d_max ramp 1,560.
* ``gn+ws``: group norm (8 groups) with weight-standardized convolutions
  (Qiao et al. 2019);
* ``frn``: filter response normalization with TLU (Singh & Krishnan 2020);
* ``evonorm_s0``: EvoNorm-S0 with 8 groups (Liu et al. 2020);
* ``ln``: layer norm over (H, W, C); ``in``: instance norm.

The last five have no batch statistics: ``statistics_batch = 2`` is
recorded for the table's column and does not change their training
(``experiments.config.training_config``). Every norm is a drop-in for the
norm layer of the same block (conv, norm, ReLU); FRN's TLU and EvoNorm's
nonlinearity therefore come before the block's ReLU, not in place of it as
in their papers.

Sizing, from a pilot on the 2-core Intel Xeon development machine (jax
0.10.2, ``benchmarks/train_throughput.py --depth 8 --width 16 --steps 30``,
steady state after compilation), images/s and one epoch of 50,000 images:
  gn+ws 1,165 (43 s), frn 934 (54 s), evonorm_s0 609 (82 s), in 1,089
  (46 s), ln 1,192 (42 s), brn over 64 × 2 devices 663 (75 s);
  sum 342 s per epoch of all six × 8 epochs = 2,740 s, plus ~5
  evaluations of ~5 s and ~15 s of compilation per run (~240 s):
  ≈ 3,000 s ≈ 50 minutes (budget: 2.5 hours).

    python -m experiments.sweep --config configs/which_normalizer_full.py --workdir runs/which_normalizer_full
"""

import importlib.util
from pathlib import Path

import ml_collections

GROUPED = {"num_groups": 8}  # 16/32/64 channels: the GN paper's CIFAR setting
TOTAL_STEPS = 3120  # 8 epochs × 390 steps of 128
# Batch renorm's schedule: the paper's step counts × TOTAL_STEPS / 40,000.
BATCH_RENORM_SCHEDULE = {"warmup_delay": 390, "r_max_warmup_steps": 2730, "d_max_warmup_steps": 1560}


def base_config() -> ml_collections.ConfigDict:
  """The training config of ``configs/sweep_statistics_full.py``'s points
  (read from that file, so the two cannot drift apart), seed 0, with the
  table's column: statistics over 2 examples."""
  path = Path(__file__).with_name("sweep_statistics_full.py")
  spec = importlib.util.spec_from_file_location("sweep_statistics_full", path)
  full = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(full)
  base = full.get_config().base
  base.seed = 0
  base.statistics_batch = 2
  return base


def get_config():
  sweep = ml_collections.ConfigDict()
  sweep.name = (
    "CIFAR-10 ResNet-8, which normalizer with statistics over 2 examples, all 50,000 images × 8 epochs, seed 0"
  )
  sweep.base = base_config()
  sweep.axes = [
    [
      (
        "brn",
        {
          "norm": "brn",
          "norm_kwargs": BATCH_RENORM_SCHEDULE,
          "num_devices": 64,
          "per_device_batch": 2,
          "statistics_batch": 0,
        },
      ),
      ("gn+ws", {"norm": "gn+ws", "norm_kwargs": GROUPED}),
      ("frn", {"norm": "frn"}),
      ("evonorm_s0", {"norm": "evonorm_s0", "norm_kwargs": GROUPED}),
      ("ln", {"norm": "ln"}),
      ("in", {"norm": "in"}),
    ],
  ]
  return sweep
