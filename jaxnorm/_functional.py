"""Pure normalization functions built on :func:`jaxnorm.moments`.

Each normalizer is a choice of reduction axes plus :func:`normalize`:

==============  ==========================================  ===============
function        statistics over                             parameters per
==============  ==========================================  ===============
layer_norm      ``reduction_axes`` (default: last)          ``feature_axes``
instance_norm   every axis but batch and ``feature_axes``   ``feature_axes``
group_norm      groups of channels, per example             ``channel_axis``
rms_norm        ``reduction_axes``, uncentred               ``feature_axes``
==============  ==========================================  ===============

Batch normalization, whose statistics span the batch and which keeps running
averages, lives in :mod:`jaxnorm._batch_norm`. Parameters (``scale``,
``bias``) are plain arguments, so every function composes with ``jit``,
``vmap``, ``grad`` and sharding.
"""

from __future__ import annotations

import math
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm import _axes
from jaxnorm import _dispatch
from jaxnorm import _reduction_axes
from jaxnorm._moments import Moments
from jaxnorm._moments import accumulation_dtype
from jaxnorm._moments import moments

Array = jax.Array


def output_dtype(*arrays: Any, dtype: Any = None):
  """flax's rule: ``dtype`` if given, else the promoted dtype of the inputs."""
  if dtype is not None:
    return jnp.dtype(dtype)
  out = jnp.result_type(*(a for a in arrays if a is not None))
  if not jnp.issubdtype(out, jnp.inexact):
    out = jnp.promote_types(out, jnp.float32)
  return out


def normalize(
  x: Array,
  mean: Array,
  var: Array,
  scale: Array | None = None,
  bias: Array | None = None,
  *,
  epsilon: float,
  dtype: Any = None,
) -> Array:
  r"""Applies given statistics: :math:`y = (x - \mu)\,\gamma / \sqrt{\sigma^2 + \epsilon} + \beta`.

  All of ``mean``, ``var``, ``scale`` and ``bias`` must have the rank of
  ``x`` and broadcast to it. The arithmetic runs in the promoted dtype of
  ``x`` and the statistics (at least float32 for statistics from
  :func:`moments`); the result has ``dtype``, or the promoted dtype of ``x``,
  ``scale`` and ``bias``.
  """
  out = output_dtype(x, scale, bias, dtype=dtype)
  y = x - mean
  mul = lax.rsqrt(var + epsilon)
  if scale is not None:
    mul = mul * scale
  y = y * mul
  if bias is not None:
    y = y + bias
  return jnp.asarray(y, out)


def _param(
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


def moments_and_normalize(
  x: Array,
  scale: Array | None,
  bias: Array | None,
  *,
  reduction_axes: tuple[int, ...],
  feature_axes: tuple[int, ...],
  epsilon: Any,
  mask: Array | None,
  axis_name: Any,
  axis_index_groups: Any,
  use_mean: bool,
  use_fast_variance: bool,
  dtype: Any,
  force_float32_reductions: bool,
) -> tuple[Array, Moments]:
  """Statistics over ``reduction_axes``, then ``normalize``: ``(y, Moments)``.

  :func:`jaxnorm._dispatch.fast_standardize` decides whether the fused path
  or the Pallas kernels compute it; where neither applies, :func:`moments`
  and :func:`normalize` are composed (the reference). ``scale``, ``bias`` and
  ``mask`` have ``x``'s rank; the moments keep the reduced axes with size 1.
  """
  acc = accumulation_dtype(jnp.result_type(x), dtype, force_float32_reductions)
  fast = _dispatch.fast_standardize(
    x,
    scale,
    bias,
    reduction_axes=reduction_axes,
    feature_axes=feature_axes,
    epsilon=epsilon,
    mask=mask,
    axis_name=axis_name,
    use_mean=use_mean,
    use_fast_variance=use_fast_variance,
    acc_dtype=acc,
    out_dtype=output_dtype(x, scale, bias, dtype=dtype),
  )
  if fast is not None:
    y, mean, var = fast
    count = jnp.full(mean.shape, math.prod(x.shape[a] for a in reduction_axes), var.dtype)
    return y, Moments(count, mean, var)
  stats = moments(
    x,
    reduction_axes,
    mask=mask,
    axis_name=axis_name,
    axis_index_groups=axis_index_groups,
    use_mean=use_mean,
    use_fast_variance=use_fast_variance,
    dtype=dtype,
    force_float32_reductions=force_float32_reductions,
    keepdims=True,
  )
  y = normalize(x, stats.mean, stats.var, scale, bias, epsilon=epsilon, dtype=dtype)
  return y, stats


def _standardize(
  x: Array,
  scale: Array | None,
  bias: Array | None,
  *,
  reduction_axes: tuple[int, ...],
  feature_axes: tuple[int, ...],
  owner: str,
  **kwargs,
) -> Array:
  """Shared body of the per-example normalizers: check, then standardize."""
  scale = _param(scale, x.shape, feature_axes, name="scale", owner=owner)
  bias = _param(bias, x.shape, feature_axes, name="bias", owner=owner)
  kwargs["mask"] = _axes.check_mask(kwargs["mask"], x.shape, owner=owner)
  y, _ = moments_and_normalize(x, scale, bias, reduction_axes=reduction_axes, feature_axes=feature_axes, **kwargs)
  return y


def _prepare(x: Array, owner: str) -> Array:
  _axes.check_floating(x, owner=owner)
  return jnp.asarray(x)


def _per_example_norm(x, scale, bias, *, owner, reduction_axes, feature_axes, **kwargs):
  """layer_norm and rms_norm: validate the two axis arguments, standardize."""
  x = _prepare(x, owner)
  return _standardize(
    x,
    scale,
    bias,
    reduction_axes=_axes.canonicalize_axes(reduction_axes, x.ndim, name="reduction_axes", owner=owner),
    feature_axes=_axes.canonicalize_axes(feature_axes, x.ndim, name="feature_axes", owner=owner),
    owner=owner,
    **kwargs,
  )


def layer_norm(
  x: Array,
  scale: Array | None = None,
  bias: Array | None = None,
  *,
  reduction_axes: _axes.Axes = -1,
  feature_axes: _axes.Axes = -1,
  epsilon: float = 1e-6,
  mask: Array | None = None,
  axis_name: Any = None,
  axis_index_groups: Any = None,
  use_fast_variance: bool = False,
  dtype: Any = None,
  force_float32_reductions: bool = True,
) -> Array:
  r"""Layer normalization (Ba et al., 2016).

  .. math:: y = \gamma\,(x - \mu)/\sqrt{\sigma^2 + \epsilon} + \beta

  with statistics over ``reduction_axes`` of each example and ``γ``, ``β``
  of shape ``[x.shape[a] for a in feature_axes]``.

  References:
    Ba, Kiros & Hinton, `Layer Normalization
    <https://arxiv.org/abs/1607.06450>`_, 2016.
  """
  return _per_example_norm(
    x,
    scale,
    bias,
    owner="layer_norm",
    reduction_axes=reduction_axes,
    feature_axes=feature_axes,
    use_mean=True,
    epsilon=epsilon,
    mask=mask,
    axis_name=axis_name,
    axis_index_groups=axis_index_groups,
    use_fast_variance=use_fast_variance,
    dtype=dtype,
    force_float32_reductions=force_float32_reductions,
  )


def rms_norm(
  x: Array,
  scale: Array | None = None,
  *,
  reduction_axes: _axes.Axes = -1,
  feature_axes: _axes.Axes = -1,
  epsilon: float = 1e-6,
  mask: Array | None = None,
  axis_name: Any = None,
  axis_index_groups: Any = None,
  dtype: Any = None,
  force_float32_reductions: bool = True,
) -> Array:
  r"""Root-mean-square normalization (Zhang & Sennrich, 2019).

  .. math:: y = \gamma\,x/\sqrt{\mathrm{E}[x^2] + \epsilon}

  with the mean square over ``reduction_axes``; no centring and no bias.

  References:
    Zhang & Sennrich, `Root Mean Square Layer Normalization
    <https://arxiv.org/abs/1910.07467>`_, 2019.
  """
  return _per_example_norm(
    x,
    scale,
    None,
    owner="rms_norm",
    reduction_axes=reduction_axes,
    feature_axes=feature_axes,
    use_mean=False,
    epsilon=epsilon,
    mask=mask,
    axis_name=axis_name,
    axis_index_groups=axis_index_groups,
    use_fast_variance=False,
    dtype=dtype,
    force_float32_reductions=force_float32_reductions,
  )


def instance_norm(
  x: Array,
  scale: Array | None = None,
  bias: Array | None = None,
  *,
  feature_axes: _axes.Axes = -1,
  batch_axis: int = 0,
  epsilon: float = 1e-6,
  mask: Array | None = None,
  axis_name: Any = None,
  axis_index_groups: Any = None,
  use_fast_variance: bool = False,
  dtype: Any = None,
  force_float32_reductions: bool = True,
) -> Array:
  r"""Instance normalization (Ulyanov et al., 2016).

  .. math:: y_{nc} = \gamma_c\,(x_{nc} - \mu_{nc})/\sqrt{\sigma_{nc}^2 + \epsilon} + \beta_c

  with statistics per example and per feature, over every other axis (the
  spatial ones). ``feature_axes`` may be anywhere (NHWC or NCHW) but must
  not include ``batch_axis``.

  References:
    Ulyanov, Vedaldi & Lempitsky, `Instance Normalization: The Missing
    Ingredient for Fast Stylization <https://arxiv.org/abs/1607.08022>`_, 2016.
  """
  owner = "instance_norm"
  x = _prepare(x, owner)
  feature_axes = _axes.canonicalize_axes(feature_axes, x.ndim, name="feature_axes", owner=owner)
  (batch_axis,) = _axes.canonicalize_axes(batch_axis, x.ndim, name="batch_axis", owner=owner)
  if batch_axis in feature_axes:
    raise ValueError(
      f"{owner}: "
      + (
        "The channel axes cannot include the leading dimension as this is assumed to be the batch axis. "
        if batch_axis == 0
        else ""
      )  # flax's sentence for its (leading) batch axis
      + f"feature_axes={feature_axes} include the batch axis "
      f"{batch_axis}; statistics are per example, so choose feature axes "
      f"other than batch_axis={batch_axis}."
    )
  reduction_axes = _reduction_axes.instance_norm_axes(x.ndim, batch_axis, feature_axes)
  return _standardize(
    x,
    scale,
    bias,
    reduction_axes=reduction_axes,
    feature_axes=feature_axes,
    owner=owner,
    epsilon=epsilon,
    mask=mask,
    axis_name=axis_name,
    axis_index_groups=axis_index_groups,
    use_mean=True,
    use_fast_variance=use_fast_variance,
    dtype=dtype,
    force_float32_reductions=force_float32_reductions,
  )


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
  reduction_axes: _axes.Axes | None,
  owner: str,
) -> GroupLayout:
  """Validates a grouping of the channels of an input of ``shape``.

  ``reduction_axes`` (default: every axis but the leading batch axis) must
  include ``channel_axis``; exactly one of ``num_groups`` and ``group_size``
  is given.
  """
  ndim = len(shape)
  (c,) = _axes.canonicalize_axes(channel_axis, ndim, name="channel_axis", owner=owner)
  if reduction_axes is None:
    reduction_axes = _reduction_axes.group_norm_axes(ndim, c)
  else:
    reduction_axes = _axes.canonicalize_axes(reduction_axes, ndim, name="reduction_axes", owner=owner)
    if c not in reduction_axes:
      raise ValueError(
        f"{owner}: reduction_axes={reduction_axes} must include the channel "
        f"axis {c} (channel_axis={channel_axis}); groups are reduced over "
        f"their channels."
      )
  groups, size = _axes.resolve_groups(shape[c], num_groups, group_size, owner=owner)
  # After the split, axis c holds the group and c + 1 the channel within it:
  # the channel axis maps to c + 1, so groups are reduced over their channels.
  grouped_axes = tuple(a if a < c else a + 1 for a in reduction_axes)
  return GroupLayout(c, groups, size, grouped_axes)


def group_norm(
  x: Array,
  scale: Array | None = None,
  bias: Array | None = None,
  *,
  num_groups: int | None = 32,
  group_size: int | None = None,
  channel_axis: int = -1,
  reduction_axes: _axes.Axes | None = None,
  epsilon: float = 1e-6,
  mask: Array | None = None,
  axis_name: Any = None,
  axis_index_groups: Any = None,
  use_fast_variance: bool = False,
  dtype: Any = None,
  force_float32_reductions: bool = True,
) -> Array:
  r"""Group normalization (Wu & He, 2018).

  The ``C`` channels on ``channel_axis`` are split into ``G`` groups of
  ``C/G`` consecutive channels; each group of each example is standardized
  over its channels and the other ``reduction_axes``:

  .. math:: y = \gamma_c\,(x - \mu_{n,g})/\sqrt{\sigma_{n,g}^2 + \epsilon} + \beta_c

  ``G = 1`` is layer normalization over ``(C, H, W)``; ``G = C`` is instance
  normalization.

  Args:
    x: input, e.g. ``(N, H, W, C)`` with ``channel_axis=-1`` or
      ``(N, C, H, W)`` with ``channel_axis=1``.
    scale, bias: optional ``γ``, ``β`` of shape ``(C,)``.
    num_groups: number of groups ``G`` (pass ``None`` to use ``group_size``).
    group_size: channels per group, ``C/G``.
    channel_axis: the axis holding the channels.
    reduction_axes: axes to compute statistics over; must include
      ``channel_axis``. Default: every axis but the leading (batch) axis.
    epsilon, mask, axis_name, axis_index_groups, use_fast_variance, dtype, force_float32_reductions: as in :func:`layer_norm`.

  Returns:
    The normalized array, shaped like ``x``.

  References:
    Wu & He, `Group Normalization <https://arxiv.org/abs/1803.08494>`_, 2018.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (2, 6, 4, 4))  # NCHW
    >>> group_norm(x, num_groups=3, channel_axis=1).shape
    (2, 6, 4, 4)
  """
  owner = "group_norm"
  x = _prepare(x, owner)
  layout = group_layout(
    x.shape,
    num_groups=num_groups,
    group_size=group_size,
    channel_axis=channel_axis,
    reduction_axes=reduction_axes,
    owner=owner,
  )
  c = layout.channel_axis
  scale = _param(scale, x.shape, (c,), name="scale", owner=owner)
  bias = _param(bias, x.shape, (c,), name="bias", owner=owner)
  mask = _axes.check_mask(mask, x.shape, owner=owner)
  y = _standardize(
    layout.split(x),
    layout.split(scale),
    layout.split(bias),
    reduction_axes=layout.reduction_axes,
    feature_axes=(c, c + 1),
    owner=owner,
    epsilon=epsilon,
    mask=layout.split(mask),
    axis_name=axis_name,
    axis_index_groups=axis_index_groups,
    use_mean=True,
    use_fast_variance=use_fast_variance,
    dtype=dtype,
    force_float32_reductions=force_float32_reductions,
  )
  return y.reshape(x.shape)
