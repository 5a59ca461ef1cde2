"""Checkpoints of a training run, or of a group of runs, and resuming from them.

:class:`Checkpoints` is what training uses: one orbax manager per run, in
``<workdir>/checkpoints/<epochs trained>``, the two newest kept. A
checkpoint holds the run's :class:`experiments.parallel.TrainState` and its
root PRNG key (:func:`checkpoint_tree`); the data order is a function of
the seed and the epoch, so nothing else is needed to resume. Restoring
falls back past unreadable checkpoints (:func:`restore_latest_readable`)
and resumes a group from the last epoch every run of it saved.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from experiments.cli import RunFailure

MAX_TO_KEEP = 2  # a run killed between the saves of its group is at most one epoch ahead


def checkpoint_tree(state, root_key, mesh) -> dict:
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
  is unreadable, :class:`experiments.cli.RunFailure` names them."""
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


class Checkpoints:
  """The checkpoints of a group of runs (one run is a group of one), in
  each run's ``<workdir>/checkpoints``; with ``enabled=False``, none (a
  restore finds nothing, a save does nothing).

  The step of a checkpoint is the number of epochs it has trained. Call
  :meth:`restore` once before training, :meth:`save` after every epoch
  and :meth:`close` at the end.
  """

  def __init__(self, workdirs: Sequence[Path], mesh, *, enabled: bool = True):
    self.workdirs, self.mesh, self.enabled = [Path(w) for w in workdirs], mesh, enabled
    options = ocp.CheckpointManagerOptions(max_to_keep=MAX_TO_KEEP)
    self.managers = (
      [ocp.CheckpointManager(w / "checkpoints", options=options) for w in self.workdirs] if enabled else []
    )

  def restore(self, states: list, root_keys: list) -> tuple[int, list, list]:
    """(start epoch, states, root keys) of the group, given its fresh
    states and root keys (the targets' structure, and what a group without
    checkpoints starts from). Every run resumes from the last epoch all of
    them have checkpointed (a run killed between the saves of its group is
    at most one epoch ahead, and keeps two checkpoints)."""
    if not self.managers:
      return 0, states, root_keys
    restored = [
      restore_latest_readable(m, w / "checkpoints", checkpoint_tree(s, k, self.mesh))
      for m, w, s, k in zip(self.managers, self.workdirs, states, root_keys)
    ]
    if all(r is None for r in restored):
      return 0, states, root_keys
    common = min(0 if r is None else r[0] for r in restored)
    trees = []
    for manager, state, key, r in zip(self.managers, states, root_keys, restored):
      if common and r[0] != common and common in manager.all_steps():
        target = checkpoint_tree(state, key, self.mesh)
        trees.append(manager.restore(common, args=ocp.args.StandardRestore(target)))
      elif common and r[0] == common:
        trees.append(r[1])
      else:
        return self._restart(states, root_keys)
    # Each key back as a host value (the replicated global array's local copy).
    keys = [jax.random.wrap_key_data(np.asarray(t["rng"].addressable_data(0))) for t in trees]
    return common, [t["state"] for t in trees], keys

  def _restart(self, states, root_keys):
    """(0, fresh states, keys): a group whose runs share no saved epoch (a
    run without checkpoints joined runs that have some) trains from the
    start; the other runs' checkpoints are deleted, with a warning, so that
    the new ones are not mixed with them."""
    for manager, workdir in zip(self.managers, self.workdirs):
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

  def save(self, epochs: int, states: list, root_keys: list) -> None:
    """Saves every run's state and root key as checkpoint ``epochs``, one
    run after another, each written before the next starts: with several
    processes, orbax names the barrier that ends an asynchronous save after
    the step alone, so two runs' saves of the same step in flight at once
    collide (``Barrier _async_write_complete.<step> is already ongoing``)
    and the processes abort."""
    for manager, state, key in zip(self.managers, states, root_keys):
      manager.save(epochs, args=ocp.args.StandardSave(checkpoint_tree(state, key, self.mesh)))
      manager.wait_until_finished()

  def close(self) -> None:
    for manager in self.managers:
      manager.close()
