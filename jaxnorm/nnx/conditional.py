"""Conditioning layers for flax.nnx: adaLN-Zero (DiT) and FiLM, as in
:mod:`jaxnorm.linen.conditional`. Each projects its conditioning with
``self.projection`` (an ``nnx.Linear``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.linear import default_kernel_init
from jax.nn import initializers

from jaxnorm._core import axes as _axes
from jaxnorm.functional.conditional import AdaLNModulation
from jaxnorm.functional.conditional import film
from jaxnorm.functional.conditional import split_modulation
from jaxnorm.nnx._params import projection

Array = jax.Array
Initializer = Any


class AdaLNZero(nnx.Module):
  r"""adaLN-Zero (:class:`jaxnorm.AdaLNZero` for flax.nnx): ``conditioning
  → activation (SiLU) → Linear(conditioning_features,
  num_branches·3·features)``, zero-initialised, cut into one
  :class:`jaxnorm.AdaLNModulation` ``(shift, scale, gate)`` per branch.

  References:
    Peebles & Xie, `Scalable Diffusion Models with Transformers
    <https://arxiv.org/abs/2212.09748>`_, 2023.
  """

  def __init__(
    self,
    conditioning_features: int,
    features: int,
    *,
    num_branches: int = 2,
    gated: bool = True,
    activation: Callable[[Array], Array] | None = nnx.silu,
    use_bias: bool = True,
    projection_kernel_init: Initializer = initializers.zeros,
    projection_bias_init: Initializer = initializers.zeros,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    for name, value in (("conditioning_features", conditioning_features), ("features", features)):
      _axes.check_positive_int(value, name=name, owner="AdaLNZero")
    _axes.check_positive_int(num_branches, name="num_branches", owner="AdaLNZero")
    width = num_branches * (3 if gated else 2) * features
    self.projection = projection(
      conditioning_features, width, projection_kernel_init, projection_bias_init, dtype, param_dtype, rngs, use_bias
    )
    self.features, self.num_branches, self.gated, self.activation = features, num_branches, gated, activation

  def __call__(self, conditioning: Array) -> tuple[AdaLNModulation, ...]:
    """The modulation of each branch, from ``conditioning`` ``(N, C_cond)``."""
    c = conditioning if self.activation is None else self.activation(conditioning)
    return split_modulation(self.projection(c), self.num_branches, self.gated)


class FiLM(nnx.Module):
  r"""Feature-wise linear modulation (:class:`jaxnorm.FiLM` for flax.nnx):
  ``y = γ x + β`` with ``(γ, β) = Linear(conditioning)``; ``γ = 1 + Δγ``
  with ``zero_centered_scale``.

  References:
    Perez, Strub, de Vries, Dumoulin & Courville, `FiLM: Visual Reasoning
    with a General Conditioning Layer <https://arxiv.org/abs/1709.07871>`_,
    2018.
  """

  def __init__(
    self,
    num_features: int,
    conditioning_features: int,
    *,
    feature_axis: int = -1,
    zero_centered_scale: bool = False,
    projection_kernel_init: Initializer = default_kernel_init,
    projection_bias_init: Initializer = initializers.zeros,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    for name, value in (("num_features", num_features), ("conditioning_features", conditioning_features)):
      _axes.check_positive_int(value, name=name, owner="FiLM")
    self.projection = projection(
      conditioning_features, 2 * num_features, projection_kernel_init, projection_bias_init, dtype, param_dtype, rngs
    )
    self.num_features, self.feature_axis, self.zero_centered_scale, self.dtype = (
      num_features,
      feature_axis,
      zero_centered_scale,
      dtype,
    )

  def __call__(self, x, conditioning: Array):
    """Modulates ``x`` by ``conditioning`` ``(N, C_cond)``."""
    _axes.check_floating(x, owner="FiLM")
    f = _axes.single_axis(self.feature_axis, jnp.ndim(x), name="feature_axis", owner="FiLM")
    gamma, beta = jnp.split(self.projection(conditioning), 2, axis=-1)
    if self.zero_centered_scale:
      gamma = 1 + gamma
    return film(x, gamma, beta, feature_axes=f, dtype=self.dtype)
