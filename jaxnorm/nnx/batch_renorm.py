"""Batch renormalization for flax.nnx."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.nn import initializers

from jaxnorm import _stateful
from jaxnorm.functional.batch_renorm import BATCH_RENORM
from jaxnorm.functional.batch_renorm import check_schedule
from jaxnorm.nnx._params import NO_METADATA
from jaxnorm.nnx._params import ModeMixin
from jaxnorm.nnx._params import feature_params
from jaxnorm.nnx._params import features
from jaxnorm.nnx._params import running_stat

Array = jax.Array
Initializer = Any


class BatchRenorm(ModeMixin, nnx.Module):
  r"""Batch renormalization (:class:`jaxnorm.BatchRenorm` for flax.nnx).

  :math:`y = \gamma((x - \mu_B)/\sigma_B \cdot r + d) + \beta` in training,
  :math:`y = \gamma (x - \mu)/\sigma + \beta` in evaluation; see
  :func:`jaxnorm.batch_renorm`. The clipping limits follow
  :func:`jaxnorm.batch_renorm_limits`, driven by the ``steps`` BatchStat
  (training steps taken). Variables: ``scale``, ``bias`` (Param); ``mean``,
  ``var``, ``steps`` (BatchStat).
  """

  def __init__(
    self,
    num_features: int,
    *,
    use_running_average: bool | None = False,
    axis: int = -1,
    momentum: float = 0.99,
    epsilon: float = 1e-5,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    use_bias: bool = True,
    use_scale: bool = True,
    bias_init: Initializer = initializers.zeros,
    scale_init: Initializer = initializers.ones,
    axis_name: Any = None,
    axis_index_groups: Any = None,
    use_fast_variance: bool = False,
    force_float32_reductions: bool = True,
    r_max: float = 3.0,
    d_max: float = 5.0,
    warmup_delay: int = 0,
    r_max_warmup_steps: int = 0,
    d_max_warmup_steps: int = 0,
    rngs: nnx.Rngs,
  ):
    owner = "BatchRenorm"
    check_schedule(r_max, d_max, warmup_delay, r_max_warmup_steps, d_max_warmup_steps, owner=owner)
    shape = features(num_features, owner)
    self.mean = running_stat(jnp.zeros, shape, force_float32_reductions, param_dtype)
    self.var = running_stat(jnp.ones, shape, force_float32_reductions, param_dtype)
    self.steps = nnx.BatchStat(jnp.zeros((), jnp.int32))
    feature_params(
      self,
      shape,
      rngs=rngs,
      use_scale=use_scale,
      use_bias=use_bias,
      scale_init=scale_init,
      bias_init=bias_init,
      param_dtype=param_dtype,
      scale_metadata=NO_METADATA,
      bias_metadata=NO_METADATA,
    )
    self.num_features, self.use_running_average, self.axis = num_features, use_running_average, axis
    self.momentum, self.epsilon, self.dtype, self.param_dtype = momentum, epsilon, dtype, param_dtype
    self.use_bias, self.use_scale = use_bias, use_scale
    self.axis_name, self.axis_index_groups = axis_name, axis_index_groups
    self.use_fast_variance, self.force_float32_reductions = use_fast_variance, force_float32_reductions
    self.r_max, self.d_max, self.warmup_delay = r_max, d_max, warmup_delay
    self.r_max_warmup_steps, self.d_max_warmup_steps = r_max_warmup_steps, d_max_warmup_steps

  def __call__(
    self,
    x,
    use_running_average: bool | None = None,
    *,
    mask: Array | None = None,
    scale: Array | None = None,
    shift: Array | None = None,
  ):
    """Normalizes ``x``; in training, updates ``mean``, ``var`` and ``steps``."""
    return _stateful.nnx_apply(BATCH_RENORM, self, x, use_running_average, mask, scale, shift)
