"""A tiny learnable CIFAR-10 look-alike, written in the official binary layout."""

import functools
from pathlib import Path

import numpy as np

from experiments import data as data_lib

RECORDS = 64  # per file, unless a test asks for another size: 320 training and 64 test images

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def write_tiny_cifar(root, records_per_file: int, seed: int = 0) -> Path:
  """Writes root/cifar-10-batches-bin/ with `records_per_file` records per file.

  Each class has its own mean colour, so a few SGD steps reduce the loss.
  """
  rng = np.random.default_rng(seed)
  colours = rng.integers(40, 216, (10, 3))
  out = Path(root) / "cifar-10-batches-bin"
  out.mkdir(parents=True, exist_ok=True)
  names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
  for name in names:
    labels = rng.integers(0, 10, records_per_file)
    noise = rng.normal(0, 20, (records_per_file, 3, 32, 32))
    pixels = np.clip(colours[labels][:, :, None, None] + noise, 0, 255).astype(np.uint8)
    records = np.concatenate([labels[:, None].astype(np.uint8), pixels.reshape(records_per_file, -1)], axis=1)
    (out / name).write_bytes(records.tobytes())
  (out / "batches.meta.txt").write_text("\n".join(CLASSES) + "\n")
  return out


def load_tiny_records(monkeypatch, records_per_file: int) -> None:
  """Makes the loader accept the tiny files (it enforces the real size)."""
  monkeypatch.setattr(
    data_lib,
    "load_cifar10",
    functools.partial(data_lib.load_cifar10, records_per_file=records_per_file),
  )
