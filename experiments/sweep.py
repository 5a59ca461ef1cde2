r"""Grid sweeps over training configs, resumable point by point.

    python -m experiments.sweep --config configs/<sweep>.py --workdir DIR \
        [--config.base.key=value ...]

A sweep config has

* ``name``: a label for the results;
* ``base``: a training config (see ``experiments/config.py``);
* ``axes``: a list of axes. Each axis is a list of ``(label, overrides)``
  pairs, where ``overrides`` maps config keys to values (``norm_kwargs`` is
  merged). The grid is their Cartesian product;
* optionally ``convergence_check``: ``points`` (grid labels) and
  ``epochs_factor``. Those points train once more, after the grid, with that
  many times the epochs, in ``DIR/convergence/<label>``; the report sets the
  change in test error beside the table (how far from converged it is).

Each point trains in ``DIR/points/<label>`` through
:func:`experiments.train.train_and_evaluate`. Points whose training is the
same (:func:`experiments.config.training_config`: in the statistics-batch
protocol, every point of a norm without batch statistics) train once; the
others get a copy of its ``result.json`` (with their own config and
``trained_as`` naming the point that trained) and ``metrics.jsonl``. A point whose ``result.json``
records all its epochs is skipped; an interrupted point resumes from its
last checkpoint. ``DIR/sweep.json`` lists the points (written atomically),
and the report (``experiments.report``) runs at the end.

``pack_seeds`` (optional: True, False or 'auto', the default: True on GPU
and TPU, False on CPU) trains the points that differ only in their seed
together, one program vmapped over the seeds
(:func:`experiments.train.train_group`); each still writes its own files,
as if trained alone.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import shutil
import sys
import time
from pathlib import Path

import ml_collections
from tqdm import tqdm

from experiments import cli
from experiments import config as config_lib
from experiments import data as data_lib
from experiments import preemption
from experiments import provenance
from experiments import report as report_lib
from experiments import train
from experiments import xla_cpu


def expand(sweep) -> list[tuple[str, dict, ml_collections.ConfigDict]]:
  """(label, overrides, config) for every point of the grid, in order."""
  points = []
  for combo in itertools.product(*sweep.axes):
    labels = [label for label, _ in combo]
    config = copy.deepcopy(sweep.base)
    config.unlock()  # the CLI locks configs; points add norm_kwargs keys
    merged = {}
    for _, overrides in combo:
      for key, value in dict(overrides).items():
        if key not in config:
          raise ValueError(
            f"sweep: unknown config key {key!r} in axis overrides; valid keys are {sorted(config.keys())}."
          )
        if key == "norm_kwargs":
          config.norm_kwargs.update(dict(value))
        else:
          config[key] = value
        merged[key] = value
    config.lock()
    points.append(("__".join(labels), merged, config))
  labels = [p[0] for p in points]
  if len(set(labels)) != len(labels):
    raise ValueError(f"sweep: point labels repeat: {labels}; give each axis value its own label.")
  return points


def convergence_points(sweep, points) -> list[tuple[str, ml_collections.ConfigDict]]:
  """(label, config) of the optional convergence check: chosen grid points
  trained once more with ``epochs_factor`` times the epochs (the warm-up and
  everything else unchanged). ``sweep.convergence_check`` holds ``points``
  (grid labels) and ``epochs_factor``; the report sets each beside its point.
  """
  check = sweep.get("convergence_check")
  if not check:
    return []
  by_label = {label: config for label, _, config in points}
  factor = check.epochs_factor
  if not (isinstance(factor, int) and factor >= 2):
    raise ValueError(f"sweep: convergence_check.epochs_factor must be an integer >= 2, got {factor!r}.")
  longer = []
  for label in check.points:
    if label not in by_label:
      raise ValueError(
        f"sweep: convergence_check.points names {label!r}, which is not a grid point; valid labels are "
        f"{sorted(by_label)}."
      )
    config = copy.deepcopy(by_label[label])
    config.unlock()
    config.epochs = by_label[label].epochs * factor
    config.lock()
    longer.append((label, config))
  return longer


def is_complete(point_dir: Path, config) -> bool:
  """Whether the point's ``result.json`` records this config, trained to
  the end. One that does not parse counts as missing, with a warning: the
  point trains again (resuming from its checkpoints)."""
  path = point_dir / "result.json"
  if not path.exists():
    return False
  result = provenance.read_json_or_redo(path, "Training the point again.")
  if result is None:
    return False
  same_config = result.get("config") == json.loads(json.dumps(config.to_dict(), default=str))
  return same_config and result.get("epochs_completed") == config.epochs


def _copy_point(source: Path, point_dir: Path, config, source_label: str) -> None:
  """A point whose training equals ``source``'s: its metrics and result."""
  point_dir.mkdir(parents=True, exist_ok=True)
  shutil.copyfile(source / "metrics.jsonl", point_dir / "metrics.jsonl")
  result = provenance.read_json(source / "result.json")
  result["config"] = json.loads(json.dumps(config.to_dict(), default=str))
  result["trained_as"] = source_label
  provenance.write_json_atomic(point_dir / "result.json", result)  # last: its presence marks the point done


def packs_seeds(sweep) -> bool:
  """Whether the sweep trains a point's seeds together (``pack_seeds``)."""
  choice = sweep.get("pack_seeds", "auto")
  if choice == "auto":
    import jax  # local: the sweep's expansion needs no JAX

    return jax.default_backend() != "cpu"
  if not isinstance(choice, bool):
    raise ValueError(f"sweep config: pack_seeds={choice!r}; choose True, False or 'auto'.")
  return choice


def _seed_group_key(point_dir: Path, config) -> str:
  """Jobs with equal keys differ only in their seed (and train as a group)."""
  training = config_lib.training_config(config).to_dict()
  training.pop("seed")
  return json.dumps([str(point_dir.parent), training], sort_keys=True, default=str)


def run_sweep(sweep, workdir: str | os.PathLike) -> list[dict]:
  """Runs (or resumes) every point, then writes the report."""
  workdir = Path(workdir).absolute()
  points = expand(sweep)
  longer = convergence_points(sweep, points)
  # Validate every point before training any.
  for label, _, config in points:
    try:
      train.check_model(train.build_model(config))
    except ValueError as e:
      raise ValueError(f"sweep point {label}: {e}") from e
  workdir.mkdir(parents=True, exist_ok=True)
  manifest = {
    "name": sweep.name,
    "points": [{"label": label, "overrides": overrides} for label, overrides, _ in points],
    "convergence_check": [{"label": label, "epochs": config.epochs} for label, config in longer],
  }
  provenance.write_json_atomic(workdir / "sweep.json", manifest)

  # Which point trains each distinct training config; the rest copy it.
  trained_as: dict[str, str] = {}
  source = {}
  for label, _, config in points:
    key = json.dumps(config_lib.training_config(config).to_dict(), sort_keys=True, default=str)
    source[label] = trained_as.setdefault(key, label)

  results = []
  start = time.time()
  # Every training job in order: (label, directory, config, source label).
  jobs = [(label, workdir / "points" / label, config, source[label]) for label, _, config in points]
  jobs += [(label, workdir / "convergence" / label, config, label) for label, config in longer]
  training = [
    (label, config) for label, point_dir, config, src in jobs if src == label and not is_complete(point_dir, config)
  ]
  # With pack_seeds, each point to train lists the points of its group.
  groups: dict[str, list] = {}
  if packs_seeds(sweep):
    for label, point_dir, config, src in jobs:
      if src == label and not config.diagnostics:
        groups.setdefault(_seed_group_key(point_dir, config), []).append((label, point_dir, config))
  # The data, before any bar or training: a missing copy fails now, saying what to do.
  for data_dir, download in sorted({(c.data_dir, c.download) for _, c in training}):
    data_lib.load_cifar10(data_dir or None, download=download)
  # One bar for the whole sweep, in epochs of the points still to train.
  bar = tqdm(
    total=sum(config.epochs for _, config in training),
    desc="sweep",
    unit="epoch",
    disable=not (training and training[0][1].progress),
    position=0,
  )
  # A signal during a point stops its training at a checkpoint (the
  # trainer raises cli.Preempted); one between points stops before the next.
  with bar, preemption.watch():
    for i, (label, point_dir, config, src) in enumerate(jobs):
      name = f"[{i + 1}/{len(jobs)}] {point_dir.parent.name}/{label}"
      signum, _ = preemption.stop_requested()
      if signum:
        raise cli.Preempted(signum, f"the sweep, before point {name}. Rerun the same command to continue.")
      if is_complete(point_dir, config):
        bar.write(f"{name}: done, skipped")
      elif src != label:
        bar.write(f"{name}: trains as {src}, copied")
        _copy_point(workdir / "points" / src, point_dir, config, src)
      else:
        group = groups.get(_seed_group_key(point_dir, config), [(label, point_dir, config)])
        group = [(l, d, c) for l, d, c in group if not is_complete(d, c)]
        bar.set_postfix_str(label)
        if len(group) > 1:
          bar.write(
            f"{name}: training ({config.epochs} epochs) with {', '.join(l for l, _, _ in group[1:])}, "
            f"seeds {[c.seed for _, _, c in group]} in one program"
          )
          train.train_group(
            [c for _, _, c in group],
            [d for _, d, _ in group],
            on_epochs=lambda n, runs=len(group): bar.update(n * runs),  # noqa: B008 (bound per group)
          )
        else:
          bar.write(f"{name}: training ({config.epochs} epochs)")
          train.train_and_evaluate(config, point_dir, on_epochs=bar.update)
      results.append(provenance.read_json(point_dir / "result.json"))
  print(f"sweep finished in {time.time() - start:.0f} s")
  report_lib.write_report(workdir)
  return results


def main(argv) -> None:
  xla_cpu.configure()
  provenance.git_commit()  # cached: the code this process imports, even if the tree changes later
  del argv
  from absl import logging

  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  config_lib.apply_norm_kwargs(_CONFIG.value.base, _NORM_KWARGS)
  with preemption.watch():  # from the start (see experiments/preemption.py)
    cli.exit_on_user_error(run_sweep, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  from absl import app
  from absl import flags
  from ml_collections import config_flags

  sys.argv, _NORM_KWARGS = config_lib.split_norm_kwargs_flags(sys.argv, "config.base.norm_kwargs")
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Sweep config file.", lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the sweep's points and report.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
