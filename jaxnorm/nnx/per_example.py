"""The per-example normalizers for flax.nnx: LayerNorm, RMSNorm, InstanceNorm
and GroupNorm, drop-ins for flax.nnx's."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes as _nnx_dtypes
from flax.nnx.nn.linear import default_kernel_init
from jax.nn import initializers

from jaxnorm._core import axes as _axes
from jaxnorm._core.modulation import fold_into
from jaxnorm._core.modulation import scale_initializer
from jaxnorm.functional import per_example as F
from jaxnorm.nnx._params import NO_METADATA
from jaxnorm.nnx._params import feature_params
from jaxnorm.nnx._params import features
from jaxnorm.nnx._params import projection
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
    zero_centered_scale=False,
    **fields,
  ):
    shape = features(num_features, owner)
    feature_params(
      self,
      shape,
      rngs=rngs,
      use_scale=use_scale,
      use_bias=use_bias,
      scale_init=scale_initializer(scale_init, zero_centered_scale),
      bias_init=bias_init,
      param_dtype=param_dtype,
      scale_metadata=scale_metadata,
      bias_metadata=bias_metadata,
    )
    self.num_features = num_features
    self.param_dtype = param_dtype
    self.use_scale = use_scale
    self.use_bias = use_bias
    self.zero_centered_scale = zero_centered_scale
    for name, value in fields.items():
      setattr(self, name, value)

  def _affine(self, x, feature_axes, *, scale, shift):
    """``(x, γ', β', dtype)``: the input and parameters promoted as
    flax.nnx promotes them, with the call's modulation and the zero-centred
    scale folded in (:func:`jaxnorm._core.modulation.fold`)."""
    x, gamma, beta = self.promote_dtype(
      (x, value_of(self.scale), value_of(getattr(self, "bias", None))), dtype=self.dtype
    )
    gamma, beta, dtype = fold_into(
      self,
      x,
      gamma,
      beta,
      feature_axes=feature_axes,
      modulation_scale=scale,
      modulation_shift=shift,
    )
    return x, gamma, beta, dtype

  def _engine_kwargs(self, mask, dtype):
    return dict(
      epsilon=self.epsilon,
      mask=mask,
      axis_name=self.axis_name,
      axis_index_groups=self.axis_index_groups,
      dtype=dtype,
      force_float32_reductions=self.force_float32_reductions,
    )


class LayerNorm(_PerExampleNorm):
  r"""Layer normalization, a drop-in for ``flax.nnx.LayerNorm``:
  :math:`y = \gamma (x - \mu)/\sqrt{\sigma^2 + \epsilon} + \beta` with
  statistics over ``reduction_axes`` and parameters over ``feature_axes``.
  ``use_fast_variance`` defaults to False (stable). ``zero_centered_scale``
  multiplies by ``1 + γ``, ``γ`` starting at 0 (see
  :class:`jaxnorm.LayerNorm`)."""

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
    zero_centered_scale: bool = False,
  ):
    self._init_common(
      num_features,
      "LayerNorm",
      zero_centered_scale=zero_centered_scale,
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

  def __call__(self, x, *, mask: Array | None = None, scale: Array | None = None, shift: Array | None = None):
    """Normalizes ``x``.

    Args:
      x: the input.
      mask: optional boolean mask broadcastable to ``x``: which elements the
        statistics use.
      scale, shift: optional call-time modulation (conditional
        normalization): ``y = (γ x̂ + β)·(1 + scale) + shift``, applied in
        the same pass as the normalization; see :doc:`/conditional`.
    """
    x, gamma, beta, dtype = self._affine(x, self.feature_axes, scale=scale, shift=shift)
    return F.layer_norm(
      x,
      gamma,
      beta,
      reduction_axes=self.reduction_axes,
      feature_axes=self.feature_axes,
      use_fast_variance=self.use_fast_variance,
      **self._engine_kwargs(mask, dtype),
    )


class RMSNorm(_PerExampleNorm):
  r"""RMS normalization, a drop-in for ``flax.nnx.RMSNorm``:
  :math:`y = \gamma\,x/\sqrt{\mathrm{E}[x^2] + \epsilon}` over
  ``reduction_axes``. ``use_fast_variance`` is accepted for compatibility and
  has no effect (there is no mean to subtract). ``zero_centered_scale`` is
  Gemma's RMSNorm, ``(1 + γ)·x/rms(x)`` (see :class:`jaxnorm.RMSNorm`)."""

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
    zero_centered_scale: bool = False,
  ):
    self._init_common(
      num_features,
      "RMSNorm",
      zero_centered_scale=zero_centered_scale,
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

  def __call__(self, x, mask: Array | None = None, *, scale: Array | None = None, shift: Array | None = None):
    """Normalizes ``x``.

    Args:
      x: the input.
      mask: optional boolean mask broadcastable to ``x``: which elements the
        statistics use.
      scale, shift: optional call-time modulation (conditional
        normalization): ``y = (γ x̂ + β)·(1 + scale) + shift``, applied in
        the same pass as the normalization; see :doc:`/conditional`.
    """
    x, gamma, beta, dtype = self._affine(x, self.feature_axes, scale=scale, shift=shift)
    return F.rms_norm(
      x,
      gamma,
      beta,
      reduction_axes=self.reduction_axes,
      feature_axes=self.feature_axes,
      **self._engine_kwargs(mask, dtype),
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

  def __call__(self, x, *, mask: Array | None = None, scale: Array | None = None, shift: Array | None = None):
    """Normalizes ``x``.

    Args:
      x: the input.
      mask: optional boolean mask broadcastable to ``x``: which elements the
        statistics use.
      scale, shift: optional call-time modulation (conditional
        normalization): ``y = (γ x̂ + β)·(1 + scale) + shift``, applied in
        the same pass as the normalization; see :doc:`/conditional`.
    """
    x, gamma, beta, dtype = self._affine(x, self.feature_axes, scale=scale, shift=shift)
    return F.instance_norm(
      x,
      gamma,
      beta,
      feature_axes=self.feature_axes,
      batch_axis=0,
      use_fast_variance=self.use_fast_variance,
      **self._engine_kwargs(mask, dtype),
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

  def __call__(self, x, *, mask: Array | None = None, scale: Array | None = None, shift: Array | None = None):
    """Normalizes ``x``.

    Args:
      x: the input.
      mask: optional boolean mask broadcastable to ``x``: which elements the
        statistics use.
      scale, shift: optional call-time modulation (conditional
        normalization): ``y = (γ x̂ + β)·(1 + scale) + shift``, applied in
        the same pass as the normalization; see :doc:`/conditional`.
    """
    x, gamma, beta, dtype = self._affine(x, self.channel_axis, scale=scale, shift=shift)
    return F.group_norm(
      x,
      gamma,
      beta,
      num_groups=self.num_groups,
      group_size=None,
      channel_axis=self.channel_axis,
      reduction_axes=self.reduction_axes,
      use_fast_variance=self.use_fast_variance,
      **self._engine_kwargs(mask, dtype),
    )


class AdaGroupNorm(GroupNorm):
  r"""Adaptive group normalization (:class:`jaxnorm.AdaGroupNorm` for
  flax.nnx): ``GN(x)·(1 + s) + t`` with ``(s, t) = Linear(activation(e))``
  (``scale`` then ``shift``) and the group norm's own ``γ``, ``β``. Takes
  :class:`jaxnorm.nnx.GroupNorm`'s arguments (default ``epsilon`` 1e-5).

  References:
    Dhariwal & Nichol, `Diffusion Models Beat GANs on Image Synthesis
    <https://arxiv.org/abs/2105.05233>`_, 2021.
  """

  def __init__(
    self,
    num_features: int,
    embedding_features: int,
    num_groups: int | None = 32,
    group_size: int | None = None,
    *,
    epsilon: float = 1e-5,
    activation: Callable[[Array], Array] | None = nnx.silu,
    projection_kernel_init: Initializer = default_kernel_init,
    projection_bias_init: Initializer = initializers.zeros,
    rngs: nnx.Rngs,
    **group_norm,
  ):
    super().__init__(num_features, num_groups, group_size, epsilon=epsilon, rngs=rngs, **group_norm)
    _axes.check_positive_int(embedding_features, name="embedding_features", owner="AdaGroupNorm")
    self.projection = projection(
      embedding_features,
      2 * num_features,
      projection_kernel_init,
      projection_bias_init,
      self.dtype,
      self.param_dtype,
      rngs,
    )
    self.activation = activation

  def __call__(self, x, embedding: Array, *, mask: Array | None = None):  # type: ignore[override]
    """Normalizes ``x`` modulated by ``embedding`` ``(N, E)``."""
    e = embedding if self.activation is None else self.activation(embedding)
    scale, shift = jnp.split(self.projection(e), 2, axis=-1)
    return super().__call__(x, mask=mask, scale=scale, shift=shift)
