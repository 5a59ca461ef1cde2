r"""Depth experiment: gradient flow and trainability with and without normalization.

    python -m experiments.depth --config configs/depth_reduced.py \
        --workdir experiments/results/depth_reduced [--config.key=value ...]

For every architecture (plain CNNs without shortcuts and ResNets, see
:func:`experiments.models.cifar_plain_net`), every normalizer and every
learning rate of a small grid, trains ``steps`` SGD steps (momentum, constant
learning rate, no warm-up, no weight decay, no augmentation in the reduced
config) on a subset of the CIFAR-10 training set and records the training
loss of every step. The run at ``reference_lr`` also probes a fixed training
batch at ``probe_steps`` (:class:`experiments.diagnostics.Probe`): per-layer
gradient norms and the statistics and drift of every normalization layer's
input.

The runs train through training's engine (:class:`experiments.engine.Engine`,
on one physical device), and the keys they share with a training config
mean what they mean there (``experiments/config.py``): the global batch is
``num_devices × per_device_batch``, and ``sync_batch_stats``, ``augment``,
``execution`` (a per-step mode: the runs stop and probe mid-epoch), ``seed``,
``train_examples``, ``width`` and ``momentum`` are training's.

Each run is saved to ``WORKDIR/runs/<arch>_<norm>_lr<lr>.json`` as soon as
it ends, and a rerun skips finished runs. At the end, ``results.json``
(every run, config, git commit, hardware, dataset fingerprint, wall times),
``table.md`` and the plots are written:

* ``grad_norm_vs_depth.png``: gradient norm of each weight layer against its
  depth, at initialization and after training, per architecture;
* ``loss_vs_steps.png``: training loss against steps at ``reference_lr``;
* ``loss_vs_lr.png``: final training loss against the learning rate, with
  the threshold that defines "trains";
* ``covariate_shift.png``: the mean drift of the norm inputs between probes
  next to the training loss, at ``reference_lr``.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

import jaxnorm
from experiments import cli
from experiments import config as config_lib
from experiments import data as data_lib
from experiments import diagnostics
from experiments import engine as engine_lib
from experiments import parallel
from experiments import provenance
from experiments import xla_cpu
from experiments.models import CifarResNet
from experiments.models import cifar_plain_net
from experiments.models import resnet_blocks_per_stage

ARCH_KINDS = ("plain", "resnet")
DIVERGED_LOSS = 1e3  # a run stops once its loss is above this (or not finite)


def parse_arch(arch: str) -> tuple[str, int]:
  """'plain56' -> ('plain', 56)."""
  for kind in ARCH_KINDS:
    if arch.startswith(kind) and arch[len(kind) :].isdigit():
      depth = int(arch[len(kind) :])
      resnet_blocks_per_stage(depth)  # raises unless depth = 6n + 2
      return kind, depth
  raise ValueError(
    f"depth: arch={arch!r}; expected 'plain' or 'resnet' followed by a depth 6n+2, e.g. 'plain20' or 'resnet56'."
  )


def build_model(arch: str, norm: str, config) -> CifarResNet:
  kind, depth = parse_arch(arch)
  kwargs = dict(config.norm_kwargs.get(norm, {}))
  fields = dict(width=config.width, norm=norm, norm_kwargs=kwargs)
  if kind == "plain":
    return cifar_plain_net(depth, **fields)
  return CifarResNet(depth=depth, zero_init_last=config.resnet_zero_init_last, **fields)


def validate(config) -> None:
  """Raises ValueError for a bad depth-experiment config, before any compute."""
  for arch in config.archs:
    parse_arch(arch)
  for norm in config.norms:
    jaxnorm.create_norm(norm, **dict(config.norm_kwargs.get(norm, {})))
  if config.reference_lr not in config.learning_rates:
    raise ValueError(
      f"depth: reference_lr={config.reference_lr} is not in learning_rates="
      f"{tuple(config.learning_rates)}; add it to the grid."
    )
  config_lib.validate_execution(config, 1)
  if engine_lib.execution_mode(config, 1) == "scan":
    raise ValueError(
      "depth: execution='scan' (what 'auto' chooses on GPU and TPU) trains whole epochs, and the depth "
      "experiment stops and probes its runs mid-epoch; set execution='vmap' or 'microbatch'."
    )
  batch = config_lib.global_batch(config)
  if config.train_examples < batch:
    raise ValueError(
      f"depth: train_examples={config.train_examples} is smaller than one global batch "
      f"({batch} = num_devices × per_device_batch)."
    )
  bad = [s for s in config.probe_steps if not 0 <= s <= config.steps]
  if bad:
    raise ValueError(f"depth: probe_steps {bad} are outside 0..steps={config.steps}.")


def _recorded_config(path: Path):
  """The config a finished run's file records; None if the file does not
  parse (with a warning: that run trains again)."""
  run = provenance.read_json_or_redo(path, "Training the run again.")
  return None if run is None else run.get("config")


def run_name(arch: str, norm: str, lr: float) -> str:
  return f"{arch}_{norm}_lr{lr:g}"


class _Compiled:
  """The engine and the probe of one (architecture, normalizer), compiled
  once for the grid of learning rates: training's engine
  (:class:`experiments.engine.Engine`, on one physical device) and the
  diagnostics probe (:class:`experiments.diagnostics.Probe`) on the first
  global batch of the training images."""

  def __init__(self, arch, norm, config, images, labels):
    self.model = build_model(arch, norm, config)
    spec = jaxnorm.create_norm(norm, **dict(config.norm_kwargs.get(norm, {})))
    mesh = parallel.make_mesh(jax.devices()[:1])
    # The learning rate is state, so one compiled step serves the grid.
    self.tx = optax.inject_hyperparams(optax.sgd)(learning_rate=1.0, momentum=config.momentum)
    self.engine = engine_lib.Engine(self.model, self.tx, mesh, config, images, labels)
    n = self.engine.batch
    self.probe = diagnostics.Probe(
      self.model,
      mesh,
      {"images": images[:n], "labels": labels[:n]},
      simulated=self.engine.simulated,
      norm_module=spec.module,
    )


def train_one(compiled: _Compiled, lr: float, config, probe: bool, bar) -> dict:
  """Trains one run; returns its losses and, when ``probe``, its probes."""
  state = parallel.init_state(compiled.model, compiled.tx, jax.random.key(config.seed))
  state.opt_state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
  root_key = compiled.engine.root_key()
  compiled.probe.reset()
  losses, probes = [], {}
  start = time.time()

  def measure(step):
    if probe and step in config.probe_steps:
      probes[str(step)] = compiled.probe.measure(state)

  if config.steps:
    measure(0)
  epoch, diverged = 0, False
  while len(losses) < config.steps and not diverged:
    for stepped, metrics in compiled.engine.train_steps(state, root_key, epoch):
      state = stepped
      loss = float(metrics["loss"])
      losses.append(loss)
      bar.update(1)
      diverged = not math.isfinite(loss) or loss > DIVERGED_LOSS
      if diverged or len(losses) == config.steps:
        break
      measure(len(losses))  # before the next step
    epoch += 1
  if not diverged:
    measure(config.steps)
  bar.update(config.steps - len(losses))  # the steps a diverged run skips
  tail = losses[-config.trains_window :]
  final = float(np.mean(tail)) if not diverged else float("inf")
  return {
    "losses": [l if math.isfinite(l) else None for l in losses],
    "diverged": diverged,
    "final_loss": final if math.isfinite(final) else None,
    "trains": (not diverged) and final < config.trains_threshold,
    "probes": probes,
    "wall_seconds": time.time() - start,
  }


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
  """Runs (or resumes) every (architecture, normalizer, learning rate); writes the report."""
  start = time.time()
  validate(config)
  workdir = Path(workdir)
  (workdir / "runs").mkdir(parents=True, exist_ok=True)
  dataset = data_lib.load_cifar10(config.data_dir or None, download=config.download)
  data_dir = Path(config.data_dir or data_lib.default_data_dir()).expanduser()
  images = dataset.train_images[: config.train_examples]
  labels = dataset.train_labels[: config.train_examples]
  config_json = json.loads(json.dumps(config.to_dict(), default=str))

  todo = []
  for arch in config.archs:
    for norm in config.norms:
      for lr in config.learning_rates:
        path = workdir / "runs" / f"{run_name(arch, norm, lr)}.json"
        done = path.exists() and _recorded_config(path) == config_json
        if not done:
          todo.append((arch, norm, lr, path))
  bar = tqdm(total=len(todo) * config.steps, desc="depth experiment", unit="step", disable=not config.progress)
  compiled = {}
  for arch, norm, lr, path in todo:
    bar.set_postfix_str(run_name(arch, norm, lr))
    if (arch, norm) not in compiled:
      compiled.clear()  # one architecture at a time in memory
      compiled[(arch, norm)] = _Compiled(arch, norm, config, images, labels)
    out = train_one(compiled[(arch, norm)], lr, config, lr == config.reference_lr, bar)
    out.update(arch=arch, norm=norm, lr=lr, config=config_json, git_commit=provenance.git_commit())
    provenance.write_json_atomic(path, out, indent=None)
  bar.close()

  runs = [provenance.read_json(p) for p in sorted((workdir / "runs").glob("*.json"))]
  runs = [r for r in runs if r.get("config") == config_json]
  result = {
    "name": config.name,
    "config": config_json,
    "git_commit": provenance.git_commit(),
    "hardware": provenance.hardware(),
    "dataset": provenance.dataset_fingerprint(data_dir / data_lib.BATCHES_DIR),
    "run_wall_seconds_total": sum(r["wall_seconds"] for r in runs),
    "this_invocation_seconds": time.time() - start,
    "max_trainable_lr": max_trainable_lr(runs),
    "runs": runs,
  }
  provenance.write_json_atomic(workdir / "results.json", result, indent=None)
  write_report(result, workdir)
  return result


def max_trainable_lr(runs: list[dict]) -> dict:
  """``{arch: {norm: largest learning rate whose run trains, or None}}``."""
  out = {}
  for r in runs:
    best = out.setdefault(r["arch"], {}).setdefault(r["norm"], None)
    if r["trains"] and (best is None or r["lr"] > best):
      out[r["arch"]][r["norm"]] = r["lr"]
  return out


def _smooth(values, window: int = 10):
  v = np.asarray([np.nan if x is None else x for x in values], np.float64)
  if len(v) < window:
    return v
  kernel = np.ones(window) / window
  return np.concatenate([np.full(window - 1, np.nan), np.convolve(v, kernel, mode="valid")])


def _loss_cell(run: dict | None) -> str:
  """A table cell: the run's final loss, 'diverged', or '–' if not run."""
  if run is None:
    return "–"
  return "diverged" if run["diverged"] else f"{run['final_loss']:.3f}"


def write_report(result: dict, workdir: Path) -> None:
  """table.md and the four plots."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  config, runs = result["config"], result["runs"]
  archs, norms = config["archs"], config["norms"]
  ref = config["reference_lr"]
  colors = {n: plt.get_cmap("tab10")(i) for i, n in enumerate(norms)}
  by_key = {(r["arch"], r["norm"], r["lr"]): r for r in runs}
  reduced = (
    f"reduced: width {config['width']}, {config['steps']} steps of batch "
    f"{config['num_devices'] * config['per_device_batch']}, "
    f"first {config['train_examples']} CIFAR-10 training images"
  )

  # Table: largest trainable learning rate and final loss at the reference LR.
  lines = [
    f"### {result['name']}",
    "",
    f"Largest learning rate of {list(config['learning_rates'])} whose run trains "
    f"(mean training loss of the last {config['trains_window']} steps < {config['trains_threshold']}; "
    f"chance is ln 10 = 2.30):",
    "",
    "| arch | " + " | ".join(norms) + " |",
    "|---|" + "---|" * len(norms),
  ]
  for arch in archs:
    cells = [result["max_trainable_lr"].get(arch, {}).get(n) for n in norms]
    lines.append(f"| {arch} | " + " | ".join("–" if c is None else f"{c:g}" for c in cells) + " |")
  lines += [
    "",
    f"Final training loss (mean of the last {config['trains_window']} steps) at lr = {ref:g}:",
    "",
    "| arch | " + " | ".join(norms) + " |",
    "|---|" + "---|" * len(norms),
  ]
  for arch in archs:
    cells = []
    for n in norms:
      r = by_key.get((arch, n, ref))
      cells.append(_loss_cell(r))
    lines.append(f"| {arch} | " + " | ".join(cells) + " |")
  lrs = list(config["learning_rates"])
  lines += [
    "",
    f"Every run: final training loss (mean of the last {config['trains_window']} steps) by learning rate:",
    "",
    "| arch | norm | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
    "|---|---|" + "---|" * len(lrs),
  ]
  for arch in archs:
    for n in norms:
      cells = []
      for lr in lrs:
        r = by_key.get((arch, n, lr))
        cells.append(_loss_cell(r))
      lines.append(f"| {arch} | {n} | " + " | ".join(cells) + " |")
  (workdir / "table.md").write_text("\n".join(lines) + "\n")

  def panels(title, height=3.4):
    fig, axes = plt.subplots(1, len(archs), figsize=(3.6 * len(archs), height), squeeze=False)
    fig.suptitle(f"{title}\n({reduced})", fontsize=9)
    return fig, axes[0]

  def finish(fig, name):
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.savefig(workdir / name, dpi=110)
    plt.close(fig)

  # Gradient norm against depth, at init and at the last probe.
  fig, axes = panels(
    f"gradient norm per weight layer on a fixed batch: at init (solid), after training at lr = {ref:g} (dashed)"
  )
  for ax, arch in zip(axes, archs):
    for n in norms:
      r = by_key.get((arch, n, ref))
      if not r or not r["probes"]:
        continue
      steps = sorted(r["probes"], key=int)
      for step, style in ((steps[0], "-"), (steps[-1], "--")):
        summary = r["probes"][step]
        layers = diagnostics.weight_layers(summary)
        ax.plot(
          range(1, len(layers) + 1),
          [summary["grad_norms"][l] for l in layers],
          style,
          color=colors[n],
          label=f"{n}, step {step}",
          lw=1.2,
        )
    ax.set_yscale("log")
    ax.set_title(arch, fontsize=9)
    ax.set_xlabel("weight layer (input → output)")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("‖∂loss/∂W‖")
  handles, labels = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, fontsize=7, ncol=len(norms), loc="lower center")
  fig.tight_layout(rect=(0, 0.1, 1, 0.9))
  fig.savefig(workdir / "grad_norm_vs_depth.png", dpi=110)
  plt.close(fig)

  # Training loss against steps at the reference learning rate.
  fig, axes = panels(f"training loss (10-step moving average) at lr = {ref:g}")
  for ax, arch in zip(axes, archs):
    for n in norms:
      r = by_key.get((arch, n, ref))
      if r:
        ax.plot(_smooth(r["losses"]), color=colors[n], label=n + (" (diverged)" if r["diverged"] else ""), lw=1.2)
    ax.axhline(math.log(10), color="gray", ls=":", lw=1)
    ax.set_ylim(0, 3.5)
    ax.set_title(arch, fontsize=9)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  axes[0].set_ylabel("training loss")
  finish(fig, "loss_vs_steps.png")

  # Final loss against the learning rate.
  fig, axes = panels("final training loss against learning rate (× = diverged)")
  lrs = list(config["learning_rates"])
  for ax, arch in zip(axes, archs):
    for n in norms:
      pts = [(lr, by_key.get((arch, n, lr))) for lr in lrs]
      xs = [lr for lr, r in pts if r and not r["diverged"]]
      ys = [r["final_loss"] for lr, r in pts if r and not r["diverged"]]
      ax.plot(xs, ys, marker="o", color=colors[n], label=n, lw=1.2)
      bad = [lr for lr, r in pts if r and r["diverged"]]
      ax.plot(bad, [3.3] * len(bad), "x", color=colors[n], ms=8)
    ax.axhline(config["trains_threshold"], color="gray", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_ylim(0, 3.5)
    ax.set_title(arch, fontsize=9)
    ax.set_xlabel("learning rate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  axes[0].set_ylabel(f"mean loss, last {config['trains_window']} steps")
  finish(fig, "loss_vs_lr.png")

  # Covariate shift (mean drift of norm inputs between probes) at the reference LR.
  fig, axes = plt.subplots(2, len(archs), figsize=(3.6 * len(archs), 6.2), squeeze=False)
  fig.suptitle(
    f"covariate shift at lr = {ref:g}: drift of the norm layers' inputs on a fixed batch\n"
    f"since the previous probe, median over layers ({reduced})",
    fontsize=9,
  )
  for col, arch in enumerate(archs):
    for n in norms:
      r = by_key.get((arch, n, ref))
      if not r or not r["probes"]:
        continue
      steps = sorted(r["probes"], key=int)[1:]
      for row, key in enumerate(("mean_drift", "std_drift")):
        ys = [np.median([v[key] for v in r["probes"][s]["norm_layers"].values()]) for s in steps]
        axes[row, col].plot([int(s) for s in steps], ys, marker=".", color=colors[n], label=n)
    axes[0, col].set_title(arch, fontsize=9)
    for row, label in enumerate(("mean drift (channel stds)", "std drift (RMS log ratio)")):
      axes[row, col].set_yscale("log")
      axes[row, col].grid(alpha=0.3)
      axes[row, col].set_xlabel("step (drift since the previous probe)")
      axes[row, 0].set_ylabel(label)
  axes[0, -1].legend(fontsize=7)
  finish(fig, "covariate_shift.png")


def main(argv) -> None:
  xla_cpu.configure()
  provenance.git_commit()  # cached: the code this process imports, even if the tree changes later
  del argv
  result = cli.exit_on_user_error(run, _CONFIG.value, _WORKDIR.value)
  print((Path(_WORKDIR.value) / "table.md").read_text())
  print(f"total run wall time {result['run_wall_seconds_total']:.0f} s")


if __name__ == "__main__":
  from absl import app
  from absl import flags
  from ml_collections import config_flags

  _CONFIG = config_flags.DEFINE_config_file("config", None, "Depth experiment config.", lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
