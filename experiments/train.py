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

import functools
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
from jax.experimental import multihost_utils
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
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
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


def make_step(model, tx, mesh, config, mode: str, runs: int = 0):
  """The per-step training call of execution ``mode`` ('vmap' or
  'microbatch'), over ``runs`` runs when given."""
  simulated = 1 if config.sync_batch_stats else config.num_devices // mesh.size
  if mode == "microbatch":
    return parallel.make_microbatch_step(model, tx, simulated=simulated, augment=config.augment, runs=runs)
  return parallel.make_vmap_step(model, tx, mesh, simulated=simulated, augment=config.augment, runs=runs)


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


def _stack(trees):
  """Trees of equal structure -> one tree with a leading run axis."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _unstack(tree, run: int):
  """Run ``run``'s slice of a tree with a leading run axis."""
  return jax.tree.map(lambda a: a[run], tree)


def _stack_keys(keys):
  return jax.random.wrap_key_data(jnp.stack([jax.random.key_data(k) for k in keys]))


class _Engine:
  """How a run, or a group of runs, executes its epochs and evaluations.

  ``vmap`` and ``microbatch``: one compiled step per batch, batches built on
  the host and copied over. ``scan``: the training and test sets live on
  the device and each epoch (and each evaluation) is one compiled call
  (:func:`experiments.parallel.make_scan_epoch`). All three use the same
  example order and step keys, so they train the same model.

  With several ``seeds`` the runs train together in one program, vmapped
  over a leading run axis of the state and the root keys (each run keeps
  its own data order, augmentation and step keys); one seed runs alone,
  without that axis.
  """

  def __init__(self, model, tx, mesh, config, mode, train_images, train_labels, dataset, seeds=None):
    self.mesh, self.config, self.mode = mesh, config, mode
    self.seeds = list(seeds) if seeds is not None else [config.seed]
    self.runs = len(self.seeds) if len(self.seeds) > 1 else 0
    self.batch = config_lib.global_batch(config)
    self.steps = data_lib.steps_per_epoch(len(train_images), self.batch)
    self.train_images, self.train_labels = train_images, train_labels
    self.simulated = 1 if config.sync_batch_stats else config.num_devices // mesh.size
    runs, simulated = self.runs, self.simulated
    if mode == "scan":
      self.run_epoch = parallel.make_scan_epoch(
        model,
        tx,
        mesh,
        simulated=simulated,
        augment=config.augment,
        batch=self.batch,
        steps=self.steps,
        runs=runs,
      )
      self.device_train = parallel.put_replicated({"images": train_images, "labels": train_labels}, mesh)
      padded = list(data_lib.eval_batches(dataset.test_images, dataset.test_labels, config.eval_batch_size))
      self.device_test = parallel.put_replicated(
        {k: np.concatenate([b[k] for b in padded]) for k in ("images", "labels", "mask")}, mesh
      )
      make_eval = functools.partial(parallel.make_scan_eval, model, mesh, batch=config.eval_batch_size, runs=runs)
    else:
      self.step = make_step(model, tx, mesh, config, mode, runs)
      make_eval = functools.partial(parallel.make_eval_step, model, mesh, runs=runs)
    self.eval_fns = {False: make_eval(), True: make_eval(simulated=simulated)}
    self.test_images, self.test_labels = dataset.test_images, dataset.test_labels

  def root_key(self):
    """The root key of each run (stacked over runs in a group)."""
    keys = [jax.random.key(seed) for seed in self.seeds]
    return _stack_keys(keys) if self.runs else keys[0]

  def _per_run(self, tree) -> list:
    return [_unstack(tree, r) for r in range(self.runs)] if self.runs else [tree]

  def _step_key(self, root_key, index: int):
    key_of = lambda k: jax.random.fold_in(jax.random.fold_in(k, 1), index)
    return jax.vmap(key_of)(root_key) if self.runs else key_of(root_key)

  def train_epoch(self, state, root_key, epoch: int, on_steps=lambda n: None):
    """(state, per run: [per-step metrics as host scalars]) after one epoch."""
    if self.mode == "scan":
      t = self.device_train
      state, stacked = self.run_epoch(state, t["images"], t["labels"], root_key, epoch)
      on_steps(self.steps)
      return state, [
        [{k: v[i] for k, v in run.items()} for i in range(self.steps)] for run in self._per_run(jax.device_get(stacked))
      ]
    step_metrics = []
    orders = [
      data_lib.train_batches(self.train_images, self.train_labels, self.batch, seed=seed, epoch=epoch)
      for seed in self.seeds
    ]
    for host_batches in zip(*orders):
      host_batch = _stack_host(host_batches) if self.runs else host_batches[0]
      device_batch = parallel.put_global_batch(host_batch, self.mesh, runs=bool(self.runs))
      key = self._step_key(root_key, epoch * self.steps + len(step_metrics))
      state, m = self.step(state, device_batch["images"], device_batch["labels"], key)
      step_metrics.append(m)
      on_steps(1)
    per_step = [self._per_run(m) for m in jax.device_get(step_metrics)]
    return state, [[step[r] for step in per_step] for r in range(len(self.seeds))]

  def evaluate(self, variables, batch_statistics: bool = False) -> list[dict]:
    """Per run: test loss and error, with the running statistics (or, with
    ``batch_statistics``, in training mode over simulated devices)."""
    fn = self.eval_fns[batch_statistics]
    if self.mode == "scan":
      t = self.device_test
      sums = jax.device_get(fn(variables, t["images"], t["labels"], t["mask"]))
    else:
      sums = None
      for batch in data_lib.eval_batches(self.test_images, self.test_labels, self.config.eval_batch_size):
        batch = parallel.put_global_batch(batch, self.mesh)
        out = jax.device_get(fn(variables, batch["images"], batch["labels"], batch["mask"]))
        sums = out if sums is None else jax.tree.map(np.add, sums, out)
    return [
      {"loss": float(s["loss"] / s["count"]), "error": float(1 - s["correct"] / s["count"])}
      for s in self._per_run(sums)
    ]


def _stack_host(batches):
  return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def _read_metrics(path: Path, up_to_epoch: int) -> list[dict]:
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
  several = jax.process_count() > 1
  for step in steps:
    reason = None
    try:
      tree = manager.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as e:  # orbax and TensorStore raise many types for a damaged file
      reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
    if several:  # the processes decide together, or they would resume from different epochs
      readable_everywhere = multihost_utils.process_allgather(np.array(reason is None)).all()
      if reason is None and not readable_everywhere:
        reason = "unreadable on another process"
    if reason is None:
      return step, tree
    bad.append(f"{directory / str(step)} ({reason})")
    quarantine = directory.parent / f"{directory.name}_unreadable"
    if jax.process_index() == 0:
      quarantine.mkdir(exist_ok=True)
      os.replace(directory / str(step), quarantine / f"{step}-{int(time.time())}")
    if several:  # no process lists the steps again before the move
      multihost_utils.sync_global_devices(f"jaxnorm quarantined {directory / str(step)}")
    warnings.warn(
      f"checkpoint {directory / str(step)} is unreadable ({reason}); moved it to {quarantine} and "
      "falling back to the previous checkpoint.",
      stacklevel=2,
    )
    manager.reload()
  if bad:
    raise RunFailure("no readable checkpoint: " + "; ".join(bad) + f". Delete {directory} to train from the start.")
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
  evaluated = [m for m in history if "test_error" in m][-last:]
  errors = [m["test_error"] for m in evaluated]
  out = {"final_test_error": float(np.median(errors)) if errors else None, "last_test_errors": errors}
  if evaluated and "test_error_batch_stats" in evaluated[-1]:
    out["final_test_error_batch_stats"] = float(np.median([m["test_error_batch_stats"] for m in evaluated]))
  return out


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


def _restore_group(managers, workdirs, states, root_keys, mesh):
  """(start epoch, states, root keys) of a group: every run resumes from the
  last epoch all of them have checkpointed (a run killed between the saves
  of its group is at most one epoch ahead, and keeps two checkpoints)."""
  restored = [
    restore_latest_readable(m, w / "checkpoints", _checkpoint_tree(s, k, mesh))
    for m, w, s, k in zip(managers, workdirs, states, root_keys)
  ]
  if all(r is None for r in restored):
    return 0, states, root_keys
  common = min(0 if r is None else r[0] for r in restored)
  trees = []
  for manager, state, key, r in zip(managers, states, root_keys, restored):
    if common and r[0] != common and common in manager.all_steps():
      trees.append(manager.restore(common, args=ocp.args.StandardRestore(_checkpoint_tree(state, key, mesh))))
    elif common and r[0] == common:
      trees.append(r[1])
    else:
      return _restart_group(managers, workdirs, states, root_keys)
  # Each key back as a host value (the replicated global array's local copy).
  keys = [jax.random.wrap_key_data(np.asarray(t["rng"].addressable_data(0))) for t in trees]
  return common, [t["state"] for t in trees], keys


def _restart_group(managers, workdirs, states, root_keys):
  """(0, fresh states, keys): a group whose runs share no saved epoch (a
  run without checkpoints joined runs that have some) trains from the
  start; the other runs' checkpoints are deleted, with a warning, so that
  the new ones are not mixed with them."""
  for manager, workdir in zip(managers, workdirs):
    steps = sorted(manager.all_steps())
    if steps:
      warnings.warn(
        f"{workdir}: discarding its checkpoints of epochs {steps}: its group has no epoch that every "
        "run saved, so all its runs train from the start.",
        stacklevel=3,
      )
      for step in steps:
        manager.delete(step)
  return 0, states, root_keys


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
  maybe_initialize_distributed()
  check_group(configs)
  if len(workdirs) != len(configs) or len({Path(w).absolute() for w in workdirs}) != len(workdirs):
    raise ValueError(f"train_group: give one distinct workdir per run ({len(configs)} runs, workdirs {workdirs}).")
  config = configs[0]
  workdirs = [Path(w).absolute() for w in workdirs]
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
  for w in workdirs:
    w.mkdir(parents=True, exist_ok=True)

  mesh = parallel.make_mesh(devices)
  mode = execution_mode(config, len(devices))
  batch = config_lib.global_batch(config)
  steps_per_epoch = data_lib.steps_per_epoch(len(train_images), batch)
  schedule = make_schedule(config, steps_per_epoch)
  tx = make_optimizer(config, schedule)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  root_keys = [jax.random.key(c.seed) for c in configs]
  states = [jax.device_put(parallel.init_state(model, tx, jax.random.fold_in(k, 0)), replicated) for k in root_keys]
  managers = []
  start_epoch = 0
  if config.checkpoint:
    managers = [
      ocp.CheckpointManager(w / "checkpoints", options=ocp.CheckpointManagerOptions(max_to_keep=2)) for w in workdirs
    ]
    start_epoch, states, root_keys = _restore_group(managers, workdirs, states, root_keys, mesh)
  if on_epochs is not None and start_epoch:
    on_epochs(start_epoch)
  metrics_paths = [w / "metrics.jsonl" for w in workdirs]
  histories = [_read_metrics(p, start_epoch) for p in metrics_paths]
  if is_main:  # atomically: the other processes read these files at the same time
    for path, history in zip(metrics_paths, histories):
      provenance.write_text_atomic(path, "".join(json.dumps(m) + "\n" for m in history))

  engine = _Engine(model, tx, mesh, config, mode, train_images, train_labels, dataset, seeds=[c.seed for c in configs])
  grouped = bool(engine.runs)
  state = _stack(states) if grouped else states[0]
  root_key = _stack_keys(root_keys) if grouped else root_keys[0]
  run_state = (lambda r: _unstack(state, r)) if grouped else (lambda r: state)

  probe = None
  if config.diagnostics:
    probe = _Probe(model, mesh, config, train_images, train_labels)
    diagnostics_init = probe.measure(state)  # drifts of the first epoch are against this

  for epoch in range(start_epoch, config.epochs):
    epoch_start = time.time()
    bar = tqdm(
      total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not (config.progress and is_main)
    )
    state, step_metrics = engine.train_epoch(state, root_key, epoch, on_steps=bar.update)
    bar.close()
    train_seconds = time.time() - epoch_start
    for run_metrics, workdir in zip(step_metrics, workdirs):
      _stop_if_not_finite(run_metrics, epoch, steps_per_epoch, workdir)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    evaluating = config_lib.evaluates_after(config, epoch + 1)
    tests = engine.evaluate(variables) if evaluating else [None] * len(configs)
    tests_batch_stats = (
      engine.evaluate(variables, batch_statistics=True) if evaluating and config.eval_with_batch_stats else None
    )
    step = int(np.max(jax.device_get(state.step)))
    for r, (history, run_metrics, test) in enumerate(zip(histories, step_metrics, tests)):
      record = {
        "epoch": epoch + 1,
        "step": step,
        "train_loss": float(np.mean([m["loss"] for m in run_metrics])),
        "train_accuracy": float(np.mean([m["accuracy"] for m in run_metrics])),
        "learning_rate": float(schedule(step - 1)),
        "images_per_sec": steps_per_epoch * batch / train_seconds,  # this run's images
        "epoch_seconds": time.time() - epoch_start,
      }
      if test is not None:
        record["test_loss"], record["test_error"] = test["loss"], test["error"]
      if tests_batch_stats is not None:
        record["test_error_batch_stats"] = tests_batch_stats[r]["error"]
      if probe is not None:
        if epoch == 0:
          record["diagnostics_init"] = diagnostics_init
        record["diagnostics"] = probe.measure(state)
      record["wall_seconds"] = (history[-1]["wall_seconds"] if history else 0.0) + time.time() - epoch_start
      history.append(record)
      if is_main:
        with metrics_paths[r].open("a") as f:
          f.write(json.dumps(record, allow_nan=False) + "\n")  # strict JSON
        seed = f" (seed {configs[r].seed})" if grouped else ""
        tested = f"test error {100 * record['test_error']:.2f}%, " if test is not None else ""
        bar.write(
          f"epoch {epoch + 1}{seed}: train loss {record['train_loss']:.3f}, "
          f"{tested}{record['images_per_sec']:.0f} img/s"
        )
    if on_epochs is not None:
      on_epochs(1)
    for r, manager in enumerate(managers):
      manager.save(epoch + 1, args=ocp.args.StandardSave(_checkpoint_tree(run_state(r), root_keys[r], mesh)))
    for manager in managers:
      manager.wait_until_finished()

  results = []
  for c, workdir, history in zip(configs, workdirs, histories):
    result = {
      **summarize(history, c.report_last_evals),
      "epochs_completed": len(history),
      "train_wall_seconds": history[-1]["wall_seconds"] if history else 0.0,
      "this_invocation_seconds": time.time() - start_time,
      "execution": mode,
      "global_batch": batch,
      "peak_learning_rate": config_lib.peak_learning_rate(c),
      "train_examples": len(train_images),
      "config": c.to_dict(),
      "git_commit": provenance.git_commit(),
      "hardware": provenance.hardware(),
      "dataset": {**provenance.dataset_fingerprint(data_dir / data_lib.BATCHES_DIR), "note": c.dataset_note},
    }
    if grouped:
      result["trained_with_seeds"] = [other.seed for other in configs]
    if is_main:
      provenance.write_json_atomic(workdir / "result.json", result)
    results.append(result)
  for manager in managers:
    manager.close()
  return results


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
  from absl import app
  from absl import flags
  from ml_collections import config_flags

  sys.argv, _NORM_KWARGS = config_lib.split_norm_kwargs_flags(sys.argv, "config.norm_kwargs")
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Directory for metrics, checkpoints and results.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
