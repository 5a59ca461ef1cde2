"""A run's metrics file and its summary.

``<workdir>/metrics.jsonl`` holds one strict-JSON line per epoch (written by
:mod:`experiments.train`); :func:`summarize` turns the history into the
final test error of ``result.json``. jax-free.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from experiments import provenance
from experiments.cli import RunFailure


def read_metrics(path: Path, up_to_epoch: int) -> list[dict]:
  """The records of epochs 1…``up_to_epoch`` in ``metrics.jsonl`` (a resumed
  run's history). Records of later epochs (trained after the last
  checkpoint) are dropped: those epochs train again. A line that does not
  parse, the torn last line of a run killed while appending, ends the
  history; a warning says so if it ends before ``up_to_epoch``."""
  records = []
  for line in path.read_text().splitlines() if path.exists() else []:
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      break
    if record["epoch"] > up_to_epoch:
      break
    records.append(record)
  if len(records) < up_to_epoch:
    warnings.warn(
      f"{path} holds the records of {len(records)} of the {up_to_epoch} epochs its checkpoint has "
      "trained (the file was damaged or removed); the history and result.json lack the others.",
      stacklevel=2,
    )
  return records


def rewrite(path: Path, history: list[dict]) -> None:
  """``path`` holding exactly ``history``, written atomically: the other
  processes of a run read the file at the same time."""
  provenance.write_text_atomic(path, "".join(json.dumps(m) + "\n" for m in history))


def append(path: Path, record: dict) -> None:
  """Appends one epoch's record as a line of strict JSON (no NaN or Infinity)."""
  with path.open("a") as f:
    f.write(json.dumps(record, allow_nan=False) + "\n")


def stop_if_not_finite(step_metrics, epoch: int, steps_per_epoch: int, workdir: Path) -> None:
  """Stops before a non-finite loss reaches the metrics or a checkpoint."""
  losses = np.array([m["loss"] for m in step_metrics], dtype=np.float64)
  bad = np.flatnonzero(~np.isfinite(losses))
  if bad.size:
    step = epoch * steps_per_epoch + int(bad[0]) + 1
    raise RunFailure(
      f"training diverged: the loss is {losses[bad[0]]} at step {step} (epoch {epoch + 1}). Nothing "
      f"of this epoch was saved; {workdir} keeps the checkpoints and metrics up to epoch {epoch}. "
      "Lower the learning rate (base_lr) or lengthen the warm-up (warmup_epochs)."
    )


def summarize(history: list[dict], last: int) -> dict:
  """Final test error: the median over the last `last` evaluations."""
  evaluated = [m for m in history if "test_error" in m][-last:]
  errors = [m["test_error"] for m in evaluated]
  out = {"final_test_error": float(np.median(errors)) if errors else None, "last_test_errors": errors}
  if evaluated and "test_error_batch_stats" in evaluated[-1]:
    out["final_test_error_batch_stats"] = float(np.median([m["test_error_batch_stats"] for m in evaluated]))
  return out
