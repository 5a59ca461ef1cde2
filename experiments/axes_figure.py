r"""The N × C × (H·W) cubes: which elements share one statistic, per normalizer.

    python -m experiments.axes_figure --out experiments/results/axes_figure/normalization_axes.png

The familiar figure of the Group Normalization paper (Wu & He, 2018, Fig. 2),
generated from the library's own definitions of the reduction axes
(``jaxnorm/_core/reduction_axes.py``, and ``group_layout`` for GN's channel
split), not drawn by hand: each panel takes the view the library computes
its statistics on (``(G, N/G, C, H, W)`` for batch norm, ``(N, G, C/G, H,
W)`` for group norm, the input itself otherwise), asks the library which
axes of that view are reduced, and shades every element that shares a
statistic with the last element (n = N−1, c = C−1, h = H−1, w = W−1),
the corner in front of the viewer. If a definition
changes, the figure changes with it; ``tests/experiments/test_axes_figure.py`` checks
that.

The figure imports the private ``jaxnorm._core.reduction_axes`` and
``jaxnorm._core.axes.group_layout`` on purpose: it documents how the
library computes, which the public API does not expose.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxnorm._core import axes as _axes
from jaxnorm._core import reduction_axes as _reduction_axes

# The example input, NCHW so that the channel axis is not last (the library
# supports any channel axis; the cube is drawn as N × C × H·W).
N, C, H, W = 6, 6, 2, 3
CHANNEL_AXIS = 1
NUM_GROUPS = 3  # GN: 2 channels per group
VIRTUAL_BATCH = 2  # ghost BN: 3 ghost batches of 2 examples


class Panel(NamedTuple):
  title: str
  view_names: tuple[str, ...]  # names of the axes of the view
  reduced: tuple[int, ...]  # axes of the view the statistic reduces over
  mask: np.ndarray  # (N, C, H*W) bool: the elements of the last element's statistic


def shared_statistic(view_shape: tuple[int, ...], reduced: tuple[int, ...]) -> np.ndarray:
  """Elements of a view that share a statistic with its last element.

  Two elements share a statistic when they agree on every axis that is not
  reduced.
  """
  index = np.indices(view_shape)
  kept = [a for a in range(len(view_shape)) if a not in reduced]
  mask = np.ones(view_shape, bool)
  for a in kept:
    mask &= index[a] == view_shape[a] - 1
  return mask


def panels() -> list[Panel]:
  """One panel per normalizer, from the library's reduction-axes definitions."""
  shape = (N, C, H, W)
  cube = lambda mask: mask.reshape(N, C, H * W)
  out = []

  # Batch norm and ghost batch norm: the view (G, N/G, C, H, W), as in
  # jaxnorm.functional.batch_norm; features shift by one behind the virtual-batch axis.
  for title, groups in (("Batch Norm", 1), (f"Ghost BN (virtual batch {VIRTUAL_BATCH})", N // VIRTUAL_BATCH)):
    view = (groups, N // groups, C, H, W)
    reduced = _reduction_axes.batch_norm_axes(len(view), (CHANNEL_AXIS + 1,))
    names = ("ghost batch", "N/G" if groups > 1 else "N", "C", "H", "W")
    out.append(Panel(title, names, reduced, cube(shared_statistic(view, reduced))))

  reduced = _reduction_axes.layer_norm_axes(len(shape))
  out.append(Panel("Layer Norm", ("N", "C", "H", "W"), reduced, cube(shared_statistic(shape, reduced))))

  reduced = _reduction_axes.instance_norm_axes(len(shape), 0, (CHANNEL_AXIS,))
  out.append(Panel("Instance Norm", ("N", "C", "H", "W"), reduced, cube(shared_statistic(shape, reduced))))

  layout = _axes.group_layout(
    shape,
    num_groups=NUM_GROUPS,
    group_size=None,
    channel_axis=CHANNEL_AXIS,
    reduction_axes=None,
    owner="axes_figure",
  )
  view = (N, layout.num_groups, layout.group_size, H, W)
  out.append(
    Panel(
      f"Group Norm ({NUM_GROUPS} groups)",
      ("N", "G", "C/G", "H", "W"),
      layout.reduction_axes,
      cube(shared_statistic(view, layout.reduction_axes)),
    )
  )

  reduced = _reduction_axes.filter_response_norm_axes(len(shape), CHANNEL_AXIS)
  out.append(
    Panel("FRN (uncentred: mean of x²)", ("N", "C", "H", "W"), reduced, cube(shared_statistic(shape, reduced)))
  )
  return out


def panel_view_shape(panel: Panel) -> tuple[int, ...]:
  """The view's shape, from its axis names (for labelling)."""
  sizes = {"N": N, "C": C, "H": H, "W": W, "G": NUM_GROUPS, "C/G": C // NUM_GROUPS}
  if "ghost batch" in panel.view_names:
    groups = N // VIRTUAL_BATCH if panel.view_names[1] == "N/G" else 1
    sizes.update({"ghost batch": groups, "N/G": N // groups})
  return tuple(sizes[n] for n in panel.view_names)


def draw(path: str | os.PathLike) -> None:
  """Writes the figure: one cube per normalizer, shaded = one statistic's elements."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  items = panels()
  fig = plt.figure(figsize=(12, 7.6))
  for i, panel in enumerate(items):
    ax = fig.add_subplot(2, 3, i + 1, projection="3d")
    filled = np.ones((N, C, H * W), bool)
    colors = np.empty(filled.shape, object)
    colors[:] = "#e8eef4"
    colors[panel.mask] = "#2a6fbb"
    # voxels(x=N, y=H·W, z=C): N to the right, H·W into the page, C upwards.
    ax.voxels(
      np.transpose(filled, (0, 2, 1)), facecolors=np.transpose(colors, (0, 2, 1)), edgecolor="#7a8899", linewidth=0.3
    )
    ax.set_box_aspect((N, H * W, C))
    ax.view_init(elev=22, azim=-62)
    ax.set_xlabel("N", labelpad=-8)
    ax.set_ylabel("H·W", labelpad=-8)
    ax.set_zlabel("C", labelpad=-8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_zticks([])
    reduced = ", ".join(panel.view_names[a] for a in panel.reduced)
    view_shape = panel_view_shape(panel)
    kept = ", ".join(n for a, n in enumerate(panel.view_names) if a not in panel.reduced and view_shape[a] > 1)
    ax.set_title(f"{panel.title}\nreduces {reduced}\none statistic per ({kept})", fontsize=9)
  fig.suptitle(
    f"Which elements of an (N={N}, C={C}, H={H}, W={W}) input share one mean/variance "
    f"(shaded: those of one statistic)\ngenerated from jaxnorm/_core/reduction_axes.py",
    fontsize=11,
  )
  fig.tight_layout(rect=(0, 0, 1, 0.93))
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv) -> None:
  del argv
  out = Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  draw(out)
  print(out)


if __name__ == "__main__":
  from absl import app
  from absl import flags

  _OUT = flags.DEFINE_string("out", "experiments/results/axes_figure/normalization_axes.png", "Output PNG.")
  app.run(main)
