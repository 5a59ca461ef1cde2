"""Conditioning layers for flax.linen: adaLN-Zero (DiT) and FiLM. Each
projects a conditioning input with a dense layer (``params/projection``).
The conditional normalizers that own a norm live with their family:
:class:`jaxnorm.AdaGroupNorm` (``per_example.py``) and
:class:`jaxnorm.ConditionalBatchNorm` (``batch_norm.py``); every normalizer
takes a call-time ``scale``/``shift``, which adaLN-Zero's output feeds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.nn import initializers

from jaxnorm._core import axes as _axes
from jaxnorm.functional.conditional import AdaLNModulation
from jaxnorm.functional.conditional import film
from jaxnorm.functional.conditional import split_modulation
from jaxnorm.linen._params import projection

Array = jax.Array
Initializer = Any


class AdaLNZero(nn.Module):
  r"""adaLN-Zero, the conditioning of a DiT block (Peebles & Xie, 2023).

  ``conditioning → activation (SiLU) → Dense(num_branches·3·features)``,
  zero-initialised, cut into one :class:`jaxnorm.AdaLNModulation` ``(shift,
  scale, gate)`` per branch, in DiT's order. A DiT block has two branches
  (attention, MLP)::

    attn, mlp = AdaLNZero(features=D)(c)
    h = LayerNorm(use_scale=False, use_bias=False)(x, shift=attn.shift, scale=attn.scale)
    x = x + attn.gate[:, None] * attention(h)

  The zero initialisation makes every block the identity at the start of
  training. ``gated=False`` gives ``(shift, scale)`` only (DiT's final
  layer).

  Variables: ``params/projection/{kernel, bias}``.

  Attributes:
    features: ``D``, the width of the normalized input.
    num_branches: the modulated norms the block has (DiT: 2).
    gated: produce a gate per branch.
    activation: applied to the conditioning first (None: none).
    use_bias: the projection has a bias.
    projection_kernel_init, projection_bias_init: initializers (zeros).
    dtype, param_dtype: the projection's.

  References:
    Peebles & Xie, `Scalable Diffusion Models with Transformers
    <https://arxiv.org/abs/2212.09748>`_, 2023.
  """

  features: int
  num_branches: int = 2
  gated: bool = True
  activation: Callable[[Array], Array] | None = nn.silu
  use_bias: bool = True
  projection_kernel_init: Initializer = initializers.zeros
  projection_bias_init: Initializer = initializers.zeros
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, conditioning: Array) -> tuple[AdaLNModulation, ...]:
    """The modulation of each branch, from ``conditioning`` ``(N, C_cond)``."""
    _axes.check_positive_int(self.features, name="features", owner="AdaLNZero")
    _axes.check_positive_int(self.num_branches, name="num_branches", owner="AdaLNZero")
    c = conditioning if self.activation is None else self.activation(conditioning)
    width = self.num_branches * (3 if self.gated else 2) * self.features
    projected = projection(self, width, c, use_bias=self.use_bias)
    return split_modulation(projected, self.num_branches, self.gated)


class FiLM(nn.Module):
  r"""Feature-wise linear modulation (Perez et al., 2018): ``y = γ x + β``
  with ``(γ, β) = Dense(conditioning)`` per example and feature; see
  :func:`jaxnorm.film`.

  FiLM follows a normalizer without its own affine map (the paper: batch
  norm, then FiLM, then ReLU). To fold it into that normalizer's pass, give
  the normalizer the modulation instead: ``BatchNorm(use_scale=False,
  use_bias=False)(x, scale=γ - 1, shift=β)``; :class:`ConditionalBatchNorm`
  does that.

  Variables: ``params/projection/{kernel, bias}``.

  Attributes:
    feature_axis: the modulated axis (default: last).
    zero_centered_scale: ``γ = 1 + Δγ`` with ``Δγ`` from the projection,
      so that a zero projection is the identity.
    projection_kernel_init, projection_bias_init: initializers (flax's
      Dense defaults).
    dtype, param_dtype: output dtype and parameter dtype.

  References:
    Perez, Strub, de Vries, Dumoulin & Courville, `FiLM: Visual Reasoning
    with a General Conditioning Layer <https://arxiv.org/abs/1709.07871>`_,
    2018.
  """

  feature_axis: int = -1
  zero_centered_scale: bool = False
  projection_kernel_init: Initializer = nn.linear.default_kernel_init
  projection_bias_init: Initializer = initializers.zeros
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, conditioning: Array) -> Array:
    """Modulates ``x`` by ``conditioning`` ``(N, C_cond)``."""
    _axes.check_floating(x, owner="FiLM")
    f = _axes.single_axis(self.feature_axis, jnp.ndim(x), name="feature_axis", owner="FiLM")
    projected = projection(self, 2 * jnp.shape(x)[f], conditioning)
    gamma, beta = jnp.split(projected, 2, axis=-1)
    if self.zero_centered_scale:
      gamma = 1 + gamma
    return film(x, gamma, beta, feature_axes=f, dtype=self.dtype)
