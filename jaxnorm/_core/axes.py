"""Axis bookkeeping and argument validation shared by every normalizer.

Every error a user can trigger with a bad layout comes from here, so the
messages are worded once: they name the argument, the value received and
what would be valid.

Each normalizer validates its arguments with one call, before it computes
anything: :func:`check_per_example` (layer and RMS norm),
:func:`check_instance`, :func:`check_grouped` (group norm, EvoNorm-S0),
:func:`check_channels` (FRN, EvoNorm-B0) or :func:`check_batch` (batch
norm, batch renorm). Each returns a :class:`Checked`: the input, its
parameters reshaped to the input's rank, the mask, and the canonical
reduction and feature axes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxnorm._core import reduction_axes as _reduction
from jaxnorm._core.arguments import Axes as Axes
from jaxnorm._core.arguments import canonicalize_axes as canonicalize_axes
from jaxnorm._core.arguments import check_at_least as check_at_least
from jaxnorm._core.arguments import check_axis_name as check_axis_name
from jaxnorm._core.arguments import check_choice as check_choice
from jaxnorm._core.arguments import check_floating as check_floating
from jaxnorm._core.arguments import check_keywords as check_keywords
from jaxnorm._core.arguments import check_mask as check_mask
from jaxnorm._core.arguments import check_non_negative_int as check_non_negative_int
from jaxnorm._core.arguments import check_positive_int as check_positive_int
from jaxnorm._core.arguments import check_virtual_batch as check_virtual_batch
from jaxnorm._core.arguments import resolve_groups as resolve_groups
from jaxnorm._core.arguments import single_axis as single_axis

Array = jax.Array


def check_running_shapes(owner: str, x_shape: tuple[int, ...], feature_shape: tuple[int, ...], axis: Any, **running):
  """Raises ValueError if a running statistic is not feature-shaped."""
  for name, value in running.items():
    if value is not None and jnp.shape(value) != feature_shape:
      raise ValueError(
        f"{owner}: {name} has shape {jnp.shape(value)}; expected the feature "
        f"shape {feature_shape} of axis={axis!r} for an input of shape "
        f"{x_shape}."
      )


def broadcast_param(
  p: Array | None,
  shape: tuple[int, ...],
  feature_axes: tuple[int, ...],
  *,
  name: str,
  owner: str,
) -> Array | None:
  """Reshapes a per-feature parameter to broadcast against ``shape``.

  Accepts the compact shape ``[shape[a] for a in feature_axes]`` (flax's
  parameter shape) or an array of the same rank as ``shape`` that broadcasts.
  """
  if p is None:
    return None
  p = jnp.asarray(p)
  compact = tuple(shape[a] for a in feature_axes)
  full = tuple(shape[a] if a in feature_axes else 1 for a in range(len(shape)))
  if p.shape == compact:
    return p.reshape(full)
  if p.ndim == len(shape) and all(d in (1, s) for d, s in zip(p.shape, shape)):
    return p
  raise ValueError(
    f"{owner}: {name} has shape {p.shape}, but the input of shape {shape} "
    f"has features {compact} on axes {feature_axes}; give {name} the shape "
    f"{compact}."
  )


def per_example_channel_axes(ndim: int, channel_axis: int, owner: str) -> tuple[int, tuple[int, ...]]:
  """(channel axis, spatial axes) of an input whose leading axis is the batch."""
  (c,) = canonicalize_axes(channel_axis, ndim, name="channel_axis", owner=owner)
  if c == 0:
    raise ValueError(
      f"{owner}: channel_axis={channel_axis} is the batch axis 0; "
      f"statistics are per example, so choose the channel axis (e.g. -1 "
      f"for NHWC, 1 for NCHW)."
    )
  return c, _reduction.filter_response_norm_axes(ndim, c)


class GroupLayout(NamedTuple):
  """How the channels of an input split into groups (see :func:`group_layout`).

  The channel axis ``c`` of size ``C`` is split in place into ``(G, C/G)``,
  so any layout works without transposes: ``(N, H, W, C)`` becomes
  ``(N, H, W, G, C/G)`` and ``(N, C, H, W)`` becomes ``(N, G, C/G, H, W)``.
  """

  channel_axis: int
  num_groups: int
  group_size: int
  reduction_axes: tuple[int, ...]  # in the grouped layout

  def split(self, a: Array | None) -> Array | None:
    """Reshapes an array of the input's rank into the grouped layout."""
    if a is None:
      return None
    c, channels = self.channel_axis, self.num_groups * self.group_size
    a = jnp.broadcast_to(a, a.shape[:c] + (channels,) + a.shape[c + 1 :])
    return a.reshape(a.shape[:c] + (self.num_groups, self.group_size) + a.shape[c + 1 :])


def group_layout(
  shape: tuple[int, ...],
  *,
  num_groups: int | None,
  group_size: int | None,
  channel_axis: int,
  reduction_axes: Axes | None,
  owner: str,
) -> GroupLayout:
  """Validates a grouping of the channels of an input of ``shape``.

  ``reduction_axes`` (default: every axis but the leading batch axis) must
  include ``channel_axis``; exactly one of ``num_groups`` and ``group_size``
  is given.
  """
  ndim = len(shape)
  (c,) = canonicalize_axes(channel_axis, ndim, name="channel_axis", owner=owner)
  if reduction_axes is None:
    reduction_axes = _reduction.group_norm_axes(ndim, c)
  else:
    reduction_axes = canonicalize_axes(reduction_axes, ndim, name="reduction_axes", owner=owner)
    if c not in reduction_axes:
      raise ValueError(
        f"{owner}: reduction_axes={reduction_axes} must include the channel "
        f"axis {c} (channel_axis={channel_axis}); groups are reduced over "
        f"their channels."
      )
  groups, size = resolve_groups(shape[c], num_groups, group_size, owner=owner)
  # After the split, axis c holds the group and c + 1 the channel within it:
  # the channel axis maps to c + 1, so groups are reduced over their channels.
  grouped_axes = tuple(a if a < c else a + 1 for a in reduction_axes)
  return GroupLayout(c, groups, size, grouped_axes)


# One call per normalizer: everything it computes with, validated.


class Checked(NamedTuple):
  """A normalizer's arguments after validation.

  Attributes:
    x: the input, a floating-point array.
    params: the per-feature parameters in the order given, each None or
      reshaped to ``x``'s rank (size 1 off the feature axes).
    mask: None or a boolean mask of ``x``'s rank that broadcasts to it.
    reduction_axes: the axes the statistics reduce over, canonical.
    feature_axes: the axes the parameters vary along, canonical.
  """

  x: Array
  params: tuple[Array | None, ...]
  mask: Array | None
  reduction_axes: tuple[int, ...]
  feature_axes: tuple[int, ...]


def _checked(owner, x, params, mask, reduction_axes, feature_axes) -> Checked:
  """Parameters and mask checked against ``x``, in that order."""
  shaped = tuple(broadcast_param(p, x.shape, feature_axes, name=n, owner=owner) for n, p in params.items())
  return Checked(x, shaped, check_mask(mask, x.shape, owner=owner), reduction_axes, feature_axes)


def check_input(x: Any, *, owner: str) -> Array:
  """``x`` as an array; TypeError unless it is floating point."""
  check_floating(x, owner=owner)
  return jnp.asarray(x)


def check_per_example(
  owner: str, x: Any, params: Mapping[str, Any], mask: Any, *, reduction_axes: Axes, feature_axes: Axes
) -> Checked:
  """Layer and RMS norm: statistics over ``reduction_axes`` of each example."""
  x = check_input(x, owner=owner)
  reduced = canonicalize_axes(reduction_axes, x.ndim, name="reduction_axes", owner=owner)
  features = canonicalize_axes(feature_axes, x.ndim, name="feature_axes", owner=owner)
  return _checked(owner, x, params, mask, reduced, features)


def check_instance(
  owner: str, x: Any, params: Mapping[str, Any], mask: Any, *, feature_axes: Axes, batch_axis: int
) -> Checked:
  """Instance norm: per example and feature, over the remaining axes."""
  x = check_input(x, owner=owner)
  features = canonicalize_axes(feature_axes, x.ndim, name="feature_axes", owner=owner)
  (batch,) = canonicalize_axes(batch_axis, x.ndim, name="batch_axis", owner=owner)
  if batch in features:
    raise ValueError(
      f"{owner}: "
      + (
        "The channel axes cannot include the leading dimension as this is assumed to be the batch axis. "
        if batch == 0
        else ""
      )  # flax's sentence for its (leading) batch axis
      + f"feature_axes={features} include the batch axis "
      f"{batch}; statistics are per example, so choose feature axes "
      f"other than batch_axis={batch}."
    )
  reduced = _reduction.instance_norm_axes(x.ndim, batch, features)
  return _checked(owner, x, params, mask, reduced, features)


def check_grouped(
  owner: str,
  x: Any,
  params: Mapping[str, Any],
  mask: Any,
  *,
  channel_axis: int,
  num_groups: int | None,
  group_size: int | None,
  reduction_axes: Axes | None = None,
  per_example: bool = False,
) -> tuple[Checked, GroupLayout]:
  """Group norm and EvoNorm-S0: groups of channels of each example.

  Returns the checked arguments in the *grouped* layout (input, parameters
  and mask split by the layout; the feature axes are the group and the
  channel-within-group axes) and the layout, whose ``split`` did it.
  ``per_example``: the channel axis may not be the leading (batch) axis.
  """
  x = check_input(x, owner=owner)
  if per_example:
    channel_axis, _ = per_example_channel_axes(x.ndim, channel_axis, owner)
  layout = group_layout(
    x.shape,
    num_groups=num_groups,
    group_size=group_size,
    channel_axis=channel_axis,
    reduction_axes=reduction_axes,
    owner=owner,
  )
  c = layout.channel_axis
  plain = _checked(owner, x, params, mask, (), (c,))
  grouped = Checked(
    layout.split(x),
    tuple(layout.split(p) for p in plain.params),
    layout.split(plain.mask),
    layout.reduction_axes,
    (c, c + 1),
  )
  return grouped, layout


def check_channels(
  owner: str, x: Any, params: Mapping[str, Any], mask: Any, *, channel_axis: int, **running: Any
) -> Checked:
  """FRN and EvoNorm-B0: per example and channel, over the spatial axes;
  ``running`` statistics (keyword: value) must have the channel shape."""
  x = check_input(x, owner=owner)
  c, spatial = per_example_channel_axes(x.ndim, channel_axis, owner)
  check_running_shapes(owner, x.shape, (x.shape[c],), channel_axis, **running)
  return _checked(owner, x, params, mask, spatial, (c,))


def check_batch(
  owner: str,
  x: Any,
  params: Mapping[str, Any],
  mask: Any,
  *,
  axis: Axes,
  running: Mapping[str, Any],
  needs_running: str | None = None,
  virtual_batch_size: int | None = None,
) -> Checked:
  """Batch norm and batch renorm: per feature, over every other axis.

  ``running`` maps names to running statistics (feature-shaped, or None);
  ``needs_running``, if given, is the message's reason when one of them is
  None (e.g. "use_running_average=True needs running_mean and running_var").
  The reduction axes are every axis but ``axis``; with
  ``virtual_batch_size`` the batch axis 0 must divide and not be a feature.
  """
  x = check_input(x, owner=owner)
  features = canonicalize_axes(axis, x.ndim, name="axis", owner=owner)
  check_running_shapes(owner, x.shape, tuple(x.shape[a] for a in features), axis, **running)
  shaped = tuple(broadcast_param(p, x.shape, features, name=n, owner=owner) for n, p in params.items())
  if needs_running is not None and any(v is None for v in running.values()):
    raise ValueError(f"{owner}: {needs_running}.")
  check_virtual_batch(x.shape[0], virtual_batch_size, owner=owner)
  if virtual_batch_size is not None and 0 in features:
    raise ValueError(
      f"{owner}: axis={axis!r} includes the batch axis 0, which "
      f"virtual_batch_size={virtual_batch_size} splits into virtual "
      f"batches; choose feature axes other than 0."
    )
  reduced = tuple(a for a in range(x.ndim) if a not in features)
  return Checked(x, shaped, check_mask(mask, x.shape, owner=owner), reduced, features)
