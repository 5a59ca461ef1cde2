"""What a result file records about where it came from.

Every result carries the git commit, the hardware and software, and a
fingerprint of the dataset copy, so a number can be traced to its run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
import warnings
from pathlib import Path

# SHA-256 over the files of cifar-10-batches-bin/ (sorted by name), as
# printed by shared/data/cifar10/prepare.py for the JPEG-derived copy.
JPEG_COPY_SHA256 = "1defaa5e908aa9e39909a29c85ed8ca54c9070c1eec98d7d928d979957843776"
JPEG_COPY_NOTE = (
  "JPEG-derived CIFAR-10 copy (shared/data/cifar10, prepare.py): pixels "
  "carry JPEG loss, labels and the 50k/10k split are the original's; expect "
  "test accuracy within about a point of the original files."
)


@functools.cache
def git_commit() -> str:
  """The commit of the working tree, with '+dirty' if it has changes, as the
  process first saw it. Cached: a long run that edits nothing still records
  the code it imported at its start, even if the tree changes while it runs
  (the command lines call it before training).

  ``JAXNORM_GIT_COMMIT``, when set, wins: a launcher that copies the tree to
  another machine names the commit it copied, since the .git found there
  (if any) need not match the files."""
  given = os.environ.get("JAXNORM_GIT_COMMIT", "").strip()
  if given:
    return f"{given} (given by JAXNORM_GIT_COMMIT)"
  root = Path(__file__).resolve().parents[1]
  try:
    sha = subprocess.run(
      ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(
      ["git", "status", "--porcelain", "--untracked-files=no"],
      cwd=root,
      capture_output=True,
      text=True,
      check=True,
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"
  return sha + ("+dirty" if dirty else "")


def _cpu_model() -> str:
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def hardware() -> dict:
  """Backend, devices, CPU and library versions."""
  import flax  # local: the JSON helpers here serve jax-free readers (experiments.report)
  import jax

  devices = jax.devices()

  return {
    "backend": jax.default_backend(),
    "devices": [d.device_kind for d in devices],
    "device_count": len(devices),
    "process_count": jax.process_count(),
    "cpu": _cpu_model(),
    "cpu_cores": os.cpu_count(),
    "platform": platform.platform(),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "flax": flax.__version__,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    # glibc's allocator settings change CPU timings (how often large
    # buffers are returned to the system and faulted in again).
    "malloc_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")},
  }


def dataset_fingerprint(batches_dir: str | os.PathLike) -> dict:
  """SHA-256 of the binary files, and what copy that is when known."""
  batches_dir = Path(batches_dir)
  digest = hashlib.sha256()
  for path in sorted(batches_dir.iterdir(), key=lambda p: p.name):
    if path.is_file():
      digest.update(path.read_bytes())
  sha = digest.hexdigest()
  note = JPEG_COPY_NOTE if sha == JPEG_COPY_SHA256 else "CIFAR-10 binary release (official layout)"
  return {"dir": str(batches_dir), "sha256": sha, "copy": note}


def read_json(path: str | os.PathLike):
  """The JSON in ``path``; a file that does not parse (damaged, or edited by
  hand) raises ValueError naming it, instead of the parser's bare message."""
  path = Path(path)
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e}); delete it to redo what it records.") from None


def read_json_or_redo(path: str | os.PathLike, redo: str):
  """:func:`read_json`, or None with a warning ending in ``redo`` (what the
  caller does instead, e.g. train the point again) if the file does not
  parse: for files whose absence the caller handles by redoing the work."""
  try:
    return read_json(path)
  except ValueError as e:
    warnings.warn(f"{e} {redo}", stacklevel=3)
    return None


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
  """Writes ``text`` to ``path`` through a temporary file and a rename, so
  a reader (another process of the run, or a killed run's successor) sees
  the old file or the new one, never a half-written one."""
  path = Path(path)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike, obj, *, indent: int | None = 2) -> None:
  """Writes ``obj`` as JSON to ``path`` atomically (:func:`write_text_atomic`)."""
  write_text_atomic(path, json.dumps(obj, indent=indent, default=str))
