"""Filter response normalization with a thresholded linear unit (FRN + TLU).

Each channel of each example is divided by its root mean square over the
spatial axes — no mean is subtracted — and the activation is a learned
threshold, ``max(y, τ)``, that replaces the ReLU following the layer.
Nothing depends on the batch.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxnorm._core import axes as _axes
from jaxnorm._core.dispatch import standardize
from jaxnorm._core.normalize import output_dtype

Array = jax.Array


def filter_response_norm(
  x: Array,
  scale: Array | None = None,
  bias: Array | None = None,
  tau: Array | None = None,
  *,
  epsilon: float = 1e-6,
  learned_epsilon: Array | None = None,
  channel_axis: int = -1,
  mask: Array | None = None,
  dtype: Any = None,
  force_float32_reductions: bool = True,
) -> Array:
  r"""Filter response normalization and TLU (Singh & Krishnan, 2020).

  .. math:: y = \max\big(\gamma\,x/\sqrt{\nu^2 + \epsilon} + \beta,\ \tau\big),
     \qquad \nu^2 = \mathrm{mean}_{h,w}(x^2)

  per example and channel, over every axis but the batch (leading) axis and
  ``channel_axis``. ``ε = epsilon + |learned_epsilon|`` when
  ``learned_epsilon`` is given (the paper's learnable ε, which matters when
  the spatial extent is 1×1). Without ``tau`` there is no TLU.

  Args:
    x: input, ``(N, H, W, C)`` (``channel_axis=-1``) or ``(N, C, H, W)``
      (``channel_axis=1``).
    scale, bias, tau: ``γ``, ``β``, ``τ`` of shape ``(C,)``, or None.
    epsilon: the fixed part of ε.
    learned_epsilon: optional learnable part of ε, a scalar.
    channel_axis: the channel axis.
    mask: optional boolean mask broadcastable to ``x``: the elements that
      enter ``ν²``.
    dtype: output dtype (default: promoted dtype of ``x`` and parameters).
    force_float32_reductions: statistics in at least float32.

  Returns:
    The output, shaped like ``x``.

  References:
    Singh & Krishnan, `Filter Response Normalization Layer: Eliminating Batch
    Dependence in the Training of Deep Neural Networks
    <https://arxiv.org/abs/1911.09737>`_, 2020.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
    >>> y = filter_response_norm(x, tau=jnp.zeros(3))
    >>> bool((y >= 0).all())  # τ = 0: a ReLU after the normalization
    True
  """
  owner = "filter_response_norm"
  x, (scale, bias, tau), mask, spatial, channel = _axes.check_channels(
    owner, x, {"scale": scale, "bias": bias, "tau": tau}, mask, channel_axis=channel_axis
  )
  eps = epsilon
  if learned_epsilon is not None:
    learned = jnp.asarray(learned_epsilon)
    if learned.size != 1:
      raise ValueError(
        f"{owner}: learned_epsilon has shape {learned.shape}; ε is a scalar, give learned_epsilon the shape () or (1,)."
      )
    eps = epsilon + jnp.abs(learned).reshape((1,) * x.ndim)
  out = output_dtype(x, scale, bias, tau, dtype=dtype)
  y, _ = standardize(
    x,
    scale,
    bias,
    reduction_axes=spatial,
    feature_axes=channel,
    epsilon=eps,
    mask=mask,
    axis_name=None,
    axis_index_groups=None,
    use_mean=False,
    use_fast_variance=False,
    dtype=dtype,
    force_float32_reductions=force_float32_reductions,
  )
  if tau is not None:
    y = jnp.maximum(y, tau)
  return jnp.asarray(y, out)
