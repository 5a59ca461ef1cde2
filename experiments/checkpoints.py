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
WITHIN_EPOCH = "checkpoints_within_epoch"


def _host_key(tree):
  """A restored root key as a host value (the replicated global array's local copy)."""
  return jax.random.wrap_key_data(np.asarray(tree["rng"].addressable_data(0)))


def _disk_error(error: BaseException) -> OSError | None:
  """The OSError (ENOSPC, EIO, ...) in ``error``'s chain of causes, if any."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError):
      return error
    error = error.__cause__ or error.__context__
  return None


def checkpoint_tree(state, root_key, mesh) -> dict:
  """What a checkpoint holds. Every leaf is a global array replicated over
  the mesh: with several processes, orbax saves only global arrays (a
  host-local key would fail the first save)."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  key_data = np.asarray(jax.random.key_data(root_key))
  rng = jax.make_array_from_callback(key_data.shape, replicated, lambda index: key_data[index])
  return {"state": state, "rng": rng}


def restore_latest_readable(manager, directory: Path, args):
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
      tree = manager.restore(step, args=args)
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

  Within an epoch (on a signal, or every ``checkpoint_every_minutes``),
  :meth:`save_within_epoch` writes ``<workdir>/checkpoints_within_epoch/<global
  step>`` (the newest ``keep_within_epoch`` kept), which also holds the
  epoch's progress: its per-step metrics so far, as JSON.
  :meth:`restore_within_epoch` finds one newer than the epoch checkpoint
  resumed from; the next epoch checkpoint deletes them.

  A write that fails on the disk (ENOSPC or any OSError) leaves the
  checkpoints before it intact (orbax writes into a temporary directory
  and renames it when complete) and ends the run with
  :class:`experiments.cli.RunFailure` naming the path and the cause.
  """

  def __init__(self, workdirs: Sequence[Path], mesh, *, enabled: bool = True, keep_within_epoch: int = 2):
    self.workdirs, self.mesh, self.enabled = [Path(w) for w in workdirs], mesh, enabled
    options = ocp.CheckpointManagerOptions(max_to_keep=MAX_TO_KEEP)
    self.managers = (
      [ocp.CheckpointManager(w / "checkpoints", options=options) for w in self.workdirs] if enabled else []
    )
    within = ocp.CheckpointManagerOptions(max_to_keep=keep_within_epoch)
    self.within_epoch = (
      [ocp.CheckpointManager(w / WITHIN_EPOCH, options=within) for w in self.workdirs] if enabled else []
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
      restore_latest_readable(m, w / "checkpoints", ocp.args.StandardRestore(checkpoint_tree(s, k, self.mesh)))
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
    return common, [t["state"] for t in trees], [_host_key(t) for t in trees]

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

  def restore_within_epoch(self, start_epoch: int, steps_per_epoch: int, states: list, root_keys: list):
    """(steps done in epoch ``start_epoch``, states, root keys, per run the
    progress JSON) of the newest within-epoch checkpoint of that epoch, or
    None. Every run of the group must have it (they save together; a group
    killed between two runs' saves resumes from the epoch checkpoint)."""
    if not self.within_epoch:
      return None
    first = start_epoch * steps_per_epoch
    restored = []
    for manager, workdir, state, key in zip(self.within_epoch, self.workdirs, states, root_keys):
      steps = [s for s in manager.all_steps() if first < s <= first + steps_per_epoch]
      if not steps:
        return None
      target = ocp.args.Composite(
        state=ocp.args.StandardRestore(checkpoint_tree(state, key, self.mesh)), progress=ocp.args.JsonRestore()
      )
      try:
        found = restore_latest_readable(manager, workdir / WITHIN_EPOCH, target)
      except RunFailure:  # every one unreadable (now quarantined): the epoch checkpoint is the fallback
        return None
      if found is None or found[0] <= first:
        return None
      restored.append(found)
    if len({step for step, _ in restored}) != 1:
      return None
    steps_done = restored[0][0] - first
    trees = [tree for _, tree in restored]
    return (
      steps_done,
      [t.state["state"] for t in trees],
      [_host_key(t.state) for t in trees],
      [t.progress for t in trees],
    )

  def _write(self, manager, directory: Path, step: int, args) -> None:
    """Writes checkpoint ``step``, replacing one of that step left by an
    earlier attempt (a run of a group that got one epoch ahead of the
    others before it was killed retrains that epoch with them)."""
    try:
      if step in manager.all_steps():
        manager.delete(step)
      manager.save(step, args=args, force=True)
      manager.wait_until_finished()
    except Exception as e:
      cause = _disk_error(e)
      if cause is None:
        raise
      raise RunFailure(
        f"could not write the checkpoint {directory / str(step)}: {cause}. The checkpoints before it are "
        "intact; make room and rerun the same command to resume from the last of them."
      ) from None

  def save_within_epoch(self, global_step: int, states: list, root_keys: list, progress: list[dict]) -> None:
    """Saves every run's state, root key and progress at ``global_step``, within an epoch."""
    for manager, workdir, state, key, run_progress in zip(
      self.within_epoch, self.workdirs, states, root_keys, progress
    ):
      args = ocp.args.Composite(
        state=ocp.args.StandardSave(checkpoint_tree(state, key, self.mesh)), progress=ocp.args.JsonSave(run_progress)
      )
      self._write(manager, workdir / WITHIN_EPOCH, global_step, args)

  def save(self, epochs: int, states: list, root_keys: list) -> None:
    """Saves every run's state and root key as checkpoint ``epochs``, one
    run after another, each written before the next starts: with several
    processes, orbax names the barrier that ends an asynchronous save after
    the step alone, so two runs' saves of the same step in flight at once
    collide (``Barrier _async_write_complete.<step> is already ongoing``)
    and the processes abort."""
    for manager, workdir, state, key in zip(self.managers, self.workdirs, states, root_keys):
      self._write(
        manager, workdir / "checkpoints", epochs, ocp.args.StandardSave(checkpoint_tree(state, key, self.mesh))
      )
    for manager in self.within_epoch:  # older than the epoch checkpoint now
      for step in manager.all_steps():
        manager.delete(step)

  def close(self) -> None:
    for manager in self.managers + self.within_epoch:
      manager.close()
