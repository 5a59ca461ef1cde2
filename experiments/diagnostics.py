r"""Training diagnostics: what each normalization layer sees, and gradient flow.

    python -m experiments.diagnostics --workdir DIR   # plots DIR/metrics.jsonl

Switched on by ``config.diagnostics`` (see ``experiments/config.py``).
At initialization and after every epoch, :mod:`experiments.train` runs one
*probe* (:class:`Probe`): a forward and backward pass in training mode on
a fixed batch (the first global batch of the training set, unaugmented),
with the same statistics protocol as training (per simulated device, or
synced). The probe records

* for each normalization layer (every layer the model builds from its
  :class:`jaxnorm.NormSpec`; with ``norm="none"`` the identity layers at the
  same places), the per-channel mean and variance of its **input**;
* the gradient norm and parameter norm of every layer with parameters.

Because the probe batch is fixed, the change of a layer's input statistics
between two probes is caused by the parameter updates alone, not by which
examples were drawn: it is the *internal covariate shift* of Ioffe &
Szegedy (2015) in its literal sense. Two numbers measure it per layer:

* ``mean_drift`` = RMS over channels of (μ_c − μ'_c) / σ'_c: how far the
  channel means moved, in units of the earlier channel std;
* ``std_drift`` = RMS over channels of log(σ_c / σ'_c): how much the channel
  scales changed (0.1 ≈ 10 %).

Norm inputs are captured with :func:`flax.linen.intercept_methods` around
``model.apply``; neither the library nor the model changes. The capture is
traced inside the differentiated (and vmapped) function and returned as its
auxiliary output, so it works under ``jit``, ``vmap`` over simulated devices
and ``shard_map``. The probe costs one extra forward and backward pass per
evaluation.

References:
  Ioffe & Szegedy, `Batch Normalization: Accelerating Deep Network Training
  by Reducing Internal Covariate Shift <https://arxiv.org/abs/1502.03167>`_,
  2015. Santurkar et al., `How Does Batch Normalization Help Optimization?
  <https://arxiv.org/abs/1805.11604>`_, 2018.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

import jaxnorm
from experiments import augment as augment_lib
from experiments import cli
from experiments import parallel

DATA_AXIS = parallel.DATA_AXIS
_TINY = 1e-6  # keeps drift finite for channels that are constant


def module_name(module: nn.Module) -> str:
  """'stage1_block1/norm1' for a bound submodule."""
  return "/".join(module.path)


def norm_input_recorder(norm_module: type, captured: dict) -> Callable:
  """An interceptor that stores per-channel moments of each norm layer's input.

  Args:
    norm_module: the module class of the normalization layers
      (``spec.module``), e.g. :class:`jaxnorm.GroupNorm`.
    captured: filled with ``{layer name: (mean, var)}``, each ``(C,)``, over
      every axis of the input but the last (channels, NHWC).

  Returns:
    A function for :func:`flax.linen.intercept_methods`.
  """

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and type(context.module) is norm_module and args:
      x = args[0]
      stats = jaxnorm.moments(x, tuple(range(x.ndim - 1)))
      captured[module_name(context.module)] = (stats.mean, stats.var)
    return next_fun(*args, **kwargs)

  return interceptor


def call_order(model: nn.Module, image_shape=(1, 32, 32, 3)) -> list[str]:
  """Names of the model's submodules in the order they are called (input first)."""
  names = []

  def interceptor(next_fun, args, kwargs, context):
    name = module_name(context.module)
    if context.method_name == "__call__" and name and name not in names:
      names.append(name)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(image_shape), train=False))
  return names


def layer_norms(tree) -> dict[str, jax.Array]:
  """L2 norm of all the arrays of each module: ``{module name: norm}``."""
  squares = collections.defaultdict(list)
  for path, leaf in traverse_util.flatten_dict(tree).items():
    squares["/".join(path[:-1])].append(jnp.sum(jnp.square(leaf.astype(jnp.float32))))
  return {name: jnp.sqrt(sum(parts)) for name, parts in squares.items()}


def norm_input_capture(norm_module: type) -> Callable[[dict], Any]:
  """``capture`` for :func:`experiments.parallel.device_loss`: records the
  moments of every ``norm_module`` layer's input into the dict it is given."""
  return lambda captured: nn.intercept_methods(norm_input_recorder(norm_module, captured))


def loss_grads_and_norm_inputs(model, norm_module, params, batch_stats, images, labels):
  """One device's training-mode loss, gradients and captured norm inputs.

  Returns:
    ``(loss, new_batch_stats, norm_inputs, grads)``; ``norm_inputs`` as in
    :func:`norm_input_recorder`.
  """
  capture = norm_input_capture(norm_module)
  (loss, (new_stats, _, captured)), grads = jax.value_and_grad(
    lambda p: parallel.device_loss(model, p, batch_stats, images, labels, capture), has_aux=True
  )(params)
  return loss, new_stats, captured, grads


def _merge_moments(moments: dict, mean_over: Callable) -> dict:
  """Merges per-device (mean, var) of equal counts into the moments of their union.

  ``mean_over`` averages over the devices and keeps a shape that broadcasts
  against its input (``keepdims``, or a collective such as ``pmean``).
  """
  out = {}
  for name, (mean, var) in moments.items():
    total_mean = mean_over(mean)
    out[name] = (total_mean, mean_over(var + jnp.square(mean - total_mean)))
  return out


def make_probe_step(model, mesh: Mesh, *, simulated: int, norm_module: type) -> Callable:
  """A jitted probe: ``(variables, uint8 images, labels) -> measurements``.

  The global batch is sharded over the mesh's ``'data'`` axis; each physical
  device splits its examples into ``simulated`` devices (vmap) with their own
  statistics, exactly as the training step does. Gradients are averaged
  over devices; the norm-input moments are those of the whole batch.
  """
  capture = norm_input_capture(norm_module)

  def device_probe(variables, images, labels):
    params, stats = variables["params"], variables.get("batch_stats", {})
    grads, _, metrics, captured = parallel.device_gradients(
      model, params, stats, augment_lib.normalize_images(images), labels, simulated=simulated, capture=capture
    )
    if simulated > 1:  # the union of the simulated devices' examples
      merged = _merge_moments(captured, lambda a: jnp.mean(a, axis=0, keepdims=True))
      captured = {name: (mean[0], var[0]) for name, (mean, var) in merged.items()}
    captured = _merge_moments(captured, lambda a: lax.pmean(a, DATA_AXIS))
    return {
      "loss": metrics["loss"],
      "norm_inputs": captured,
      "grad_norms": layer_norms(grads),
      "param_norms": layer_norms(params),
    }

  return jax.jit(
    jax.shard_map(
      device_probe,
      mesh=mesh,
      in_specs=(P(), P(DATA_AXIS), P(DATA_AXIS)),
      out_specs=P(),
      check_vma=False,
    )
  )


def summarize(probe: dict, previous: dict | None, order: list[str]) -> dict:
  """JSON-ready per-layer diagnostics from a probe (host arrays), in call order.

  Args:
    probe: the output of a probe step (or the same structure from
      :func:`loss_grads_and_norm_inputs`), moved to the host.
    previous: the probe before it, for the drift; None at the first.
    order: module names in call order (:func:`call_order`).

  Returns:
    ``{"loss", "norm_layers": {name: {"input_mean", "input_std",
    "mean_drift", "std_drift"}}, "grad_norms": {name: float},
    "param_norms": {name: float}}``; the drifts are None without ``previous``.
  """
  rank = {name: i for i, name in enumerate(order)}
  by_depth = lambda d: sorted(d, key=lambda name: rank.get(name, len(rank)))
  layers = {}
  for name in by_depth(probe["norm_inputs"]):
    mean, var = (np.asarray(a, np.float64) for a in probe["norm_inputs"][name])
    std = np.sqrt(np.maximum(var, 0.0))
    overall_mean = float(np.mean(mean))
    entry = {
      "input_mean": overall_mean,
      "input_std": float(np.sqrt(np.mean(var + np.square(mean - overall_mean)))),
      "mean_drift": None,
      "std_drift": None,
    }
    if previous is not None and name in previous["norm_inputs"]:
      old_mean, old_var = (np.asarray(a, np.float64) for a in previous["norm_inputs"][name])
      old_std = np.sqrt(np.maximum(old_var, 0.0))
      entry["mean_drift"] = float(np.sqrt(np.mean(np.square((mean - old_mean) / (old_std + _TINY)))))
      entry["std_drift"] = float(np.sqrt(np.mean(np.square(np.log((std + _TINY) / (old_std + _TINY))))))
    layers[name] = entry
  as_floats = lambda d: {name: float(d[name]) for name in by_depth(d)}
  return {
    "loss": float(probe["loss"]),
    "norm_layers": layers,
    "grad_norms": as_floats(probe["grad_norms"]),
    "param_norms": as_floats(probe["param_norms"]),
  }


class Probe:
  """The probes of a run: :func:`make_probe_step` on one fixed batch, each
  probe summarized (:func:`summarize`) against the one before it.

  ``batch`` is a host batch (``images``, uint8, and ``labels``); the probe
  splits it into ``simulated`` devices per physical device of ``mesh`` as
  the run's training step does. The first :meth:`measure` (and the first
  after :meth:`reset`, for the next run of the same model) has no drift.
  """

  def __init__(self, model, mesh: Mesh, batch: dict, *, simulated: int, norm_module: type):
    self.step = make_probe_step(model, mesh, simulated=simulated, norm_module=norm_module)
    self.order = call_order(model)
    self.batch = parallel.put_global_batch(batch, mesh)
    self.previous = None

  def reset(self) -> None:
    """Forgets the previous probe: the next run starts."""
    self.previous = None

  def measure(self, state) -> dict:
    """Probes the state (a :class:`experiments.parallel.TrainState`); drifts
    are against the previous call."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    now = jax.device_get(self.step(variables, self.batch["images"], self.batch["labels"]))
    out = summarize(now, self.previous, self.order)
    self.previous = now
    return out


def weight_layers(summary: dict) -> list[str]:
  """Names of the conv/dense layers (not the norm layers), input first."""
  norm = set(summary["norm_layers"])
  return [name for name in summary["grad_norms"] if name not in norm]


def plot_run(history: list[dict], path: str | os.PathLike, title: str = "") -> None:
  """Diagnostics of one training run (``metrics.jsonl`` records) in one figure.

  Panels: input std of each norm layer over epochs; mean and std drift per
  layer over epochs; gradient norm of each weight layer against depth at
  initialization and after each epoch.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  records = [m for m in history if "diagnostics" in m]
  if not records:
    raise ValueError("diagnostics: the metrics have no 'diagnostics' entries; train with --config.diagnostics=True.")
  init = next((m["diagnostics_init"] for m in history if "diagnostics_init" in m), None)
  epochs = [m["epoch"] for m in records]
  names = list(records[-1]["diagnostics"]["norm_layers"])
  cmap = plt.get_cmap("viridis")
  color = lambda i, n: cmap(i / max(n - 1, 1))
  fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
  panels = [
    (axes[0, 0], "input_std", "std of the norm layer's input"),
    (axes[0, 1], "mean_drift", "mean drift since the previous probe (channel stds)"),
    (axes[1, 0], "std_drift", "std drift since the previous probe (RMS log ratio)"),
  ]
  for ax, key, label in panels:
    for i, name in enumerate(names):
      xs, ys = [], []
      if key == "input_std" and init is not None and name in init["norm_layers"]:
        xs, ys = [0], [init["norm_layers"][name][key]]
      for m in records:
        value = m["diagnostics"]["norm_layers"].get(name, {}).get(key)
        if value is not None:
          xs.append(m["epoch"])
          ys.append(value)
      ax.plot(xs, ys, marker=".", color=color(i, len(names)), lw=1)
    ax.set_xlabel("epoch")
    ax.set_title(label, fontsize=9)
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
  ax = axes[1, 1]
  probes = ([("init", init)] if init is not None else []) + [(f"epoch {m['epoch']}", m["diagnostics"]) for m in records]
  for i, (label, summary) in enumerate(probes):
    layers = weight_layers(summary)
    ax.plot(
      range(1, len(layers) + 1),
      [summary["grad_norms"][n] for n in layers],
      marker=".",
      color=plt.get_cmap("plasma")(i / max(len(probes) - 1, 1)),
      label=label,
      lw=1,
    )
  ax.set_yscale("log")
  ax.set_xlabel("weight layer (input → output)")
  ax.set_title("gradient norm per weight layer on the probe batch (0 is off the log scale)", fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(1, len(names)))
  fig.colorbar(sm, ax=axes.ravel().tolist(), label="norm layer (input → output), first three panels", shrink=0.5)
  fig.suptitle(title or f"training diagnostics, epochs {epochs[0]}–{epochs[-1]}", fontsize=10)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_workdir(workdir: str | Path) -> Path:
  """Plots a training run's diagnostics into ``workdir/diagnostics.png``."""
  workdir = Path(workdir)
  metrics = workdir / "metrics.jsonl"
  if not metrics.is_file():
    raise FileNotFoundError(
      f"{metrics} does not exist: give --workdir a training run's directory (where experiments.train, "
      "or a sweep point, wrote metrics.jsonl with config.diagnostics=True)."
    )
  history = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
  out = workdir / "diagnostics.png"
  plot_run(history, out, title=f"{workdir.name}: training diagnostics")
  return out


def main(argv) -> None:
  del argv
  print(cli.exit_on_user_error(plot_workdir, _WORKDIR.value))


if __name__ == "__main__":
  from absl import app
  from absl import flags

  _WORKDIR = flags.DEFINE_string("workdir", None, "A training run directory (with metrics.jsonl).")
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
