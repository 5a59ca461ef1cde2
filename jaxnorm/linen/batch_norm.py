"""Batch normalization for flax.linen, a drop-in for ``flax.linen.BatchNorm``."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.nn import initializers

from jaxnorm import _stateful
from jaxnorm._core import axes as _axes
from jaxnorm.functional.batch_norm import BATCH_NORM
from jaxnorm.functional.conditional import conditional_affine
from jaxnorm.linen._params import feature_params
from jaxnorm.linen._params import projection

Array = jax.Array
Initializer = Any


class BatchNorm(nn.Module):
  r"""Batch normalization, a drop-in for ``flax.linen.BatchNorm``.

  :math:`y = \gamma (x - \mu_B)/\sqrt{\sigma_B^2 + \epsilon} + \beta` with
  batch statistics in training and the running averages in ``batch_stats``
  at eval (``use_running_average=True``). Running statistics are not updated
  during ``init``, and ``axis_name`` is ignored there, as in flax.

  Two fields extend flax's (appended after them, so positional construction
  still matches flax): ``virtual_batch_size`` (ghost batch norm) and
  ``running_stats`` (how the running averages are kept); see
  :func:`jaxnorm.batch_norm`. With the defaults, the variables and numerics
  are flax's.

  Attributes:
    use_running_average: use the stored statistics instead of the batch's.
    axis: the feature axis (or axes); all others are reduced.
    momentum: EMA decay: ``new = momentum * old + (1 - momentum) * batch``.
    epsilon: added to the variance.
    dtype: output dtype (default: promoted dtype of input and parameters).
    param_dtype: dtype of ``scale`` and ``bias``.
    use_bias, use_scale: learn ``β``, ``γ``.
    bias_init, scale_init: initializers (zeros, ones).
    axis_name, axis_index_groups: synchronise statistics across devices.
    use_fast_variance: flax's one-pass variance (default False: stable).
    force_float32_reductions: statistics in at least float32.
    virtual_batch_size: ghost batch norm: statistics over consecutive groups
      of this many examples of the leading axis (None: the whole batch).
    running_stats: ``"ema"`` (flax's, default), ``"cumulative"`` (the plain
      average of all batch statistics so far, PyTorch's ``momentum=None``;
      adds ``batch_stats/count``), ``"debiased_ema"`` (the EMA divided by
      ``1 − momentum^t`` after ``t`` batches, as haiku's; adds
      ``batch_stats/count``) or ``"frozen"`` (normalize with the running
      statistics in training too and never update them, whatever
      ``use_running_average`` says).
    unbiased_running_var: PyTorch's running-variance update: the batch
      variance times ``n/(n − 1)`` (``n`` examples per statistic) enters the
      running average; the normalization is unchanged (default False:
      flax's biased variance).

  References:
    Ioffe & Szegedy, `Batch Normalization <https://arxiv.org/abs/1502.03167>`_,
    2015. Hoffer, Hubara & Soudry, `Train longer, generalize better
    <https://arxiv.org/abs/1705.08741>`_, 2017 (ghost batch norm).
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
  virtual_batch_size: int | None = None
  running_stats: str = "ema"
  unbiased_running_var: bool = False

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
    """Normalizes ``x``; updates ``batch_stats`` when training.

    Args:
      x: the input.
      use_running_average: overrides the attribute of the same name (one of
        the two must be set, unless ``running_stats="frozen"``).
      mask: optional boolean mask broadcastable to ``x``: which elements the
        statistics use.
    """
    return _stateful.linen_apply(BATCH_NORM, self, x, use_running_average, mask, scale, shift)


# Batch norm whose γ, β the conditional layer owns and passes as a modulation.
_BATCH_NORM_WITHOUT_AFFINE = dataclasses.replace(BATCH_NORM, owner="ConditionalBatchNorm", params=lambda module: ())


class ConditionalBatchNorm(BatchNorm):
  r"""Conditional batch normalization (de Vries et al., 2017): batch norm
  whose ``γ``, ``β`` are shifted per example by a projection of the
  conditioning,

  .. math:: y = (\gamma + \Delta\gamma)\,\hat x + (\beta + \Delta\beta), \qquad
            (\Delta\gamma, \Delta\beta) = \mathrm{Dense}(c),

  in the batch norm's own pass. Every field of :class:`jaxnorm.BatchNorm`
  applies (running statistics, ghost batches, ``axis_name``, ...); the
  projection starts at zero, so the layer starts as plain batch norm.

  Variables: those of :class:`jaxnorm.BatchNorm` (``params/scale``,
  ``params/bias``, ``batch_stats/mean``, ``batch_stats/var``) and
  ``params/projection/{kernel, bias}``.

  Attributes:
    projection_kernel_init, projection_bias_init: initializers of the
      projection (zeros).

  References:
    de Vries, Strub, Mary, Larochelle, Pietquin & Courville, `Modulating
    early visual processing by language <https://arxiv.org/abs/1707.00683>`_,
    2017.
  """

  projection_kernel_init: Initializer = initializers.zeros
  projection_bias_init: Initializer = initializers.zeros

  @nn.compact
  def __call__(  # type: ignore[override]
    self,
    x: Array,
    conditioning: Array,
    use_running_average: bool | None = None,
    *,
    mask: Array | None = None,
  ) -> Array:
    """Normalizes ``x`` with ``γ``, ``β`` conditioned on ``conditioning`` ``(N, C_cond)``."""
    axis = _axes.single_axis(self.axis, jnp.ndim(x), name="axis", owner="ConditionalBatchNorm")
    channels = jnp.shape(x)[axis]
    gamma, beta = feature_params(self, (channels,), use_scale=self.use_scale, use_bias=self.use_bias)
    projected = projection(self, 2 * channels, conditioning)
    scale, shift = conditional_affine(projected, gamma, beta)
    return _stateful.linen_apply(_BATCH_NORM_WITHOUT_AFFINE, self, x, use_running_average, mask, scale, shift)
