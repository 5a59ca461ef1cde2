"""EvoNorm-B0 and EvoNorm-S0 for flax.linen."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.nn import initializers

from jaxnorm import _stateful
from jaxnorm._core import axes as _axes
from jaxnorm._core.modulation import fold_into
from jaxnorm.functional.evonorm import EVONORM_B0
from jaxnorm.functional.evonorm import evonorm_s0
from jaxnorm.linen._params import feature_params

Array = jax.Array
Initializer = Any


class EvoNormB0(nn.Module):
  r"""EvoNorm-B0: batch-dependent normalization-activation layer.

  :math:`y = x / \max(\sqrt{s^2_{b,w,h} + \epsilon}, v x + \sqrt{s^2_{w,h} +
  \epsilon})\,\gamma + \beta`; see :func:`evonorm_b0`. Like batch norm, it
  uses the batch variance in training and the running variance
  (``batch_stats/var``, flax's momentum convention) in evaluation.

  Variables: ``params/scale, bias, v`` of shape ``(C,)``;
  ``batch_stats/var``.

  Attributes:
    use_running_average: evaluation mode (or pass it to ``__call__``).
    momentum: EMA decay: ``new = momentum * old + (1 - momentum) * batch``.
    axis_name, axis_index_groups: synchronise the batch variance across
      devices.
    epsilon: added to the variances (1e-5, as in the paper's code).
    dtype: output dtype (default: promoted dtype of input and parameters).
    param_dtype: dtype of the parameters.
    use_bias, use_scale: learn ``β``, ``γ``.
    bias_init, scale_init, v_init: initializers (zeros, ones, ones).
    channel_axis: the channel axis (-1 for NHWC, 1 for NCHW).
    use_fast_variance: one-pass variance (default False: stable).
    force_float32_reductions: statistics in at least float32.

  References:
    Liu, Brock, Simonyan & Le, `Evolving Normalization-Activation Layers
    <https://arxiv.org/abs/2004.02967>`_, 2020.
  """

  use_running_average: bool | None = None
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Initializer = initializers.zeros
  scale_init: Initializer = initializers.ones
  v_init: Initializer = initializers.ones
  channel_axis: int = -1
  axis_name: Any = None
  axis_index_groups: Any = None
  use_fast_variance: bool = False
  force_float32_reductions: bool = True

  @nn.compact
  def __call__(
    self,
    x: Array,
    use_running_average: bool | None = None,
    *,
    mask: Array | None = None,
    scale: Array | None = None,
    shift: Array | None = None,
  ) -> Array:
    return _stateful.linen_apply(EVONORM_B0, self, x, use_running_average, mask, scale, shift)


class EvoNormS0(nn.Module):
  r"""EvoNorm-S0: batch-independent normalization-activation layer.

  :math:`y = x\,\sigma(v x)/\sqrt{s^2_{w,h,c/g} + \epsilon}\,\gamma + \beta`
  with group statistics as in group norm; see :func:`evonorm_s0`.

  Variables: ``params/scale, bias, v`` of shape ``(C,)``.

  Attributes:
    num_groups: number of groups (default 32, as in the paper); pass
      ``None`` to use ``group_size``.
    group_size: channels per group.
    epsilon: added to the variances (1e-5, as in the paper's code).
    dtype: output dtype (default: promoted dtype of input and parameters).
    param_dtype: dtype of the parameters.
    use_bias, use_scale: learn ``β``, ``γ``.
    bias_init, scale_init, v_init: initializers (zeros, ones, ones).
    channel_axis: the channel axis (-1 for NHWC, 1 for NCHW).
    use_fast_variance: one-pass variance (default False: stable).
    force_float32_reductions: statistics in at least float32.

  References:
    Liu, Brock, Simonyan & Le, `Evolving Normalization-Activation Layers
    <https://arxiv.org/abs/2004.02967>`_, 2020.
  """

  num_groups: int | None = 32
  group_size: int | None = None
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Initializer = initializers.zeros
  scale_init: Initializer = initializers.ones
  v_init: Initializer = initializers.ones
  channel_axis: int = -1
  use_fast_variance: bool = False
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
    owner = "EvoNormS0"
    _axes.check_floating(x, owner=owner)
    c, _ = _axes.per_example_channel_axes(jnp.ndim(x), self.channel_axis, owner)
    channels = jnp.shape(x)[c]
    # Validate before creating parameters, so init fails with our message.
    _axes.resolve_groups(channels, self.num_groups, self.group_size, owner=owner)
    gamma, beta = feature_params(self, (channels,), use_scale=self.use_scale, use_bias=self.use_bias)
    v = self.param("v", self.v_init, (channels,), self.param_dtype)
    gamma, beta, dtype = fold_into(
      self,
      x,
      gamma,
      beta,
      feature_axes=c,
      modulation_scale=scale,
      modulation_shift=shift,
      others=(v,),
    )
    return evonorm_s0(
      x,
      gamma,
      beta,
      v,
      num_groups=self.num_groups,
      group_size=self.group_size,
      channel_axis=c,
      epsilon=self.epsilon,
      mask=mask,
      use_fast_variance=self.use_fast_variance,
      dtype=dtype,
      force_float32_reductions=self.force_float32_reductions,
    )
