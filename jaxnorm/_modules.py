"""flax.linen modules: drop-in replacements for flax's normalization layers.

Each module owns its parameters (``params``: ``scale``, ``bias``) and, for
batch normalization, its running statistics (``batch_stats``: ``mean``,
``var``), and calls the pure function of the same name. Constructor fields,
call arguments, variable names, collections and defaults follow
``flax.linen`` except where noted:

* ``use_fast_variance`` defaults to False: the variance is computed stably.
  flax's default ``E[x²] − E[x]²`` loses all precision when ``|mean| ≫ std``.
* Cross-device statistics (``axis_name``) merge counts, sums and centred sums
  of squares, so they are exact when devices hold different counts.
* :class:`GroupNorm` takes a ``channel_axis`` (NHWC and NCHW).
* :class:`BatchNorm` takes ``virtual_batch_size`` (ghost batch norm) and
  ``running_stats`` (EMA, cumulative average or frozen), appended after
  flax's fields; in training it reports its batch moments for
  :func:`jaxnorm.precise_batch_stats`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.nn import initializers

from jaxnorm import _axes
from jaxnorm import _batch_norm
from jaxnorm import _functional as F
from jaxnorm import _stateful

Array = jax.Array
Initializer = Any


def _feature_params(
  mdl: nn.Module,
  features: tuple[int, ...],
  *,
  use_scale: bool,
  use_bias: bool,
) -> tuple[Array | None, Array | None]:
  """Creates ``scale``/``bias`` exactly as flax does (names, shapes, dtype)."""
  scale = bias = None
  if use_scale:
    scale = mdl.param("scale", mdl.scale_init, features, mdl.param_dtype)
  if use_bias:
    bias = mdl.param("bias", mdl.bias_init, features, mdl.param_dtype)
  return scale, bias


def scale_and_bias(module) -> tuple[tuple[str, str], ...]:
  """The ``scale``/``bias`` parameters a module's ``use_scale``/``use_bias`` ask for."""
  return (("scale", "scale_init"),) * bool(module.use_scale) + (("bias", "bias_init"),) * bool(module.use_bias)


def _batch_norm_features(module, x) -> tuple[int, ...]:
  axes = _axes.canonicalize_axes(module.axis, jnp.ndim(x), name="axis", owner="BatchNorm")
  return tuple(jnp.shape(x)[a] for a in axes)


def _batch_norm_state(module) -> tuple[_stateful.RunningStat, ...]:
  count = (_stateful.RunningStat("count", per_feature=False),) if module.running_stats == "cumulative" else ()
  return (_stateful.RunningStat("mean", jnp.zeros), _stateful.RunningStat("var", jnp.ones)) + count


def _batch_norm_compute(module, x, params, state, *, use_running_average, mask, axis_name):
  y, new, per_batch = _batch_norm._batch_norm(
    x,
    params["scale"],
    params["bias"],
    _batch_norm.BatchStats(state["mean"], state["var"], state.get("count")),
    use_running_average=use_running_average,
    axis=_axes.canonicalize_axes(module.axis, jnp.ndim(x), name="axis", owner="BatchNorm"),
    momentum=module.momentum,
    epsilon=module.epsilon,
    mask=mask,
    axis_name=axis_name,
    axis_index_groups=module.axis_index_groups,
    use_fast_variance=module.use_fast_variance,
    dtype=module.dtype,
    force_float32_reductions=module.force_float32_reductions,
    virtual_batch_size=module.virtual_batch_size,
    running_stats=module.running_stats,
    owner="BatchNorm",
  )
  return y, {"mean": new.mean, "var": new.var, "count": new.count}, per_batch


BATCH_NORM = _stateful.StatefulNorm(
  owner="BatchNorm",
  params=scale_and_bias,
  state=_batch_norm_state,
  features=_batch_norm_features,
  compute=_batch_norm_compute,
  always_running=lambda module: module.running_stats == "frozen",
  validate=lambda module: _axes.check_choice(
    module.running_stats, _batch_norm.RUNNING_STATS, name="running_stats", owner="BatchNorm"
  ),
)


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
      adds ``batch_stats/count``) or ``"frozen"`` (normalize with the running
      statistics in training too and never update them, whatever
      ``use_running_average`` says).

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

  @nn.compact
  def __call__(
    self,
    x: Array,
    use_running_average: bool | None = None,
    *,
    mask: Array | None = None,
  ) -> Array:
    """Normalizes ``x``; updates ``batch_stats`` when training.

    Args:
      x: the input.
      use_running_average: overrides the attribute of the same name (one of
        the two must be set, unless ``running_stats="frozen"``).
      mask: optional boolean mask broadcastable to ``x``: which elements the
        statistics use.
    """
    return _stateful.linen_apply(BATCH_NORM, self, x, use_running_average, mask)


class _PerExampleNorm(nn.Module):
  """Shared call plumbing of LayerNorm, InstanceNorm, GroupNorm and RMSNorm.

  It declares no fields: each subclass lists its own in flax's order, so that
  positional construction matches flax too.
  """

  def _engine_kwargs(self, mask):
    return dict(
      epsilon=self.epsilon,
      mask=mask,
      axis_name=self.axis_name,
      axis_index_groups=self.axis_index_groups,
      dtype=self.dtype,
      force_float32_reductions=self.force_float32_reductions,
    )


class LayerNorm(_PerExampleNorm):
  r"""Layer normalization, a drop-in for ``flax.linen.LayerNorm``.

  :math:`y = \gamma (x - \mu)/\sqrt{\sigma^2 + \epsilon} + \beta` with
  statistics over ``reduction_axes`` and parameters over ``feature_axes``.

  References:
    Ba, Kiros & Hinton, `Layer Normalization
    <https://arxiv.org/abs/1607.06450>`_, 2016.
  """

  epsilon: float = 1e-6
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Initializer = initializers.zeros
  scale_init: Initializer = initializers.ones
  reduction_axes: _axes.Axes = -1
  feature_axes: _axes.Axes = -1
  axis_name: Any = None
  axis_index_groups: Any = None
  use_fast_variance: bool = False
  force_float32_reductions: bool = True

  @nn.compact
  def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
    feature_axes = _axes.canonicalize_axes(self.feature_axes, jnp.ndim(x), name="feature_axes", owner="LayerNorm")
    features = tuple(jnp.shape(x)[a] for a in feature_axes)
    scale, bias = _feature_params(self, features, use_scale=self.use_scale, use_bias=self.use_bias)
    return F.layer_norm(
      x,
      scale,
      bias,
      reduction_axes=self.reduction_axes,
      feature_axes=feature_axes,
      use_fast_variance=self.use_fast_variance,
      **self._engine_kwargs(mask),
    )


class RMSNorm(_PerExampleNorm):
  r"""RMS normalization, a drop-in for ``flax.linen.RMSNorm``.

  :math:`y = \gamma\,x/\sqrt{\mathrm{E}[x^2] + \epsilon}` over
  ``reduction_axes``. ``use_fast_variance`` is accepted for compatibility and
  has no effect (there is no mean to subtract).

  References:
    Zhang & Sennrich, `Root Mean Square Layer Normalization
    <https://arxiv.org/abs/1910.07467>`_, 2019.
  """

  epsilon: float = 1e-6
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_scale: bool = True
  scale_init: Initializer = initializers.ones
  reduction_axes: _axes.Axes = -1
  feature_axes: _axes.Axes = -1
  axis_name: Any = None
  axis_index_groups: Any = None
  use_fast_variance: bool = False
  force_float32_reductions: bool = True

  @nn.compact
  def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
    feature_axes = _axes.canonicalize_axes(self.feature_axes, jnp.ndim(x), name="feature_axes", owner="RMSNorm")
    features = tuple(jnp.shape(x)[a] for a in feature_axes)
    scale, _ = _feature_params(self, features, use_scale=self.use_scale, use_bias=False)
    return F.rms_norm(
      x,
      scale,
      reduction_axes=self.reduction_axes,
      feature_axes=feature_axes,
      **self._engine_kwargs(mask),
    )


class InstanceNorm(_PerExampleNorm):
  r"""Instance normalization, a drop-in for ``flax.linen.InstanceNorm``.

  Statistics per example (leading axis) and per feature, over all other
  axes. ``feature_axes`` may be any non-leading axes (NHWC or NCHW).

  References:
    Ulyanov, Vedaldi & Lempitsky, `Instance Normalization
    <https://arxiv.org/abs/1607.08022>`_, 2016.
  """

  epsilon: float = 1e-6
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Initializer = initializers.zeros
  scale_init: Initializer = initializers.ones
  feature_axes: _axes.Axes = -1
  axis_name: Any = None
  axis_index_groups: Any = None
  use_fast_variance: bool = False
  force_float32_reductions: bool = True

  @nn.compact
  def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
    feature_axes = _axes.canonicalize_axes(self.feature_axes, jnp.ndim(x), name="feature_axes", owner="InstanceNorm")
    features = tuple(jnp.shape(x)[a] for a in feature_axes)
    scale, bias = _feature_params(self, features, use_scale=self.use_scale, use_bias=self.use_bias)
    return F.instance_norm(
      x,
      scale,
      bias,
      feature_axes=feature_axes,
      batch_axis=0,
      use_fast_variance=self.use_fast_variance,
      **self._engine_kwargs(mask),
    )


class GroupNorm(_PerExampleNorm):
  r"""Group normalization, a drop-in for ``flax.linen.GroupNorm``.

  Channels are split into ``num_groups`` groups (or groups of
  ``group_size``); each group of each example is standardized over its
  channels and the other ``reduction_axes``. Unlike flax, the channels may
  sit on any axis: ``channel_axis=1`` normalizes NCHW without transposes.

  Attributes:
    num_groups: number of groups (default 32, as in the paper); pass
      ``None`` to use ``group_size``.
    group_size: channels per group.
    channel_axis: the channel axis (default -1, flax's only choice).
    reduction_axes: axes for the statistics; must include ``channel_axis``.
      Default: every axis but the leading (batch) one.
    epsilon, dtype, param_dtype, use_bias, use_scale, bias_init, scale_init,
    axis_name, axis_index_groups, use_fast_variance, force_float32_reductions:
      as in :class:`LayerNorm`.

  References:
    Wu & He, `Group Normalization <https://arxiv.org/abs/1803.08494>`_, 2018.
  """

  num_groups: int | None = 32
  group_size: int | None = None
  epsilon: float = 1e-6
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Initializer = initializers.zeros
  scale_init: Initializer = initializers.ones
  reduction_axes: _axes.Axes | None = None
  axis_name: Any = None
  axis_index_groups: Any = None
  use_fast_variance: bool = False
  force_float32_reductions: bool = True
  channel_axis: int = -1

  @nn.compact
  def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
    (c,) = _axes.canonicalize_axes(self.channel_axis, jnp.ndim(x), name="channel_axis", owner="GroupNorm")
    channels = jnp.shape(x)[c]
    # Validate before creating parameters, so init fails with our message.
    _axes.resolve_groups(channels, self.num_groups, self.group_size, owner="GroupNorm")
    scale, bias = _feature_params(self, (channels,), use_scale=self.use_scale, use_bias=self.use_bias)
    return F.group_norm(
      x,
      scale,
      bias,
      num_groups=self.num_groups,
      group_size=self.group_size,
      channel_axis=c,
      reduction_axes=self.reduction_axes,
      use_fast_variance=self.use_fast_variance,
      **self._engine_kwargs(mask),
    )
