"""Filter response normalization with a thresholded linear unit (FRN + TLU).

Each channel of each example is divided by its root mean square over the
spatial axes — no mean is subtracted — and the activation is a learned
threshold, ``max(y, τ)``, that replaces the ReLU following the layer.
Nothing depends on the batch.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.nn import initializers

from jaxnorm import _axes
from jaxnorm import _reduction_axes
from jaxnorm._functional import _param
from jaxnorm._functional import _prepare
from jaxnorm._functional import _standardize
from jaxnorm._functional import output_dtype
from jaxnorm._modules import _feature_params

Array = jax.Array
Initializer = Any


def _per_example_channel_axes(x: Array, channel_axis: int, owner: str):
  """(channel axis, spatial axes) of ``x``, whose leading axis is the batch."""
  (c,) = _axes.canonicalize_axes(channel_axis, x.ndim, name="channel_axis", owner=owner)
  if c == 0:
    raise ValueError(
      f"{owner}: channel_axis={channel_axis} is the batch axis 0; "
      f"statistics are per example, so choose the channel axis (e.g. -1 "
      f"for NHWC, 1 for NCHW)."
    )
  return c, _reduction_axes.filter_response_norm_axes(x.ndim, c)


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
  x = _prepare(x, owner)
  c, spatial = _per_example_channel_axes(x, channel_axis, owner)
  out = output_dtype(x, scale, bias, tau, dtype=dtype)
  eps = epsilon
  if learned_epsilon is not None:
    learned = jnp.asarray(learned_epsilon)
    if learned.size != 1:
      raise ValueError(
        f"{owner}: learned_epsilon has shape {learned.shape}; ε is a scalar, give learned_epsilon the shape () or (1,)."
      )
    eps = epsilon + jnp.abs(learned).reshape((1,) * x.ndim)
  y = _standardize(
    x,
    scale,
    bias,
    reduction_axes=spatial,
    feature_axes=(c,),
    owner=owner,
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
    y = jnp.maximum(y, _param(tau, x.shape, (c,), name="tau", owner=owner))
  return jnp.asarray(y, out)


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
  def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
    _axes.check_floating(x, owner="FilterResponseNorm")
    c, _ = _per_example_channel_axes(x, self.channel_axis, "FilterResponseNorm")
    features = (jnp.shape(x)[c],)
    scale, bias = _feature_params(self, features, use_scale=self.use_scale, use_bias=self.use_bias)
    tau = None
    if self.use_tlu:
      tau = self.param("tau", self.tau_init, features, self.param_dtype)
    learned = None
    if self.learn_epsilon:
      learned = self.param("epsilon", self.epsilon_init, (), self.param_dtype)
    return filter_response_norm(
      x,
      scale,
      bias,
      tau,
      epsilon=self.epsilon,
      learned_epsilon=learned,
      channel_axis=c,
      mask=mask,
      dtype=self.dtype,
      force_float32_reductions=self.force_float32_reductions,
    )
