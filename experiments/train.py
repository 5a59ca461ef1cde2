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
* ``result.json``: the config, git commit, hardware, dataset fingerprint,
  wall time and the final test error (median of the last evaluations).

Everything that can be checked without compute (config, model and
normalizer names, group counts against every layer's channels, device
divisibility, the data directory) is checked before training starts.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm import tqdm

import jaxnorm
from experiments import config as config_lib
from experiments import data as data_lib
from experiments import diagnostics as diagnostics_lib
from experiments import parallel
from experiments import provenance
from experiments import xla_cpu
from experiments.models import CifarResNet


class RunFailure(RuntimeError):
  """A run that cannot go on (non-finite loss, no readable checkpoint); the
  message says where and what to do. The command lines end on it with status
  1 and the message, without a traceback."""


def maybe_initialize_distributed() -> None:
  """Multi-host: initialize when the environment names a coordinator.

  Set ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and
  ``JAX_PROCESS_ID`` on every host (or run where JAX detects the cluster
  itself and set ``JAXNORM_DISTRIBUTED=1``).
  """
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ.get("JAX_NUM_PROCESSES", "1")),
        process_id=int(os.environ.get("JAX_PROCESS_ID", "0")),
    )
  elif os.environ.get("JAXNORM_DISTRIBUTED") == "1":
    jax.distributed.initialize()


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
    jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    )
  except ValueError as e:
    raise ValueError(f"model {model.norm!r} with depth {model.depth}, width {model.width}: {e}") from e


def execution_mode(config, physical_devices: int) -> str:
  if config.execution != "auto":
    return config.execution
  if jax.default_backend() != "cpu":
    return "scan"
  # XLA:CPU, measured (benchmarks/results/train_throughput_cpu_2core.md): one
  # call per simulated device wins at 32 images per device, one vmapped call
  # below that (3.3x at 2 per device); the scan engine is far slower there.
  if not config.sync_batch_stats and physical_devices == 1 and config.per_device_batch >= 32:
    return "microbatch"
  return "vmap"


def make_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """Linear warm-up to the scaled peak, then cosine or step decay."""
  total = config.epochs * steps_per_epoch
  peak = config_lib.peak_learning_rate(config)
  warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)
  if config.schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, max(total - warmup, 1))
  else:
    decay = optax.piecewise_constant_schedule(
        peak, {int(0.5 * total) - warmup: 0.1, int(0.75 * total) - warmup: 0.1}
    )
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


def _make_step(model, tx, mesh, config, mode: str):
  simulated = config.num_devices // mesh.size
  if config.sync_batch_stats:
    simulated = 1  # SyncBN: one statistics group per physical device, psum'd
  if mode == "microbatch":
    return parallel.make_microbatch_step(model, tx, simulated=simulated, augment=config.augment)
  return parallel.make_vmap_step(model, tx, mesh, simulated=simulated, augment=config.augment)


class _Probe:
  """Diagnostics on the first global batch of the training set (fixed, unaugmented)."""

  def __init__(self, model, mesh, config, train_images, train_labels):
    simulated = 1 if config.sync_batch_stats else config.num_devices // mesh.size
    spec = jaxnorm.create_norm(config.norm, **dict(config.norm_kwargs))
    self.step = diagnostics_lib.make_probe_step(model, mesh, simulated=simulated, norm_module=spec.module)
    self.order = diagnostics_lib.call_order(model)
    n = config_lib.global_batch(config)
    self.batch = parallel.put_global_batch({"images": train_images[:n], "labels": train_labels[:n]}, mesh)
    self.previous = None

  def measure(self, state) -> dict:
    """Probes the state; drifts are against the previous call."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    now = jax.device_get(self.step(variables, self.batch["images"], self.batch["labels"]))
    summary = diagnostics_lib.summarize(now, self.previous, self.order)
    self.previous = now
    return summary


class _Engine:
  """How a run executes its epochs and evaluations.

  ``vmap`` and ``microbatch``: one compiled step per batch, batches built on
  the host and copied over. ``scan``: the training and test sets live on
  the device and each epoch (and each evaluation) is one compiled call
  (:func:`experiments.parallel.make_scan_epoch`). All three use the same
  example order and step keys, so they train the same model.
  """

  def __init__(self, model, tx, mesh, config, mode, train_images, train_labels, dataset):
    self.mesh, self.config, self.mode = mesh, config, mode
    self.batch = config_lib.global_batch(config)
    self.steps = data_lib.steps_per_epoch(len(train_images), self.batch)
    self.train_images, self.train_labels = train_images, train_labels
    self.simulated = 1 if config.sync_batch_stats else config.num_devices // mesh.size
    eval_kwargs = {"simulated": self.simulated}
    if mode == "scan":
      self.run_epoch = parallel.make_scan_epoch(
          model, tx, mesh, simulated=self.simulated, augment=config.augment, batch=self.batch, steps=self.steps
      )
      self.device_train = parallel.put_replicated({"images": train_images, "labels": train_labels}, mesh)
      padded = list(data_lib.eval_batches(dataset.test_images, dataset.test_labels, config.eval_batch_size))
      self.device_test = parallel.put_replicated(
          {k: np.concatenate([b[k] for b in padded]) for k in ("images", "labels", "mask")}, mesh
      )
      self.eval_fns = {
          False: parallel.make_scan_eval(model, mesh, batch=config.eval_batch_size),
          True: parallel.make_scan_eval(model, mesh, batch=config.eval_batch_size, **eval_kwargs),
      }
    else:
      self.step = _make_step(model, tx, mesh, config, mode)
      self.eval_fns = {
          False: parallel.make_eval_step(model, mesh),
          True: parallel.make_eval_step(model, mesh, **eval_kwargs),
      }
    self.test_images, self.test_labels = dataset.test_images, dataset.test_labels

  def train_epoch(self, state, root_key, epoch: int, on_steps=lambda n: None):
    """(state, [per-step metrics as host scalars]) after one epoch."""
    if self.mode == "scan":
      t = self.device_train
      state, stacked = self.run_epoch(state, t["images"], t["labels"], root_key, epoch)
      stacked = jax.device_get(stacked)
      on_steps(self.steps)
      return state, [{k: v[i] for k, v in stacked.items()} for i in range(self.steps)]
    step_metrics = []
    step_key = jax.random.fold_in(root_key, 1)
    for host_batch in data_lib.train_batches(
        self.train_images, self.train_labels, self.batch, seed=self.config.seed, epoch=epoch
    ):
      device_batch = parallel.put_global_batch(host_batch, self.mesh)
      key = jax.random.fold_in(step_key, epoch * self.steps + len(step_metrics))
      state, m = self.step(state, device_batch["images"], device_batch["labels"], key)
      step_metrics.append(m)
      on_steps(1)
    return state, jax.device_get(step_metrics)

  def evaluate(self, variables, batch_statistics: bool = False) -> dict:
    """Test loss and error, with the running statistics (or, with
    ``batch_statistics``, in training mode over simulated devices)."""
    fn = self.eval_fns[batch_statistics]
    if self.mode == "scan":
      t = self.device_test
      sums = jax.device_get(fn(variables, t["images"], t["labels"], t["mask"]))
    else:
      sums = {"loss": 0.0, "correct": 0, "count": 0}
      for batch in data_lib.eval_batches(self.test_images, self.test_labels, self.config.eval_batch_size):
        batch = parallel.put_global_batch(batch, self.mesh)
        out = jax.device_get(fn(variables, batch["images"], batch["labels"], batch["mask"]))
        sums = {k: sums[k] + out[k] for k in sums}
    return {"loss": float(sums["loss"] / sums["count"]), "error": float(1 - sums["correct"] / sums["count"])}


def _read_metrics(path: Path, up_to_epoch: int) -> list[dict]:
  if not path.exists():
    return []
  lines = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
  return [m for m in lines if m["epoch"] <= up_to_epoch]


def _write_json_atomic(path: Path, obj) -> None:
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, default=str))
  os.replace(tmp, path)


def _checkpoint_tree(state, root_key, mesh) -> dict:
  """What a checkpoint holds. Every leaf is a global array replicated over
  the mesh: with several processes, orbax saves only global arrays (a
  host-local key would fail the first save)."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  key_data = np.asarray(jax.random.key_data(root_key))
  rng = jax.make_array_from_callback(key_data.shape, replicated, lambda index: key_data[index])
  return {"state": state, "rng": rng}


def restore_latest_readable(manager, directory: Path, target: dict):
  """(step, tree) of the newest checkpoint that restores, or None if there
  is none. An unreadable one is moved to ``<directory>_unreadable/<step>``
  with a warning naming it (its step is then trained again); if every one
  is unreadable, :class:`RunFailure` names them."""
  steps = sorted(manager.all_steps(), reverse=True)
  bad = []
  for step in steps:
    try:
      return step, manager.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as e:  # orbax and TensorStore raise many types for a damaged file
      reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
      bad.append(f"{directory / str(step)} ({reason})")
      quarantine = directory.parent / f"{directory.name}_unreadable"
      if jax.process_index() == 0:
        quarantine.mkdir(exist_ok=True)
        os.replace(directory / str(step), quarantine / f"{step}-{int(time.time())}")
      warnings.warn(
          f"checkpoint {directory / str(step)} is unreadable ({reason}); moved it to {quarantine} and "
          "falling back to the previous checkpoint.",
          stacklevel=2,
      )
      manager.reload()
  if bad:
    raise RunFailure(
        "no readable checkpoint: " + "; ".join(bad) + f". Delete {directory} to train from the start."
    )
  return None


def _stop_if_not_finite(step_metrics, epoch: int, steps_per_epoch: int, workdir: Path) -> None:
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
  errors = [m["test_error"] for m in history[-last:]]
  out = {"final_test_error": float(np.median(errors)) if errors else None, "last_test_errors": errors}
  if history and "test_error_batch_stats" in history[-1]:
    out["final_test_error_batch_stats"] = float(
        np.median([m["test_error_batch_stats"] for m in history[-last:]])
    )
  return out


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    on_epochs: Callable[[int], object] | None = None,
) -> dict:
  """Trains, evaluates every epoch, checkpoints, and returns the result.

  ``on_epochs(n)`` (optional) hears of epochs done: once with the epochs a
  resumed run finds complete, then ``1`` after every epoch (a sweep's
  progress bar).
  """
  start_time = time.time()
  provenance.git_commit()  # the commit of the code this process imported (cached)
  maybe_initialize_distributed()
  workdir = Path(workdir).absolute()
  devices = jax.devices()
  config_lib.validate(config, len(devices))
  model = build_model(config)
  check_model(model)
  dataset = data_lib.load_cifar10(config.data_dir or None, download=config.download)
  data_dir = Path(config.data_dir or data_lib.default_data_dir()).expanduser()
  train_images, train_labels = dataset.train_images, dataset.train_labels
  if config.train_examples:
    train_images, train_labels = train_images[: config.train_examples], train_labels[: config.train_examples]
  is_main = jax.process_index() == 0
  workdir.mkdir(parents=True, exist_ok=True)

  mesh = parallel.make_mesh(devices)
  mode = execution_mode(config, len(devices))
  batch = config_lib.global_batch(config)
  steps_per_epoch = data_lib.steps_per_epoch(len(train_images), batch)
  schedule = make_schedule(config, steps_per_epoch)
  tx = make_optimizer(config, schedule)
  root_key = jax.random.key(config.seed)
  variables = model.init(jax.random.fold_in(root_key, 0), jnp.zeros((1, 32, 32, 3)), train=False)
  state = parallel.TrainState(
      jnp.zeros((), jnp.int32),
      variables["params"],
      variables.get("batch_stats", {}),
      tx.init(variables["params"]),
  )
  state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))

  manager = None
  start_epoch = 0
  if config.checkpoint:
    manager = ocp.CheckpointManager(
        workdir / "checkpoints", options=ocp.CheckpointManagerOptions(max_to_keep=2)
    )
    restored = restore_latest_readable(manager, workdir / "checkpoints", _checkpoint_tree(state, root_key, mesh))
    if restored is not None:
      start_epoch, tree = restored
      # The key back as a host value (the replicated global array's local copy).
      state, root_key = tree["state"], jax.random.wrap_key_data(np.asarray(tree["rng"].addressable_data(0)))
  if on_epochs is not None and start_epoch:
    on_epochs(start_epoch)
  metrics_path = workdir / "metrics.jsonl"
  history = _read_metrics(metrics_path, start_epoch)
  if is_main:
    metrics_path.write_text("".join(json.dumps(m) + "\n" for m in history))

  engine = _Engine(model, tx, mesh, config, mode, train_images, train_labels, dataset)

  probe = None
  if config.diagnostics:
    probe = _Probe(model, mesh, config, train_images, train_labels)
    diagnostics_init = probe.measure(state)  # drifts of the first epoch are against this

  for epoch in range(start_epoch, config.epochs):
    epoch_start = time.time()
    bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not (config.progress and is_main))
    state, step_metrics = engine.train_epoch(state, root_key, epoch, on_steps=bar.update)
    bar.close()
    train_seconds = time.time() - epoch_start
    _stop_if_not_finite(step_metrics, epoch, steps_per_epoch, workdir)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    test = engine.evaluate(variables)
    record = {
        "epoch": epoch + 1,
        "step": int(state.step),
        "train_loss": float(np.mean([m["loss"] for m in step_metrics])),
        "train_accuracy": float(np.mean([m["accuracy"] for m in step_metrics])),
        "test_loss": test["loss"],
        "test_error": test["error"],
        "learning_rate": float(schedule(int(state.step) - 1)),
        "images_per_sec": steps_per_epoch * batch / train_seconds,
        "epoch_seconds": time.time() - epoch_start,
    }
    if config.eval_with_batch_stats:
      record["test_error_batch_stats"] = engine.evaluate(variables, batch_statistics=True)["error"]
    if probe is not None:
      if epoch == 0:
        record["diagnostics_init"] = diagnostics_init
      record["diagnostics"] = probe.measure(state)
    record["wall_seconds"] = (history[-1]["wall_seconds"] if history else 0.0) + time.time() - epoch_start
    history.append(record)
    if on_epochs is not None:
      on_epochs(1)
    if is_main:
      with metrics_path.open("a") as f:
        f.write(json.dumps(record, allow_nan=False) + "\n")  # strict JSON
      bar.write(
          f"epoch {epoch + 1}: train loss {record['train_loss']:.3f}, "
          f"test error {100 * record['test_error']:.2f}%, {record['images_per_sec']:.0f} img/s"
      )
    if manager is not None:
      manager.save(epoch + 1, args=ocp.args.StandardSave(_checkpoint_tree(state, root_key, mesh)))
      manager.wait_until_finished()

  result = {
      **summarize(history, config.report_last_evals),
      "epochs_completed": len(history),
      "train_wall_seconds": history[-1]["wall_seconds"] if history else 0.0,
      "this_invocation_seconds": time.time() - start_time,
      "execution": mode,
      "global_batch": batch,
      "peak_learning_rate": config_lib.peak_learning_rate(config),
      "train_examples": len(train_images),
      "config": config.to_dict(),
      "git_commit": provenance.git_commit(),
      "hardware": provenance.hardware(),
      "dataset": {**provenance.dataset_fingerprint(data_dir / data_lib.BATCHES_DIR), "note": config.dataset_note},
  }
  if is_main:
    _write_json_atomic(workdir / "result.json", result)
  if manager is not None:
    manager.close()
  return result


def main(argv) -> None:
  xla_cpu.configure()
  del argv
  from absl import logging

  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  config_lib.apply_norm_kwargs(_CONFIG.value, _NORM_KWARGS)
  exit_on_user_error(train_and_evaluate, _CONFIG.value, _WORKDIR.value)


def exit_on_user_error(fn: Callable, *args):
  """``fn(*args)``; a bad config or missing data (the ValueError and
  FileNotFoundError this pipeline raises for them, each saying what to do)
  ends the command with its message and status 2 instead of a traceback."""
  try:
    return fn(*args)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2) from None
  except RunFailure as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(1) from None
  except KeyboardInterrupt:
    print("interrupted: finished epochs and points are kept; rerun the same command to resume", file=sys.stderr)
    raise SystemExit(130) from None


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  sys.argv, _NORM_KWARGS = config_lib.split_norm_kwargs_flags(sys.argv, "config.norm_kwargs")
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Directory for metrics, checkpoints and results.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
