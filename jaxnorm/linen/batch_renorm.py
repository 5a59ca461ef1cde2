"""Batch renormalization for flax.linen."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.nn import initializers

from jaxnorm import _stateful
from jaxnorm._core import axes as _axes
from jaxnorm.functional.batch_renorm import BATCH_RENORM

Array = jax.Array
Initializer = Any


class BatchRenorm(nn.Module):
  r"""Batch renormalization with a warm-up of its clipping limits.

  :math:`y = \gamma((x - \mu_B)/\sigma_B \cdot r + d) + \beta` in training,
  :math:`y = \gamma (x - \mu)/\sigma + \beta` in evaluation; see
  :func:`batch_renorm`. The fields are :class:`jaxnorm.BatchNorm`'s (flax's)
  followed by the clipping limits and their schedule
  (:func:`batch_renorm_limits`), driven by ``batch_stats/steps``, the number
  of training steps taken (not advanced by ``init`` or in evaluation).

  Variables: ``params/scale, bias``; ``batch_stats/mean, var, steps``.

  Attributes:
    use_running_average, axis, momentum, epsilon, dtype, param_dtype,
    use_bias, use_scale, bias_init, scale_init, axis_name, axis_index_groups,
    use_fast_variance, force_float32_reductions: as in
      :class:`jaxnorm.BatchNorm`.
    r_max: final limit of ``r`` (paper: 3).
    d_max: final limit of ``d`` (paper: 5).
    warmup_delay: steps with ``r_max = 1, d_max = 0`` (paper: 5000).
    r_max_warmup_steps: steps of the linear ramp of ``r_max`` after the
      delay (paper: 35000, reaching 3 at step 40k).
    d_max_warmup_steps: steps of the ramp of ``d_max`` (paper: 20000,
      reaching 5 at step 25k).

  References:
    Ioffe, `Batch Renormalization: Towards Reducing Minibatch Dependence in
    Batch-Normalized Models <https://arxiv.org/abs/1702.03275>`_, 2017.
  """

  use_running_average: bool | None = None
  axis: _axes.Axes = -1
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Initializer = initializers.zeros
  scale_init: Initializer = initializers.ones
  axis_name: Any = None
  axis_index_groups: Any = None
  use_fast_variance: bool = False
  force_float32_reductions: bool = True
  r_max: float = 3.0
  d_max: float = 5.0
  warmup_delay: int = 0
  r_max_warmup_steps: int = 0
  d_max_warmup_steps: int = 0

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
    """Normalizes ``x``; updates ``batch_stats`` (and the step) in training."""
    return _stateful.linen_apply(BATCH_RENORM, self, x, use_running_average, mask, scale, shift)
