r"""Why standardize inputs: gradient descent on features of very different scales.

    python -m experiments.input_scaling --workdir experiments/results/input_scaling_synthetic

A **synthetic** regression problem in the style of "income vs age": two
features, income in dollars (mean 50,000, std 15,000) and age in years (mean
40, std 12), and a target that depends on both about equally once each is
measured in its own standard deviations. The model is linear, ``ŷ = w·x +
b``, the loss is half the mean squared error, and both runs use plain
gradient descent at the largest safe step for their own problem, ``1/λ_max``
of the loss's Hessian (so neither is handicapped by a badly chosen step):

* **raw**: on the features as they are;
* **standardized**: on the features standardized with the library's own
  :func:`jaxnorm.moments` (mean and variance over the examples) and
  :func:`jaxnorm.normalize`, i.e. a batch norm over the whole data set.

The Hessian's condition number κ bounds how fast gradient descent can go:
the error along the flattest direction shrinks by ``1 − 1/κ`` per step at
best. Raw features give κ of order (15,000/12)² and more (the large means
couple the bias to the weights); standardized ones give κ close to 1.

Writes ``input_scaling.png`` (loss curves and loss-landscape contours with
the descent paths) and ``result.json`` (numbers, config, git commit,
hardware, wall time).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxnorm
from experiments import provenance

FEATURES = ("income ($)", "age (years)")
FEATURE_MEANS = (50_000.0, 40.0)
FEATURE_STDS = (15_000.0, 12.0)
# The target in units of each feature's std: y = 1.0·z_income − 0.7·z_age + noise.
TARGET_WEIGHTS_STANDARDIZED = (1.0, -0.7)
NOISE_STD = 0.3


def synthetic_data(num_examples: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(x, y): ``x`` of shape (num_examples, 2) in raw units, ``y`` of shape (num_examples,). Synthetic."""
  if not isinstance(num_examples, int) or num_examples < 3:
    raise ValueError(f"input_scaling: num_examples={num_examples!r}; expected an integer >= 3.")
  rng = np.random.default_rng(seed)
  z = rng.standard_normal((num_examples, 2))
  x = np.asarray(FEATURE_MEANS) + np.asarray(FEATURE_STDS) * z
  y = z @ np.asarray(TARGET_WEIGHTS_STANDARDIZED) + NOISE_STD * rng.standard_normal(num_examples)
  return x.astype(np.float32), y.astype(np.float32)


def standardize(x: jax.Array) -> jax.Array:
  """Each feature to mean 0, variance 1 over the examples, with the library's engine."""
  stats = jaxnorm.moments(x, axes=0, keepdims=True)
  return jaxnorm.normalize(x, stats.mean, stats.var, epsilon=0.0)


def loss_fn(params, x, y):
  """Half the mean squared error of ``x @ w + b``."""
  w, b = params
  return 0.5 * jnp.mean(jnp.square(x @ w + b - y))


def hessian_with_bias(x: np.ndarray) -> np.ndarray:
  """The (constant) Hessian of :func:`loss_fn` in (w, b), computed in float64."""
  design = np.concatenate([np.asarray(x, np.float64), np.ones((len(x), 1))], axis=1)
  return design.T @ design / len(x)


def gradient_descent(x, y, learning_rate: float, steps: int):
  """Plain gradient descent from zero; returns the losses and the (w, b) path."""

  def step(params, _):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    params = jax.tree.map(lambda p, g: p - learning_rate * g, params, grads)
    return params, (loss, params[0])

  params = (jnp.zeros(x.shape[1], x.dtype), jnp.zeros((), x.dtype))
  final, (losses, path) = jax.lax.scan(step, params, None, length=steps)
  losses = jnp.append(losses, loss_fn(final, x, y))
  path = jnp.concatenate([jnp.zeros((1, x.shape[1]), x.dtype), path[1:], final[0][None]])
  return np.asarray(losses), np.asarray(path), final


def run(steps: int = 300, num_examples: int = 1000, seed: int = 0) -> dict:
  """Both runs; returns losses, paths, condition numbers and the best possible loss."""
  if not isinstance(steps, int) or steps < 1:
    raise ValueError(f"input_scaling: steps={steps!r}; expected a positive integer.")
  x_raw, y = synthetic_data(num_examples, seed)
  x_std = np.asarray(standardize(jnp.asarray(x_raw)))
  design = np.concatenate([x_raw.astype(np.float64), np.ones((len(y), 1))], axis=1)
  optimum = np.linalg.lstsq(design, y.astype(np.float64), rcond=None)[0]
  best_loss = 0.5 * float(np.mean(np.square(design @ optimum - y)))
  out = {"best_loss": best_loss, "runs": {}}
  for name, x in (("raw", x_raw), ("standardized", x_std)):
    eigenvalues = np.linalg.eigvalsh(hessian_with_bias(x))
    learning_rate = float(1.0 / eigenvalues[-1])
    losses, path, final = gradient_descent(jnp.asarray(x), jnp.asarray(y), learning_rate, steps)
    out["runs"][name] = {
      "x": x,
      "learning_rate": learning_rate,
      "condition_number": float(eigenvalues[-1] / eigenvalues[0]),
      "losses": losses,
      "path": path,
      "final_bias": float(final[1]),
      "final_excess_loss": float(losses[-1] - best_loss),
    }
  out["y"] = y
  return out


def _contours(ax, x, y, path, title):
  """Loss over (w_income, w_age) in the slice where the bias is at its optimum.

  The descent path (which also moves the bias) is drawn projected onto the
  slice. Each axis spans its own range, so the picture shows correlation
  (tilted, thin valleys), not the ratio of the axes' scales.
  """
  x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
  design = np.concatenate([x64, np.ones((len(y64), 1))], axis=1)
  *w_opt, b_opt = np.linalg.lstsq(design, y64, rcond=None)[0]
  w_opt = np.asarray(w_opt)
  span = np.maximum(np.abs(w_opt), np.abs(path).max(0)) * 1.4
  w0 = np.linspace(-span[0], span[0], 201)
  w1 = np.linspace(-span[1], span[1], 201)
  grid = np.stack(np.meshgrid(w0, w1, indexing="xy"), -1)  # (201, 201, 2)
  loss = 0.5 * np.mean(np.square(grid @ x64.T + b_opt - y64), -1)
  levels = np.unique(np.quantile(loss, np.linspace(0.0, 0.8, 16)[1:]))
  ax.contour(w0, w1, loss, levels=levels, cmap="viridis", linewidths=0.8)
  ax.plot(path[:, 0], path[:, 1], ".-", color="crimson", ms=2, lw=0.8, label="gradient descent (projected)")
  ax.plot(*w_opt, "k*", ms=9, label="optimum")
  ax.set_xlabel(f"w for {FEATURES[0]}")
  ax.set_ylabel(f"w for {FEATURES[1]}")
  ax.set_title(title, fontsize=9)
  ax.ticklabel_format(style="sci", scilimits=(-3, 3))
  ax.legend(fontsize=7, loc="lower right")


def plot(out: dict, path: str | os.PathLike) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  raw, std = out["runs"]["raw"], out["runs"]["standardized"]
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
  ax = axes[0]
  for name, r, color in (("raw features", raw, "crimson"), ("standardized (jaxnorm.moments + normalize)", std, "navy")):
    ax.plot(
      np.maximum(r["losses"] - out["best_loss"], 1e-9),
      color=color,
      label=f"{name}: κ = {r['condition_number']:.2g}, lr = 1/λmax = {r['learning_rate']:.2g}",
    )
  ax.set_yscale("log")
  ax.set_xlabel("gradient-descent step")
  ax.set_ylabel("loss − best possible loss")
  ax.set_title("SYNTHETIC income/age regression: excess loss", fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="center right")
  steps = len(raw["losses"]) - 1
  _contours(axes[1], raw["x"], out["y"], raw["path"], f"raw features: loss contours and {steps} GD steps")
  _contours(axes[2], std["x"], out["y"], std["path"], f"standardized features: loss contours and {steps} GD steps")
  fig.suptitle(
    "Input scaling on synthetic data (income ~ N(50k, 15k²) $, age ~ N(40, 12²) years); "
    "contours: slice at the optimal bias",
    fontsize=10,
  )
  fig.tight_layout(rect=(0, 0, 1, 0.94))
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv) -> None:
  del argv
  start = time.time()
  workdir = Path(_WORKDIR.value)
  workdir.mkdir(parents=True, exist_ok=True)
  config = {"steps": _STEPS.value, "num_examples": 1000, "seed": 0}
  out = run(**config)
  plot(out, workdir / "input_scaling.png")
  summary = {
    "data": "SYNTHETIC: "
    + ", ".join(f"{f} ~ N({m:g}, {s:g}²)" for f, m, s in zip(FEATURES, FEATURE_MEANS, FEATURE_STDS))
    + f"; y = {TARGET_WEIGHTS_STANDARDIZED[0]}·z_income + {TARGET_WEIGHTS_STANDARDIZED[1]}·z_age "
    f"+ N(0, {NOISE_STD}²) noise",
    "config": config,
    "best_loss": out["best_loss"],
    "runs": {
      name: {
        "learning_rate": r["learning_rate"],
        "condition_number": r["condition_number"],
        "loss_at_steps": {str(s): float(r["losses"][s]) for s in (0, 10, 100, len(r["losses"]) - 1)},
        "final_excess_loss": r["final_excess_loss"],
      }
      for name, r in out["runs"].items()
    },
    "git_commit": provenance.git_commit(),
    "hardware": provenance.hardware(),
    "wall_seconds": time.time() - start,
  }
  (workdir / "result.json").write_text(json.dumps(summary, indent=2))
  print(json.dumps(summary["runs"], indent=2))
  print(f"wall time {summary['wall_seconds']:.1f} s")


if __name__ == "__main__":
  from absl import app
  from absl import flags

  _WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
  _STEPS = flags.DEFINE_integer("steps", 300, "Gradient-descent steps per run.")
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
