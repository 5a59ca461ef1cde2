"""Filter response normalization with TLU for flax.linen."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.nn import initializers

from jaxnorm._core import axes as _axes
from jaxnorm._core.modulation import fold_into
from jaxnorm.functional.filter_response import filter_response_norm
from jaxnorm.linen._params import feature_params

Array = jax.Array
Initializer = Any


class FilterResponseNorm(nn.Module):
  r"""Filter response normalization with TLU (FRN layer), per example.

  :math:`y = \max(\gamma\,x/\sqrt{\mathrm{mean}_{h,w}(x^2) + \epsilon} + \beta,
  \tau)`; see :func:`filter_response_norm`. It replaces both the
  normalization and the activation (ReLU) that follows it.

  Variables: ``params/scale, bias, tau`` of shape ``(C,)`` and, with
  ``learn_epsilon``, ``params/epsilon`` (a scalar; ``ε = epsilon +
  |params/epsilon|``).

  Attributes:
    epsilon: the fixed ε (paper: 1e-6), or its lower bound when learned.
    dtype: output dtype (default: promoted dtype of input and parameters).
    param_dtype: dtype of the parameters.
    use_bias, use_scale: learn ``β``, ``γ``.
    use_tlu: learn ``τ`` and apply the TLU (False: FRN alone).
    bias_init, scale_init, tau_init: initializers (zeros, ones, zeros).
    learn_epsilon: learn the extra ``|ε_l|``.
    epsilon_init: initializer of ``ε_l`` (constant 1e-4).
    channel_axis: the channel axis (-1 for NHWC, 1 for NCHW).
    force_float32_reductions: statistics in at least float32.

  References:
    Singh & Krishnan, `Filter Response Normalization Layer: Eliminating Batch
    Dependence in the Training of Deep Neural Networks
    <https://arxiv.org/abs/1911.09737>`_, 2020.
  """

  epsilon: float = 1e-6
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  use_tlu: bool = True
  bias_init: Initializer = initializers.zeros
  scale_init: Initializer = initializers.ones
  tau_init: Initializer = initializers.zeros
  learn_epsilon: bool = False
  epsilon_init: Initializer = initializers.constant(1e-4)
  channel_axis: int = -1
  force_float32_reductions: bool = True

  @nn.compact
  def __call__(
    self, x: Array, *, mask: Array | None = None, scale: Array | None = None, shift: Array | None = None
  ) -> Array:
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
    _axes.check_floating(x, owner="FilterResponseNorm")
    c, _ = _axes.per_example_channel_axes(jnp.ndim(x), self.channel_axis, "FilterResponseNorm")
    features = (jnp.shape(x)[c],)
    gamma, beta = feature_params(self, features, use_scale=self.use_scale, use_bias=self.use_bias)
    tau = None
    if self.use_tlu:
      tau = self.param("tau", self.tau_init, features, self.param_dtype)
    learned = None
    if self.learn_epsilon:
      learned = self.param("epsilon", self.epsilon_init, (), self.param_dtype)
    gamma, beta, dtype = fold_into(
      self,
      x,
      gamma,
      beta,
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
