"""Filter response normalization with TLU for flax.nnx."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.nn import initializers

from jaxnorm._core import axes as _axes
from jaxnorm._core.modulation import fold_into
from jaxnorm.functional.filter_response import filter_response_norm
from jaxnorm.nnx._params import NO_METADATA
from jaxnorm.nnx._params import extra_param
from jaxnorm.nnx._params import feature_params
from jaxnorm.nnx._params import features
from jaxnorm.nnx._params import value_of

Array = jax.Array
Initializer = Any


class FilterResponseNorm(nnx.Module):
  r"""Filter response normalization with TLU
  (:class:`jaxnorm.FilterResponseNorm` for flax.nnx), per example; see
  :func:`jaxnorm.filter_response_norm`. Params ``scale``, ``bias``, ``tau``
  and, with ``learn_epsilon``, ``epsilon_param`` (a scalar; ε = ``epsilon``
  + its absolute value; linen names it ``params/epsilon``, which NNX cannot,
  as ``epsilon`` is the field)."""

  def __init__(
    self,
    num_features: int,
    *,
    epsilon: float = 1e-6,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    use_bias: bool = True,
    use_scale: bool = True,
    use_tlu: bool = True,
    bias_init: Initializer = initializers.zeros,
    scale_init: Initializer = initializers.ones,
    tau_init: Initializer = initializers.zeros,
    learn_epsilon: bool = False,
    epsilon_init: Initializer = initializers.constant(1e-4),  # noqa: B008 (flax.nnx signatures do this too)
    channel_axis: int = -1,
    force_float32_reductions: bool = True,
    rngs: nnx.Rngs,
  ):
    shape = features(num_features, "FilterResponseNorm")
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
    self.tau = extra_param(tau_init, shape, param_dtype, rngs) if use_tlu else nnx.data(None)
    self.epsilon_param = extra_param(epsilon_init, (), param_dtype, rngs) if learn_epsilon else nnx.data(None)
    self.num_features, self.epsilon, self.dtype, self.param_dtype = num_features, epsilon, dtype, param_dtype
    self.use_bias, self.use_scale, self.use_tlu, self.learn_epsilon = use_bias, use_scale, use_tlu, learn_epsilon
    self.channel_axis, self.force_float32_reductions = channel_axis, force_float32_reductions

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
    owner = "FilterResponseNorm"
    _axes.check_floating(x, owner=owner)
    c, _ = _axes.per_example_channel_axes(jnp.ndim(x), self.channel_axis, owner)
    tau, learned = value_of(self.tau), value_of(self.epsilon_param)
    gamma, beta, dtype = fold_into(
      self,
      x,
      value_of(self.scale),
      value_of(self.bias),
      feature_axes=c,
      modulation_scale=scale,
      modulation_shift=shift,
      others=(tau, learned),
    )
    return filter_response_norm(
      x,
      gamma,
      beta,
      tau,
      epsilon=self.epsilon,
      learned_epsilon=learned,
      channel_axis=c,
      mask=mask,
      dtype=dtype,
      force_float32_reductions=self.force_float32_reductions,
    )
