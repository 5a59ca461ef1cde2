"""Weight standardization: normalize a layer's kernel, not its activations.

Each output channel's filter is standardized over its fan-in (the input and
spatial axes) before it is used. The activations stay batch-independent, and
WS combined with group norm matches batch norm at large batch sizes (Qiao et
al., 2019). The scaled variant of NF-ResNets (Brock et al., 2021) also
divides by ``sqrt(fan_in)`` and learns a gain, so that the layer preserves
the variance of its input without any activation normalization.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm._core import axes as _axes
from jaxnorm._core.moments import moments

Array = jax.Array


def standardize_weight(
  kernel: Array,
  gain: Array | None = None,
  *,
  fan_in_axes: _axes.Axes | None = None,
  scaled: bool = False,
  activation_gain: float = 1.0,
  epsilon: float = 1e-6,
  mask: Array | None = None,
  force_float32_reductions: bool = True,
  owner: str = "standardize_weight",
) -> Array:
  r"""Standardizes a kernel per output channel over its fan-in.

  .. math:: \hat W = g \cdot c \cdot (W - \mu)/\sqrt{s\,\sigma^2 + \epsilon}

  with :math:`\mu, \sigma^2` the mean and variance of each output channel's
  weights over ``fan_in_axes``, ``g`` the optional per-output-channel
  ``gain``, ``c = activation_gain`` and ``s = 1``, or ``s = N`` (the fan-in)
  when ``scaled`` — Scaled WS, :math:`\hat W = g\,c\,(W - \mu)/(\sigma\sqrt N)`,
  whose output has the variance of its input for unit-variance i.i.d.
  inputs. (NF-Nets' reference code uses ``max(N σ², ε)`` in place of
  ``N σ² + ε``; the two agree unless the filter is nearly constant.)

  Args:
    kernel: a flax kernel: ``(in, out)`` for Dense, ``(*window, in/groups,
      out)`` for Conv; output channels last.
    gain: optional ``(out,)`` gain ``g``.
    fan_in_axes: the axes standardized over (default: all but the last).
    scaled: Scaled WS (divide by ``sqrt(N)`` too).
    activation_gain: a constant factor ``c``, e.g. NF-Nets' nonlinearity
      gain :math:`\sqrt{2/(1 - 1/\pi)} \approx 1.713` for ReLU.
    epsilon: added to :math:`s\,\sigma^2`.
    mask: optional boolean mask of the kernel's shape; only masked-in
      weights enter the statistics (and ``N`` is their count).
    force_float32_reductions: statistics in at least float32.
    owner: name used in error messages.

  Returns:
    The standardized kernel, of the shape and dtype of ``kernel``.

  Raises:
    ValueError: the fan-in is 1 (each output channel has a single weight,
      whose variance is 0).

  References:
    Qiao, Wang, Liu, Shen & Yuille, `Micro-Batch Training with Batch-Channel
    Normalization and Weight Standardization
    <https://arxiv.org/abs/1903.10520>`_, 2019. Brock, De & Smith,
    `Characterizing signal propagation to close the performance gap in
    unnormalized ResNets <https://arxiv.org/abs/2101.08692>`_, 2021.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> w = standardize_weight(jax.random.normal(jax.random.key(0), (3, 3, 4, 8)))
    >>> bool(jnp.allclose(w.mean((0, 1, 2)), 0, atol=1e-6))
    True
  """
  _axes.check_floating(kernel, name="kernel", owner=owner)
  kernel = jnp.asarray(kernel)
  if fan_in_axes is None:
    fan_in_axes = tuple(range(kernel.ndim - 1))
  fan_in_axes = _axes.canonicalize_axes(fan_in_axes, kernel.ndim, name="fan_in_axes", owner=owner)
  fan_in = math.prod(kernel.shape[a] for a in fan_in_axes)
  if fan_in <= 1:
    raise ValueError(
      f"{owner}: kernel of shape {kernel.shape} has fan-in {fan_in} over "
      f"axes {fan_in_axes}: each output channel has a single weight, whose "
      f"variance is 0, so standardization is meaningless; use a larger "
      f"kernel or more input features, or an unstandardized layer."
    )
  stats = moments(
    kernel,
    fan_in_axes,
    mask=mask,
    force_float32_reductions=force_float32_reductions,
    keepdims=True,
  )
  spread = stats.count * stats.var if scaled else stats.var
  mul = lax.rsqrt(spread + epsilon) * activation_gain
  if gain is not None:
    out_shape = tuple(s if a not in fan_in_axes else 1 for a, s in enumerate(kernel.shape))
    mul = mul * jnp.reshape(gain, out_shape)
  return jnp.asarray((kernel - stats.mean) * mul, kernel.dtype)
