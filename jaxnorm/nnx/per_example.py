"""The per-example normalizers for flax.nnx: LayerNorm, RMSNorm, InstanceNorm
and GroupNorm, drop-ins for flax.nnx's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes as _nnx_dtypes
from jax.nn import initializers

from jaxnorm._core import axes as _axes
from jaxnorm.functional import per_example as F
from jaxnorm.nnx._params import NO_METADATA
from jaxnorm.nnx._params import feature_params
from jaxnorm.nnx._params import features
from jaxnorm.nnx._params import value_of

Array = jax.Array
Initializer = Any


class _PerExampleNorm(nnx.Module):
  """The constructor plumbing LayerNorm, RMSNorm, InstanceNorm and GroupNorm
  share: parameters as flax.nnx creates them, and the engine's keyword
  arguments."""

  def _init_common(
    self,
    num_features,
    owner,
    *,
    rngs,
    use_scale,
    use_bias,
    scale_init,
    bias_init,
    param_dtype,
    scale_metadata,
    bias_metadata,
    **fields,
  ):
    shape = features(num_features, owner)
    feature_params(
      self,
      shape,
      rngs=rngs,
      use_scale=use_scale,
      use_bias=use_bias,
      scale_init=scale_init,
      bias_init=bias_init,
      param_dtype=param_dtype,
      scale_metadata=scale_metadata,
      bias_metadata=bias_metadata,
    )
    self.num_features = num_features
    self.param_dtype = param_dtype
    self.use_scale = use_scale
    self.use_bias = use_bias
    for name, value in fields.items():
      setattr(self, name, value)

  def _promoted(self, x):
    return self.promote_dtype((x, value_of(self.scale), value_of(self.bias)), dtype=self.dtype)

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
  r"""Layer normalization, a drop-in for ``flax.nnx.LayerNorm``:
  :math:`y = \gamma (x - \mu)/\sqrt{\sigma^2 + \epsilon} + \beta` with
  statistics over ``reduction_axes`` and parameters over ``feature_axes``.
  ``use_fast_variance`` defaults to False (stable)."""

  def __init__(
    self,
    num_features: int,
    *,
    epsilon: float = 1e-6,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    use_bias: bool = True,
    use_scale: bool = True,
    bias_init: Initializer = initializers.zeros,
    scale_init: Initializer = initializers.ones,
    reduction_axes: _axes.Axes = -1,
    feature_axes: _axes.Axes = -1,
    axis_name: Any = None,
    axis_index_groups: Any = None,
    use_fast_variance: bool = False,
    promote_dtype: Any = _nnx_dtypes.promote_dtype,
    rngs: nnx.Rngs,
    bias_metadata: Mapping[str, Any] = NO_METADATA,
    scale_metadata: Mapping[str, Any] = NO_METADATA,
    force_float32_reductions: bool = True,
  ):
    self._init_common(
      num_features,
      "LayerNorm",
      rngs=rngs,
      use_scale=use_scale,
      use_bias=use_bias,
      scale_init=scale_init,
      bias_init=bias_init,
      param_dtype=param_dtype,
      scale_metadata=scale_metadata,
      bias_metadata=bias_metadata,
      epsilon=epsilon,
      dtype=dtype,
      reduction_axes=reduction_axes,
      feature_axes=feature_axes,
      axis_name=axis_name,
      axis_index_groups=axis_index_groups,
      use_fast_variance=use_fast_variance,
      promote_dtype=promote_dtype,
      force_float32_reductions=force_float32_reductions,
    )

  def __call__(self, x, *, mask: Array | None = None):
    x, scale, bias = self._promoted(x)
    return F.layer_norm(
      x,
      scale,
      bias,
      reduction_axes=self.reduction_axes,
      feature_axes=self.feature_axes,
      use_fast_variance=self.use_fast_variance,
      **self._engine_kwargs(mask),
    )


class RMSNorm(_PerExampleNorm):
  r"""RMS normalization, a drop-in for ``flax.nnx.RMSNorm``:
  :math:`y = \gamma\,x/\sqrt{\mathrm{E}[x^2] + \epsilon}` over
  ``reduction_axes``. ``use_fast_variance`` is accepted for compatibility and
  has no effect (there is no mean to subtract)."""

  def __init__(
    self,
    num_features: int,
    *,
    epsilon: float = 1e-6,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    use_scale: bool = True,
    scale_init: Initializer = initializers.ones,
    reduction_axes: _axes.Axes = -1,
    feature_axes: _axes.Axes = -1,
    axis_name: Any = None,
    axis_index_groups: Any = None,
    use_fast_variance: bool = False,
    promote_dtype: Any = _nnx_dtypes.promote_dtype,
    rngs: nnx.Rngs,
    scale_metadata: Mapping[str, Any] = NO_METADATA,
    force_float32_reductions: bool = True,
  ):
    self._init_common(
      num_features,
      "RMSNorm",
      rngs=rngs,
      use_scale=use_scale,
      use_bias=False,
      scale_init=scale_init,
      bias_init=None,
      param_dtype=param_dtype,
      scale_metadata=scale_metadata,
      bias_metadata=NO_METADATA,
      epsilon=epsilon,
      dtype=dtype,
      reduction_axes=reduction_axes,
      feature_axes=feature_axes,
      axis_name=axis_name,
      axis_index_groups=axis_index_groups,
      use_fast_variance=use_fast_variance,
      promote_dtype=promote_dtype,
      force_float32_reductions=force_float32_reductions,
    )
    del self.bias  # flax.nnx's RMSNorm has no bias attribute

  def _promoted(self, x):
    return self.promote_dtype((x, value_of(self.scale)), dtype=self.dtype)

  def __call__(self, x, mask: Array | None = None):
    x, scale = self._promoted(x)
    return F.rms_norm(
      x, scale, reduction_axes=self.reduction_axes, feature_axes=self.feature_axes, **self._engine_kwargs(mask)
    )


class InstanceNorm(_PerExampleNorm):
  r"""Instance normalization, a drop-in for ``flax.nnx.InstanceNorm``:
  statistics per example (leading axis) and per feature, over all other
  axes. ``feature_axes`` may be any non-leading axes (NHWC or NCHW)."""

  def __init__(
    self,
    num_features: int,
    *,
    epsilon: float = 1e-6,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    use_bias: bool = True,
    use_scale: bool = True,
    bias_init: Initializer = initializers.zeros,
    scale_init: Initializer = initializers.ones,
    feature_axes: _axes.Axes = -1,
    axis_name: Any = None,
    axis_index_groups: Any = None,
    use_fast_variance: bool = False,
    promote_dtype: Any = _nnx_dtypes.promote_dtype,
    rngs: nnx.Rngs,
    bias_metadata: Mapping[str, Any] = NO_METADATA,
    scale_metadata: Mapping[str, Any] = NO_METADATA,
    force_float32_reductions: bool = True,
  ):
    self._init_common(
      num_features,
      "InstanceNorm",
      rngs=rngs,
      use_scale=use_scale,
      use_bias=use_bias,
      scale_init=scale_init,
      bias_init=bias_init,
      param_dtype=param_dtype,
      scale_metadata=scale_metadata,
      bias_metadata=bias_metadata,
      epsilon=epsilon,
      dtype=dtype,
      feature_axes=feature_axes,
      axis_name=axis_name,
      axis_index_groups=axis_index_groups,
      use_fast_variance=use_fast_variance,
      promote_dtype=promote_dtype,
      force_float32_reductions=force_float32_reductions,
    )

  def __call__(self, x, *, mask: Array | None = None):
    x, scale, bias = self._promoted(x)
    return F.instance_norm(
      x,
      scale,
      bias,
      feature_axes=self.feature_axes,
      batch_axis=0,
      use_fast_variance=self.use_fast_variance,
      **self._engine_kwargs(mask),
    )


class GroupNorm(_PerExampleNorm):
  r"""Group normalization, a drop-in for ``flax.nnx.GroupNorm``.

  Channels split into ``num_groups`` groups (or groups of ``group_size``);
  each group of each example is standardized over its channels and the
  other ``reduction_axes`` (default: all but the leading one). Unlike flax,
  the channels may sit on any axis: ``channel_axis=1`` normalizes NCHW
  without transposes.

  References:
    Wu & He, `Group Normalization <https://arxiv.org/abs/1803.08494>`_, 2018.
  """

  def __init__(
    self,
    num_features: int,
    num_groups: int | None = 32,
    group_size: int | None = None,
    *,
    epsilon: float = 1e-6,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    use_bias: bool = True,
    use_scale: bool = True,
    bias_init: Initializer = initializers.zeros,
    scale_init: Initializer = initializers.ones,
    reduction_axes: _axes.Axes | None = None,
    axis_name: Any = None,
    axis_index_groups: Any = None,
    use_fast_variance: bool = False,
    promote_dtype: Any = _nnx_dtypes.promote_dtype,
    rngs: nnx.Rngs,
    bias_metadata: Mapping[str, Any] = NO_METADATA,
    scale_metadata: Mapping[str, Any] = NO_METADATA,
    force_float32_reductions: bool = True,
    channel_axis: int = -1,
  ):
    owner = "GroupNorm"
    (channels,) = features(num_features, owner)
    # Validate before creating parameters; resolves num_groups and group_size as flax.nnx stores them.
    self.num_groups, self.group_size = _axes.resolve_groups(channels, num_groups, group_size, owner=owner)
    self._init_common(
      num_features,
      owner,
      rngs=rngs,
      use_scale=use_scale,
      use_bias=use_bias,
      scale_init=scale_init,
      bias_init=bias_init,
      param_dtype=param_dtype,
      scale_metadata=scale_metadata,
      bias_metadata=bias_metadata,
      epsilon=epsilon,
      dtype=dtype,
      reduction_axes=reduction_axes,
      axis_name=axis_name,
      axis_index_groups=axis_index_groups,
      use_fast_variance=use_fast_variance,
      promote_dtype=promote_dtype,
      force_float32_reductions=force_float32_reductions,
      channel_axis=channel_axis,
    )

  def __call__(self, x, *, mask: Array | None = None):
    x, scale, bias = self._promoted(x)
    return F.group_norm(
      x,
      scale,
      bias,
      num_groups=self.num_groups,
      group_size=None,
      channel_axis=self.channel_axis,
      reduction_axes=self.reduction_axes,
      use_fast_variance=self.use_fast_variance,
      **self._engine_kwargs(mask),
    )
