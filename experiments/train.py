r"""Config-driven CIFAR-10 training with pluggable normalizers.

    python -m experiments.train --config configs/<file>.py --workdir DIR \
        [--config.key=value ...]

Writes to ``DIR``:

* ``metrics.jsonl``: one JSON line per epoch (train loss and accuracy, test
  loss and error, learning rate, images/s, wall time; with
  ``config.diagnostics`` also ``diagnostics``, and ``diagnostics_init`` in the
  first line: see ``experiments/diagnostics.py``);
* ``checkpoints/``: orbax checkpoints after every epoch (parameters,
  batch_stats, optimizer state, step, RNG key; the data order is a function
  of the seed and the epoch). Running the same command again resumes from
  the last one and, on CPU, ends bitwise equal to an uninterrupted run;
* ``checkpoints_within_epoch/``: checkpoints within an epoch, on SIGTERM or
  SIGINT (the run then exits 143 or 130) and every
  ``checkpoint_every_minutes``; a rerun resumes from the step they hold
  (docs/experiments.md, "Preemption and resuming");
* ``.lock``: held while the run trains, so that a second job on the same
  workdir stops at once;
* ``result.json``: the config, git commit, hardware, dataset fingerprint,
  wall time and the final test error (median of the last evaluations).

Everything that can be checked without compute (config, model and
normalizer names, group counts against every layer's channels, device
divisibility, the data directory) is checked before training starts.

This module builds the model and the optimizer and runs the epochs
(:func:`train_group`). The rest has modules of its own:
:mod:`experiments.engine` (the execution on the devices),
:mod:`experiments.checkpoints` (saving and resuming),
:mod:`experiments.preemption` (signals and the workdir lock),
:mod:`experiments.metrics` (``metrics.jsonl`` and the final test error) and
:mod:`experiments.cli` (how the command ends on an error).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

import jaxnorm
from experiments import checkpoints as checkpoints_lib
from experiments import cli
from experiments import config as config_lib
from experiments import data as data_lib
from experiments import diagnostics as diagnostics_lib
from experiments import engine as engine_lib
from experiments import metrics as metrics_lib
from experiments import parallel
from experiments import preemption
from experiments import provenance
from experiments import xla_cpu
from experiments.models import CifarResNet


def build_model(config) -> CifarResNet:
  """The ResNet, with SyncBN wiring when statistics are synchronised."""
  norm_kwargs = dict(config.norm_kwargs)
  try:
    spec = jaxnorm.create_norm(config.norm, **norm_kwargs)  # validates the name and the kwargs
  except TypeError as e:
    raise ValueError(f"config.norm_kwargs: {e}") from e
  if config.sync_batch_stats and spec.has_batch_stats:
    norm_kwargs["axis_name"] = parallel.DATA_AXIS
  if config.statistics_batch and spec.has_batch_stats:
    config_lib.validate_statistics_batch(config)
    norm_kwargs["virtual_batch_size"] = config.statistics_batch
  return CifarResNet(
    depth=config.depth,
    width=config.width,
    norm=config.norm,
    norm_kwargs=flax.core.FrozenDict(norm_kwargs),
    preact=config.preact,
    shortcut=config.shortcut,
    zero_init_last=config.zero_init_last,
    residual=config.residual,
  )


def check_model(model: CifarResNet) -> None:
  """Traces init without compute, so that layer-shape errors surface now."""
  try:
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  except ValueError as e:
    raise ValueError(f"model {model.norm!r} with depth {model.depth}, width {model.width}: {e}") from e


def make_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """Linear warm-up to the scaled peak, then cosine or step decay."""
  total = config.epochs * steps_per_epoch
  peak = config_lib.peak_learning_rate(config)
  warmup = min(round(config.warmup_epochs * steps_per_epoch), total - 1)
  if config.schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, max(total - warmup, 1))
  else:
    decay = optax.piecewise_constant_schedule(peak, {int(0.5 * total) - warmup: 0.1, int(0.75 * total) - warmup: 0.1})
  if warmup <= 0:
    return decay
  ramp = optax.linear_schedule(0.0, peak, warmup)
  return optax.join_schedules([ramp, decay], [warmup])


def make_optimizer(config, schedule) -> optax.GradientTransformation:
  """SGD with momentum and coupled weight decay (PyTorch's convention)."""
  mask = None
  if not config.decay_norm_params:  # decay only kernels (rank >= 2)
    mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  return optax.chain(
    optax.add_decayed_weights(config.weight_decay, mask),
    optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov),
  )


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str | os.PathLike,
  on_epochs: Callable[[int], object] | None = None,
) -> dict:
  """Trains, evaluates (``config.eval_every``), checkpoints, and returns the result.

  ``on_epochs(n)`` (optional) hears of epochs done: once with the epochs a
  resumed run finds complete, then ``1`` after every epoch (a sweep's
  progress bar).
  """
  return train_group([config], [workdir], on_epochs)[0]


def check_group(configs) -> None:
  """Runs train together only if they differ in nothing but the seed."""
  if not configs:
    raise ValueError("train_group: no runs given.")
  seeds = [c.seed for c in configs]
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"train_group: the seeds {seeds} repeat; each run of a group needs its own seed.")
  first = config_lib.training_config(configs[0]).to_dict()
  first.pop("seed")
  for c in configs[1:]:
    other = config_lib.training_config(c).to_dict()
    other.pop("seed")
    if other != first:
      differ = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
      raise ValueError(
        f"train_group: runs of one group may differ only in the seed; seed {c.seed} also differs in "
        f"{differ}. Train them in separate groups."
      )
  if configs[0].diagnostics and len(configs) > 1:
    raise ValueError("train_group: config.diagnostics probes one run; train runs with diagnostics alone.")


class _GroupTraining:
  """One invocation of :func:`train_group`, in its steps: everything checked
  and built before any compute (the constructor), the runs resumed
  (:meth:`resume`), then trained epoch by epoch (:meth:`train_epoch`,
  :meth:`save`) and summarized (:meth:`results`)."""

  def __init__(self, configs, workdirs: list[Path]):
    self.configs, self.workdirs = configs, workdirs
    self.config = config = configs[0]
    devices = jax.devices()
    config_lib.validate(config, len(devices))
    self.model = build_model(config)
    check_model(self.model)
    self.dataset = data_lib.load_cifar10(config.data_dir or None, download=config.download)
    self.data_dir = Path(config.data_dir or data_lib.default_data_dir()).expanduser()
    self.train_images, self.train_labels = self.dataset.train_images, self.dataset.train_labels
    if config.train_examples:
      self.train_images = self.train_images[: config.train_examples]
      self.train_labels = self.train_labels[: config.train_examples]
    self.is_main = jax.process_index() == 0
    self.metrics_paths = [w / "metrics.jsonl" for w in workdirs]
    self.mesh = parallel.make_mesh(devices)
    self.batch = config_lib.global_batch(config)
    self.steps_per_epoch = data_lib.steps_per_epoch(len(self.train_images), self.batch)
    self.schedule = make_schedule(config, self.steps_per_epoch)
    self.tx = make_optimizer(config, self.schedule)
    self.checkpoints = checkpoints_lib.Checkpoints(
      workdirs, self.mesh, enabled=config.checkpoint, keep_within_epoch=config.checkpoint_keep_within_epoch
    )

  def resume(self, on_epochs) -> int:
    """The first epoch to train: the runs' fresh states, or those of the
    last epoch every run checkpointed, with their histories up to it; then
    the engine (and the diagnostics probe) to train them."""
    replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    root_keys = [jax.random.key(c.seed) for c in self.configs]
    states = [
      jax.device_put(parallel.init_state(self.model, self.tx, jax.random.fold_in(k, 0)), replicated) for k in root_keys
    ]
    start_epoch, states, self.root_keys = self.checkpoints.restore(states, root_keys)
    self.start_epoch, self.start_step, self.progress = start_epoch, 0, None
    within = self.checkpoints.restore_within_epoch(start_epoch, self.steps_per_epoch, states, self.root_keys)
    if within is not None:
      self.start_step, states, self.root_keys, self.progress = within
    self.last_save = time.time()
    if on_epochs is not None and start_epoch:
      on_epochs(start_epoch)
    self.histories = [metrics_lib.read_metrics(p, start_epoch) for p in self.metrics_paths]
    if self.is_main:
      for path, history in zip(self.metrics_paths, self.histories):
        metrics_lib.rewrite(path, history)
    seeds = [c.seed for c in self.configs]
    self.engine = engine_lib.Engine(
      self.model, self.tx, self.mesh, self.config, self.train_images, self.train_labels, self.dataset, seeds=seeds
    )
    self.state = self.engine.combine_runs(states)
    self.root_key = self.engine.combine_keys(self.root_keys)
    self.probe = None
    if self.config.diagnostics:  # on the first global batch of the training set (fixed, unaugmented)
      n = self.batch
      first_batch = {"images": self.train_images[:n], "labels": self.train_labels[:n]}
      norm_module = jaxnorm.create_norm(self.config.norm, **dict(self.config.norm_kwargs)).module
      self.probe = diagnostics_lib.Probe(
        self.model, self.mesh, first_batch, simulated=self.engine.simulated, norm_module=norm_module
      )
      self.diagnostics_init = self.probe.measure(self.state)  # drifts of the first epoch are against this
    return start_epoch

  def train_epoch(self, epoch: int) -> None:
    """Trains epoch ``epoch`` (0-based), evaluates if it is due, and appends
    each run's record to its history and its ``metrics.jsonl``."""
    start, earlier, earlier_seconds = 0, [[] for _ in self.configs], 0.0
    if epoch == self.start_epoch and self.progress is not None:  # resumed within this epoch
      start, earlier, earlier_seconds = self.start_step, *progress_metrics(self.progress)
    epoch_start = time.time() - earlier_seconds
    show = self.config.progress and self.is_main
    desc = f"epoch {epoch + 1}/{self.config.epochs}"
    bar = tqdm(total=self.steps_per_epoch, initial=start, desc=desc, disable=not show)

    def after_step(state, steps_done, host_metrics):
      bar.update(steps_done - bar.n)
      self._maybe_stop_within_epoch(epoch, steps_done, state, earlier, host_metrics, epoch_start)

    self.state, step_metrics = self.engine.train_epoch(self.state, self.root_key, epoch, start, after_step)
    step_metrics = [a + b for a, b in zip(earlier, step_metrics)]
    bar.close()
    train_seconds = time.time() - epoch_start
    for run_metrics, workdir in zip(step_metrics, self.workdirs):
      metrics_lib.stop_if_not_finite(run_metrics, epoch, self.steps_per_epoch, workdir)
    variables = {"params": self.state.params, "batch_stats": self.state.batch_stats}
    evaluating = config_lib.evaluates_after(self.config, epoch + 1)
    tests = self.engine.evaluate(variables) if evaluating else [None] * len(self.configs)
    with_batch_stats = evaluating and self.config.eval_with_batch_stats
    tests_batch_stats = self.engine.evaluate(variables, batch_statistics=True) if with_batch_stats else None
    step = int(np.max(jax.device_get(self.state.step)))
    for r, (history, run_metrics, test) in enumerate(zip(self.histories, step_metrics, tests)):
      record = {
        "epoch": epoch + 1,
        "step": step,
        "train_loss": float(np.mean([m["loss"] for m in run_metrics])),
        "train_accuracy": float(np.mean([m["accuracy"] for m in run_metrics])),
        "learning_rate": float(self.schedule(step - 1)),
        "images_per_sec": self.steps_per_epoch * self.batch / train_seconds,  # this run's images
        "epoch_seconds": time.time() - epoch_start,
      }
      if test is not None:
        record["test_loss"], record["test_error"] = test["loss"], test["error"]
      if tests_batch_stats is not None:
        record["test_error_batch_stats"] = tests_batch_stats[r]["error"]
      if self.probe is not None:
        if epoch == 0:
          record["diagnostics_init"] = self.diagnostics_init
        record["diagnostics"] = self.probe.measure(self.state)
      record["wall_seconds"] = (history[-1]["wall_seconds"] if history else 0.0) + time.time() - epoch_start
      history.append(record)
      if self.is_main:
        metrics_lib.append(self.metrics_paths[r], record)
        bar.write(self._epoch_line(record, r))

  def _maybe_stop_within_epoch(self, epoch, steps_done, state, earlier, host_metrics, epoch_start) -> None:
    """After a step: on a signal, saves a checkpoint at this step and raises
    :class:`experiments.cli.Preempted`; when a timed checkpoint is due,
    saves one and goes on (every process agrees on both)."""
    minutes = self.config.checkpoint_every_minutes
    timer = minutes > 0 and time.time() - self.last_save >= 60 * minutes
    due = self.checkpoints.enabled and timer and steps_done < self.steps_per_epoch  # else the epoch's follows
    signum, due = preemption.stop_requested(due)
    if signum and not self.checkpoints.enabled:  # nothing can be saved: stop at once, losing the epoch
      raise cli.Preempted(
        signum, f"at step {steps_done} of epoch {epoch + 1}, without a checkpoint (config.checkpoint is off)."
      )
    if not (signum or due):
      return
    global_step = epoch * self.steps_per_epoch + steps_done
    progress = [
      progress_record(epoch, steps_done, a + b, time.time() - epoch_start) for a, b in zip(earlier, host_metrics())
    ]
    self.checkpoints.save_within_epoch(global_step, self.engine.per_run(state), self.root_keys, progress)
    self.last_save = time.time()
    if signum:
      where = ", ".join(str(w / checkpoints_lib.WITHIN_EPOCH / str(global_step)) for w in self.workdirs)
      raise cli.Preempted(
        signum,
        f"at step {steps_done} of {self.steps_per_epoch} of epoch {epoch + 1} (global step {global_step}); "
        f"checkpoint {where}. Rerun the same command to resume from there.",
      )

  def stop_if_signalled(self, epochs: int) -> None:
    """Between epochs, after epoch ``epochs``' checkpoint: a signal that
    came during its evaluation or its save stops the run here (its
    checkpoint is the one to resume from)."""
    signum, _ = preemption.stop_requested()
    if signum and epochs < self.config.epochs:
      where = "checkpoint " + ", ".join(str(w / "checkpoints" / str(epochs)) for w in self.workdirs)
      if not self.checkpoints.enabled:
        where = "without a checkpoint (config.checkpoint is off)"
      raise cli.Preempted(signum, f"after epoch {epochs}; {where}. Rerun the same command to resume from there.")

  def _epoch_line(self, record: dict, run: int) -> str:
    seed = f" (seed {self.configs[run].seed})" if self.engine.runs else ""
    tested = f"test error {100 * record['test_error']:.2f}%, " if "test_error" in record else ""
    return (
      f"epoch {record['epoch']}{seed}: train loss {record['train_loss']:.3f}, "
      f"{tested}{record['images_per_sec']:.0f} img/s"
    )

  def save(self, epochs: int) -> None:
    """Checkpoints every run after ``epochs`` epochs (with config.checkpoint)."""
    if self.checkpoints.enabled:
      self.checkpoints.save(epochs, self.engine.per_run(self.state), self.root_keys)
      self.last_save = time.time()  # the timed checkpoints count from here

  def results(self, start_time: float) -> list[dict]:
    """Each run's result, written to its ``result.json``."""
    results = []
    for c, workdir, history in zip(self.configs, self.workdirs, self.histories):
      result = {
        **metrics_lib.summarize(history, c.report_last_evals),
        "epochs_completed": len(history),
        "train_wall_seconds": history[-1]["wall_seconds"] if history else 0.0,
        "this_invocation_seconds": time.time() - start_time,
        "execution": self.engine.mode,
        "global_batch": self.batch,
        "peak_learning_rate": config_lib.peak_learning_rate(c),
        "train_examples": len(self.train_images),
        "config": c.to_dict(),
        "git_commit": provenance.git_commit(),
        "hardware": provenance.hardware(),
        "dataset": {**provenance.dataset_fingerprint(self.data_dir / data_lib.BATCHES_DIR), "note": c.dataset_note},
      }
      if self.engine.runs:
        result["trained_with_seeds"] = [other.seed for other in self.configs]
      if self.is_main:
        provenance.write_json_atomic(workdir / "result.json", result)
      results.append(result)
    return results


def progress_record(epoch: int, steps_done: int, step_metrics: list[dict], train_seconds: float) -> dict:
  """A run's progress through an epoch, as a within-epoch checkpoint keeps
  it (JSON): its per-step metrics so far, with their dtypes, so that the
  resumed epoch's means are bit for bit an uninterrupted epoch's."""
  keys = sorted(step_metrics[0]) if step_metrics else []
  return {
    "epoch": epoch,
    "steps_done": steps_done,
    "train_seconds": train_seconds,
    "dtypes": {k: str(np.asarray(step_metrics[0][k]).dtype) for k in keys},
    "step_metrics": {k: [float(m[k]) for m in step_metrics] for k in keys},
  }


def progress_metrics(progress: list[dict]) -> tuple[list[list[dict]], float]:
  """Per run, the per-step metrics a within-epoch checkpoint kept (in their
  dtypes), and the epoch's training seconds before it."""
  runs = []
  for p in progress:
    columns = {k: np.asarray(v, p["dtypes"][k]) for k, v in p["step_metrics"].items()}
    runs.append([{k: c[i] for k, c in columns.items()} for i in range(p["steps_done"])])
  return runs, progress[0]["train_seconds"]


def train_group(
  configs: list[ml_collections.ConfigDict],
  workdirs: list[str | os.PathLike],
  on_epochs: Callable[[int], object] | None = None,
) -> list[dict]:
  """Trains runs that differ only in their seed in one program.

  The runs are vmapped over a leading run axis: parameters, optimizer
  state, batch statistics, data order and augmentation keys are all per
  run. Each run writes its own ``metrics.jsonl``, checkpoints and
  ``result.json`` in its own workdir, in the format of a run trained alone;
  a rerun resumes the group from the last epoch every run has saved. One
  config trains alone, without the run axis. ``on_epochs`` counts group
  epochs. Returns the results in the order of ``configs``.
  """
  start_time = time.time()
  provenance.git_commit()  # the commit of the code this process imported (cached)
  engine_lib.maybe_initialize_distributed()
  check_group(configs)
  if len(workdirs) != len(configs) or len({Path(w).absolute() for w in workdirs}) != len(workdirs):
    raise ValueError(f"train_group: give one distinct workdir per run ({len(configs)} runs, workdirs {workdirs}).")
  workdirs = [Path(w).absolute() for w in workdirs]
  for w in workdirs:
    w.mkdir(parents=True, exist_ok=True)
  with preemption.watch(), preemption.hold(workdirs):
    group = _GroupTraining(configs, workdirs)
    try:
      for epoch in range(group.resume(on_epochs), group.config.epochs):
        group.train_epoch(epoch)
        if on_epochs is not None:
          on_epochs(1)
        group.save(epoch + 1)
        group.stop_if_signalled(epoch + 1)
      return group.results(start_time)
    finally:
      group.checkpoints.close()


def main(argv) -> None:
  xla_cpu.configure()
  del argv
  from absl import logging

  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  config_lib.apply_norm_kwargs(_CONFIG.value, _NORM_KWARGS)
  with preemption.watch():  # from the start: a signal while loading stops the run after its first step
    cli.exit_on_user_error(train_and_evaluate, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  from absl import app
  from absl import flags
  from ml_collections import config_flags

  sys.argv, _NORM_KWARGS = config_lib.split_norm_kwargs_flags(sys.argv, "config.norm_kwargs")
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Directory for metrics, checkpoints and results.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
