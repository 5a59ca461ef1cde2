"""EvoNorm-B0 and EvoNorm-S0 for flax.nnx."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.nn import initializers

from jaxnorm import _stateful
from jaxnorm._core import axes as _axes
from jaxnorm._core.modulation import fold_into
from jaxnorm.functional.evonorm import EVONORM_B0
from jaxnorm.functional.evonorm import evonorm_s0
from jaxnorm.nnx._params import NO_METADATA
from jaxnorm.nnx._params import ModeMixin
from jaxnorm.nnx._params import extra_param
from jaxnorm.nnx._params import feature_params
from jaxnorm.nnx._params import features
from jaxnorm.nnx._params import running_stat
from jaxnorm.nnx._params import value_of

Array = jax.Array
Initializer = Any


class EvoNormB0(ModeMixin, nnx.Module):
  r"""EvoNorm-B0 (:class:`jaxnorm.EvoNormB0` for flax.nnx): batch variance in
  training, the running ``var`` (BatchStat, flax's momentum convention) in
  evaluation; see :func:`jaxnorm.evonorm_b0`. Params ``scale``, ``bias``,
  ``v``. Replaces the normalization and its activation."""

  def __init__(
    self,
    num_features: int,
    *,
    use_running_average: bool | None = False,
    momentum: float = 0.99,
    epsilon: float = 1e-5,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    use_bias: bool = True,
    use_scale: bool = True,
    bias_init: Initializer = initializers.zeros,
    scale_init: Initializer = initializers.ones,
    v_init: Initializer = initializers.ones,
    channel_axis: int = -1,
    axis_name: Any = None,
    axis_index_groups: Any = None,
    use_fast_variance: bool = False,
    force_float32_reductions: bool = True,
    rngs: nnx.Rngs,
  ):
    shape = features(num_features, "EvoNormB0")
    self.var = running_stat(jnp.ones, shape, force_float32_reductions, param_dtype)
    feature_params(
      self,
      shape,
      rngs=rngs,
      use_scale=use_scale,
      use_bias=use_bias,
      scale_init=scale_init,
      bias_init=bias_init,
      param_dtype=param_dtype,
      scale_metadata=NO_METADATA,
      bias_metadata=NO_METADATA,
    )
    self.v = extra_param(v_init, shape, param_dtype, rngs)
    self.num_features, self.use_running_average, self.momentum = num_features, use_running_average, momentum
    self.epsilon, self.dtype, self.param_dtype = epsilon, dtype, param_dtype
    self.use_bias, self.use_scale, self.channel_axis = use_bias, use_scale, channel_axis
    self.axis_name, self.axis_index_groups = axis_name, axis_index_groups
    self.use_fast_variance, self.force_float32_reductions = use_fast_variance, force_float32_reductions

  def __call__(
    self,
    x,
    use_running_average: bool | None = None,
    *,
    mask: Array | None = None,
    scale: Array | None = None,
    shift: Array | None = None,
  ):
    return _stateful.nnx_apply(EVONORM_B0, self, x, use_running_average, mask, scale, shift)


class EvoNormS0(nnx.Module):
  r"""EvoNorm-S0 (:class:`jaxnorm.EvoNormS0` for flax.nnx): batch-independent,
  group statistics as in group norm; see :func:`jaxnorm.evonorm_s0`. Params
  ``scale``, ``bias``, ``v``."""

  def __init__(
    self,
    num_features: int,
    num_groups: int | None = 32,
    group_size: int | None = None,
    *,
    epsilon: float = 1e-5,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    use_bias: bool = True,
    use_scale: bool = True,
    bias_init: Initializer = initializers.zeros,
    scale_init: Initializer = initializers.ones,
    v_init: Initializer = initializers.ones,
    channel_axis: int = -1,
    use_fast_variance: bool = False,
    force_float32_reductions: bool = True,
    rngs: nnx.Rngs,
  ):
    owner = "EvoNormS0"
    (channels,) = features(num_features, owner)
    _axes.resolve_groups(channels, num_groups, group_size, owner=owner)
    feature_params(
      self,
      (channels,),
      rngs=rngs,
      use_scale=use_scale,
      use_bias=use_bias,
      scale_init=scale_init,
      bias_init=bias_init,
      param_dtype=param_dtype,
      scale_metadata=NO_METADATA,
      bias_metadata=NO_METADATA,
    )
    self.v = extra_param(v_init, (channels,), param_dtype, rngs)
    self.num_features, self.num_groups, self.group_size = num_features, num_groups, group_size
    self.epsilon, self.dtype, self.param_dtype = epsilon, dtype, param_dtype
    self.use_bias, self.use_scale, self.channel_axis = use_bias, use_scale, channel_axis
    self.use_fast_variance, self.force_float32_reductions = use_fast_variance, force_float32_reductions

  def __call__(self, x, *, mask: Array | None = None, scale: Array | None = None, shift: Array | None = None):
    """Normalizes ``x``.

    Args:
      x: the input.
      mask: optional boolean mask broadcastable to ``x``: which elements the
        statistics use.
      scale, shift: optional call-time modulation (conditional
        normalization): ``γ`` and ``β`` become ``γ·(1 + scale)`` and
        ``β·(1 + scale) + shift`` for this call; shapes ``(N, *features)``,
        ``features`` or ``x``'s rank; see :doc:`/conditional`.
    """
    owner = "EvoNormS0"
    _axes.check_floating(x, owner=owner)
    c, _ = _axes.per_example_channel_axes(jnp.ndim(x), self.channel_axis, owner)
    v = self.v[...]
    gamma, beta, dtype = fold_into(
      self,
      x,
      value_of(self.scale),
      value_of(self.bias),
      feature_axes=c,
      modulation_scale=scale,
      modulation_shift=shift,
      others=(v,),
    )
    return evonorm_s0(
      x,
      gamma,
      beta,
      v,
      num_groups=self.num_groups,
      group_size=self.group_size,
      channel_axis=c,
      epsilon=self.epsilon,
      mask=mask,
      use_fast_variance=self.use_fast_variance,
      dtype=dtype,
      force_float32_reductions=self.force_float32_reductions,
    )
