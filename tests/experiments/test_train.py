"""Training: every normalizer runs, resume is bitwise, protocols agree, bad configs fail early."""

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_multidevice_checks import run_steps

import jaxnorm
from experiments import cli
from experiments import config as config_lib
from experiments import data as data_lib
from experiments import engine
from experiments import metrics as metrics_lib
from experiments import provenance
from experiments import train

pytestmark = pytest.mark.usefixtures("tiny_records")


def tiny_config(root, **overrides):
  c = config_lib.default_config()
  c.data_dir = str(root)
  c.download = False
  c.depth, c.width = 8, 8
  c.num_devices, c.per_device_batch = 4, 8
  c.epochs = 1
  c.eval_batch_size = 32
  c.progress = False
  c.checkpoint = False
  c.warmup_epochs = 0.0
  for k, v in overrides.items():
    if k == "norm_kwargs":
      c.norm_kwargs.update(v)
    else:
      c[k] = v
  return c


NORM_KWARGS = {
  "gn": {"num_groups": 2},
  "gn+ws": {"num_groups": 2},
  "evonorm_s0": {"num_groups": 2},
  "ghost_bn": {"virtual_batch_size": 4},
}


# BN and GN run by default; the other normalizers with the `slow` tests
# (their layers have their own unit tests).
@pytest.mark.parametrize(
  "norm", [n if n in ("bn", "gn") else pytest.param(n, marks=pytest.mark.slow) for n in jaxnorm.NORM_NAMES]
)
def test_few_steps_with_each_normalizer(norm, data_dir, tmp_path):
  config = tiny_config(data_dir, norm=norm, norm_kwargs=NORM_KWARGS.get(norm, {}), train_examples=64)
  result = train.train_and_evaluate(config, tmp_path)
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert len(lines) == 1 and lines[0]["step"] == 2
  for key in ("train_loss", "test_loss", "test_error", "learning_rate", "images_per_sec", "wall_seconds"):
    assert np.isfinite(lines[0][key]), key
  saved = json.loads((tmp_path / "result.json").read_text())
  assert saved["config"]["norm"] == norm
  for key in ("git_commit", "hardware", "dataset", "train_wall_seconds", "final_test_error"):
    assert key in saved and saved[key] is not None, key
  assert saved["dataset"]["sha256"] and saved["hardware"]["backend"] == jax.default_backend()
  assert result["final_test_error"] == lines[0]["test_error"]


@pytest.mark.slow
def test_training_reduces_the_loss(data_dir, tmp_path):
  config = tiny_config(
    data_dir, norm="gn", norm_kwargs={"num_groups": 2}, epochs=3, base_lr=0.4, eval_with_batch_stats=True
  )
  result = train.train_and_evaluate(config, tmp_path)
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  # GN has no batch statistics: evaluating "with batch statistics" changes nothing.
  assert [m["test_error_batch_stats"] for m in lines] == [m["test_error"] for m in lines]
  assert result["final_test_error_batch_stats"] == result["final_test_error"]
  assert lines[-1]["train_loss"] < 0.7 * lines[0]["train_loss"]
  assert lines[-1]["test_error"] < 0.6  # 10 classes: chance is 0.9


class Interrupted(Exception):
  pass


@pytest.mark.slow
def test_killed_and_resumed_run_equals_uninterrupted_run_bitwise(data_dir, tmp_path, monkeypatch):
  config = tiny_config(data_dir, norm="bn", epochs=3, checkpoint=True, train_examples=128, eval_with_batch_stats=True)
  full = train.train_and_evaluate(config, tmp_path / "full")

  # Second run: die in the middle of epoch 3 (after checkpoint 2), then rerun.
  real_make_step = engine.make_step

  def dying_make_step(*args, **kwargs):
    step = real_make_step(*args, **kwargs)
    calls = {"n": 0}

    def wrapped(*a):
      calls["n"] += 1
      if calls["n"] == 2 * 4 + 2:
        raise Interrupted
      return step(*a)

    return wrapped

  monkeypatch.setattr(engine, "make_step", dying_make_step)
  with pytest.raises(Interrupted):
    train.train_and_evaluate(config, tmp_path / "resumed")
  monkeypatch.setattr(engine, "make_step", real_make_step)
  resumed = train.train_and_evaluate(config, tmp_path / "resumed")

  def metrics(d):
    lines = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in m.items() if "sec" not in k} for m in lines]

  assert metrics(tmp_path / "full") == metrics(tmp_path / "resumed")  # bitwise floats
  assert [m["epoch"] for m in metrics(tmp_path / "resumed")] == [1, 2, 3]
  assert full["final_test_error"] == resumed["final_test_error"]
  # A third invocation finds the run complete and trains nothing.
  again = train.train_and_evaluate(config, tmp_path / "resumed")
  assert again["epochs_completed"] == 3 and again["final_test_error"] == full["final_test_error"]


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_microbatch_loop_equals_vmapped_simulated_devices(norm, data_dir):
  """Per-device statistics two ways: one call per device, or vmap over devices."""
  config = tiny_config(data_dir, norm=norm, norm_kwargs=NORM_KWARGS.get(norm, {}))
  a, b = run_steps(config, "microbatch"), run_steps(config, "vmap")
  for u, v in zip(jax.tree.leaves((a.params, a.batch_stats)), jax.tree.leaves((b.params, b.batch_stats))):
    np.testing.assert_allclose(u, v, rtol=2e-4, atol=2e-5)


@pytest.mark.slow
def test_scan_engine_trains_and_evaluates_as_the_per_step_loop(data_dir, tmp_path):
  """An epoch per compiled call, data and order on the device: the same
  per-epoch metrics as the per-step loop (float32; XLA may fuse the scanned
  step differently, so not bitwise)."""

  def metrics(mode):
    config = tiny_config(data_dir, norm="bn", epochs=2, train_examples=64, execution=mode, eval_with_batch_stats=True)
    train.train_and_evaluate(config, tmp_path / mode)
    return [json.loads(l) for l in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]

  per_step, scanned = metrics("vmap"), metrics("scan")
  for a, b in zip(per_step, scanned, strict=True):
    for key in ("train_loss", "train_accuracy", "test_loss"):
      np.testing.assert_allclose(b[key], a[key], rtol=1e-5, err_msg=key)
    for key in ("test_error", "test_error_batch_stats"):
      assert abs(b[key] - a[key]) <= 1 / 64 + 1e-9, key  # at most one of 64 test images flips


def test_host_and_device_epoch_orders_agree():
  order = data_lib.epoch_permutation(50, seed=3, epoch=2)
  on_device = jax.jit(lambda key, epoch: data_lib.device_epoch_permutation(key, 50, epoch))(jax.random.key(3), 2)
  np.testing.assert_array_equal(order, np.asarray(on_device))
  assert sorted(order.tolist()) == list(range(50))


def test_per_device_statistics_differ_from_synced_statistics(data_dir):
  """The protocol switch matters: ghost batches of 8 are not the global batch."""
  per_device = run_steps(tiny_config(data_dir, norm="bn"), "vmap", steps=1)
  synced = run_steps(tiny_config(data_dir, norm="bn", sync_batch_stats=True), "vmap", steps=1)
  diff = max(
    float(np.max(np.abs(u - v)))
    for u, v in zip(jax.tree.leaves(per_device.batch_stats), jax.tree.leaves(synced.batch_stats))
  )
  assert diff > 1e-4


def test_learning_rate_schedule_and_scaling():
  c = config_lib.default_config()
  c.num_devices, c.per_device_batch, c.epochs, c.warmup_epochs = 8, 32, 4, 1.0
  assert config_lib.peak_learning_rate(c) == pytest.approx(0.1 * 256 / 128)
  sched = train.make_schedule(c, steps_per_epoch=10)
  assert float(sched(0)) == 0.0
  assert float(sched(5)) == pytest.approx(0.1, rel=1e-6)  # half-way up the ramp
  assert float(sched(10)) == pytest.approx(0.2, rel=1e-6)
  assert float(sched(39)) < 0.01
  c.schedule = "step"
  sched = train.make_schedule(c, steps_per_epoch=10)
  assert float(sched(19)) == pytest.approx(0.2)
  assert float(sched(21)) == pytest.approx(0.02)
  assert float(sched(31)) == pytest.approx(0.002)


def test_weight_decay_switch_skips_one_dimensional_parameters():
  c = config_lib.default_config()
  c.decay_norm_params = False
  c.weight_decay = 0.5
  tx = train.make_optimizer(c, 1.0)
  params = {"kernel": jnp.ones((2, 2)), "scale": jnp.ones(2)}
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  np.testing.assert_allclose(updates["kernel"], -0.5)
  np.testing.assert_allclose(updates["scale"], 0.0)


@pytest.mark.parametrize(
  "overrides,error,match",
  [
    (dict(norm="batchnorm"), ValueError, r"batchnorm.*bn"),
    (dict(depth=21), ValueError, r"depth=21 is not a CIFAR ResNet depth; use 6n\+2"),
    (dict(norm="gn", norm_kwargs={"num_groups": 3}), ValueError, r"num_groups=3 does not divide 8 channels"),
    (dict(num_devices=0), ValueError, r"num_devices=0; expected a positive integer"),
    (dict(schedule="linear"), ValueError, r"schedule='linear'"),
    (dict(execution="microbatch", sync_batch_stats=True), ValueError, r"cannot synchronise statistics"),
    (dict(data_dir="/nonexistent/cifar"), FileNotFoundError, r"cifar-10-batches-bin.*JAXNORM_DATA"),
    (dict(statistics_batch=3), ValueError, r"statistics_batch=3 does not divide per_device_batch=8"),
    (dict(statistics_batch=-1), ValueError, r"statistics_batch=-1; expected 0 \(off\) or a positive"),
    (dict(norm="brn", statistics_batch=2), ValueError, r"statistics_batch=2 needs a norm .*norm='brn'"),
    (dict(statistics_batch=2, sync_batch_stats=True), ValueError, r"sync_batch_stats=True.*choose one"),
  ],
)
def test_bad_configs_fail_before_compute(overrides, error, match, data_dir, tmp_path, monkeypatch):
  compiled = []
  monkeypatch.setattr(engine, "make_step", lambda *a, **k: compiled.append(1))
  with pytest.raises(error, match=match):
    train.train_and_evaluate(tiny_config(data_dir, **overrides), tmp_path)
  assert not compiled


def test_global_batch_must_split_over_physical_devices():
  c = config_lib.default_config()
  c.num_devices = 8
  with pytest.raises(
    ValueError, match=r"num_devices=8 simulated devices cannot be spread evenly over 3 physical devices"
  ):
    config_lib.validate(c, 3)


@pytest.mark.slow
def test_eight_devices_subprocess(data_dir):
  """Per-device statistics on 8 devices equal ghost batches on one; synced equals global."""
  script = Path(__file__).with_name("train_multidevice_checks.py")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  errors = json.loads(proc.stdout.strip().splitlines()[-1])
  assert errors["per_device_8_vs_ghost_1"] < 1e-4, errors
  assert errors["synced_8_vs_global_1"] < 1e-4, errors
  assert errors["per_device_vs_synced"] > 1e-5, errors  # the comparison can fail


@pytest.mark.slow
def test_eight_devices_scan_engine_subprocess():
  """The scan engine on 8 simulated devices: per-device BN equals ghost
  batches on one device, synced BN the global batch, and GN either way; two
  seeds in one program equal each seed trained alone."""
  script = Path(__file__).with_name("train_multidevice_checks.py")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, str(script), "scan"], env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  errors = json.loads(proc.stdout.strip().splitlines()[-1])
  assert errors["scan_per_device_8_vs_ghost_1"] < 1e-4, errors
  assert errors["scan_synced_8_vs_global_1"] < 1e-4, errors
  assert errors["scan_gn_8_vs_1"] < 1e-4, errors
  assert errors["scan_per_device_vs_synced"] > 1e-5, errors  # the comparison can fail
  # Two seeds vmapped in one program on 8 devices equal each seed alone.
  assert errors["scan_group_per_device_8_vs_alone"] < 1e-5, errors
  assert errors["scan_group_synced_8_vs_alone"] < 1e-5, errors
  assert errors["scan_group_seeds_differ"] > 1e-4, errors


# The statistics-batch protocol (config.statistics_batch): one global batch,
# BN statistics over ghost batches inside it.


@pytest.mark.slow
def test_group_norm_training_does_not_depend_on_the_statistics_partition(data_dir):
  """Bitwise: why a sweep trains GN once for every statistics batch."""

  def state(norm, k, **kw):
    return run_steps(tiny_config(data_dir, norm=norm, num_devices=1, statistics_batch=k, **kw), "vmap")

  gn8, gn2 = state("gn", 8, norm_kwargs={"num_groups": 2}), state("gn", 2, norm_kwargs={"num_groups": 2})
  for a, b in zip(jax.tree.leaves((gn8.params, gn8.opt_state)), jax.tree.leaves((gn2.params, gn2.opt_state))):
    np.testing.assert_array_equal(a, b)
  # BN's layers do see the partition: the next test.


def test_statistics_batch_normalizes_over_exactly_the_intended_examples():
  """Every BN layer of the model, against ghost batch norm by hand in float64."""
  import flax.linen as nn

  config = tiny_config("unused", num_devices=1, per_device_batch=8, statistics_batch=2)
  model = train.build_model(config)
  x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
  variables = model.init(jax.random.key(0), x[:1], train=False)
  calls = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, jaxnorm.BatchNorm):
      calls.append((np.float64(args[0]), np.float64(out), context.module.variables["params"]))
    return out

  with nn.intercept_methods(record):
    model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert len(calls) == 7  # the stem and two per block of ResNet-8
  for inputs, outputs, params in calls:
    groups = inputs.reshape(4, 2, *inputs.shape[1:])  # consecutive pairs of examples
    mean = groups.mean(axis=(1, 2, 3), keepdims=True)
    var = groups.var(axis=(1, 2, 3), keepdims=True)
    expected = (groups - mean) / np.sqrt(var + 1e-5) * np.float64(params["scale"]) + np.float64(params["bias"])
    np.testing.assert_allclose(outputs, expected.reshape(inputs.shape), rtol=1e-4, atol=1e-4)


# Faults: each ends with a message that says where and what to do.


def _corrupt(step_dir: Path) -> None:
  """Overwrites every file of a checkpoint with bytes no reader accepts."""
  files = [p for p in step_dir.rglob("*") if p.is_file()]
  assert files
  for p in files:
    p.write_bytes(b"\x00garbage" * 7)


@pytest.mark.slow
def test_unreadable_latest_checkpoint_falls_back_to_the_previous_one(data_dir, tmp_path):
  config = tiny_config(data_dir, norm="bn", epochs=3, checkpoint=True, train_examples=64)
  full = train.train_and_evaluate(config, tmp_path)
  checkpoints = tmp_path / "checkpoints"
  assert sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) == [2, 3]
  _corrupt(checkpoints / "3")
  with pytest.warns(UserWarning, match=rf"checkpoint {checkpoints / '3'} is unreadable"):
    again = train.train_and_evaluate(config, tmp_path)
  # Epoch 3 was trained again from checkpoint 2: the same result, bitwise.
  assert again["epochs_completed"] == 3
  assert again["last_test_errors"] == full["last_test_errors"]
  assert [p.name.split("-")[0] for p in (tmp_path / "checkpoints_unreadable").iterdir()] == ["3"]
  assert (checkpoints / "3").is_dir()  # saved anew


def test_no_readable_checkpoint_fails_naming_them(data_dir, tmp_path, capsys):
  config = tiny_config(data_dir, norm="bn", epochs=2, checkpoint=True, train_examples=64)
  train.train_and_evaluate(config, tmp_path)
  for step in ("1", "2"):
    _corrupt(tmp_path / "checkpoints" / step)
  with pytest.warns(UserWarning), pytest.raises(SystemExit) as exit_info:
    cli.exit_on_user_error(train.train_and_evaluate, config, tmp_path)
  assert exit_info.value.code == 1
  err = capsys.readouterr().err
  assert err.startswith("error: no readable checkpoint: ")
  assert str(tmp_path / "checkpoints" / "2") in err and str(tmp_path / "checkpoints" / "1") in err
  assert "Traceback" not in err and "Delete" in err


def test_resumed_history_drops_later_epochs_and_a_torn_last_line(tmp_path):
  """metrics.jsonl of a run killed while appending epoch 3's record, resumed
  from its epoch-2 checkpoint; and one that lost a record (a warning)."""
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"epoch": 1, "train_loss": 2.0}\n{"epoch": 2, "train_loss": 1.5}\n{"epoch": 3, "train_lo')
  assert [m["epoch"] for m in metrics_lib.read_metrics(path, 2)] == [1, 2]
  with pytest.warns(UserWarning, match=r"holds the records of 2 of the 3 epochs"):
    assert [m["epoch"] for m in metrics_lib.read_metrics(path, 3)] == [1, 2]
  path.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3}\n')
  assert [m["epoch"] for m in metrics_lib.read_metrics(path, 1)] == [1]
  with pytest.warns(UserWarning, match=r"metrics.jsonl holds the records of 0 of the 2 epochs"):
    assert metrics_lib.read_metrics(tmp_path / "missing" / "metrics.jsonl", 2) == []


def test_atomic_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text("old\n" * 1000)
  provenance.write_text_atomic(path, "new\n")
  assert path.read_text() == "new\n"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_non_finite_loss_stops_before_saving_anything_of_that_epoch(data_dir, tmp_path, monkeypatch):
  config = tiny_config(data_dir, norm="bn", epochs=3, checkpoint=True, train_examples=64)  # 2 steps/epoch
  real_make_step = engine.make_step

  def poisoned_make_step(*args, **kwargs):
    step = real_make_step(*args, **kwargs)
    calls = {"n": 0}

    def wrapped(*a):
      calls["n"] += 1
      state, metrics = step(*a)
      if calls["n"] == 4:  # step 4: the second of epoch 2; NaN parameters as well
        state = jax.tree.map(lambda x: x * jnp.nan if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
        metrics = {**metrics, "loss": metrics["loss"] * jnp.nan}
      return state, metrics

    return wrapped

  monkeypatch.setattr(engine, "make_step", poisoned_make_step)
  with pytest.raises(cli.RunFailure, match=r"the loss is nan at step 4 \(epoch 2\).*up to epoch 1"):
    train.train_and_evaluate(config, tmp_path)
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(l, parse_constant=lambda c: pytest.fail(f"bare {c}"))["epoch"] for l in lines] == [1]
  assert not (tmp_path / "result.json").exists()
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["1"]


def test_normalizer_settings_from_the_command_line():
  argv = [
    "prog",
    "--config=c.py",
    "--config.norm=gn",
    "--config.norm_kwargs.num_groups=4",
    "--config.norm_kwargs.epsilon",
    "1e-3",
    "--config.norm_kwargs.use_bias=false",
    "--workdir=w",
  ]
  rest, found = config_lib.split_norm_kwargs_flags(argv, "config.norm_kwargs")
  assert rest == ["prog", "--config=c.py", "--config.norm=gn", "--workdir=w"]
  assert found == {"num_groups": 4, "epsilon": 1e-3, "use_bias": False}
  c = config_lib.default_config()
  c.lock()
  config_lib.apply_norm_kwargs(c, found)
  assert dict(c.norm_kwargs) == found
  with pytest.raises(ValueError, match=r"--config.norm_kwargs.num_groups needs a value"):
    config_lib.split_norm_kwargs_flags(["--config.norm_kwargs.num_groups"], "config.norm_kwargs")


@pytest.mark.parametrize(
  "kwarg, message",
  [
    ("num_grops=4", r"unknown keyword arguments \['num_grops'\]; the accepted ones are"),
    ("num_groups=3", r"num_groups=3 does not divide 16 channels"),  # it reached the model
  ],
)
def test_command_line_norm_kwargs_reach_the_model_or_fail_cleanly(kwarg, message, tmp_path):
  root = Path(__file__).resolve().parents[2]
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.train",
      "--config",
      str(root / "configs" / "cifar10_resnet20_bn.py"),
      "--config.norm=gn",
      f"--config.norm_kwargs.{kwarg}",
      f"--workdir={tmp_path}",
    ],
    cwd=root,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert re.search(message, proc.stderr), proc.stderr[-2000:]


def _run_processes(data_dir, workdir, num_processes, port, *extra):
  script = Path(__file__).with_name("multiprocess_train_checks.py")
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_FLAGS"))}
  procs = [
    subprocess.Popen(
      [sys.executable, str(script), str(data_dir), str(workdir), str(i), str(num_processes), str(port), *extra],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(num_processes)
  ]
  outs = [p.communicate(timeout=600) for p in procs]
  return [p.returncode for p in procs], outs


def _free_port() -> int:
  import socket

  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _result(outs):
  line = [l for l in outs[0][0].splitlines() if l.startswith("RESULT ")]
  assert line, outs[0][1][-3000:]
  return json.loads(line[0][len("RESULT ") :])


@pytest.mark.slow
def test_two_processes_train_checkpoint_and_resume_like_one(data_dir, tmp_path):
  """2 processes × 2 devices (jax.distributed) against 1 process × 4 devices:
  the same training, and a run killed after its first checkpoint resumes."""
  codes, outs = _run_processes(data_dir, tmp_path / "one", 1, _free_port())
  assert codes == [0], outs[0][1][-3000:]
  one = _result(outs)
  assert (one["process_count"], one["device_count"]) == (1, 4)

  codes, outs = _run_processes(data_dir, tmp_path / "two", 2, _free_port(), "--die-after-epoch", "1")
  assert codes == [17, 17], [o[1][-3000:] for o in outs]
  assert (tmp_path / "two" / "checkpoints" / "1").is_dir() and not (tmp_path / "two" / "result.json").exists()
  codes, outs = _run_processes(data_dir, tmp_path / "two", 2, _free_port())
  assert codes == [0, 0], [o[1][-3000:] for o in outs]
  two = _result(outs)
  assert (two["process_count"], two["device_count"]) == (2, 4)
  assert two["epochs_completed"] == 2
  # The same batches and statistics groups; only the order of the cross-process sums may differ.
  np.testing.assert_allclose(two["train_loss"], one["train_loss"], rtol=1e-5)
  np.testing.assert_allclose(two["test_error"], one["test_error"], atol=1 / 64 + 1e-9)


@pytest.mark.slow
def test_two_processes_preempted_at_different_steps_stop_together_and_resume_like_one(data_dir, tmp_path):
  """SIGTERM reaches process 0 in step 3 (of 4, 2 per epoch) and process 1
  in step 4: both stop after step 3 (they agree), save there and exit 143; the rerun on 2
  processes × 2 devices ends as 1 process × 4 devices does."""
  codes, outs = _run_processes(data_dir, tmp_path / "one", 1, _free_port())
  assert codes == [0], outs[0][1][-3000:]
  one = _result(outs)
  codes, outs = _run_processes(data_dir, tmp_path / "two", 2, _free_port(), "--signal-at", "3")
  assert codes == [143, 143], [o[1][-3000:] for o in outs]
  assert all("global step 3" in o[1] for o in outs), [o[1][-2000:] for o in outs]
  assert (tmp_path / "two" / "checkpoints_within_epoch" / "3").is_dir()
  codes, outs = _run_processes(data_dir, tmp_path / "two", 2, _free_port())
  assert codes == [0, 0], [o[1][-3000:] for o in outs]
  two = _result(outs)
  assert two["epochs_completed"] == 2
  np.testing.assert_allclose(two["train_loss"], one["train_loss"], rtol=1e-5)
  np.testing.assert_allclose(two["test_error"], one["test_error"], atol=1 / 64 + 1e-9)


@pytest.mark.slow
def test_two_processes_train_a_seed_group_and_resume_like_one(data_dir, tmp_path):
  """A group of two seeds on 2 processes × 2 devices equals the group on 1
  process × 4 devices, including a group killed after its first
  checkpoints and resumed."""
  codes, outs = _run_processes(data_dir, tmp_path / "one", 1, _free_port(), "--group")
  assert codes == [0], outs[0][1][-3000:]
  one = _result(outs)
  codes, outs = _run_processes(data_dir, tmp_path / "two", 2, _free_port(), "--die-after-epoch", "1", "--group")
  assert codes == [17, 17], [o[1][-3000:] for o in outs]
  codes, outs = _run_processes(data_dir, tmp_path / "two", 2, _free_port(), "--group")
  assert codes == [0, 0], [o[1][-3000:] for o in outs]
  two = _result(outs)
  assert [r["epochs_completed"] for r in two] == [2, 2]
  for a, b in zip(one, two, strict=True):
    np.testing.assert_allclose(b["train_loss"], a["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(b["test_error"], a["test_error"], atol=1 / 64 + 1e-9)
  assert one[0]["train_loss"] != one[1]["train_loss"]


def _run_files(workdir):
  metrics = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return metrics, json.loads((workdir / "result.json").read_text())


@pytest.mark.parametrize(
  "mode", ["vmap", pytest.param("microbatch", marks=pytest.mark.slow), pytest.param("scan", marks=pytest.mark.slow)]
)
def test_two_vmapped_seeds_train_as_the_two_runs_alone(data_dir, tmp_path, mode):
  """A group of two seeds in one program: each run's metrics and result
  equal those of the same seed trained alone (float32: the vmapped
  convolutions may sum in another order, so rtol 1e-5, not bitwise), in
  files of the same format."""
  configs = [tiny_config(data_dir, norm="bn", epochs=2, train_examples=64, execution=mode, seed=s) for s in (3, 4)]
  alone = [train.train_and_evaluate(c, tmp_path / f"alone{c.seed}") for c in configs]
  together = train.train_group(configs, [tmp_path / f"group{c.seed}" for c in configs])
  assert alone[0]["final_test_error"] is not None
  losses = []
  for c, _, g in zip(configs, alone, together, strict=True):
    (ma, ra), (mg, rg) = _run_files(tmp_path / f"alone{c.seed}"), _run_files(tmp_path / f"group{c.seed}")
    assert rg == g and rg["trained_with_seeds"] == [3, 4] and rg["config"]["seed"] == c.seed
    assert set(rg) - set(ra) == {"trained_with_seeds"}
    for x, y in zip(ma, mg, strict=True):
      assert set(x) == set(y)
      for key in ("train_loss", "train_accuracy", "test_loss"):
        np.testing.assert_allclose(y[key], x[key], rtol=1e-5, err_msg=key)
      assert abs(y["test_error"] - x["test_error"]) <= 1 / 64 + 1e-9  # at most one of 64 images flips
      assert y["step"] == x["step"]
    losses.append(ma[-1]["train_loss"])
  assert losses[0] != losses[1]  # the seeds really are different runs


@pytest.mark.slow
def test_a_killed_group_resumes_from_the_last_epoch_every_run_saved(data_dir, tmp_path):
  """Run 4 has saved epoch 3, run 3 only epoch 2 (killed between the two
  saves): the group resumes both from epoch 2, without discarding anything,
  and ends as an uninterrupted group does."""
  configs = [
    tiny_config(
      data_dir, norm="gn", norm_kwargs={"num_groups": 2}, epochs=3, train_examples=64, checkpoint=True, seed=s
    )
    for s in (3, 4)
  ]
  full = train.train_group(configs, [tmp_path / f"full{c.seed}" for c in configs])
  dirs = [tmp_path / f"cut{c.seed}" for c in configs]
  train.train_group([c.copy_and_resolve_references() for c in configs], dirs)
  shutil.rmtree(dirs[0] / "checkpoints" / "3")  # run 3's last save never happened
  with warnings.catch_warnings():
    warnings.simplefilter("error", UserWarning)  # nothing is discarded
    resumed = train.train_group(configs, dirs)
  for f, r, d in zip(full, resumed, dirs):
    assert r["final_test_error"] == pytest.approx(f["final_test_error"], abs=1 / 64 + 1e-9)
    metrics = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
  np.testing.assert_allclose(
    [json.loads(l)["train_loss"] for l in (dirs[0] / "metrics.jsonl").read_text().splitlines()],
    [json.loads(l)["train_loss"] for l in (tmp_path / "full3" / "metrics.jsonl").read_text().splitlines()],
    rtol=1e-5,
  )


def test_a_group_takes_only_runs_that_differ_in_the_seed(data_dir, tmp_path):
  a = tiny_config(data_dir, norm="bn", seed=1)
  with pytest.raises(ValueError, match=r"differ only in the seed.*\['norm'\]"):
    train.train_group([a, tiny_config(data_dir, norm="gn", seed=2)], [tmp_path / "a", tmp_path / "b"])
  with pytest.raises(ValueError, match="seeds \\[1, 1\\] repeat"):
    train.train_group([a, tiny_config(data_dir, norm="bn", seed=1)], [tmp_path / "a", tmp_path / "b"])
  with pytest.raises(ValueError, match="one distinct workdir per run"):
    train.train_group([a, tiny_config(data_dir, norm="bn", seed=2)], [tmp_path / "a", tmp_path / "a"])


@pytest.mark.slow
def test_a_group_whose_runs_share_no_saved_epoch_starts_over_with_a_warning(data_dir, tmp_path):
  """Seed 3 trained alone and saved epochs 1-2; seed 4 has nothing. As a
  group they restart from epoch 0 (seed 3's checkpoints are discarded, with
  a warning naming them) and seed 3 ends as it did alone."""
  configs = [tiny_config(data_dir, norm="bn", epochs=2, train_examples=64, checkpoint=True, seed=s) for s in (3, 4)]
  alone = train.train_and_evaluate(configs[0], tmp_path / "s3")
  with pytest.warns(UserWarning, match=r"s3: discarding its checkpoints of epochs \[1, 2\]"):
    grouped = train.train_group(configs, [tmp_path / "s3", tmp_path / "s4"])
  assert grouped[0]["final_test_error"] == pytest.approx(alone["final_test_error"], abs=1 / 64 + 1e-9)
  assert [json.loads(l)["epoch"] for l in (tmp_path / "s3" / "metrics.jsonl").read_text().splitlines()] == [1, 2]
