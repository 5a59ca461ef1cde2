"""Weight-standardized convolution for flax.linen, a drop-in for ``flax.linen.Conv``."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
from jax.nn import initializers

from jaxnorm.functional.weight_standardization import standardize_weight

Array = jax.Array
Initializer = Any


class StandardizedConv(nn.Conv):
  r"""A ``flax.linen.Conv`` whose kernel is standardized before use.

  :math:`\hat W = (W - \mu)/\sqrt{\sigma^2 + \epsilon}` per output channel
  over the window and input axes, or Scaled WS
  :math:`\hat W = g\,c\,(W - \mu)/\sqrt{N\sigma^2 + \epsilon}` with a learned
  per-output-channel ``gain`` ``g`` (``scaled=True``); see
  :func:`standardize_weight`. A drop-in for ``nn.Conv``: same fields (in the
  same order, the WS ones appended), same call, same ``params/kernel`` and
  ``params/bias`` (``params/gain`` added when scaled). The stored kernel is
  the raw ``W``; standardization is part of the forward pass, so gradients
  flow through it.

  Attributes:
    epsilon: added to the (scaled) variance.
    scaled: Scaled WS of NF-ResNets, with a learned gain.
    activation_gain: constant factor ``c`` (Scaled WS; 1 by default).
    gain_init: initializer of the gain (ones).

  References:
    Qiao et al., `Micro-Batch Training with Batch-Channel Normalization and
    Weight Standardization <https://arxiv.org/abs/1903.10520>`_, 2019.
    Brock, De & Smith, `Characterizing signal propagation to close the
    performance gap in unnormalized ResNets
    <https://arxiv.org/abs/2101.08692>`_, 2021.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> conv = StandardizedConv(features=8, kernel_size=(3, 3))
    >>> y, v = conv.init_with_output(jax.random.key(0), jnp.ones((1, 5, 5, 4)))
    >>> jax.tree.map(jnp.shape, v)
    {'params': {'bias': (8,), 'kernel': (3, 3, 4, 8)}}
  """

  epsilon: float = 1e-6
  scaled: bool = False
  activation_gain: float = 1.0
  gain_init: Initializer = initializers.ones

  # nn.Conv obtains its kernel with ``self.param('kernel', ...)`` and uses it
  # right away; intercepting that call is the one hook that keeps nn.Conv's
  # whole forward pass (padding modes, dilation, groups, masks) unchanged.
  @nn.nowrap
  def param(self, name, init_fn, *init_args, unbox=True, **init_kwargs):
    value = super().param(name, init_fn, *init_args, unbox=unbox, **init_kwargs)
    if name != "kernel":
      return value
    gain = None
    if self.scaled:
      gain = super().param("gain", self.gain_init, (value.shape[-1],), self.param_dtype)
    return standardize_weight(
      value,
      gain,
      scaled=self.scaled,
      activation_gain=self.activation_gain,
      epsilon=self.epsilon,
      mask=self.mask,
      owner=type(self).__name__,
    )
