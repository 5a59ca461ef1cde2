"""Training-step throughput (images/s) of the CIFAR ResNets, as train.py runs them.

    python benchmarks/train_throughput.py --depth 20 --norms bn gn \
        --per-device-batch 16 --num-devices 8 [--execution auto scan ...] [--steps 20] [--runs 1 2] \
        [--xla-cpu experiments|default]

Random uint8 images, one epoch of --steps steps as train.py runs it
(``experiments.engine.Engine``: host batches copied each step, or the scan engine's one
call per epoch, augmentation included), timed after a warm-up epoch; prints
one line per configuration and, with --json, writes the figures there.
Measure on an idle machine.
"""

import argparse
import itertools
import json
import os
import sys
import time
import types

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax
import numpy as np

from experiments import config as config_lib
from experiments import engine as engine_lib
from experiments import parallel
from experiments import provenance
from experiments import train
from experiments import xla_cpu


def measure(config, steps: int, runs: int = 1) -> dict:
  """Images/s of one epoch of `steps` steps, as train.py runs it (host
  batches copied per step, or the scan engine's one call), after a warm-up
  epoch that compiles. With ``runs`` > 1 that many seeds train in one
  program (``train.train_group``); images/s counts every run's images."""
  model = train.build_model(config)
  mesh = parallel.make_mesh()
  tx = train.make_optimizer(config, 0.01)

  n = config_lib.global_batch(config)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (steps * n, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, steps * n).astype(np.int32)
  test = types.SimpleNamespace(test_images=images[:n], test_labels=labels[:n])
  seeds = list(range(runs))
  engine = engine_lib.Engine(model, tx, mesh, config, images, labels, test, seeds=seeds)
  state = (
    engine.combine_runs([parallel.init_state(model, tx, jax.random.key(s)) for s in seeds])
    if engine.runs
    else parallel.init_state(model, tx, jax.random.key(0))
  )
  root_key = engine.root_key()
  state, _ = engine.train_epoch(state, root_key, 0)  # compiles
  jax.block_until_ready(state)
  start = time.perf_counter()
  state, _ = engine.train_epoch(state, root_key, 1)
  jax.block_until_ready(state)
  seconds = time.perf_counter() - start
  return {
    "images_per_sec": runs * n * steps / seconds,
    "steps_per_sec": steps / seconds,
    "execution": engine.mode,
    "global_batch": n,
    "runs": runs,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--depth", type=int, default=20)
  parser.add_argument("--width", type=int, default=16)
  parser.add_argument("--norms", nargs="+", default=["bn", "gn"])
  parser.add_argument("--per-device-batch", type=int, nargs="+", default=[16])
  parser.add_argument("--num-devices", type=int, default=8)
  parser.add_argument("--execution", nargs="+", default=["auto"], help="one or more of auto, vmap, microbatch, scan")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--runs", type=int, nargs="+", default=[1], help="seeds trained in one program (1: alone)")
  parser.add_argument(
    "--xla-cpu",
    choices=["experiments", "default"],
    default="experiments",
    help="'experiments': XLA:CPU flags as the experiment CLIs set them (experiments/xla_cpu.py); 'default': XLA's own",
  )
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  if args.xla_cpu == "experiments":
    xla_cpu.configure()
  rows = []
  for norm in args.norms:
    for b in args.per_device_batch:
      for execution, runs in itertools.product(args.execution, args.runs):
        c = config_lib.default_config()
        c.depth, c.width, c.norm = args.depth, args.width, norm
        if norm in ("gn", "gn+ws", "evonorm_s0"):
          c.norm_kwargs.num_groups = 8
        c.num_devices, c.per_device_batch, c.execution = args.num_devices, b, execution
        row = {"depth": args.depth, "width": args.width, "norm": norm, "per_device_batch": b, "xla_cpu": args.xla_cpu}
        row.update(measure(c, args.steps, runs))
        rows.append(row)
        print(json.dumps(row), flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"hardware": provenance.hardware(), "git_commit": provenance.git_commit(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
  main()
