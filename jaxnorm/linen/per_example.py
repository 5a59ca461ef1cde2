"""The per-example normalizers for flax.linen: LayerNorm, RMSNorm,
InstanceNorm and GroupNorm, drop-ins for flax's."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.nn import initializers

from jaxnorm._core import axes as _axes
from jaxnorm.functional import per_example as F
from jaxnorm.linen._params import feature_params

Array = jax.Array
Initializer = Any


class _PerExampleNorm(nn.Module):
  """Shared call plumbing of LayerNorm, InstanceNorm, GroupNorm and RMSNorm.

  It declares no fields: each subclass lists its own in flax's order, so that
  positional construction matches flax too.
  """

  def _engine_kwargs(self, mask):
    return dict(
      epsilon=self.epsilon,
      mask=mask,
      axis_name=self.axis_name,
      axis_index_groups=self.axis_index_groups,
      dtype=self.dtype,
      force_float32_reductions=self.force_float32_reductions,
    )


class LayerNorm(_PerExampleNorm):
  r"""Layer normalization, a drop-in for ``flax.linen.LayerNorm``.

  :math:`y = \gamma (x - \mu)/\sqrt{\sigma^2 + \epsilon} + \beta` with
  statistics over ``reduction_axes`` and parameters over ``feature_axes``.

  References:
    Ba, Kiros & Hinton, `Layer Normalization
    <https://arxiv.org/abs/1607.06450>`_, 2016.
  """

  epsilon: float = 1e-6
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Initializer = initializers.zeros
  scale_init: Initializer = initializers.ones
  reduction_axes: _axes.Axes = -1
  feature_axes: _axes.Axes = -1
  axis_name: Any = None
  axis_index_groups: Any = None
  use_fast_variance: bool = False
  force_float32_reductions: bool = True

  @nn.compact
  def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
    feature_axes = _axes.canonicalize_axes(self.feature_axes, jnp.ndim(x), name="feature_axes", owner="LayerNorm")
    features = tuple(jnp.shape(x)[a] for a in feature_axes)
    scale, bias = feature_params(self, features, use_scale=self.use_scale, use_bias=self.use_bias)
    return F.layer_norm(
      x,
      scale,
      bias,
      reduction_axes=self.reduction_axes,
      feature_axes=feature_axes,
      use_fast_variance=self.use_fast_variance,
      **self._engine_kwargs(mask),
    )


class RMSNorm(_PerExampleNorm):
  r"""RMS normalization, a drop-in for ``flax.linen.RMSNorm``.

  :math:`y = \gamma\,x/\sqrt{\mathrm{E}[x^2] + \epsilon}` over
  ``reduction_axes``. ``use_fast_variance`` is accepted for compatibility and
  has no effect (there is no mean to subtract).

  References:
    Zhang & Sennrich, `Root Mean Square Layer Normalization
    <https://arxiv.org/abs/1910.07467>`_, 2019.
  """

  epsilon: float = 1e-6
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_scale: bool = True
  scale_init: Initializer = initializers.ones
  reduction_axes: _axes.Axes = -1
  feature_axes: _axes.Axes = -1
  axis_name: Any = None
  axis_index_groups: Any = None
  use_fast_variance: bool = False
  force_float32_reductions: bool = True

  @nn.compact
  def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
    feature_axes = _axes.canonicalize_axes(self.feature_axes, jnp.ndim(x), name="feature_axes", owner="RMSNorm")
    features = tuple(jnp.shape(x)[a] for a in feature_axes)
    scale, _ = feature_params(self, features, use_scale=self.use_scale, use_bias=False)
    return F.rms_norm(
      x,
      scale,
      reduction_axes=self.reduction_axes,
      feature_axes=feature_axes,
      **self._engine_kwargs(mask),
    )


class InstanceNorm(_PerExampleNorm):
  r"""Instance normalization, a drop-in for ``flax.linen.InstanceNorm``.

  Statistics per example (leading axis) and per feature, over all other
  axes. ``feature_axes`` may be any non-leading axes (NHWC or NCHW).

  References:
    Ulyanov, Vedaldi & Lempitsky, `Instance Normalization
    <https://arxiv.org/abs/1607.08022>`_, 2016.
  """

  epsilon: float = 1e-6
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Initializer = initializers.zeros
  scale_init: Initializer = initializers.ones
  feature_axes: _axes.Axes = -1
  axis_name: Any = None
  axis_index_groups: Any = None
  use_fast_variance: bool = False
  force_float32_reductions: bool = True

  @nn.compact
  def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
    feature_axes = _axes.canonicalize_axes(self.feature_axes, jnp.ndim(x), name="feature_axes", owner="InstanceNorm")
    features = tuple(jnp.shape(x)[a] for a in feature_axes)
    scale, bias = feature_params(self, features, use_scale=self.use_scale, use_bias=self.use_bias)
    return F.instance_norm(
      x,
      scale,
      bias,
      feature_axes=feature_axes,
      batch_axis=0,
      use_fast_variance=self.use_fast_variance,
      **self._engine_kwargs(mask),
    )


class GroupNorm(_PerExampleNorm):
  r"""Group normalization, a drop-in for ``flax.linen.GroupNorm``.

  Channels are split into ``num_groups`` groups (or groups of
  ``group_size``); each group of each example is standardized over its
  channels and the other ``reduction_axes``. Unlike flax, the channels may
  sit on any axis: ``channel_axis=1`` normalizes NCHW without transposes.

  Attributes:
    num_groups: number of groups (default 32, as in the paper); pass
      ``None`` to use ``group_size``.
    group_size: channels per group.
    channel_axis: the channel axis (default -1, flax's only choice).
    reduction_axes: axes for the statistics; must include ``channel_axis``.
      Default: every axis but the leading (batch) one.
    epsilon, dtype, param_dtype, use_bias, use_scale, bias_init, scale_init,
    axis_name, axis_index_groups, use_fast_variance, force_float32_reductions:
      as in :class:`LayerNorm`.

  References:
    Wu & He, `Group Normalization <https://arxiv.org/abs/1803.08494>`_, 2018.
  """

  num_groups: int | None = 32
  group_size: int | None = None
  epsilon: float = 1e-6
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Initializer = initializers.zeros
  scale_init: Initializer = initializers.ones
  reduction_axes: _axes.Axes | None = None
  axis_name: Any = None
  axis_index_groups: Any = None
  use_fast_variance: bool = False
  force_float32_reductions: bool = True
  channel_axis: int = -1

  @nn.compact
  def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
    (c,) = _axes.canonicalize_axes(self.channel_axis, jnp.ndim(x), name="channel_axis", owner="GroupNorm")
    channels = jnp.shape(x)[c]
    # Validate before creating parameters, so init fails with our message.
    _axes.resolve_groups(channels, self.num_groups, self.group_size, owner="GroupNorm")
    scale, bias = feature_params(self, (channels,), use_scale=self.use_scale, use_bias=self.use_bias)
    return F.group_norm(
      x,
      scale,
      bias,
      num_groups=self.num_groups,
      group_size=self.group_size,
      channel_axis=c,
      reduction_axes=self.reduction_axes,
      use_fast_variance=self.use_fast_variance,
      **self._engine_kwargs(mask),
    )
