"""Training diagnostics: the right layers and shapes, exact merges, drift, plain networks."""

import json
import shutil

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import jaxnorm
from experiments import config as config_lib
from experiments import diagnostics
from experiments import parallel
from experiments import report as report_lib
from experiments import train
from experiments.models import CifarResNet
from experiments.models import cifar_plain_net

pytestmark = pytest.mark.usefixtures("tiny_records")


def tiny_config(root, **overrides):
  c = config_lib.default_config()
  c.data_dir, c.download = str(root), False
  c.depth, c.width = 8, 8
  c.num_devices, c.per_device_batch = 4, 8
  c.epochs, c.eval_batch_size = 2, 32
  c.progress = c.checkpoint = False
  c.warmup_epochs = 0.0
  c.train_examples = 64
  c.diagnostics = True
  for k, v in overrides.items():
    if k == "norm_kwargs":
      c.norm_kwargs.update(v)
    else:
      c[k] = v
  return c


def resnet_norm_layers(depth: int) -> list[str]:
  """The norm layers of a post-activation CIFAR ResNet with 'pad' shortcuts, in call order."""
  blocks = (depth - 2) // 6
  return ["stem_norm"] + [f"stage{s}_block{b}/norm{k}" for s in (1, 2, 3) for b in range(1, blocks + 1) for k in (1, 2)]


def module_names_with_params(model) -> set[str]:
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)["params"]
  return {"/".join(path[:-1]) for path in flax.traverse_util.flatten_dict(params)}


@pytest.mark.parametrize(
  "execution, norm, norm_kwargs",
  [
    pytest.param("microbatch", "bn", {}, marks=pytest.mark.slow),
    pytest.param("vmap", "gn", {"num_groups": 2}, marks=pytest.mark.slow),
    pytest.param("vmap", "none", {}, marks=pytest.mark.slow),
  ],
)
def test_training_records_every_norm_layer_and_weight_layer(execution, norm, norm_kwargs, data_dir, tmp_path):
  config = tiny_config(data_dir, execution=execution, norm=norm, norm_kwargs=norm_kwargs)
  train.train_and_evaluate(config, tmp_path)
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert len(lines) == 2
  assert "diagnostics_init" in lines[0] and "diagnostics_init" not in lines[1]
  model = train.build_model(config)
  probes = [lines[0]["diagnostics_init"], lines[0]["diagnostics"], lines[1]["diagnostics"]]
  for i, probe in enumerate(probes):
    # Every norm layer (the identity layers for 'none'), input to output.
    assert list(probe["norm_layers"]) == resnet_norm_layers(8)
    # Every layer with parameters has a gradient norm, input to output.
    assert set(probe["grad_norms"]) == set(probe["param_norms"]) == module_names_with_params(model)
    weights = diagnostics.weight_layers(probe)
    assert weights[0] == "stem_conv" and weights[-1] == "classifier"
    assert all(np.isfinite(v) and v >= 0 for v in probe["grad_norms"].values())
    assert probe["grad_norms"]["stem_conv"] > 0
    for stats in probe["norm_layers"].values():
      assert stats["input_std"] > 0 and np.isfinite(stats["input_mean"])
      if i == 0:
        assert stats["mean_drift"] is None and stats["std_drift"] is None
      else:  # the parameters moved, so the inputs of every layer but the stem's moved
        assert stats["mean_drift"] >= 0 and stats["std_drift"] >= 0
    drifts = [s["mean_drift"] for s in probe["norm_layers"].values()][1:]
    assert i == 0 or min(drifts) > 0
  if norm == "none":
    diagnostics.plot_run(lines, tmp_path / "diagnostics.png")
    assert (tmp_path / "diagnostics.png").stat().st_size > 10_000
    # A sweep report plots the diagnostics of its points.
    point = tmp_path / "sweep" / "points" / "none_b8"
    point.mkdir(parents=True)
    for name in ("result.json", "metrics.jsonl"):
      shutil.copy(tmp_path / name, point / name)
    report_lib.write_report(tmp_path / "sweep")
    assert (tmp_path / "sweep" / "diagnostics" / "none_b8.png").stat().st_size > 10_000


@pytest.mark.parametrize("norm", [pytest.param("bn", marks=pytest.mark.slow), "none"])  # bn: 33 s
def test_captured_moments_are_those_of_the_norm_layer_inputs(norm):
  model = CifarResNet(depth=8, width=4, norm=norm)
  spec = jaxnorm.create_norm(norm)
  images = jax.random.normal(jax.random.key(1), (6, 32, 32, 3))
  labels = jnp.arange(6) % 10
  variables = model.init(jax.random.key(0), images, train=False)
  _, _, captured, _ = diagnostics.loss_grads_and_norm_inputs(
    model, spec.module, variables["params"], variables.get("batch_stats", {}), images, labels
  )
  _, state = model.apply(
    variables, images, train=True, mutable=["batch_stats", "intermediates"], capture_intermediates=True
  )
  inter = state["intermediates"]
  # The input of each norm1 is the output of the conv1 before it.
  pairs = {"stem_norm": inter["stem_conv"]["__call__"][0]}
  for stage, width in zip((1, 2, 3), (4, 8, 16)):
    block = f"stage{stage}_block1"
    pairs[f"{block}/norm1"] = inter[block]["conv1"]["__call__"][0]
    assert captured[f"{block}/norm1"][0].shape == (width,)
  for name, x in pairs.items():
    mean, var = captured[name]
    x = np.asarray(x, np.float64)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(var, x.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)


def _probe(model, norm, simulated, images, labels):
  mesh = parallel.make_mesh(jax.devices()[:1])
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  step = diagnostics.make_probe_step(model, mesh, simulated=simulated, norm_module=jaxnorm.create_norm(norm).module)
  return jax.device_get(step(variables, images, labels))


@pytest.mark.slow  # 29 s; the default suite keeps its 15-minute budget
def test_probe_merges_simulated_devices_exactly():
  images = jax.random.randint(jax.random.key(2), (16, 32, 32, 3), 0, 256).astype(jnp.uint8)
  labels = jnp.arange(16) % 10
  # GN is per example: splitting the batch over 4 simulated devices changes nothing.
  gn = CifarResNet(depth=8, width=4, norm="gn", norm_kwargs=flax.core.FrozenDict(num_groups=2))
  one, four = (_probe(gn, "gn", s, images, labels) for s in (1, 4))
  for name in one["norm_inputs"]:
    for a, b in zip(one["norm_inputs"][name], four["norm_inputs"][name]):
      np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5)
  for name in one["grad_norms"]:
    np.testing.assert_allclose(one["grad_norms"][name], four["grad_norms"][name], rtol=2e-4, atol=1e-6)
  # BN with per-device statistics: the stem's input is the same, deeper inputs are not.
  bn = CifarResNet(depth=8, width=4, norm="bn")
  one, four = (_probe(bn, "bn", s, images, labels) for s in (1, 4))
  np.testing.assert_allclose(one["norm_inputs"]["stem_norm"][1], four["norm_inputs"]["stem_norm"][1], rtol=2e-4)
  deep = "stage3_block1/norm2"
  assert not np.allclose(one["norm_inputs"][deep][1], four["norm_inputs"][deep][1], rtol=1e-3)


def test_drift_is_zero_without_change_and_one_for_a_one_std_shift():
  mean, var = np.array([1.0, -2.0, 0.5]), np.array([4.0, 1.0, 0.25])
  probe = lambda m, v: {"loss": 1.0, "norm_inputs": {"a": (m, v)}, "grad_norms": {}, "param_norms": {}}
  before = probe(mean, var)
  same = diagnostics.summarize(probe(mean, var), before, ["a"])["norm_layers"]["a"]
  assert same["mean_drift"] == 0 and same["std_drift"] == 0
  shifted = diagnostics.summarize(probe(mean + np.sqrt(var), var), before, ["a"])["norm_layers"]["a"]
  assert shifted["mean_drift"] == pytest.approx(1.0, rel=1e-5) and shifted["std_drift"] == 0
  scaled = diagnostics.summarize(probe(mean, var * np.e**2), before, ["a"])["norm_layers"]["a"]
  assert scaled["std_drift"] == pytest.approx(1.0, rel=1e-5) and scaled["mean_drift"] == 0
  first = diagnostics.summarize(before, None, ["a"])["norm_layers"]["a"]
  assert first["mean_drift"] is None
  # Overall mean and std of the input: channels of equal size pooled.
  assert first["input_mean"] == pytest.approx(mean.mean())
  assert first["input_std"] == pytest.approx(np.sqrt(np.mean(var + (mean - mean.mean()) ** 2)))


@pytest.mark.slow  # 24 s; the default suite keeps its 15-minute budget
def test_plain_network_has_no_shortcuts():
  images = jax.random.normal(jax.random.key(3), (2, 32, 32, 3))
  for model, depends in (
    (cifar_plain_net(8, width=4, norm="none"), False),
    (CifarResNet(depth=8, width=4, norm="none"), True),
  ):
    variables = model.init(jax.random.key(0), images, train=False)
    params = flax.core.unfreeze(variables["params"])
    # Zero the last conv: a plain net then no longer sees its input.
    last = params["stage3_block1"]["conv2"]
    last["kernel"] = jnp.zeros_like(last["kernel"])
    last["bias"] = jnp.zeros_like(last["bias"])
    logits = model.apply({"params": params}, images, train=False)
    assert np.allclose(logits[0], logits[1]) != depends
    assert not any("proj" in name for name in module_names_with_params(model))


def test_bad_configs_fail_early():
  # A config file could set a string; the default's type-safe field would not take it.
  config = ml_collections.ConfigDict({**config_lib.default_config().to_dict(), "diagnostics": "yes"})
  with pytest.raises(ValueError, match="diagnostics='yes'; expected True or False"):
    config_lib.validate(config, 1)
  config = config_lib.default_config()
  config.residual = False
  with pytest.raises(ValueError, match="zero_init_last=False"):
    config_lib.validate(config, 1)
  with pytest.raises(ValueError, match="zero_init_last=False"):
    train.check_model(CifarResNet(depth=8, width=4, norm="bn", residual=False))


def test_plotting_a_directory_without_metrics_names_the_fix(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"metrics\.jsonl does not exist: give --workdir a training run"):
    diagnostics.plot_workdir(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(
  "command, message",
  [
    (["-m", "experiments.diagnostics", "--workdir", "{tmp}"], "metrics.jsonl does not exist"),
    (["-m", "experiments.depth", "--config", "configs/depth_reduced.py", "--workdir", "{tmp}/d"], "CIFAR-10"),
  ],
)
def test_command_line_user_errors_end_without_a_traceback(command, message, tmp_path):
  import os
  import subprocess
  import sys
  from pathlib import Path

  root = Path(__file__).resolve().parents[2]
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAXNORM_DATA=str(tmp_path / "no-data"))
  args = [a.format(tmp=tmp_path) for a in command]
  if "experiments.depth" in args:
    args += ["--config.download=False"]
  proc = subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
