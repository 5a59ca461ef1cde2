"""Which axes each normalizer's statistics reduce over: the one definition.

The normalizers call these functions where they choose their reduction
axes, and ``experiments/axes_figure.py`` calls the same functions to draw
the familiar N × C × (H·W) cubes, so the figure cannot drift from the code.

Each function takes the rank of the array the statistics are computed on
(the *view*; batch norm and group norm reshape their input first) and the
axes that are kept, and returns the reduced axes as a sorted tuple. All
axes must already be canonical (non-negative); validation happens in the
callers, which know the argument names.

=======================  =================================  ==================
normalizer               view of an (N, C, H, W) input      reduced axes
=======================  =================================  ==================
batch (ghost) norm       (G, N/G, C, H, W), G virtual       all but G and C
                         batches (G = 1: plain BN)
layer norm (per example) (N, C, H, W)                       all but N
instance norm, FRN       (N, C, H, W)                       all but N and C
group norm               (N, G, C/G, H, W), before the      all but N (and G)
                         split: all but N, channel included
=======================  =================================  ==================
"""

from __future__ import annotations

from collections.abc import Collection


def batch_norm_axes(grouped_ndim: int, grouped_feature_axes: Collection[int]) -> tuple[int, ...]:
  """Batch norm over each virtual batch of the view ``(G, N/G, ...)``.

  Statistics span the examples of one virtual batch and every axis but the
  features: all axes of the view except the virtual-batch axis 0 and
  ``grouped_feature_axes`` (the feature axes of the input shifted by one).
  With ``G = 1`` this is ordinary batch norm.
  """
  return tuple(a for a in range(1, grouped_ndim) if a not in grouped_feature_axes)


def layer_norm_axes(ndim: int, batch_axis: int = 0) -> tuple[int, ...]:
  """Layer norm of convolutional activations: every axis but the batch axis.

  This is the GN paper's LN (one group over C, H, W); :func:`layer_norm`
  itself takes any ``reduction_axes``, and ``create_norm("ln")`` passes these.
  """
  return tuple(a for a in range(ndim) if a != batch_axis)


def instance_norm_axes(ndim: int, batch_axis: int, feature_axes: Collection[int]) -> tuple[int, ...]:
  """Instance norm: per example and per feature, over the remaining (spatial) axes."""
  return tuple(a for a in range(ndim) if a != batch_axis and a not in feature_axes)


def filter_response_norm_axes(ndim: int, channel_axis: int) -> tuple[int, ...]:
  """FRN's ``ν²``: per example (leading axis) and channel, over the spatial axes.

  The same axes as instance norm; FRN differs in not subtracting a mean.
  """
  return instance_norm_axes(ndim, 0, (channel_axis,))


def group_norm_axes(ndim: int, channel_axis: int) -> tuple[int, ...]:
  """Group norm's default, in the ungrouped layout: every axis but the leading batch axis.

  The channel axis is always reduced; after the channel axis is split into
  ``(groups, channels per group)`` the group axis is kept, so each group of
  each example has its own statistics.
  """
  return tuple(sorted(set(range(1, ndim)) | {channel_axis}))
