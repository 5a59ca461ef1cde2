"""Dynamic tanh (DyT) for flax.linen."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.nn import initializers

from jaxnorm._core import axes as _axes
from jaxnorm._core.modulation import fold_into
from jaxnorm.functional.dynamic_tanh import dynamic_tanh
from jaxnorm.linen._params import feature_params

Array = jax.Array
Initializer = Any


class DynamicTanh(nn.Module):
  r"""Dynamic tanh (DyT), a replacement for layer norm without statistics:
  :math:`y = \gamma \tanh(\alpha x) + \beta`; see :func:`jaxnorm.dynamic_tanh`.

  Variables: ``params/alpha`` of shape ``(1,)``, initialised to
  ``alpha_init_value`` (the paper's ``α₀``: 0.5 by default; its LLM
  recipe uses larger values in the attention blocks of narrow models), and
  ``params/scale``, ``params/bias`` of the feature shape (ones, zeros) —
  the variables of the paper's ``DynamicTanh``, so its PyTorch weights
  load as they are (``weight`` is ``scale``).

  Attributes:
    alpha_init_value: ``α₀``.
    feature_axes: the axes ``γ`` and ``β`` vary along (default: last).
    dtype: output dtype (default: promoted dtype of input and parameters).
    param_dtype: dtype of the parameters.
    use_bias, use_scale: learn ``β``, ``γ``.
    bias_init, scale_init: initializers (zeros, ones).

  References:
    Zhu, Chen, He, LeCun & Liu, `Transformers without Normalization
    <https://arxiv.org/abs/2503.10622>`_, 2025.
  """

  alpha_init_value: float = 0.5
  feature_axes: _axes.Axes = -1
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Initializer = initializers.zeros
  scale_init: Initializer = initializers.ones

  @nn.compact
  def __call__(self, x: Array, *, scale: Array | None = None, shift: Array | None = None) -> Array:
    """Applies DyT to ``x``.

    Args:
      x: the input.
      scale, shift: optional call-time modulation: ``γ`` and ``β`` become
        ``γ·(1 + scale)`` and ``β·(1 + scale) + shift`` for this call; see
        :doc:`/conditional`.
    """
    owner = "DynamicTanh"
    _axes.check_floating(x, owner=owner)
    axes = _axes.canonicalize_axes(self.feature_axes, jnp.ndim(x), name="feature_axes", owner=owner)
    alpha = self.param("alpha", initializers.constant(self.alpha_init_value), (1,), self.param_dtype)
    gamma, beta = feature_params(
      self, tuple(jnp.shape(x)[a] for a in axes), use_scale=self.use_scale, use_bias=self.use_bias
    )
    gamma, beta, dtype = fold_into(
      self,
      x,
      gamma,
      beta,
      feature_axes=axes,
      modulation_scale=scale,
      modulation_shift=shift,
      others=(alpha,),
    )
    return dynamic_tanh(x, alpha, gamma, beta, feature_axes=axes, dtype=dtype)
