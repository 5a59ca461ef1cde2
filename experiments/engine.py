"""How training executes on the devices: the execution mode and the engine.

:class:`Engine` runs a run's (or a group of runs') epochs, steps and
evaluations in one of three execution modes (``config.execution``, see
``experiments/config.py``); :func:`execution_mode` is the one place that
resolves ``'auto'``, and :func:`simulated_devices` the one place that says
how many simulated devices each physical device holds. Both
``experiments.train`` and ``experiments.depth`` train through the engine.
The steps themselves are built in :mod:`experiments.parallel`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from experiments import config as config_lib
from experiments import data as data_lib
from experiments import parallel


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


def execution_mode(config, physical_devices: int) -> str:
  """``config.execution``, with ``'auto'`` resolved to 'vmap', 'microbatch'
  or 'scan' for this backend and ``physical_devices``."""
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


def simulated_devices(config, mesh) -> int:
  """Simulated devices per physical device of ``mesh``: each normalizes its
  own examples. 1 with synchronised statistics (they span the mesh)."""
  return 1 if config.sync_batch_stats else config.num_devices // mesh.size


def make_step(model, tx, mesh, config, mode: str, runs: int = 0):
  """The per-step training call of execution ``mode`` ('vmap' or
  'microbatch'), over ``runs`` runs when given."""
  simulated = simulated_devices(config, mesh)
  if mode == "microbatch":
    return parallel.make_microbatch_step(model, tx, simulated=simulated, augment=config.augment, runs=runs)
  return parallel.make_vmap_step(model, tx, mesh, simulated=simulated, augment=config.augment, runs=runs)


def stack_runs(trees):
  """Trees of equal structure -> one tree with a leading run axis."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack_run(tree, run: int):
  """Run ``run``'s slice of a tree with a leading run axis."""
  return jax.tree.map(lambda a: a[run], tree)


def stack_keys(keys):
  """PRNG keys -> one key array with a leading run axis."""
  return jax.random.wrap_key_data(jnp.stack([jax.random.key_data(k) for k in keys]))


def stack_host_batches(batches):
  """Host batches of equal structure -> one host batch with a leading run axis."""
  return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


class Engine:
  """How a run, or a group of runs, executes its epochs and evaluations.

  The mode is :func:`execution_mode` of ``config`` and the mesh. ``vmap``
  and ``microbatch``: one compiled step per batch, batches built on the
  host and copied over. ``scan``: the training and test sets live on the
  device and each epoch (and each evaluation) is one compiled call
  (:func:`experiments.parallel.make_scan_epoch`). All three use the same
  example order and step keys, so they train the same model.

  With several ``seeds`` the runs train together in one program, vmapped
  over a leading run axis of the state and the root keys (each run keeps
  its own data order, augmentation and step keys); one seed (by default
  ``config.seed``) runs alone, without that axis. ``test`` (anything with
  ``test_images`` and ``test_labels``, e.g. the dataset) is what
  :meth:`evaluate` evaluates on; without it the engine only trains.

  The config keys it reads are the training config's: ``num_devices``,
  ``per_device_batch``, ``sync_batch_stats``, ``augment``, ``execution``,
  ``seed`` and, to evaluate, ``eval_batch_size``.
  """

  def __init__(self, model, tx, mesh, config, train_images, train_labels, test=None, seeds=None):
    self.mesh, self.config = mesh, config
    self.mode = execution_mode(config, mesh.size)
    self.seeds = list(seeds) if seeds is not None else [config.seed]
    self.runs = len(self.seeds) if len(self.seeds) > 1 else 0
    self.batch = config_lib.global_batch(config)
    self.steps = data_lib.steps_per_epoch(len(train_images), self.batch)
    self.train_images, self.train_labels = train_images, train_labels
    self.simulated = simulated_devices(config, mesh)
    self.test = test
    if self.mode == "scan":
      self._prepare_scan(model, tx, test)
    else:
      self.step = make_step(model, tx, mesh, config, self.mode, self.runs)
    make_eval = (
      functools.partial(parallel.make_scan_eval, model, mesh, batch=config.eval_batch_size, runs=self.runs)
      if self.mode == "scan"
      else functools.partial(parallel.make_eval_step, model, mesh, runs=self.runs)
    )
    self.eval_fns = {False: make_eval(), True: make_eval(simulated=self.simulated)}

  def _prepare_scan(self, model, tx, test) -> None:
    """The scan mode's epoch call and its device-resident training and test sets."""
    self.run_epoch = parallel.make_scan_epoch(
      model,
      tx,
      self.mesh,
      simulated=self.simulated,
      augment=self.config.augment,
      batch=self.batch,
      steps=self.steps,
      runs=self.runs,
    )
    self.device_train = parallel.put_replicated({"images": self.train_images, "labels": self.train_labels}, self.mesh)
    if test is not None:
      padded = list(data_lib.eval_batches(test.test_images, test.test_labels, self.config.eval_batch_size))
      self.device_test = parallel.put_replicated(
        {k: np.concatenate([b[k] for b in padded]) for k in ("images", "labels", "mask")}, self.mesh
      )

  def root_key(self):
    """The root key of each run (stacked over runs in a group)."""
    return self.combine_keys([jax.random.key(seed) for seed in self.seeds])

  def combine_runs(self, trees):
    """Per-run trees -> the engine's tree (stacked over runs in a group)."""
    return stack_runs(trees) if self.runs else trees[0]

  def combine_keys(self, keys):
    """Per-run root keys -> the engine's root key (stacked over runs in a group)."""
    return stack_keys(keys) if self.runs else keys[0]

  def per_run(self, tree) -> list:
    """The engine's tree -> per-run trees (the inverse of :meth:`combine_runs`)."""
    return [unstack_run(tree, r) for r in range(self.runs)] if self.runs else [tree]

  def _step_key(self, root_key, index: int):
    key_of = lambda k: jax.random.fold_in(jax.random.fold_in(k, 1), index)
    return jax.vmap(key_of)(root_key) if self.runs else key_of(root_key)

  def train_steps(self, state, root_key, epoch: int, start: int = 0) -> Iterator[tuple]:
    """Yields ``(state, metrics)`` (device values) after each step of
    ``epoch`` from step ``start`` (0-based; the steps before it are
    skipped, as a run resumed within the epoch needs), in the per-step
    modes ('vmap', 'microbatch'). The next step donates the state it is
    given: use a yielded state before asking for the next one."""
    if self.mode == "scan":
      raise ValueError("engine: execution='scan' runs whole epochs (train_epoch), not single steps.")
    orders = [
      data_lib.train_batches(self.train_images, self.train_labels, self.batch, seed=seed, epoch=epoch)
      for seed in self.seeds
    ]
    for i, host_batches in enumerate(zip(*orders)):
      if i < start:
        continue
      host_batch = stack_host_batches(host_batches) if self.runs else host_batches[0]
      device_batch = parallel.put_global_batch(host_batch, self.mesh, runs=bool(self.runs))
      key = self._step_key(root_key, epoch * self.steps + i)
      state, metrics = self.step(state, device_batch["images"], device_batch["labels"], key)
      yield state, metrics

  def host_metrics(self, step_metrics) -> list[list[dict]]:
    """Per-step device metrics -> per run, the steps' metrics as host scalars."""
    per_step = [self.per_run(m) for m in jax.device_get(step_metrics)]
    return [[step[r] for step in per_step] for r in range(len(self.seeds))]

  def train_epoch(self, state, root_key, epoch: int, start: int = 0, after_step: Callable | None = None):
    """(state, per run: [per-step metrics as host scalars]) of the steps of
    ``epoch`` from ``start`` on.

    ``after_step(state, steps_done, host_metrics)`` (optional) is called
    after every step in the per-step modes, and once after the epoch's one
    call in 'scan' (which resumes only at an epoch's start or end);
    ``host_metrics()`` gives what this returns, for the steps so far. It
    may raise to stop the epoch there (the state it is given is the one to
    save)."""
    after_step = after_step or (lambda state, steps_done, host_metrics: None)
    if self.mode == "scan":
      if start >= self.steps:
        return state, [[] for _ in self.seeds]
      if start:
        raise ValueError(
          f"engine: this run was checkpointed at step {start} of epoch {epoch + 1}, within the epoch, and "
          "execution='scan' runs whole epochs; finish the epoch with execution='vmap' (or the mode it was "
          "trained in), then go on in 'scan'."
        )
      t = self.device_train
      state, stacked = self.run_epoch(state, t["images"], t["labels"], root_key, epoch)
      host = self.per_run(jax.device_get(stacked))
      step_metrics = [[{k: v[i] for k, v in run.items()} for i in range(self.steps)] for run in host]
      after_step(state, self.steps, lambda: step_metrics)
      return state, step_metrics
    step_metrics = []
    for i, (stepped, metrics) in enumerate(self.train_steps(state, root_key, epoch, start), start=start + 1):
      state = stepped
      step_metrics.append(metrics)
      after_step(state, i, lambda: self.host_metrics(step_metrics))
    return state, self.host_metrics(step_metrics)

  def evaluate(self, variables, batch_statistics: bool = False) -> list[dict]:
    """Per run: test loss and error, with the running statistics (or, with
    ``batch_statistics``, in training mode over simulated devices)."""
    if self.test is None:
      raise ValueError("engine: evaluate needs the test set; give the engine test=... .")
    fn = self.eval_fns[batch_statistics]
    if self.mode == "scan":
      t = self.device_test
      sums = jax.device_get(fn(variables, t["images"], t["labels"], t["mask"]))
    else:
      sums = None
      for batch in data_lib.eval_batches(self.test.test_images, self.test.test_labels, self.config.eval_batch_size):
        batch = parallel.put_global_batch(batch, self.mesh)
        out = jax.device_get(fn(variables, batch["images"], batch["labels"], batch["mask"]))
        sums = out if sums is None else jax.tree.map(np.add, sums, out)
    return [
      {"loss": float(s["loss"] / s["count"]), "error": float(1 - s["correct"] / s["count"])} for s in self.per_run(sums)
    ]
