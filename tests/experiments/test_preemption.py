"""Preemption: SIGTERM saves and exits, resuming within an epoch is bitwise,
timed checkpoints, one writer per workdir, a full disk.

The signal tests run real processes (``preemption_checks.py``) that a real
SIGTERM reaches while a training call is in flight; the rerun must end
bitwise equal to an uninterrupted run (metrics without the timings, and
the final errors of ``result.json``).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from experiments import checkpoints as checkpoints_lib
from experiments import cli
from experiments import config as config_lib
from experiments import engine
from experiments import preemption
from experiments import train

pytestmark = pytest.mark.usefixtures("tiny_records")

SCRIPT = Path(__file__).with_name("preemption_checks.py")


def _train_process(data_dir, workdir, execution, signal_at, *extra):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_FLAGS"))}
  args = [sys.executable, str(SCRIPT), str(data_dir), str(workdir), execution, str(signal_at), *extra]
  return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)


def _runs(proc):
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  return json.loads(line[0][len("RESULT ") :])


def _final(run):
  return {k: v for k, v in run["result"].items() if "error" in k or k == "epochs_completed"}


def _preempted_and_resumed_equals_uninterrupted(data_dir, tmp_path, execution, signal_at, *extra):
  full = _runs(_train_process(data_dir, tmp_path / "full", execution, 0, *extra))
  stopped = _train_process(data_dir, tmp_path / "stopped", execution, signal_at, *extra)
  assert stopped.returncode == 143, stopped.stderr[-3000:]
  assert "Traceback" not in stopped.stderr
  assert "Rerun the same command to resume" in stopped.stderr
  resumed = _runs(_train_process(data_dir, tmp_path / "stopped", execution, 0, *extra))
  assert len(resumed) == len(full)
  for a, b in zip(full, resumed):
    assert a["metrics"] == b["metrics"]  # bitwise floats
    assert _final(a) == _final(b)
  return stopped


def test_sigterm_mid_epoch_saves_exits_143_and_resumes_bitwise(data_dir, tmp_path):
  """vmap, SIGTERM during step 2 of epoch 2: a checkpoint at global step 6."""
  stopped = _preempted_and_resumed_equals_uninterrupted(data_dir, tmp_path, "vmap", 6)
  assert "step 2 of 4 of epoch 2 (global step 6)" in stopped.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
  "execution, signal_at, extra",
  [
    ("microbatch", 3, ()),
    ("scan", 1, ()),  # an epoch is one call: it ends, then the run stops before evaluating
    ("vmap", 4, ("--signal", "INT")),  # SIGINT in the last step of epoch 1 (exit status checked below)
    ("vmap", 7, ("--group",)),  # a seed group: both runs saved at the same step
  ],
)
def test_signal_then_resume_is_bitwise_in_every_mode(data_dir, tmp_path, execution, signal_at, extra):
  if "INT" in extra:
    full = _runs(_train_process(data_dir, tmp_path / "full", execution, 0))
    stopped = _train_process(data_dir, tmp_path / "stopped", execution, signal_at, *extra)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    resumed = _runs(_train_process(data_dir, tmp_path / "stopped", execution, 0))
    assert full[0]["metrics"] == resumed[0]["metrics"]
    return
  _preempted_and_resumed_equals_uninterrupted(data_dir, tmp_path, execution, signal_at, *extra)


def tiny_config(root, **overrides):
  c = config_lib.default_config()
  c.data_dir, c.download = str(root), False
  c.depth, c.width = 8, 8
  c.num_devices, c.per_device_batch = 4, 8
  c.epochs, c.train_examples, c.eval_batch_size = 2, 128, 32
  c.progress, c.checkpoint, c.warmup_epochs = False, True, 0.0
  c.execution = "vmap"
  for k, v in overrides.items():
    c[k] = v
  return c


class Killed(Exception):
  pass


def test_timed_checkpoints_make_a_killed_run_resume_within_the_epoch(data_dir, tmp_path, monkeypatch):
  """A checkpoint every step (checkpoint_every_minutes tiny), the run dies
  without cleanup in step 3 of epoch 2: the rerun resumes at global step 6
  (not at epoch 1) and ends bitwise equal to an uninterrupted run."""
  config = tiny_config(data_dir, checkpoint_every_minutes=1e-9, checkpoint_keep_within_epoch=2)
  full = train.train_and_evaluate(config, tmp_path / "full")
  real_make_step = engine.make_step

  def dying(*args, **kwargs):
    step, calls = real_make_step(*args, **kwargs), {"n": 0}

    def call(*a):
      calls["n"] += 1
      if calls["n"] == 7:
        raise Killed
      return step(*a)

    return call

  monkeypatch.setattr(engine, "make_step", dying)
  with pytest.raises(Killed):
    train.train_and_evaluate(config, tmp_path / "killed")
  kept = sorted(int(p.name) for p in (tmp_path / "killed" / checkpoints_lib.WITHIN_EPOCH).iterdir())
  assert kept == [5, 6]  # the newest two
  resumed_at = []
  real_train_steps = engine.Engine.train_steps

  def recording(self, state, root_key, epoch, start=0):
    resumed_at.append((epoch, start))
    return real_train_steps(self, state, root_key, epoch, start)

  monkeypatch.setattr(engine, "make_step", real_make_step)
  monkeypatch.setattr(engine.Engine, "train_steps", recording)
  resumed = train.train_and_evaluate(config, tmp_path / "killed")
  assert resumed_at[0] == (1, 2)

  def metrics(d):
    lines = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in m.items() if "sec" not in k} for m in lines]

  assert metrics(tmp_path / "full") == metrics(tmp_path / "killed")
  assert resumed["final_test_error"] == full["final_test_error"]
  assert not list((tmp_path / "killed" / checkpoints_lib.WITHIN_EPOCH).iterdir())  # the epoch's replaced them


def _write_lock(workdir: Path, pid: int, host: str) -> None:
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / preemption.LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host, "since": "then"}))


def test_a_second_writer_is_refused_naming_the_holder(data_dir, tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    _write_lock(tmp_path, holder.pid, socket.gethostname())
    with pytest.raises(cli.RunFailure, match=rf"in use by process {holder.pid} on host {socket.gethostname()}"):
      train.train_and_evaluate(tiny_config(data_dir), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()  # refused before anything was written
    assert json.loads((tmp_path / preemption.LOCK_NAME).read_text())["pid"] == holder.pid  # left alone
  finally:
    holder.kill()
    holder.wait()


def test_a_lock_of_another_host_is_not_taken_over(tmp_path):
  _write_lock(tmp_path, 1, "some-other-host")
  with pytest.raises(cli.RunFailure, match="on host some-other-host"), preemption.hold([tmp_path]):
    pass


def test_a_stale_lock_is_taken_over_with_a_warning_and_released(tmp_path):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  _write_lock(tmp_path, dead.pid, socket.gethostname())
  with pytest.warns(UserWarning, match=rf"stale lock of process {dead.pid}"), preemption.hold([tmp_path]):
    assert json.loads((tmp_path / preemption.LOCK_NAME).read_text())["pid"] == os.getpid()
  assert not (tmp_path / preemption.LOCK_NAME).exists()
  with warnings.catch_warnings():  # free again: no warning
    warnings.simplefilter("error")
    with preemption.hold([tmp_path]):
      pass


def test_a_full_disk_keeps_the_previous_checkpoint_and_names_the_path(data_dir, tmp_path, monkeypatch):
  """The second epoch's checkpoint write fails with ENOSPC: the run ends
  with RunFailure naming the path and the cause; checkpoint 1 is intact,
  and a rerun resumes from it and finishes."""
  import errno

  import orbax.checkpoint as ocp

  config = tiny_config(data_dir, checkpoint_every_minutes=0.0)
  real_save = ocp.CheckpointManager.save

  def failing(self, step, *args, **kwargs):
    if step == 2:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", failing)
  with pytest.raises(cli.RunFailure, match=r"checkpoints/2: \[Errno 28\] No space left on device"):
    train.train_and_evaluate(config, tmp_path)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]
  monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
  resumed_from = []
  real_restore = checkpoints_lib.Checkpoints.restore

  def recording(self, states, keys):
    out = real_restore(self, states, keys)
    resumed_from.append(out[0])
    return out

  monkeypatch.setattr(checkpoints_lib.Checkpoints, "restore", recording)
  result = train.train_and_evaluate(config, tmp_path)
  assert resumed_from == [1] and result["epochs_completed"] == 2


def test_a_second_signal_while_stopping_is_reported_and_ignored(capsys):
  before = signal.getsignal(signal.SIGTERM)
  with preemption.watch():
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)
    assert preemption.received() == signal.SIGTERM
    assert preemption.stop_requested() == (signal.SIGTERM, False)
  assert "already stopping" in capsys.readouterr().err
  assert signal.getsignal(signal.SIGTERM) is before  # the handler is gone after the block


def test_the_progress_record_round_trips_the_dtypes_bitwise():
  steps = [
    {"loss": np.float32(1.2345678), "accuracy": np.float32(0.25)},
    {"loss": np.float32(0.1), "accuracy": np.float32(1)},
  ]
  record = json.loads(json.dumps(train.progress_record(1, 2, steps, 3.5)))
  runs, seconds = train.progress_metrics([record])
  assert seconds == 3.5
  assert np.mean([m["loss"] for m in runs[0]]) == np.mean([m["loss"] for m in steps])
  assert all(m["loss"].dtype == np.float32 for m in runs[0])


def test_a_signal_during_the_evaluation_stops_after_the_epoch_checkpoint(data_dir, tmp_path, monkeypatch):
  """SIGTERM while epoch 1 is evaluated: the epoch is recorded and
  checkpointed, then the run stops (not after one more step); the rerun
  trains epoch 2 only and ends bitwise equal to an uninterrupted run."""
  config = tiny_config(data_dir, checkpoint_every_minutes=0.0)
  full = train.train_and_evaluate(config, tmp_path / "full")
  real_evaluate = engine.Engine.evaluate

  def signalling(self, *args, **kwargs):
    out = real_evaluate(self, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)
    return out

  monkeypatch.setattr(engine.Engine, "evaluate", signalling)
  with pytest.raises(cli.Preempted, match=r"after epoch 1; checkpoint .*checkpoints/1\b") as stopped:
    train.train_and_evaluate(config, tmp_path / "stopped")
  assert stopped.value.exit_status == 143
  assert not (tmp_path / "stopped" / checkpoints_lib.WITHIN_EPOCH).exists() or not list(
    (tmp_path / "stopped" / checkpoints_lib.WITHIN_EPOCH).iterdir()
  )
  monkeypatch.setattr(engine.Engine, "evaluate", real_evaluate)
  resumed = train.train_and_evaluate(config, tmp_path / "stopped")
  read = lambda d: [
    {k: v for k, v in json.loads(l).items() if "sec" not in k} for l in (d / "metrics.jsonl").read_text().splitlines()
  ]
  assert read(tmp_path / "full") == read(tmp_path / "stopped")
  assert resumed["final_test_error"] == full["final_test_error"]
