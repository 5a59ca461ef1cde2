"""Stopping cleanly on SIGTERM and SIGINT, and one writer per workdir.

Schedulers preempt with SIGTERM and kill with SIGKILL after a grace period
(30 s on GKE and spot VMs). Inside :func:`watch` the first SIGTERM or
SIGINT only sets a flag: the trainer finishes the step in flight, writes a
checkpoint at that step, and raises :class:`experiments.cli.Preempted`, which the command
lines turn into one line on stderr and an exit status
(:data:`experiments.cli.EXIT_STATUS`: 143 for SIGTERM, 130 for SIGINT, as a shell reports a process the signal
killed). A second signal while that checkpoint is written is reported and
otherwise ignored, so it cannot tear the checkpoint; SIGKILL still works.
Signals reach only the main thread: :func:`watch` does nothing elsewhere.

:func:`stop_requested` is what the trainer asks after every step; with
several processes it is a collective (every process takes part, and all
get the same answer), so they stop at the same step.

:func:`hold` keeps a second job out of a workdir in use: it creates
``<workdir>/.lock`` naming the holder (pid and host) and removes it at the
end. A lock whose process is gone (same host, pid not running) is stale and
taken over with a warning; one held by a live process, or by another host
(whose processes cannot be checked from here), stops the new job with
:class:`experiments.cli.RunFailure` naming the holder. With several
processes, process 0 holds the lock for the job.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from experiments.cli import RunFailure

SIGNALS = (signal.SIGTERM, signal.SIGINT)
LOCK_NAME = ".lock"


_state = {"signum": 0, "depth": 0, "previous": {}}


def _handler(signum, frame) -> None:
  name = signal.Signals(signum).name
  if _state["signum"]:
    print(f"{name} again: already stopping, the checkpoint is being written.", file=sys.stderr, flush=True)
    return
  _state["signum"] = signum
  print(f"{name} received: stopping after the step in flight, then saving.", file=sys.stderr, flush=True)


@contextlib.contextmanager
def watch() -> Iterator[None]:
  """SIGTERM and SIGINT set the stop flag instead of ending the process.
  Nested calls (a sweep around its trainings) share the outermost's flag."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  if _state["depth"] == 0:
    _state["signum"] = 0
    _state["previous"] = {s: signal.signal(s, _handler) for s in SIGNALS}
  _state["depth"] += 1
  try:
    yield
  finally:
    _state["depth"] -= 1
    if _state["depth"] == 0:
      for s, previous in _state["previous"].items():
        signal.signal(s, previous)


def received() -> int:
  """The signal this process received inside :func:`watch` (0: none)."""
  return _state["signum"]


def stop_requested(checkpoint_due: bool = False) -> tuple[int, bool]:
  """(signal, checkpoint due), agreed by every process: the signal any
  process received (0: none) and whether any process's clock says a
  timed checkpoint is due. One allgather with several processes, none
  with one."""
  import jax

  if jax.process_count() == 1:
    return received(), checkpoint_due
  from jax.experimental import multihost_utils

  votes = multihost_utils.process_allgather(np.array([received(), int(checkpoint_due)], np.int32))
  votes = np.asarray(votes).reshape(-1, 2)
  return int(votes[:, 0].max()), bool(votes[:, 1].max())


def _read_holder(path: Path) -> dict | None:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None  # removed meanwhile, or torn: a holder that died while writing it


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # someone else's process
  return True


def _acquire(workdir: Path) -> Path:
  path = workdir / LOCK_NAME
  me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
  for _ in range(10):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      holder = _read_holder(path)
      if holder is not None and (holder.get("host") != me["host"] or _alive(int(holder.get("pid", -1)))):
        raise RunFailure(
          f"{workdir} is in use by process {holder.get('pid')} on host {holder.get('host')} (since "
          f"{holder.get('since')}, {path}). Wait for it to end, or, if that process is gone, delete {path}."
        ) from None
      stale = path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
      try:
        os.replace(path, stale)  # one taker wins; the others find the new lock
      except FileNotFoundError:
        continue
      os.remove(stale)
      warnings.warn(
        f"{path}: taking over a stale lock of process {holder and holder.get('pid')} on host "
        f"{holder and holder.get('host')}, which is no longer running.",
        stacklevel=3,
      )
      continue
    with os.fdopen(fd, "w") as f:
      f.write(json.dumps(me))
    return path
  raise RunFailure(f"could not take the lock {path}: other processes keep taking it over.")


@contextlib.contextmanager
def hold(workdirs: Sequence[Path]) -> Iterator[None]:
  """Holds every workdir's lock (process 0 of the job), released at the end."""
  import jax

  held, failure = [], None
  if jax.process_index() == 0:
    try:
      for w in workdirs:
        held.append(_acquire(Path(w)))
    except RunFailure as e:
      failure = e
  if jax.process_count() > 1:  # every process of the job stops, or none
    from jax.experimental import multihost_utils

    refused = multihost_utils.broadcast_one_to_all(np.int32(failure is not None))
    if int(refused) and failure is None:
      failure = RunFailure("process 0 of this job could not lock its workdir (see its message).")
  try:
    if failure is not None:
      raise failure
    yield
  finally:
    for path in held:
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)
