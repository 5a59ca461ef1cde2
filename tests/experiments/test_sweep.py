"""Sweep expansion, skip/resume behaviour, and the report's table and plots."""

import copy
import csv
import json
import os
import re
import signal
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from experiments import cli
from experiments import config as config_lib
from experiments import engine
from experiments import metrics as metrics_lib
from experiments import report
from experiments import sweep
from experiments import train
from tiny_cifar import load_tiny_records
from tiny_cifar import write_tiny_cifar

RECORDS = 32


@pytest.fixture(autouse=True)
def tiny_records(monkeypatch):
  load_tiny_records(monkeypatch, RECORDS)


def tiny_sweep(root):
  base = config_lib.default_config()
  base.data_dir = str(root)
  base.download = False
  base.depth, base.width, base.num_devices = 8, 8, 2
  base.epochs, base.train_examples, base.eval_batch_size = 1, 16, 16
  base.progress, base.warmup_epochs = False, 0.0
  s = ml_collections.ConfigDict()
  s.name = "tiny sweep (reduced)"
  s.base = base
  s.axes = [
    [("bn", {"norm": "bn"}), ("gn", {"norm": "gn", "norm_kwargs": {"num_groups": 2}})],
    [("b4", {"per_device_batch": 4}), ("b2", {"per_device_batch": 2})],
  ]
  s.lock()  # as the command line loads it
  return s


def test_expand_is_the_cartesian_product_with_merged_overrides(tmp_path):
  points = sweep.expand(tiny_sweep(tmp_path))
  assert [p[0] for p in points] == ["bn__b4", "bn__b2", "gn__b4", "gn__b2"]
  assert points[3][2].norm == "gn" and points[3][2].per_device_batch == 2
  assert dict(points[3][2].norm_kwargs) == {"num_groups": 2}
  assert dict(points[0][2].norm_kwargs) == {}  # overrides do not leak between points


def test_expand_rejects_unknown_keys_and_repeated_labels(tmp_path):
  s = tiny_sweep(tmp_path)
  s.axes = [[("x", {"not_a_key": 1})]]
  with pytest.raises(ValueError, match=r"unknown config key 'not_a_key'"):
    sweep.expand(s)
  s.axes = [[("a", {"seed": 0}), ("a", {"seed": 1})]]
  with pytest.raises(ValueError, match=r"labels repeat"):
    sweep.expand(s)


def test_bad_point_fails_before_any_training(tmp_path, monkeypatch):
  s = tiny_sweep(tmp_path)
  s.axes[0].append(("gn3", {"norm": "gn", "norm_kwargs": {"num_groups": 3}}))
  monkeypatch.setattr(train, "train_and_evaluate", lambda *a: pytest.fail("trained"))
  with pytest.raises(ValueError, match=r"sweep point gn3__b4: .*num_groups=3 does not divide 8"):
    sweep.run_sweep(s, tmp_path / "sweep")


@pytest.mark.slow
def test_sweep_runs_skips_finished_points_and_resumes(tmp_path, monkeypatch):
  write_tiny_cifar(tmp_path / "data", RECORDS)
  s = tiny_sweep(tmp_path / "data")
  out = tmp_path / "sweep"
  results = sweep.run_sweep(s, out)
  assert len(results) == 4
  manifest = json.loads((out / "sweep.json").read_text())
  assert [p["label"] for p in manifest["points"]] == ["bn__b4", "bn__b2", "gn__b4", "gn__b2"]
  for name in ("summary.csv", "table.md", "error_vs_batch.png", "curves.png"):
    assert (out / name).stat().st_size > 200, name

  # Everything finished: a rerun trains nothing.
  real = train.train_and_evaluate
  calls = []
  monkeypatch.setattr(train, "train_and_evaluate", lambda c, d, **k: calls.append(d) or real(c, d, **k))
  sweep.run_sweep(s, out)
  assert calls == []
  # A point without its result (interrupted) is run again; others are not.
  (out / "points" / "gn__b2" / "result.json").unlink()
  sweep.run_sweep(s, out)
  assert [p.name for p in calls] == ["gn__b2"]
  # A changed config is not mistaken for a finished point.
  s2 = copy.deepcopy(s)
  s2.base.weight_decay = 5e-4
  calls.clear()
  sweep.run_sweep(s2, out)
  assert len(calls) == 4


def fake_point(root, label, norm, b, seed, errors, kwargs=None, hardware=None):
  """A finished point with known per-epoch test errors (None: an epoch
  without evaluation, as with ``eval_every`` > 1)."""
  d = root / "points" / label
  d.mkdir(parents=True)
  config = config_lib.default_config()
  config.norm, config.per_device_batch, config.seed, config.epochs = norm, b, seed, len(errors)
  config.report_last_evals = 2
  config.norm_kwargs.update(kwargs or {})
  history = [
    {"epoch": i + 1, "train_loss": 1.0 / (i + 1), "images_per_sec": 100.0 + i}
    | ({} if e is None else {"test_error": e})
    for i, e in enumerate(errors)
  ]
  (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in history))
  result = {
    **metrics_lib.summarize(history, 2),
    "epochs_completed": len(errors),
    "train_wall_seconds": 12.0,
    "train_examples": 1000,
    "config": json.loads(json.dumps(config.to_dict())),
    "git_commit": "abc",
    "dataset": {"sha256": "f00"},
    "hardware": hardware or {"backend": "cpu", "cpu": "Test CPU", "cpu_cores": 2, "devices": ["cpu"]},
  }
  (d / "result.json").write_text(json.dumps(result))


def test_report_table_uses_median_of_last_evals_and_seed_statistics(tmp_path):
  # BN at 32/device: seeds with last-two medians 0.30 and 0.34 -> 32.00 ± 2.83
  fake_point(tmp_path, "bn_b32_s0", "bn", 32, 0, [0.9, 0.31, 0.29])
  fake_point(tmp_path, "bn_b32_s1", "bn", 32, 1, [0.9, 0.35, 0.33])
  fake_point(tmp_path, "bn_b2_s0", "bn", 2, 0, [0.9, 0.50, 0.60])
  fake_point(tmp_path, "gn_b2_s0", "gn", 2, 0, [0.9, 0.40, 0.42], {"num_groups": 8})
  table = report.write_report(tmp_path)
  ours = table.split("Wu & He")[0]  # our table; the paper's follows it
  rows = {line.split("|")[1].strip(): line for line in ours.splitlines() if line.startswith(("| BN", "| GN"))}
  expected_std = np.std([30.0, 34.0], ddof=1)
  bn_cells = [c.strip() for c in rows["BN"].split("|")[2:-1]]
  assert bn_cells == [f"32.00 ± {expected_std:.2f}", "55.00"]
  gn_cells = [c.strip() for c in rows["GN (num_groups=8)"].split("|")[2:-1]]
  assert gn_cells == ["–", "41.00"]
  assert "| test error (%) | 32 img/device | 2 img/device |" in table
  assert "34.7" in table  # the paper's BN at 2 images per GPU, for comparison
  csv_lines = (tmp_path / "summary.csv").read_text().splitlines()
  assert len(csv_lines) == 5 and csv_lines[0].startswith("label,norm")


def test_a_comparison_of_normalizers_gets_one_bar_each(tmp_path):
  """More than two normalizers: a bar chart beside the table (a BN/GN sweep has none)."""
  fake_point(tmp_path, "bn_b2_s0", "bn", 2, 0, [0.9, 0.50, 0.60])
  fake_point(tmp_path, "gn_b2_s0", "gn", 2, 0, [0.9, 0.40, 0.42], {"num_groups": 8})
  report.write_report(tmp_path)
  assert not (tmp_path / "error_by_norm.png").exists()
  fake_point(tmp_path, "frn_b2_s0", "frn", 2, 0, [0.9, 0.45, 0.47])
  table = report.write_report(tmp_path)
  assert "| FRN | 46.00 |" in table
  assert (tmp_path / "error_by_norm.png").stat().st_size > 0


def test_epochs_without_evaluation_are_skipped_by_the_result_and_the_curves(tmp_path):
  """With eval_every > 1 some epochs record no test error: the result is the
  median of the last evaluations that exist, and the curves draw those."""
  fake_point(tmp_path, "bn_b32_s0", "bn", 32, 0, [0.9, None, 0.5, None, 0.3, 0.2, None])
  result = json.loads((tmp_path / "points" / "bn_b32_s0" / "result.json").read_text())
  assert result["last_test_errors"] == [0.3, 0.2] and result["final_test_error"] == pytest.approx(0.25)
  table = report.write_report(tmp_path)
  assert "25.00" in table
  assert (tmp_path / "curves.png").stat().st_size > 0


def test_evaluation_epochs_follow_eval_every_and_cover_the_reported_ones():
  config = config_lib.default_config()
  config.epochs, config.eval_every, config.report_last_evals = 12, 5, 3
  assert [e for e in range(1, 13) if config_lib.evaluates_after(config, e)] == [5, 10, 11, 12]
  config.eval_every = 1
  assert all(config_lib.evaluates_after(config, e) for e in range(1, 13))
  config.eval_every = 0
  with pytest.raises(ValueError, match="eval_every=0"):
    config_lib.validate(config, 1)


def test_report_merges_points_from_several_machines_and_names_each(tmp_path):
  """Points trained in different leases or sessions sit in one points/ folder;
  the table holds them all and says where each trained."""
  h100 = {"backend": "gpu", "devices": ["NVIDIA H100 80GB HBM3"], "cpu": "Xeon", "cpu_cores": 16}
  fake_point(tmp_path, "bn_b32_s0", "bn", 32, 0, [0.9, 0.31, 0.29], hardware=h100)
  fake_point(tmp_path, "bn_b2_s0", "bn", 2, 0, [0.9, 0.50, 0.60], hardware=h100)
  fake_point(tmp_path, "bn_b8_s0", "bn", 8, 0, [0.9, 0.40, 0.40, 0.40])
  table = report.write_report(tmp_path)
  assert "Trained on: cpu: Test CPU (2 cores) (1 point); gpu: NVIDIA H100 80GB HBM3 (2 points)." in table
  assert "3 / 4 epochs" in table  # points of different lengths are not described as one
  rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
  assert {r["label"]: r["hardware"] for r in rows} == {
    "bn_b2_s0": "gpu: NVIDIA H100 80GB HBM3",
    "bn_b32_s0": "gpu: NVIDIA H100 80GB HBM3",
    "bn_b8_s0": "cpu: Test CPU (2 cores)",
  }


def test_report_without_points_says_what_to_do(tmp_path):
  with pytest.raises(FileNotFoundError, match="run the sweep first"):
    report.write_report(tmp_path)


def test_damaged_result_file_is_retrained_by_the_sweep_and_named_by_the_report(tmp_path):
  fake_point(tmp_path, "bn__b2", "bn", 2, 0, [0.5, 0.4])
  path = tmp_path / "points" / "bn__b2" / "result.json"
  config = config_lib.default_config()
  config.norm, config.per_device_batch, config.seed, config.epochs = "bn", 2, 0, 2
  config.report_last_evals = 2
  assert sweep.is_complete(path.parent, config)
  path.write_text(path.read_text()[:40])  # cut short, as by a full disk
  with pytest.warns(UserWarning, match=r"result.json is not valid JSON .*Training the point again"):
    assert not sweep.is_complete(path.parent, config)
  with pytest.raises(ValueError, match=r"points/bn__b2/result.json is not valid JSON .*delete it"):
    report.write_report(tmp_path)


def statistics_sweep(root):
  """The statistics-batch protocol on a tiny grid: one global batch of 8."""
  s = tiny_sweep(root)
  s.unlock()
  s.base.num_devices, s.base.per_device_batch = 1, 8
  s.axes = [
    [("bn", {"norm": "bn"}), ("gn", {"norm": "gn", "norm_kwargs": {"num_groups": 2}})],
    [("k8", {"statistics_batch": 8}), ("k4", {"statistics_batch": 4}), ("k2", {"statistics_batch": 2})],
  ]
  s.lock()
  return s


def test_statistics_protocol_trains_each_norm_without_batch_statistics_once(tmp_path, monkeypatch):
  trained = []

  def fake_train(config, point_dir, on_epochs):  # writes what a finished run writes
    trained.append(point_dir.name)
    on_epochs(config.epochs)
    point_dir.mkdir(parents=True)
    (point_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_error": 0.5}) + "\n")
    result = {"config": json.loads(json.dumps(config.to_dict(), default=str)), "epochs_completed": 1}
    (point_dir / "result.json").write_text(json.dumps(result))

  write_tiny_cifar(tmp_path, RECORDS)  # the sweep checks the data before training
  monkeypatch.setattr(train, "train_and_evaluate", fake_train)
  monkeypatch.setattr(sweep.report_lib, "write_report", lambda workdir: None)
  results = sweep.run_sweep(statistics_sweep(tmp_path), tmp_path / "sweep")
  # BN's statistics depend on the ghost batch: three runs; GN's do not: one.
  assert trained == ["bn__k8", "bn__k4", "bn__k2", "gn__k8"]
  assert [r["config"]["statistics_batch"] for r in results] == [8, 4, 2, 8, 4, 2]
  assert [r.get("trained_as") for r in results] == [None] * 4 + ["gn__k8"] * 2
  copied = tmp_path / "sweep" / "points" / "gn__k2"
  assert (copied / "metrics.jsonl").read_text() == (copied.parent / "gn__k8" / "metrics.jsonl").read_text()
  # A rerun finds every point done, copies included.
  trained.clear()
  sweep.run_sweep(statistics_sweep(tmp_path), tmp_path / "sweep")
  assert trained == []


def _fake_train_recording(trained):
  def fake_train(config, point_dir, on_epochs):  # writes what a finished run writes
    trained.append((point_dir.parent.name, point_dir.name, config.epochs))
    on_epochs(config.epochs)
    point_dir.mkdir(parents=True)
    errors = [0.5] * (config.epochs - 1) + [0.4 if config.epochs > 1 else 0.5]
    history = [
      {"epoch": i + 1, "test_error": e, "train_loss": 1.0, "images_per_sec": 1.0} for i, e in enumerate(errors)
    ]
    (point_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in history))
    result = {
      **metrics_lib.summarize(history, 1),
      "config": json.loads(json.dumps(config.to_dict(), default=str)),
      "epochs_completed": config.epochs,
      "train_wall_seconds": 1.0,
      "train_examples": 16,
      "git_commit": "abc",
      "dataset": {"sha256": "f00"},
    }
    (point_dir / "result.json").write_text(json.dumps(result))

  return fake_train


def test_convergence_check_trains_chosen_points_longer_after_the_grid(tmp_path, monkeypatch):
  trained = []
  write_tiny_cifar(tmp_path, RECORDS)
  monkeypatch.setattr(train, "train_and_evaluate", _fake_train_recording(trained))
  s = statistics_sweep(tmp_path)
  s.unlock()
  s.convergence_check = ml_collections.ConfigDict({"points": ["bn__k8", "gn__k2"], "epochs_factor": 3})
  s.lock()
  sweep.run_sweep(s, tmp_path / "sweep")
  assert trained == [
    ("points", "bn__k8", 1),
    ("points", "bn__k4", 1),
    ("points", "bn__k2", 1),
    ("points", "gn__k8", 1),
    ("convergence", "bn__k8", 3),
    ("convergence", "gn__k2", 3),
  ]
  manifest = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
  assert manifest["convergence_check"] == [{"label": "bn__k8", "epochs": 3}, {"label": "gn__k2", "epochs": 3}]
  table = (tmp_path / "sweep" / "table.md").read_text()
  # grid: 1 epoch, error 50 %; longer: 3 epochs, last error 40 % -> -10 points
  assert "| bn__k8 (BN) | 1 | 50.00 | 3 | 40.00 | -10.00 |" in table
  assert "| gn__k2 (GN (num_groups=2)) | 1 | 50.00 | 3 | 40.00 | -10.00 |" in table
  trained.clear()
  sweep.run_sweep(s, tmp_path / "sweep")  # a rerun finds everything done
  assert trained == []


@pytest.mark.parametrize(
  "check, message",
  [
    ({"points": ["bn__k9"], "epochs_factor": 2}, r"names 'bn__k9', which is not a grid point; valid labels"),
    ({"points": ["bn__k8"], "epochs_factor": 1}, r"epochs_factor must be an integer >= 2, got 1"),
  ],
)
def test_convergence_check_errors_name_the_setting(tmp_path, check, message):
  s = statistics_sweep(tmp_path)
  s.unlock()
  s.convergence_check = ml_collections.ConfigDict(check)
  with pytest.raises(ValueError, match=message):
    sweep.convergence_points(s, sweep.expand(s))


def test_report_columns_follow_the_statistics_batch(tmp_path):
  for label, norm, k, errors, kwargs in [
    ("bn__k8", "bn", 8, [0.30], None),
    ("bn__k2", "bn", 2, [0.50], None),
    ("gn__k8", "gn", 8, [0.40], {"num_groups": 2}),
    ("gn__k2", "gn", 2, [0.40], {"num_groups": 2}),
  ]:
    fake_point(tmp_path, label, norm, 8, 0, errors, kwargs)
    result_path = tmp_path / "points" / label / "result.json"
    result = json.loads(result_path.read_text())
    result["config"]["statistics_batch"] = k
    if label == "gn__k2":
      result["trained_as"] = "gn__k8"
    result_path.write_text(json.dumps(result))
  table = report.write_report(tmp_path)
  assert "| test error (%) | 8 per BN batch | 2 per BN batch |" in table
  assert "| BN | 30.00 | 50.00 |" in table
  assert "Statistics-batch protocol" in table
  assert report._column_name(report.load_points(tmp_path)) == "examples per BN statistics batch"


def test_command_without_data_prints_the_fix_without_a_traceback(tmp_path):
  import subprocess
  import sys

  command = [
    sys.executable,
    "-m",
    "experiments.sweep",
    "--config",
    "configs/sweep_statistics_quick.py",
    "--workdir",
    str(tmp_path / "sweep"),
    f"--config.base.data_dir={tmp_path / 'nothing'}",
    "--config.base.download=False",
  ]
  run = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
  assert run.returncode == 2
  assert "Traceback" not in run.stderr
  assert "CIFAR-10 not found" in run.stderr and "JAXNORM_DATA" in run.stderr
  assert not (tmp_path / "sweep" / "points").exists()  # nothing trained


def _committed_sweep_config(name: str):
  """``configs/<name>.py``'s sweep config, locked as the command line locks it."""
  import importlib.util

  path = Path(__file__).resolve().parents[2] / "configs" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  s = module.get_config()
  s.lock()
  return s


@pytest.mark.parametrize(
  "name",
  [
    "sweep_statistics_quick",
    "sweep_quick",
    "sweep_statistics_2h",
    "sweep_statistics_small",
    "sweep_statistics_full",
    "sweep_statistics_h100",
    "sweep_paper_h100",
  ],
)
def test_committed_sweep_configs_are_valid_at_every_point(name):
  """Every point of the README's main job (and the per-device sweep) passes
  the checks a run does before compute, on one device, without training."""
  s = _committed_sweep_config(name)
  points = sweep.expand(s)
  assert len(points) == (
    20
    if name in ("sweep_statistics_2h", "sweep_statistics_small", "sweep_statistics_full", "sweep_statistics_h100")
    else 10
  )
  for label, _, config in points:
    config_lib.validate(config, 1)
    train.check_model(train.build_model(config))
    if name.startswith("sweep_statistics"):
      assert config_lib.global_batch(config) == 128  # the optimization is the same everywhere
      assert config_lib.statistics_examples(config) == int(re.search(r"__k(\d+)", label).group(1))
  for label, config in sweep.convergence_points(s, points):
    assert config.epochs == 2 * {p[0]: p[2] for p in points}[label].epochs


def test_which_normalizer_points_train_as_the_full_data_sweep_with_statistics_over_two():
  """Every norm of the small-batch comparison (configs/which_normalizer_full.py)
  trains with the model, data, global batch, learning rate, schedule and
  steps of the full-data BN/GN sweep, and where it has batch statistics
  they span 2 examples; each point passes the pre-compute checks."""
  full = sweep.expand(_committed_sweep_config("sweep_statistics_full"))
  which = sweep.expand(_committed_sweep_config("which_normalizer_full"))
  same = (
    "depth", "width", "train_examples", "augment", "epochs", "schedule", "warmup_epochs", "base_lr",
    "lr_reference_batch", "momentum", "weight_decay", "report_last_evals", "eval_every", "zero_init_last",
  )  # fmt: skip
  reference = full[0][2]
  assert {label for label, _, _ in which} == {"brn", "gn+ws", "frn", "evonorm_s0", "ln", "in"}
  for label, _, config in which + full:
    config_lib.validate(config, 1)
    assert config_lib.global_batch(config) == 128
    assert config_lib.peak_learning_rate(config) == config_lib.peak_learning_rate(reference)
    assert {k: config[k] for k in same} == {k: reference[k] for k in same}, label
  for label, _, config in which:
    train.check_model(train.build_model(config))
    assert config.seed == 0
    if config_lib.uses_batch_statistics(config):
      assert config_lib.statistics_examples(config) == 2, label
    else:  # the column of the table; training does not depend on it
      assert config.statistics_batch == 2 and config_lib.training_config(config).statistics_batch == 0


@pytest.mark.slow
def test_pack_seeds_trains_the_seeds_of_a_point_in_one_group(tmp_path, monkeypatch):
  """With pack_seeds the two seeds of each point train in one program; each
  point still gets its own files, and a rerun trains nothing."""
  write_tiny_cifar(tmp_path / "data", RECORDS)
  s = tiny_sweep(tmp_path / "data")
  s.unlock()
  s.axes = [
    [("gn", {"norm": "gn", "norm_kwargs": {"num_groups": 2}, "per_device_batch": 4})],
    [("s0", {"seed": 0}), ("s1", {"seed": 1})],
  ]
  s.pack_seeds = True
  s.lock()
  groups, alone = [], []
  real_group = train.train_group
  monkeypatch.setattr(
    train, "train_group", lambda cs, ds, **k: groups.append([c.seed for c in cs]) or real_group(cs, ds, **k)
  )
  monkeypatch.setattr(train, "train_and_evaluate", lambda c, d, **k: alone.append(d) or pytest.fail("alone"))
  results = sweep.run_sweep(s, tmp_path / "sweep")
  assert groups == [[0, 1]] and alone == []
  assert [r["config"]["seed"] for r in results] == [0, 1]
  for label, _, config in sweep.expand(s):
    assert sweep.is_complete(tmp_path / "sweep" / "points" / label, config)
  groups.clear()
  sweep.run_sweep(s, tmp_path / "sweep")
  assert groups == []


def test_pack_seeds_setting_is_checked(tmp_path):
  s = tiny_sweep(tmp_path)
  s.unlock()
  s.pack_seeds = "yes"
  with pytest.raises(ValueError, match="pack_seeds='yes'; choose True, False or 'auto'"):
    sweep.packs_seeds(s)
  s.pack_seeds = "auto"
  assert sweep.packs_seeds(s) is False  # on the CPU


@pytest.mark.slow
def test_sigterm_stops_the_sweep_at_a_checkpoint_and_a_rerun_continues(tmp_path, monkeypatch):
  """SIGTERM in the first step of the first point: the sweep stops
  (cli.Preempted) with that point checkpointed within its epoch and nothing
  of the other points trained; the rerun finishes every point, the first
  bitwise as if it had trained alone without a stop."""
  write_tiny_cifar(tmp_path / "data", RECORDS)
  s = tiny_sweep(tmp_path / "data")
  out = tmp_path / "sweep"
  real_make_step = engine.make_step

  def signalling(*args, **kwargs):
    step = real_make_step(*args, **kwargs)

    def call(*a):
      result = step(*a)
      os.kill(os.getpid(), signal.SIGTERM)
      return result

    return call

  monkeypatch.setattr(engine, "make_step", signalling)
  with pytest.raises(cli.Preempted, match=r"step 1 of 2 of epoch 1"):
    sweep.run_sweep(s, out)
  assert (out / "points" / "bn__b4" / "checkpoints_within_epoch" / "1").is_dir()
  assert not (out / "points" / "bn__b2").exists()
  monkeypatch.setattr(engine, "make_step", real_make_step)
  results = sweep.run_sweep(s, out)
  assert len(results) == 4 and all(r["epochs_completed"] == 1 for r in results)
  alone = train.train_and_evaluate(sweep.expand(s)[0][2], tmp_path / "alone")

  def metrics(d):
    return [
      {k: v for k, v in json.loads(l).items() if "sec" not in k} for l in (d / "metrics.jsonl").read_text().splitlines()
    ]

  assert metrics(out / "points" / "bn__b4") == metrics(tmp_path / "alone")
  assert results[0]["final_test_error"] == alone["final_test_error"]
