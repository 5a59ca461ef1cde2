"""The depth experiment runner: validation, a tiny end-to-end run, divergence, resume."""

import json

import pytest

from experiments import depth
from tiny_cifar import RECORDS
from tiny_cifar import write_tiny_cifar

pytestmark = pytest.mark.usefixtures("tiny_records")


def tiny_config(root):
  import importlib.util
  from pathlib import Path

  path = Path(__file__).resolve().parents[2] / "configs" / "depth_reduced.py"
  spec = importlib.util.spec_from_file_location("depth_reduced", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.data_dir, c.download, c.progress = str(root), False, False
  c.train_examples, c.per_device_batch, c.width = 128, 16, 4
  c.archs, c.norms = ("plain8",), ("none", "bn")
  c.steps, c.probe_steps, c.trains_window = 6, (0, 3, 6), 2
  c.learning_rates, c.reference_lr = (0.05, 1e5), 0.05
  return c


def test_bad_configs_fail_before_compute(tmp_path):
  c = tiny_config(tmp_path)
  c.archs = ("plain21",)
  with pytest.raises(ValueError, match="depth=21 is not a CIFAR ResNet depth"):
    depth.validate(c)
  c.archs = ("vgg20",)
  with pytest.raises(ValueError, match="arch='vgg20'"):
    depth.validate(c)
  c = tiny_config(tmp_path)
  c.reference_lr = 0.3
  with pytest.raises(ValueError, match=r"reference_lr=0\.3 is not in learning_rates"):
    depth.validate(c)
  c = tiny_config(tmp_path)
  c.norms = ("bn", "batchnorm")
  with pytest.raises(ValueError, match="'batchnorm' is not a known normalizer"):
    depth.validate(c)


@pytest.mark.slow
def test_tiny_run_records_probes_divergence_and_provenance(tmp_path):
  write_tiny_cifar(tmp_path / "data", RECORDS)
  c = tiny_config(tmp_path / "data")
  result = depth.run(c, tmp_path / "out")
  runs = {(r["norm"], r["lr"]): r for r in result["runs"]}
  assert len(runs) == 4
  for key in ("git_commit", "hardware", "dataset", "config", "run_wall_seconds_total"):
    assert result[key] is not None, key
  ref = runs[("bn", 0.05)]
  assert len(ref["losses"]) == 6 and not ref["diverged"]
  assert sorted(ref["probes"], key=int) == ["0", "3", "6"]
  # 8 weight layers of a plain-8 net plus the norm layers' γ/β.
  assert len(depth.diagnostics.weight_layers(ref["probes"]["0"])) == 8
  assert runs[("none", 1e5)]["diverged"] and not runs[("none", 1e5)]["trains"]
  assert runs[("none", 0.05)]["probes"]["0"]["norm_layers"]  # identity layers are probed too
  assert result["max_trainable_lr"]["plain8"]["none"] in (None, 0.05)
  for name in ("table.md", "grad_norm_vs_depth.png", "loss_vs_steps.png", "loss_vs_lr.png", "covariate_shift.png"):
    assert (tmp_path / "out" / name).exists(), name
  # A rerun skips the finished runs.
  before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "runs").glob("*.json")}
  depth.run(c, tmp_path / "out")
  after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "runs").glob("*.json")}
  assert before == after
  assert json.loads((tmp_path / "out" / "results.json").read_text())["runs"]


def test_a_damaged_run_file_counts_as_not_done(tmp_path):
  path = tmp_path / "resnet20_bn_lr0.1.json"
  path.write_text('{"config": {"steps": 3}}')
  assert depth._recorded_config(path) == {"steps": 3}
  path.write_text('{"config": {"st')
  with pytest.warns(UserWarning, match="is not valid JSON .*Training the run again"):
    assert depth._recorded_config(path) is None
