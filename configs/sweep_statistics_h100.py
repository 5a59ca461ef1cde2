"""The statistics-batch protocol at full size for one H100 lease: ResNet-20
on all 50,000 training images, 20 epochs, two seeds trained together, with a
convergence check. Not yet run.

The same question and protocol as the README's main job
(``configs/sweep_statistics_quick.py``) and the 2-hour CPU run
(``configs/sweep_statistics_2h.py``): a fixed optimization — a global batch
of 128 images (4 simulated devices × 32), learning rate 0.1, cosine
schedule, the same steps at every point — and only the number of examples
per BN statistics batch varies, 32, 16, 8, 4, 2 (ghost batches). GN trains
once per seed and fills every column. On a GPU the sweep packs the two
seeds of each point into one program (``pack_seeds='auto'``). The
convergence check trains GN and BN at 32 examples (seed 0) again at 40
epochs; the report sets the change beside the table.

Sizing, from the first H100 lease (``configs/sweep_paper_h100.py``'s
figures, experiments/results/paper_h100_8epochs_reduced/): at a global
batch of 128 with BN statistics over 16 examples (8 devices × 16) one
epoch took 1.32 s (BN) and 0.93 s (GN); a point's fixed cost (compiling,
loading) about 11 s. ESTIMATES, not measurements: every BN point is taken
at the 16-example figure (the ghost batches change the reductions, not the
convolutions), and two packed seeds at twice one seed's time.

    grid:        (5 × 1.32 + 0.93) s × 2 seeds × 20 epochs    = 301 s
    convergence: (1.32 + 0.93) s × 40 epochs                  =  90 s
    fixed:       8 programs × 11 s                            =  88 s
    total                                                      ≈ 480 s (8 minutes)

So it fits one call of a lease without the device check (10 minutes), and
the points run in an order that keeps both ends of each curve if the lease
is cut: the first lease to run it measures the real figures and corrects
this arithmetic.

    python -m experiments.sweep --config configs/sweep_statistics_h100.py --workdir runs/statistics_h100
"""

import ml_collections

from experiments.config import default_config

STATISTICS_BATCHES = (32, 2, 8, 16, 4)  # both ends first
SEEDS = (0, 1)


def get_config():
  sweep = ml_collections.ConfigDict()
  sweep.name = "CIFAR-10 ResNet-20, statistics-batch protocol, 50k images × 20 epochs, 2 seeds"
  base = default_config()
  base.depth = 20
  base.width = 16
  base.num_devices = 4
  base.per_device_batch = 32
  base.epochs = 20
  base.schedule = "cosine"
  base.warmup_epochs = 1.0
  base.report_last_evals = 3
  base.checkpoint = False  # a point is shorter than a lease; a cut point restarts
  base.progress = False
  sweep.base = base
  sweep.axes = [
    [("gn", {"norm": "gn", "norm_kwargs": {"num_groups": 8}}), ("bn", {"norm": "bn"})],
    [(f"k{k}", {"statistics_batch": k}) for k in STATISTICS_BATCHES],
    [(f"s{seed}", {"seed": seed}) for seed in SEEDS],
  ]
  sweep.convergence_check = ml_collections.ConfigDict({"points": ["bn__k32__s0", "gn__k32__s0"], "epochs_factor": 2})
  return sweep
