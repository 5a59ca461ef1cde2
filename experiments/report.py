r"""Tables and plots for a sweep: test error against images per device.

    python -m experiments.report --workdir DIR

Reads ``DIR/points/*/result.json`` and ``metrics.jsonl`` and writes

* ``summary.csv``: one row per point;
* ``table.md``: the paper's Table 2 layout — a row per normalizer, a column
  per images-per-device, each cell the test error (median of the last
  evaluations; mean ± std over seeds when there are several);
  with the convergence check's table below it when the sweep has one;
* ``error_vs_batch.png``: the paper's Figure 1 layout (log2 x-axis);
* ``curves.png``: training loss and test error per epoch for every point;
* ``error_by_norm.png``: with more than two normalizers, one bar each;
* ``diagnostics/<point>.png``: for points trained with ``diagnostics=True``,
  the plots of :func:`experiments.diagnostics.plot_run`.
"""

from __future__ import annotations

import csv
import json
import os
import textwrap
from collections import defaultdict
from pathlib import Path

import numpy as np

from experiments import cli
from experiments import provenance

# Wu & He (2018), Table 2 / Figure 1: ResNet-50 on ImageNet, 8 GPUs, BN
# statistics per GPU. Top-1 validation error (%) by images per GPU.
PAPER_IMAGENET = {
  "BN": {32: 23.6, 16: 23.7, 8: 24.8, 4: 27.3, 2: 34.7},
  "GN": {32: 24.1, 16: 24.2, 8: 24.0, 4: 24.2, 2: 24.1},
}


def norm_label(config: dict) -> str:
  """'GN (num_groups=8)' from a result's config."""
  kwargs = {k: v for k, v in (config.get("norm_kwargs") or {}).items() if k != "axis_name"}
  name = config["norm"].upper()
  if config.get("sync_batch_stats"):
    name += " synced"
  if not kwargs:
    return name
  return f"{name} ({', '.join(f'{k}={v}' for k, v in sorted(kwargs.items()))})"


def load_points(workdir: Path, subdir: str = "points") -> list[dict]:
  """The finished runs under ``workdir/subdir`` (grid points, or the
  convergence check's runs), each with its history and label."""
  points = []
  for result_path in sorted((workdir / subdir).glob("*/result.json")):
    result = provenance.read_json(result_path)
    metrics_path = result_path.with_name("metrics.jsonl")
    result["history"] = [json.loads(l) for l in metrics_path.read_text().splitlines() if l.strip()]
    result["label"] = result_path.parent.name
    points.append(result)
  if not points and subdir == "points":
    raise FileNotFoundError(f"report: no finished points under {workdir / 'points'}; run the sweep first.")
  return points


def _column(config: dict) -> int:
  """A point's column: the examples per batch-statistics group (the ghost
  batch of the statistics-batch protocol, else the images per device)."""
  return config.get("statistics_batch") or config["per_device_batch"]


def _statistics_protocol(points) -> bool:
  return any(p["config"].get("statistics_batch") for p in points)


def _column_name(points) -> str:
  return "examples per BN statistics batch" if _statistics_protocol(points) else "images per device"


def _column_unit(points) -> str:
  return "per BN batch" if _statistics_protocol(points) else "img/device"


def _cells(points):
  """{row label: {column: [final error per seed]}}"""
  cells = defaultdict(lambda: defaultdict(list))
  for p in points:
    cells[norm_label(p["config"])][_column(p["config"])].append(100 * p["final_test_error"])
  return cells


def _format(errors: list[float]) -> str:
  if len(errors) == 1:
    return f"{errors[0]:.2f}"
  return f"{np.mean(errors):.2f} ± {np.std(errors, ddof=1):.2f}"


def hardware_label(result: dict) -> str:
  """'gpu: NVIDIA H100 80GB HBM3' or 'cpu: AMD EPYC … (2 cores)': where a
  point trained, from its result file (points of one report may come from
  several machines and sessions)."""
  hw = result.get("hardware") or {}
  backend = hw.get("backend", "unknown")
  if backend == "cpu":
    return f"cpu: {hw.get('cpu', 'unknown')} ({hw.get('cpu_cores', '?')} cores)"
  devices = hw.get("devices") or ["unknown"]
  kinds = sorted(set(devices))
  count = f"{len(devices)} × " if len(devices) > 1 else ""
  return f"{backend}: {count}{', '.join(kinds)}"


def _distinct(values) -> str:
  values = sorted(set(values))
  return str(values[0]) if len(values) == 1 else " / ".join(str(v) for v in values)


def write_summary_csv(points, path: Path) -> None:
  fields = [
    "label",
    "norm",
    "norm_kwargs",
    "per_device_batch",
    "statistics_batch",
    "num_devices",
    "seed",
    "epochs",
    "final_test_error",
    "last_test_errors",
    "train_wall_seconds",
    "images_per_sec",
    "hardware",
    "git_commit",
    "dataset_sha256",
  ]
  with path.open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    for p in points:
      c = p["config"]
      later = [m["images_per_sec"] for m in p["history"][1:]] or [p["history"][0]["images_per_sec"]]
      writer.writerow(
        {
          "label": p["label"],
          "norm": c["norm"],
          "norm_kwargs": json.dumps(c["norm_kwargs"]),
          "per_device_batch": c["per_device_batch"],
          "statistics_batch": c.get("statistics_batch", 0),
          "num_devices": c["num_devices"],
          "seed": c["seed"],
          "epochs": p["epochs_completed"],
          "final_test_error": p["final_test_error"],
          "last_test_errors": json.dumps(p["last_test_errors"]),
          "train_wall_seconds": round(p["train_wall_seconds"], 1),
          "images_per_sec": round(float(np.median(later)), 1),
          "hardware": hardware_label(p),
          "git_commit": p["git_commit"],
          "dataset_sha256": p["dataset"]["sha256"],
        }
      )


def markdown_table(points, title: str = "") -> str:
  cells = _cells(points)
  sizes = sorted({s for row in cells.values() for s in row}, reverse=True)
  lines = []
  if title:
    lines += [title, ""]
  lines.append("| test error (%) | " + " | ".join(f"{s} {_column_unit(points)}" for s in sizes) + " |")
  lines.append("|---|" + "---|" * len(sizes))
  for row, by_size in cells.items():
    lines.append(f"| {row} | " + " | ".join(_format(by_size[s]) if s in by_size else "–" for s in sizes) + " |")
  seeds = sorted({p["config"]["seed"] for p in points})
  c = points[0]["config"]
  machines = defaultdict(int)
  for p in points:
    machines[hardware_label(p)] += 1
  lines += [
    "",
    f"ResNet-{_distinct(p['config']['depth'] for p in points)} (width {_distinct(p['config']['width'] for p in points)}), "
    f"{_distinct(p['config']['num_devices'] for p in points)} simulated devices "
    f"× {_distinct(p['config']['per_device_batch'] for p in points)} images, "
    f"{_distinct(p['epochs_completed'] for p in points)} epochs, "
    f"{_distinct(p['train_examples'] for p in points)} training images"
    f"{'' if c.get('augment', True) else ' without augmentation'}, {c['schedule']} LR "
    f"(peak {c['base_lr']}·batch/{c['lr_reference_batch']}), seeds {seeds}. Each cell: median test "
    f"error of the last {c['report_last_evals']} epoch evaluations"
    + ("; mean ± std over seeds." if len(seeds) > 1 else "."),
    "",
    "Trained on: "
    + "; ".join(f"{name} ({n} point{'s' if n > 1 else ''})" for name, n in sorted(machines.items()))
    + ".",
  ]
  if _statistics_protocol(points):
    lines += [
      "",
      f"Statistics-batch protocol: every point trains with the same global batch of "
      f"{c['num_devices'] * c['per_device_batch']} images, learning rate and steps; only the "
      "number of examples over which BN computes its statistics (ghost batches) varies. "
      "Norms without batch statistics do not depend on it: they train once per seed, and "
      "that run fills every column.",
    ]
  lines += [
    "",
    "Wu & He (2018), ImageNet ResNet-50, top-1 error (%) by images per GPU, for comparison:",
    "",
    "| | " + " | ".join(str(s) for s in (32, 16, 8, 4, 2)) + " |",
    "|---|" + "---|" * 5,
  ]
  for name, row in PAPER_IMAGENET.items():
    lines.append(f"| {name} | " + " | ".join(f"{row[s]}" for s in (32, 16, 8, 4, 2)) + " |")
  return "\n".join(lines) + "\n"


def convergence_table(points, longer) -> str:
  """The convergence check: each re-trained point's error at its grid epochs
  and at the longer run's, and the change (the grid point's own seed only)."""
  by_label = {p["label"]: p for p in points}
  lines = [
    "Convergence check: the same point trained once more with more epochs.",
    "",
    "| point | epochs | test error (%) | epochs | test error (%) | change (points) |",
    "|---|---|---|---|---|---|",
  ]
  for run in longer:
    base = by_label[run["label"]]
    short, long_ = 100 * base["final_test_error"], 100 * run["final_test_error"]
    lines.append(
      f"| {run['label']} ({norm_label(run['config'])}) | {base['epochs_completed']} | {short:.2f} | "
      f"{run['epochs_completed']} | {long_:.2f} | {long_ - short:+.2f} |"
    )
  return "\n".join(lines) + "\n"


def plot_error_vs_batch(points, path: Path, title: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  cells = _cells(points)
  fig, ax = plt.subplots(figsize=(6, 4.2))
  for row, by_size in cells.items():
    sizes = sorted(by_size, reverse=True)
    means = [np.mean(by_size[s]) for s in sizes]
    stds = [np.std(by_size[s], ddof=1) if len(by_size[s]) > 1 else 0.0 for s in sizes]
    ax.errorbar(sizes, means, yerr=stds, marker="o", capsize=3, label=row)
  ax.set_xscale("log", base=2)
  ax.invert_xaxis()  # as in the paper: large batches on the left
  all_sizes = sorted({s for row in cells.values() for s in row})
  ax.set_xticks(all_sizes, [str(s) for s in all_sizes])
  ax.set_xlabel(_column_name(points))
  ax.set_ylabel("test error (%)")
  ax.set_title("\n".join(textwrap.wrap(title, 70)), fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_error_by_norm(points, path: Path, title: str) -> None:
  """One bar per normalizer and column (a comparison of many normalizers
  at one statistics batch), best first, with the spread over seeds."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  bars = sorted(
    ((np.mean(errors), np.std(errors, ddof=1) if len(errors) > 1 else 0.0, f"{row}, {size} {_column_unit(points)}")
     for row, by_size in _cells(points).items() for size, errors in by_size.items()),
    reverse=True,
  )  # fmt: skip
  fig, ax = plt.subplots(figsize=(9, 0.55 * len(bars) + 1.4))
  y = np.arange(len(bars))
  ax.barh(y, [b[0] for b in bars], xerr=[b[1] for b in bars], color="tab:blue", alpha=0.8, capsize=3)
  for i, (mean, std, _) in enumerate(bars):
    ax.text(mean + std + 0.5, i, f"{mean:.1f}", va="center", fontsize=8)
  ax.set_yticks(y, ["\n".join(textwrap.wrap(b[2], 40)) for b in bars], fontsize=8)
  ax.set_xlabel("test error (%)")
  ax.set_xlim(0, max(b[0] for b in bars) * 1.12)
  ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=9)
  ax.grid(axis="x", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_curves(points, path: Path, title: str, longer=()) -> None:
  """Training loss and test error per epoch of every trained point; the
  convergence check's longer runs (``longer``) dashed, in red."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = sorted({norm_label(p["config"]) for p in points})
  fig, axes = plt.subplots(len(rows), 2, figsize=(10, 3.2 * len(rows)), squeeze=False)
  cmap = plt.get_cmap("viridis")
  sizes = sorted({_column(p["config"]) for p in points}, reverse=True)
  labels = {p["label"] for p in points}
  for r, row in enumerate(rows):
    for p in sorted(points, key=lambda p: -_column(p["config"])):
      if norm_label(p["config"]) != row or p.get("trained_as") in labels:
        continue  # a copy of another point's run here is drawn once, as that point
      b = _column(p["config"])
      color = cmap(sizes.index(b) / max(len(sizes) - 1, 1))
      label = f"{b} {_column_unit(points)}, seed {p['config']['seed']}"
      if any(q.get("trained_as") == p["label"] for q in points):
        label = f"every column, seed {p['config']['seed']}"  # its training ignores the column
      _plot_history(axes[r], p["history"], color=color, label=label)
    for p in longer:
      if norm_label(p["config"]) != row:
        continue
      label = f"{p['label']}, {p['epochs_completed']} epochs (convergence check)"
      _plot_history(axes[r], p["history"], color="tab:red", linestyle="--", label=label)
    axes[r, 0].set_title("\n".join(textwrap.wrap(f"{row}: training loss", 60)), fontsize=9)
    axes[r, 1].set_title("\n".join(textwrap.wrap(f"{row}: test error (%)", 60)), fontsize=9)
    for ax in axes[r]:
      ax.set_xlabel("epoch")
      ax.grid(alpha=0.3)
    axes[r, 1].legend(fontsize=7)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / len(rows)))
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _plot_history(axes, history, **style) -> None:
  """Training loss every epoch; test error at the epochs that evaluated."""
  axes[0].plot([m["epoch"] for m in history], [m["train_loss"] for m in history], **style)
  tested = [m for m in history if "test_error" in m]
  marker = "." if len(tested) < len(history) else None
  axes[1].plot([m["epoch"] for m in tested], [100 * m["test_error"] for m in tested], marker=marker, **style)


def write_report(workdir: str | os.PathLike) -> str:
  """Writes summary.csv, table.md and the plots; returns the table."""
  workdir = Path(workdir)
  points = load_points(workdir)
  manifest_path = workdir / "sweep.json"
  name = json.loads(manifest_path.read_text())["name"] if manifest_path.exists() else workdir.name
  write_summary_csv(points, workdir / "summary.csv")
  table = markdown_table(points, title=f"### {name}")
  longer = load_points(workdir, "convergence")
  if longer:
    table += "\n" + convergence_table(points, longer)
  (workdir / "table.md").write_text(table)
  plot_error_vs_batch(points, workdir / "error_vs_batch.png", f"{name}: test error vs {_column_name(points)}")
  plot_curves(points, workdir / "curves.png", name, longer)
  if len(_cells(points)) > 2:  # a comparison of normalizers, not BN against GN
    plot_error_by_norm(points, workdir / "error_by_norm.png", f"{name}: test error by normalizer")
  with_diagnostics = [p for p in points if any("diagnostics" in m for m in p["history"])]
  if with_diagnostics:
    from experiments import diagnostics  # local: jax is only needed here

    (workdir / "diagnostics").mkdir(exist_ok=True)
    for p in with_diagnostics:
      diagnostics.plot_run(p["history"], workdir / "diagnostics" / f"{p['label']}.png", f"{name}, {p['label']}")
  return table


def main(argv) -> None:
  del argv
  print(cli.exit_on_user_error(write_report, _WORKDIR.value))


if __name__ == "__main__":
  from absl import app
  from absl import flags

  _WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory.")
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
