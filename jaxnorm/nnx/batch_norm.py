"""Batch normalization for flax.nnx, a drop-in for ``flax.nnx.BatchNorm``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes as _nnx_dtypes
from jax.nn import initializers

from jaxnorm import _stateful
from jaxnorm._core import axes as _axes
from jaxnorm._core.running_stats import COUNTED
from jaxnorm._core.running_stats import RUNNING_STATS
from jaxnorm.functional.batch_norm import BATCH_NORM
from jaxnorm.functional.conditional import conditional_affine
from jaxnorm.nnx._params import NO_METADATA
from jaxnorm.nnx._params import ModeMixin
from jaxnorm.nnx._params import feature_params
from jaxnorm.nnx._params import features
from jaxnorm.nnx._params import projection
from jaxnorm.nnx._params import running_stat
from jaxnorm.nnx._params import value_of

Array = jax.Array
Initializer = Any


class BatchNorm(ModeMixin, nnx.Module):
  r"""Batch normalization, a drop-in for ``flax.nnx.BatchNorm``.

  :math:`y = \gamma (x - \mu_B)/\sqrt{\sigma_B^2 + \epsilon} + \beta` with
  batch statistics in training (``use_running_average=False``, the default,
  or ``model.train()``), updating the running averages ``mean`` and ``var``
  (``nnx.BatchStat``), and those averages at evaluation
  (``use_running_average=True`` or ``model.eval()``).

  flax.nnx's arguments keep their meaning; jaxnorm's own:

  Args:
    use_fast_variance: flax's one-pass variance (default False: stable).
    force_float32_reductions: statistics, and the running averages, in at
      least float32.
    virtual_batch_size: ghost batch norm: statistics over consecutive groups
      of this many examples of the leading axis (None: the whole batch).
    running_stats: ``"ema"`` (flax's, default), ``"cumulative"`` (the plain
      average of all batch statistics so far, PyTorch's ``momentum=None``;
      adds a ``count`` BatchStat), ``"debiased_ema"`` (the EMA divided by
      ``1 − momentum^t`` after ``t`` batches, as haiku's; adds a ``count``
      BatchStat) or ``"frozen"`` (normalize with the running statistics in
      training too and never update them).
    unbiased_running_var: PyTorch's running-variance update (the batch
      variance times ``n/(n − 1)``); the normalization is unchanged.
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
    promote_dtype: Any = _nnx_dtypes.promote_dtype,
    rngs: nnx.Rngs,
    bias_metadata: Mapping[str, Any] = NO_METADATA,
    scale_metadata: Mapping[str, Any] = NO_METADATA,
    force_float32_reductions: bool = True,
    virtual_batch_size: int | None = None,
    running_stats: str = "ema",
    unbiased_running_var: bool = False,
  ):
    owner = "BatchNorm"
    _axes.check_choice(running_stats, RUNNING_STATS, name="running_stats", owner=owner)
    shape = features(num_features, owner)
    self.mean = running_stat(jnp.zeros, shape, force_float32_reductions, param_dtype)
    self.var = running_stat(jnp.ones, shape, force_float32_reductions, param_dtype)
    self.count = nnx.BatchStat(jnp.zeros((), jnp.int32)) if running_stats in COUNTED else nnx.data(None)
    feature_params(
      self,
      shape,
      rngs=rngs,
      use_scale=use_scale,
      use_bias=use_bias,
      scale_init=scale_init,
      bias_init=bias_init,
      param_dtype=param_dtype,
      scale_metadata=scale_metadata,
      bias_metadata=bias_metadata,
    )
    self.num_features = num_features
    self.use_running_average = use_running_average
    self.axis = axis
    self.momentum = momentum
    self.epsilon = epsilon
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.use_bias = use_bias
    self.use_scale = use_scale
    self.axis_name = axis_name
    self.axis_index_groups = axis_index_groups
    self.use_fast_variance = use_fast_variance
    self.promote_dtype = promote_dtype
    self.force_float32_reductions = force_float32_reductions
    self.virtual_batch_size = virtual_batch_size
    self.running_stats = running_stats
    self.unbiased_running_var = unbiased_running_var

  def __call__(
    self,
    x,
    use_running_average: bool | None = None,
    *,
    mask: Array | None = None,
    scale: Array | None = None,
    shift: Array | None = None,
  ):
    """Normalizes ``x``; in training, updates ``mean``, ``var`` (and ``count``).

    Args:
      x: the input.
      use_running_average: overrides the attribute of the same name.
      mask: optional boolean mask broadcastable to ``x``: which elements the
        statistics use.
    """
    return _stateful.nnx_apply(BATCH_NORM, self, x, use_running_average, mask, scale, shift)


# Batch norm whose γ, β the conditional layer owns and passes as a modulation.
_BATCH_NORM_WITHOUT_AFFINE = dataclasses.replace(BATCH_NORM, owner="ConditionalBatchNorm", params=lambda module: ())


class ConditionalBatchNorm(BatchNorm):
  r"""Conditional batch normalization (:class:`jaxnorm.ConditionalBatchNorm`
  for flax.nnx): ``(γ + Δγ) x̂ + β + Δβ`` with ``(Δγ, Δβ) =
  Linear(conditioning)``, zero-initialised. Takes
  :class:`jaxnorm.nnx.BatchNorm`'s arguments.

  References:
    de Vries, Strub, Mary, Larochelle, Pietquin & Courville, `Modulating
    early visual processing by language <https://arxiv.org/abs/1707.00683>`_,
    2017.
  """

  def __init__(
    self,
    num_features: int,
    conditioning_features: int,
    *,
    projection_kernel_init: Initializer = initializers.zeros,
    projection_bias_init: Initializer = initializers.zeros,
    rngs: nnx.Rngs,
    **batch_norm,
  ):
    super().__init__(num_features, rngs=rngs, **batch_norm)
    _axes.check_positive_int(conditioning_features, name="conditioning_features", owner="ConditionalBatchNorm")
    self.projection = projection(
      conditioning_features,
      2 * num_features,
      projection_kernel_init,
      projection_bias_init,
      self.dtype,
      self.param_dtype,
      rngs,
    )

  def __call__(  # type: ignore[override]
    self,
    x,
    conditioning: Array,
    use_running_average: bool | None = None,
    *,
    mask: Array | None = None,
  ):
    """Normalizes ``x`` with ``γ``, ``β`` conditioned on ``conditioning`` ``(N, C_cond)``."""
    scale, shift = conditional_affine(self.projection(conditioning), value_of(self.scale), value_of(self.bias))
    return _stateful.nnx_apply(_BATCH_NORM_WITHOUT_AFFINE, self, x, use_running_average, mask, scale, shift)
