"""CIFAR-10 loading, download and batching for the jaxnorm experiments.

The loader reads the official **binary** release (``cifar-10-binary.tar.gz``),
never the Python release: no ``pickle`` is used anywhere, so loading a data
directory cannot execute code. The expected layout is::

    <data_dir>/cifar-10-batches-bin/
        data_batch_1.bin ... data_batch_5.bin   # 10000 records each
        test_batch.bin                          # 10000 records
        batches.meta.txt                        # the 10 class names, one a line

Each record is 3073 bytes: 1 label byte (0..9) followed by 3072 pixel bytes,
1024 red, 1024 green then 1024 blue, each channel row-major 32x32.

``data_dir`` defaults to ``$JAXNORM_DATA``, else ``~/.cache/jaxnorm``. When the
files are absent they are downloaded from the official URL, checked against
the official MD5 and moved into place atomically.

Batches are built with numpy on the host (``train_batches``,
``eval_batches``) and put on device with ``parallel.put_global_batch``; augmentation runs
on device (see ``experiments.augment``). The scan engine
(``execution='scan'``) keeps the whole set on the device instead and draws
the same epoch order there (``device_epoch_permutation``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from pathlib import PurePosixPath
from typing import NamedTuple

import jax
import numpy as np

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
ENV_VAR = "JAXNORM_DATA"
BATCHES_DIR = "cifar-10-batches-bin"
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
META_FILE = "batches.meta.txt"
IMAGE_SHAPE = (32, 32, 3)
RECORD_BYTES = 1 + 32 * 32 * 3
RECORDS_PER_FILE = 10000
NUM_CLASSES = 10
_CHUNK = 1 << 20


class Cifar10(NamedTuple):
  """CIFAR-10 as numpy arrays: uint8 NHWC images and int32 labels."""

  train_images: np.ndarray  # (50000, 32, 32, 3) uint8
  train_labels: np.ndarray  # (50000,) int32
  test_images: np.ndarray  # (10000, 32, 32, 3) uint8
  test_labels: np.ndarray  # (10000,) int32
  class_names: tuple[str, ...]


class CorruptDataError(ValueError):
  """A CIFAR-10 file or archive is truncated, corrupt or unsafe."""


class DownloadError(OSError):
  """The CIFAR-10 archive could not be fetched."""


def default_data_dir() -> Path:
  """Returns ``$JAXNORM_DATA`` if set, else ``~/.cache/jaxnorm``."""
  env = os.environ.get(ENV_VAR)
  return Path(env).expanduser() if env else Path.home() / ".cache" / "jaxnorm"


def _guidance(data_dir: Path) -> str:
  return (
    f"Put the files of the official binary release in {data_dir / BATCHES_DIR}/ "
    f"({', '.join(TRAIN_FILES)}, {TEST_FILE}, {META_FILE}), or point the loader at "
    f"a local copy with load_cifar10(data_dir=...) or the environment variable "
    f"{ENV_VAR} (the directory that contains {BATCHES_DIR}/). The archive can be "
    f"fetched by hand from {CIFAR10_URL} and unpacked there."
  )


# ---------------------------------------------------------------------------
# Reading the binary layout
# ---------------------------------------------------------------------------


def _check_size(path: Path, records_per_file: int) -> None:
  expected = records_per_file * RECORD_BYTES
  size = path.stat().st_size
  if size != expected:
    raise CorruptDataError(
      f"{path}: file is {size} bytes, expected {expected} bytes "
      f"({records_per_file} records of {RECORD_BYTES} bytes); "
      "the file is truncated or corrupt, delete the directory and fetch it again"
    )


def _read_records(path: Path, records_per_file: int, images_out: np.ndarray) -> np.ndarray:
  """Reads one batch file into ``images_out`` (NHWC) and returns its labels."""
  _check_size(path, records_per_file)
  raw = np.fromfile(path, dtype=np.uint8)
  if raw.size != records_per_file * RECORD_BYTES:  # changed under our feet
    raise CorruptDataError(f"{path}: read {raw.size} bytes, expected {records_per_file * RECORD_BYTES}")
  records = raw.reshape(records_per_file, RECORD_BYTES)
  labels = records[:, 0].astype(np.int32)
  bad = np.flatnonzero(labels >= NUM_CLASSES)
  if bad.size:
    raise CorruptDataError(
      f"{path}: record {bad[0]} has label {labels[bad[0]]}, expected 0..{NUM_CLASSES - 1} ({bad.size} bad records)"
    )
  # Channel-major (n, 3, 32, 32) -> NHWC, copied straight into the output.
  images_out[...] = records[:, 1:].reshape(records_per_file, 3, 32, 32).transpose(0, 2, 3, 1)
  return labels


def _read_class_names(path: Path) -> tuple[str, ...]:
  lines = path.read_text(encoding="utf-8").splitlines()
  names = tuple(line.strip() for line in lines if line.strip())
  if len(names) != NUM_CLASSES:
    raise CorruptDataError(f"{path}: found {len(names)} class names, expected {NUM_CLASSES} (one a line)")
  return names


def _missing_files(batches_dir: Path) -> list[str]:
  return [n for n in (*TRAIN_FILES, TEST_FILE, META_FILE) if not (batches_dir / n).is_file()]


def _check_files(batches_dir: Path, records_per_file: int) -> None:
  """Cheap check of a layout: every file present, batch sizes right, 10 names."""
  missing = _missing_files(batches_dir)
  if missing:
    raise CorruptDataError(f"{batches_dir}: missing {', '.join(missing)}")
  for name in (*TRAIN_FILES, TEST_FILE):
    _check_size(batches_dir / name, records_per_file)
  _read_class_names(batches_dir / META_FILE)


def load_cifar10(
  data_dir: str | os.PathLike | None = None,
  download: bool = True,
  *,
  records_per_file: int = RECORDS_PER_FILE,
) -> Cifar10:
  """Loads CIFAR-10 from the official binary layout, downloading it if absent.

  Args:
    data_dir: directory containing ``cifar-10-batches-bin/``. Defaults to
      ``$JAXNORM_DATA``, else ``~/.cache/jaxnorm``.
    download: fetch and unpack the official archive when the files are absent.
    records_per_file: records expected in each batch file; 10000 for the real
      dataset (tests use small files).

  Returns:
    A ``Cifar10`` tuple of uint8 NHWC images, int32 labels and class names.

  Raises:
    FileNotFoundError: files absent and ``download=False``, or an existing
      ``cifar-10-batches-bin/`` is incomplete.
    CorruptDataError: (a ``ValueError``) a file has the wrong size, a label is
      out of range, the archive checksum does not match or it is unsafe.
    DownloadError: (an ``OSError``) the archive could not be fetched.
  """
  data_dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
  batches_dir = data_dir / BATCHES_DIR
  if not batches_dir.exists():
    if not download:
      raise FileNotFoundError(f"CIFAR-10 not found in {batches_dir}. " + _guidance(data_dir))
    download_cifar10(data_dir, records_per_file=records_per_file)
  missing = _missing_files(batches_dir)
  if missing:
    raise FileNotFoundError(
      f"{batches_dir} is incomplete: missing {', '.join(missing)}. Delete the directory "
      "to download it again. " + _guidance(data_dir)
    )

  n_train = len(TRAIN_FILES) * records_per_file
  train_images = np.empty((n_train, *IMAGE_SHAPE), np.uint8)
  train_labels = np.concatenate(
    [
      _read_records(
        batches_dir / name, records_per_file, train_images[i * records_per_file : (i + 1) * records_per_file]
      )
      for i, name in enumerate(TRAIN_FILES)
    ]
  )
  test_images = np.empty((records_per_file, *IMAGE_SHAPE), np.uint8)
  test_labels = _read_records(batches_dir / TEST_FILE, records_per_file, test_images)
  class_names = _read_class_names(batches_dir / META_FILE)
  return Cifar10(train_images, train_labels, test_images, test_labels, class_names)


# ---------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------


def _fetch(url: str, dest_path: str | os.PathLike) -> None:
  """Streams ``url`` into ``dest_path`` in chunks, with a progress bar."""
  try:
    from tqdm.auto import tqdm
  except ImportError:  # progress bar is optional
    tqdm = None
  with urllib.request.urlopen(url, timeout=60) as response, open(dest_path, "wb") as out:
    total = int(response.headers.get("Content-Length") or 0) or None
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="cifar-10") if tqdm else None
    try:
      while chunk := response.read(_CHUNK):
        out.write(chunk)
        if bar is not None:
          bar.update(len(chunk))
    finally:
      if bar is not None:
        bar.close()


def _md5(path: str | os.PathLike) -> str:
  digest = hashlib.md5(usedforsecurity=False)
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def _safe_extract(archive: str | os.PathLike, dest: str | os.PathLike) -> None:
  """Extracts a tar archive, refusing absolute paths, ``..``, links and devices."""
  dest_real = os.path.realpath(dest)
  with tarfile.open(archive, "r:*") as tar:
    members = tar.getmembers()
    for m in members:
      parts = PurePosixPath(m.name.replace("\\", "/")).parts
      target = os.path.realpath(os.path.join(dest_real, m.name))
      if (
        m.name.startswith(("/", "\\"))
        or os.path.isabs(m.name)
        or ".." in parts
        or os.path.commonpath([dest_real, target]) != dest_real
      ):
        raise CorruptDataError(f"{archive}: unsafe member path {m.name!r} in archive")
      if not (m.isfile() or m.isdir()):
        raise CorruptDataError(f"{archive}: member {m.name!r} is not a regular file or directory")
    if hasattr(tarfile, "data_filter"):  # 3.12+, and 3.10.12+/3.11.4+ backports
      tar.extractall(dest_real, members=members, filter="data")
    else:
      tar.extractall(dest_real, members=members)


def download_cifar10(data_dir: str | os.PathLike, *, records_per_file: int = RECORDS_PER_FILE) -> Path:
  """Downloads, verifies and unpacks the binary release into ``data_dir``.

  The archive goes to a temporary file and is unpacked into a temporary
  directory, both inside ``data_dir``; only after the MD5 and the extracted
  files check out is ``cifar-10-batches-bin/`` renamed into place. Temporary
  files are removed on any failure or interruption.

  Args:
    data_dir: directory that will contain ``cifar-10-batches-bin/``.
    records_per_file: records expected in each batch file.

  Returns:
    The path of ``cifar-10-batches-bin/``.
  """
  data_dir = Path(data_dir)
  data_dir.mkdir(parents=True, exist_ok=True)
  target = data_dir / BATCHES_DIR
  tmp_dir = tempfile.mkdtemp(prefix=".cifar10-extract-", dir=data_dir)
  fd, tmp_archive = tempfile.mkstemp(prefix=".cifar10-download-", suffix=".tar.gz", dir=data_dir)
  os.close(fd)
  try:
    try:
      _fetch(CIFAR10_URL, tmp_archive)
    except (urllib.error.URLError, OSError) as e:
      raise DownloadError(f"Could not download CIFAR-10 from {CIFAR10_URL}: {e}. " + _guidance(data_dir)) from e
    md5 = _md5(tmp_archive)
    if md5 != CIFAR10_MD5:
      raise CorruptDataError(
        f"Checksum mismatch for {CIFAR10_URL}: MD5 {md5}, expected {CIFAR10_MD5}. "
        "The download is corrupt or incomplete; nothing was kept. " + _guidance(data_dir)
      )
    _safe_extract(tmp_archive, tmp_dir)
    extracted = Path(tmp_dir) / BATCHES_DIR
    _check_files(extracted, records_per_file)
    try:
      os.rename(extracted, target)
    except OSError:
      if _missing_files(target):  # not a concurrent download that won the race
        raise
  finally:
    shutil.rmtree(tmp_dir, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp_archive)
  return target


# ---------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------


def steps_per_epoch(n: int, batch_size: int) -> int:
  """Number of full training batches in an epoch (remainder dropped)."""
  return n // batch_size


def device_epoch_permutation(root_key: jax.Array, n: int, epoch) -> jax.Array:
  """The example order of one epoch, drawn with JAX from the run's key.

  Traceable (``epoch`` may be a traced integer), so the scan engine draws
  it on the device; :func:`epoch_permutation` draws the same order on the
  host. ``root_key`` is ``jax.random.key(seed)``; the order uses its
  ``fold_in(·, 2)`` branch (0 initializes the model, 1 drives the steps).
  """
  return jax.random.permutation(jax.random.fold_in(jax.random.fold_in(root_key, 2), epoch), n)


def epoch_permutation(n: int, *, seed: int, epoch: int) -> np.ndarray:
  """The example order of one epoch, a deterministic function of (seed, epoch),
  equal to the one the scan engine draws on the device."""
  return np.asarray(device_epoch_permutation(jax.random.key(seed), n, epoch))


def train_batches(
  images: np.ndarray,
  labels: np.ndarray,
  batch_size: int,
  *,
  seed: int,
  epoch: int,
  start_step: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
  """Yields the shuffled, fixed-size training batches of one epoch.

  Args:
    images: ``(N, ...)`` array.
    labels: ``(N,)`` array.
    batch_size: global batch size; the last ``N % batch_size`` examples of the
      epoch's order are dropped.
    seed: non-negative seed; with ``epoch`` it fixes the order.
    epoch: epoch number.
    start_step: first step to yield, to resume mid-epoch with the same order.

  Yields:
    ``{"images": (batch_size, ...), "labels": (batch_size,)}`` numpy arrays.
  """
  n = _check_pair(images, labels, batch_size)
  steps = steps_per_epoch(n, batch_size)
  if steps == 0:
    raise ValueError(f"batch_size {batch_size} is larger than the dataset ({n} examples)")
  if not 0 <= start_step <= steps:
    raise ValueError(f"start_step {start_step} outside [0, {steps}] ({steps} steps per epoch)")
  perm = epoch_permutation(n, seed=seed, epoch=epoch)
  for step in range(start_step, steps):
    idx = perm[step * batch_size : (step + 1) * batch_size]
    yield {"images": images[idx], "labels": labels[idx]}


def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """Yields every example once, in order; the last batch is zero-padded.

  Yields:
    ``{"images", "labels", "mask"}`` with a leading ``batch_size`` axis;
    ``mask`` is a boolean array, True for real examples, False for padding.
  """
  n = _check_pair(images, labels, batch_size)
  for start in range(0, n, batch_size):
    real = min(batch_size, n - start)
    batch_images = np.zeros((batch_size, *images.shape[1:]), images.dtype)
    batch_labels = np.zeros((batch_size, *labels.shape[1:]), labels.dtype)
    batch_images[:real] = images[start : start + real]
    batch_labels[:real] = labels[start : start + real]
    yield {"images": batch_images, "labels": batch_labels, "mask": np.arange(batch_size) < real}


def _check_pair(images: np.ndarray, labels: np.ndarray, batch_size: int) -> int:
  if len(images) != len(labels):
    raise ValueError(f"{len(images)} images but {len(labels)} labels")
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  return len(images)
