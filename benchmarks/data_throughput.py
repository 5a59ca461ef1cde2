"""Throughput of the training input pipeline: train_batches + on-device augment.

    python benchmarks/data_throughput.py --data-dir ~/.cache/cifar10-local

Times host batching (shuffle + gather), the transfer to the devices as
training does it (``experiments.parallel.put_global_batch``: sharded over the
``'data'`` mesh axis) and the jitted augmentation (random crop + flip +
normalization), blocking on each batch's result.
"""

import argparse
import os
import sys
import time

import jax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from experiments import parallel
from experiments.augment import augment
from experiments.data import load_cifar10
from experiments.data import train_batches


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--data-dir", default=None, help="directory containing cifar-10-batches-bin/ (default: $JAXNORM_DATA)"
  )
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--num-batches", type=int, default=100)
  parser.add_argument("--warmup", type=int, default=5)
  args = parser.parse_args()

  t0 = time.perf_counter()
  ds = load_cifar10(args.data_dir, download=False)
  load_s = time.perf_counter() - t0

  key = jax.random.key(0)
  mesh = parallel.make_mesh()
  batches = train_batches(ds.train_images, ds.train_labels, args.batch_size, seed=0, epoch=0)
  if args.warmup + args.num_batches > ds.train_images.shape[0] // args.batch_size:
    parser.error("--warmup + --num-batches exceeds one epoch")

  def step(i):
    batch = parallel.put_global_batch(next(batches), mesh)
    x = augment(jax.random.fold_in(key, i), batch["images"])
    x.block_until_ready()
    batch["labels"].block_until_ready()

  for i in range(args.warmup):
    step(i)
  t0 = time.perf_counter()
  for i in range(args.num_batches):
    step(args.warmup + i)
  dt = time.perf_counter() - t0
  print(
    f"device={jax.devices()[0].platform} load={load_s:.2f}s batch_size={args.batch_size} "
    f"batches={args.num_batches}: {args.num_batches / dt:.1f} batches/s, "
    f"{args.num_batches * args.batch_size / dt:.0f} images/s"
  )


if __name__ == "__main__":
  main()
