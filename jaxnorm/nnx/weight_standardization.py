"""Weight-standardized convolution for flax.nnx, a drop-in for ``flax.nnx.Conv``."""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx
from jax.nn import initializers

from jaxnorm.functional.weight_standardization import standardize_weight
from jaxnorm.nnx._params import extra_param
from jaxnorm.nnx._params import value_of

Array = jax.Array
Initializer = Any


class StandardizedConv(nnx.Conv):
  r"""A drop-in for ``flax.nnx.Conv`` whose kernel is standardized per output
  channel over its fan-in before every call (:class:`jaxnorm.StandardizedConv`
  for flax.nnx; see :func:`jaxnorm.standardize_weight`). ``nnx.Conv``'s
  arguments keep their meaning; ``epsilon``, ``scaled`` (scaled weight
  standardization, with a learned ``gain`` Param per output channel),
  ``activation_gain`` and ``gain_init`` are added after them.

  ``nnx.Conv`` reads its kernel, masks it and hands ``(inputs, kernel,
  bias)`` to its ``promote_dtype`` right before the convolution. For the
  length of each call that hook standardizes the kernel first, with this
  module's current ``gain``: the one hook that keeps ``nnx.Conv``'s whole
  forward pass (padding, dilation, groups, masks) unchanged.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size,
    strides=1,
    *,
    epsilon: float = 1e-6,
    scaled: bool = False,
    activation_gain: float = 1.0,
    gain_init: Initializer = initializers.ones,
    rngs: nnx.Rngs,
    **conv_kwargs,
  ):
    super().__init__(in_features, out_features, kernel_size, strides, rngs=rngs, **conv_kwargs)
    self.gain = extra_param(gain_init, (out_features,), self.param_dtype, rngs) if scaled else nnx.data(None)
    self.epsilon, self.scaled, self.activation_gain = epsilon, scaled, activation_gain

  def __call__(self, inputs, *args, **kwargs):
    promote, gain, mask = self.promote_dtype, value_of(self.gain), self.mask

    def standardizing_promote(arrays, dtype=None):
      x, kernel, bias = arrays
      kernel = standardize_weight(
        kernel,
        gain,
        scaled=self.scaled,
        activation_gain=self.activation_gain,
        epsilon=self.epsilon,
        mask=mask,
        owner="StandardizedConv",
      )
      if mask is not None:
        kernel = kernel * mask  # nnx.Conv masked before the hook; keep masked taps at zero
      return promote((x, kernel, bias), dtype=dtype)

    self.promote_dtype = standardizing_promote
    try:
      return super().__call__(inputs, *args, **kwargs)
    finally:
      self.promote_dtype = promote
