"""The per-example normalizers: layer, RMS, instance and group norm.

Each is a choice of reduction axes plus the engine's standardization
(:func:`jaxnorm._core.dispatch.standardize`):

==============  ==========================================  ===============
function        statistics over                             parameters per
==============  ==========================================  ===============
layer_norm      ``reduction_axes`` (default: last)          ``feature_axes``
instance_norm   every axis but batch and ``feature_axes``   ``feature_axes``
group_norm      groups of channels, per example             ``channel_axis``
rms_norm        ``reduction_axes``, uncentred               ``feature_axes``
==============  ==========================================  ===============

Parameters (``scale``, ``bias``) are plain arguments, so every function
composes with ``jit``, ``vmap``, ``grad`` and sharding.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxnorm._core import axes as _axes
from jaxnorm._core.dispatch import standardize

Array = jax.Array


def _standardize(checked: _axes.Checked, *, use_mean: bool, **engine) -> Array:
  """The engine on validated arguments: ``y`` (the moments are not needed)."""
  x, (scale, bias), mask, reduction_axes, feature_axes = checked
  y, _ = standardize(
    x, scale, bias, reduction_axes=reduction_axes, feature_axes=feature_axes, mask=mask, use_mean=use_mean, **engine
  )
  return y


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
  checked = _axes.check_per_example(
    "layer_norm", x, {"scale": scale, "bias": bias}, mask, reduction_axes=reduction_axes, feature_axes=feature_axes
  )
  return _standardize(
    checked,
    use_mean=True,
    epsilon=epsilon,
    axis_name=axis_name,
    axis_index_groups=axis_index_groups,
    use_fast_variance=use_fast_variance,
    dtype=dtype,
    force_float32_reductions=force_float32_reductions,
  )


def rms_norm(
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
  dtype: Any = None,
  force_float32_reductions: bool = True,
) -> Array:
  r"""Root-mean-square normalization (Zhang & Sennrich, 2019).

  .. math:: y = \gamma\,x/\sqrt{\mathrm{E}[x^2] + \epsilon}

  with the mean square over ``reduction_axes``; no centring. RMS norm has
  no bias; ``bias`` (default None) adds one, as a call-time shift does.

  References:
    Zhang & Sennrich, `Root Mean Square Layer Normalization
    <https://arxiv.org/abs/1910.07467>`_, 2019.
  """
  checked = _axes.check_per_example(
    "rms_norm", x, {"scale": scale, "bias": bias}, mask, reduction_axes=reduction_axes, feature_axes=feature_axes
  )
  return _standardize(
    checked,
    use_mean=False,
    epsilon=epsilon,
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
  checked = _axes.check_instance(
    "instance_norm", x, {"scale": scale, "bias": bias}, mask, feature_axes=feature_axes, batch_axis=batch_axis
  )
  return _standardize(
    checked,
    use_mean=True,
    epsilon=epsilon,
    axis_name=axis_name,
    axis_index_groups=axis_index_groups,
    use_fast_variance=use_fast_variance,
    dtype=dtype,
    force_float32_reductions=force_float32_reductions,
  )


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
  grouped, _ = _axes.check_grouped(
    "group_norm",
    x,
    {"scale": scale, "bias": bias},
    mask,
    channel_axis=channel_axis,
    num_groups=num_groups,
    group_size=group_size,
    reduction_axes=reduction_axes,
  )
  y = _standardize(
    grouped,
    use_mean=True,
    epsilon=epsilon,
    axis_name=axis_name,
    axis_index_groups=axis_index_groups,
    use_fast_variance=use_fast_variance,
    dtype=dtype,
    force_float32_reductions=force_float32_reductions,
  )
  return y.reshape(jnp.shape(x))
