"""Dynamic tanh (DyT) for flax.nnx."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.nn import initializers

from jaxnorm._core import axes as _axes
from jaxnorm._core.modulation import fold_into
from jaxnorm.functional.dynamic_tanh import dynamic_tanh
from jaxnorm.nnx._params import NO_METADATA
from jaxnorm.nnx._params import feature_params
from jaxnorm.nnx._params import features
from jaxnorm.nnx._params import value_of

Array = jax.Array
Initializer = Any


class DynamicTanh(nnx.Module):
  r"""Dynamic tanh (DyT) (:class:`jaxnorm.DynamicTanh` for flax.nnx):
  :math:`y = \gamma \tanh(\alpha x) + \beta` with ``alpha`` of shape
  ``(1,)`` starting at ``alpha_init_value`` and ``scale``, ``bias`` of
  shape ``num_features`` (ones, zeros).

  References:
    Zhu, Chen, He, LeCun & Liu, `Transformers without Normalization
    <https://arxiv.org/abs/2503.10622>`_, 2025.
  """

  def __init__(
    self,
    num_features: int,
    *,
    alpha_init_value: float = 0.5,
    feature_axes: _axes.Axes = -1,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    use_bias: bool = True,
    use_scale: bool = True,
    bias_init: Initializer = initializers.zeros,
    scale_init: Initializer = initializers.ones,
    rngs: nnx.Rngs,
  ):
    shape = features(num_features, "DynamicTanh")
    self.alpha = nnx.Param(jnp.full((1,), alpha_init_value, param_dtype))
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
    self.num_features, self.alpha_init_value, self.feature_axes = num_features, alpha_init_value, feature_axes
    self.dtype, self.param_dtype, self.use_bias, self.use_scale = dtype, param_dtype, use_bias, use_scale

  def __call__(self, x, *, scale: Array | None = None, shift: Array | None = None):
    """Applies DyT to ``x``; ``scale``, ``shift``: optional call-time
    modulation (see :doc:`/conditional`)."""
    owner = "DynamicTanh"
    _axes.check_floating(x, owner=owner)
    alpha = self.alpha[...]
    gamma, beta, dtype = fold_into(
      self,
      x,
      value_of(self.scale),
      value_of(self.bias),
      feature_axes=self.feature_axes,
      modulation_scale=scale,
      modulation_shift=shift,
      others=(alpha,),
    )
    return dynamic_tanh(x, alpha, gamma, beta, feature_axes=self.feature_axes, dtype=dtype)
