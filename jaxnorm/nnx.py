"""flax.nnx modules: drop-in replacements for flax.nnx's normalization layers.

``jaxnorm.nnx.BatchNorm``, ``LayerNorm``, ``GroupNorm``, ``InstanceNorm``
and ``RMSNorm`` take flax.nnx's constructor (positional ``num_features``,
keyword ``rngs``, the same fields, defaults and ``*_metadata``), create the
same variables (``nnx.Param`` ``scale``/``bias`` drawn from
``rngs.params()`` in flax's order, ``nnx.BatchStat`` ``mean``/``var``) and
take the same call arguments (``use_running_average``, ``mask``). They work
under ``nnx.jit``, ``nnx.grad``, ``nnx.vmap``, ``nnx.scan``,
``nnx.split``/``nnx.merge``, ``model.train()``/``model.eval()`` and
``nnx.view``.

They compute with the same functions as the linen modules
(:func:`jaxnorm.batch_norm`'s core, :func:`jaxnorm.layer_norm`, …), so linen
and NNX agree bit for bit, and they keep jaxnorm's differences from flax:

* ``use_fast_variance`` defaults to False: the variance is computed stably.
  flax's default ``E[x²] − E[x]²`` loses all precision when ``|mean| ≫ std``.
* Cross-device statistics (``axis_name``) merge counts, sums and centred sums
  of squares, so they are exact when devices hold different counts.
* :class:`GroupNorm` takes a ``channel_axis`` (NHWC and NCHW).
* :class:`BatchNorm` takes ``virtual_batch_size`` (ghost batch norm) and
  ``running_stats`` (EMA, cumulative average or frozen), and keeps its
  running statistics in float32 (``force_float32_reductions``).
* Bad arguments raise errors that name the argument and the valid choices.

jaxnorm's own normalizers exist here too — :class:`BatchRenorm`,
:class:`EvoNormB0`, :class:`EvoNormS0`, :class:`FilterResponseNorm` —
with the linen modules' fields after ``num_features`` and the same
functions underneath, and :class:`StandardizedConv` is a drop-in for
``nnx.Conv``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes as _nnx_dtypes
from jax.nn import initializers

from jaxnorm import _axes
from jaxnorm import _batch_norm
from jaxnorm import _batch_renorm as _batch_renorm_lib
from jaxnorm import _evonorm as _evonorm_lib
from jaxnorm import _filter_response as _filter_response_lib
from jaxnorm import _functional as F
from jaxnorm import _modules as _modules_lib
from jaxnorm import _stateful
from jaxnorm._weight_standardization import standardize_weight

Array = jax.Array
Initializer = Any

__all__ = (
  "BatchNorm",
  "BatchRenorm",
  "EvoNormB0",
  "EvoNormS0",
  "FilterResponseNorm",
  "GroupNorm",
  "InstanceNorm",
  "LayerNorm",
  "RMSNorm",
  "StandardizedConv",
)

_NO_METADATA: Mapping[str, Any] = MappingProxyType({})


def _features(num_features, owner: str) -> tuple[int, ...]:
  """``num_features`` as the parameter shape; a positive int (or a tuple of
  them, for several feature axes)."""
  shape = num_features if isinstance(num_features, tuple) else (num_features,)
  if not shape or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
    raise ValueError(
      f"{owner}: num_features={num_features!r}; expected a positive integer (the size of the feature axis)."
    )
  return shape


def _feature_params(
  owner: nnx.Module,
  shape,
  *,
  rngs: nnx.Rngs,
  use_scale: bool,
  use_bias: bool,
  scale_init,
  bias_init,
  param_dtype,
  scale_metadata,
  bias_metadata,
) -> None:
  """``scale`` then ``bias`` as flax.nnx creates them: each an ``nnx.Param``
  from its own ``rngs.params()`` key, or ``None``."""
  owner.scale = (
    nnx.Param(scale_init(rngs.params(), shape, param_dtype), **scale_metadata) if use_scale else nnx.data(None)
  )
  owner.bias = nnx.Param(bias_init(rngs.params(), shape, param_dtype), **bias_metadata) if use_bias else nnx.data(None)


def _value(variable):
  return None if variable is None else variable[...]


def _running_stat(init, shape, force_float32_reductions: bool, param_dtype):
  """An ``nnx.BatchStat`` in float32 (or ``param_dtype`` without
  ``force_float32_reductions``), as the linen modules keep them."""
  return nnx.BatchStat(init(shape, jnp.float32 if force_float32_reductions else param_dtype))


class _ModeMixin:
  """``set_view`` for ``nnx.view(model, use_running_average=...)``."""

  def set_view(self, use_running_average: bool | None = None):
    if use_running_average is not None:
      self.use_running_average = use_running_average


class BatchNorm(_ModeMixin, nnx.Module):
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
      adds a ``count`` BatchStat) or ``"frozen"`` (normalize with the running
      statistics in training too and never update them).
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
    bias_metadata: Mapping[str, Any] = _NO_METADATA,
    scale_metadata: Mapping[str, Any] = _NO_METADATA,
    force_float32_reductions: bool = True,
    virtual_batch_size: int | None = None,
    running_stats: str = "ema",
  ):
    owner = "BatchNorm"
    _axes.check_choice(running_stats, _batch_norm.RUNNING_STATS, name="running_stats", owner=owner)
    shape = _features(num_features, owner)
    self.mean = _running_stat(jnp.zeros, shape, force_float32_reductions, param_dtype)
    self.var = _running_stat(jnp.ones, shape, force_float32_reductions, param_dtype)
    self.count = nnx.BatchStat(jnp.zeros((), jnp.int32)) if running_stats == "cumulative" else nnx.data(None)
    _feature_params(
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

  def __call__(self, x, use_running_average: bool | None = None, *, mask: Array | None = None):
    """Normalizes ``x``; in training, updates ``mean``, ``var`` (and ``count``).

    Args:
      x: the input.
      use_running_average: overrides the attribute of the same name.
      mask: optional boolean mask broadcastable to ``x``: which elements the
        statistics use.
    """
    return _stateful.nnx_apply(_modules_lib.BATCH_NORM, self, x, use_running_average, mask)


class _PerExampleNorm(nnx.Module):
  """The constructor plumbing LayerNorm, RMSNorm, InstanceNorm and GroupNorm
  share: parameters as flax.nnx creates them, and the engine's keyword
  arguments."""

  def _init_common(
    self,
    num_features,
    owner,
    *,
    rngs,
    use_scale,
    use_bias,
    scale_init,
    bias_init,
    param_dtype,
    scale_metadata,
    bias_metadata,
    **fields,
  ):
    shape = _features(num_features, owner)
    _feature_params(
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
    self.param_dtype = param_dtype
    self.use_scale = use_scale
    self.use_bias = use_bias
    for name, value in fields.items():
      setattr(self, name, value)

  def _promoted(self, x):
    return self.promote_dtype((x, _value(self.scale), _value(self.bias)), dtype=self.dtype)

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
  r"""Layer normalization, a drop-in for ``flax.nnx.LayerNorm``:
  :math:`y = \gamma (x - \mu)/\sqrt{\sigma^2 + \epsilon} + \beta` with
  statistics over ``reduction_axes`` and parameters over ``feature_axes``.
  ``use_fast_variance`` defaults to False (stable)."""

  def __init__(
    self,
    num_features: int,
    *,
    epsilon: float = 1e-6,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    use_bias: bool = True,
    use_scale: bool = True,
    bias_init: Initializer = initializers.zeros,
    scale_init: Initializer = initializers.ones,
    reduction_axes: _axes.Axes = -1,
    feature_axes: _axes.Axes = -1,
    axis_name: Any = None,
    axis_index_groups: Any = None,
    use_fast_variance: bool = False,
    promote_dtype: Any = _nnx_dtypes.promote_dtype,
    rngs: nnx.Rngs,
    bias_metadata: Mapping[str, Any] = _NO_METADATA,
    scale_metadata: Mapping[str, Any] = _NO_METADATA,
    force_float32_reductions: bool = True,
  ):
    self._init_common(
      num_features,
      "LayerNorm",
      rngs=rngs,
      use_scale=use_scale,
      use_bias=use_bias,
      scale_init=scale_init,
      bias_init=bias_init,
      param_dtype=param_dtype,
      scale_metadata=scale_metadata,
      bias_metadata=bias_metadata,
      epsilon=epsilon,
      dtype=dtype,
      reduction_axes=reduction_axes,
      feature_axes=feature_axes,
      axis_name=axis_name,
      axis_index_groups=axis_index_groups,
      use_fast_variance=use_fast_variance,
      promote_dtype=promote_dtype,
      force_float32_reductions=force_float32_reductions,
    )

  def __call__(self, x, *, mask: Array | None = None):
    x, scale, bias = self._promoted(x)
    return F.layer_norm(
      x,
      scale,
      bias,
      reduction_axes=self.reduction_axes,
      feature_axes=self.feature_axes,
      use_fast_variance=self.use_fast_variance,
      **self._engine_kwargs(mask),
    )


class RMSNorm(_PerExampleNorm):
  r"""RMS normalization, a drop-in for ``flax.nnx.RMSNorm``:
  :math:`y = \gamma\,x/\sqrt{\mathrm{E}[x^2] + \epsilon}` over
  ``reduction_axes``. ``use_fast_variance`` is accepted for compatibility and
  has no effect (there is no mean to subtract)."""

  def __init__(
    self,
    num_features: int,
    *,
    epsilon: float = 1e-6,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    use_scale: bool = True,
    scale_init: Initializer = initializers.ones,
    reduction_axes: _axes.Axes = -1,
    feature_axes: _axes.Axes = -1,
    axis_name: Any = None,
    axis_index_groups: Any = None,
    use_fast_variance: bool = False,
    promote_dtype: Any = _nnx_dtypes.promote_dtype,
    rngs: nnx.Rngs,
    scale_metadata: Mapping[str, Any] = _NO_METADATA,
    force_float32_reductions: bool = True,
  ):
    self._init_common(
      num_features,
      "RMSNorm",
      rngs=rngs,
      use_scale=use_scale,
      use_bias=False,
      scale_init=scale_init,
      bias_init=None,
      param_dtype=param_dtype,
      scale_metadata=scale_metadata,
      bias_metadata=_NO_METADATA,
      epsilon=epsilon,
      dtype=dtype,
      reduction_axes=reduction_axes,
      feature_axes=feature_axes,
      axis_name=axis_name,
      axis_index_groups=axis_index_groups,
      use_fast_variance=use_fast_variance,
      promote_dtype=promote_dtype,
      force_float32_reductions=force_float32_reductions,
    )
    del self.bias  # flax.nnx's RMSNorm has no bias attribute

  def _promoted(self, x):
    return self.promote_dtype((x, _value(self.scale)), dtype=self.dtype)

  def __call__(self, x, mask: Array | None = None):
    x, scale = self._promoted(x)
    return F.rms_norm(
      x, scale, reduction_axes=self.reduction_axes, feature_axes=self.feature_axes, **self._engine_kwargs(mask)
    )


class InstanceNorm(_PerExampleNorm):
  r"""Instance normalization, a drop-in for ``flax.nnx.InstanceNorm``:
  statistics per example (leading axis) and per feature, over all other
  axes. ``feature_axes`` may be any non-leading axes (NHWC or NCHW)."""

  def __init__(
    self,
    num_features: int,
    *,
    epsilon: float = 1e-6,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    use_bias: bool = True,
    use_scale: bool = True,
    bias_init: Initializer = initializers.zeros,
    scale_init: Initializer = initializers.ones,
    feature_axes: _axes.Axes = -1,
    axis_name: Any = None,
    axis_index_groups: Any = None,
    use_fast_variance: bool = False,
    promote_dtype: Any = _nnx_dtypes.promote_dtype,
    rngs: nnx.Rngs,
    bias_metadata: Mapping[str, Any] = _NO_METADATA,
    scale_metadata: Mapping[str, Any] = _NO_METADATA,
    force_float32_reductions: bool = True,
  ):
    self._init_common(
      num_features,
      "InstanceNorm",
      rngs=rngs,
      use_scale=use_scale,
      use_bias=use_bias,
      scale_init=scale_init,
      bias_init=bias_init,
      param_dtype=param_dtype,
      scale_metadata=scale_metadata,
      bias_metadata=bias_metadata,
      epsilon=epsilon,
      dtype=dtype,
      feature_axes=feature_axes,
      axis_name=axis_name,
      axis_index_groups=axis_index_groups,
      use_fast_variance=use_fast_variance,
      promote_dtype=promote_dtype,
      force_float32_reductions=force_float32_reductions,
    )

  def __call__(self, x, *, mask: Array | None = None):
    x, scale, bias = self._promoted(x)
    return F.instance_norm(
      x,
      scale,
      bias,
      feature_axes=self.feature_axes,
      batch_axis=0,
      use_fast_variance=self.use_fast_variance,
      **self._engine_kwargs(mask),
    )


class GroupNorm(_PerExampleNorm):
  r"""Group normalization, a drop-in for ``flax.nnx.GroupNorm``.

  Channels split into ``num_groups`` groups (or groups of ``group_size``);
  each group of each example is standardized over its channels and the
  other ``reduction_axes`` (default: all but the leading one). Unlike flax,
  the channels may sit on any axis: ``channel_axis=1`` normalizes NCHW
  without transposes.

  References:
    Wu & He, `Group Normalization <https://arxiv.org/abs/1803.08494>`_, 2018.
  """

  def __init__(
    self,
    num_features: int,
    num_groups: int | None = 32,
    group_size: int | None = None,
    *,
    epsilon: float = 1e-6,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    use_bias: bool = True,
    use_scale: bool = True,
    bias_init: Initializer = initializers.zeros,
    scale_init: Initializer = initializers.ones,
    reduction_axes: _axes.Axes | None = None,
    axis_name: Any = None,
    axis_index_groups: Any = None,
    use_fast_variance: bool = False,
    promote_dtype: Any = _nnx_dtypes.promote_dtype,
    rngs: nnx.Rngs,
    bias_metadata: Mapping[str, Any] = _NO_METADATA,
    scale_metadata: Mapping[str, Any] = _NO_METADATA,
    force_float32_reductions: bool = True,
    channel_axis: int = -1,
  ):
    owner = "GroupNorm"
    (channels,) = _features(num_features, owner)
    # Validate before creating parameters; resolves num_groups and group_size as flax.nnx stores them.
    self.num_groups, self.group_size = _axes.resolve_groups(channels, num_groups, group_size, owner=owner)
    self._init_common(
      num_features,
      owner,
      rngs=rngs,
      use_scale=use_scale,
      use_bias=use_bias,
      scale_init=scale_init,
      bias_init=bias_init,
      param_dtype=param_dtype,
      scale_metadata=scale_metadata,
      bias_metadata=bias_metadata,
      epsilon=epsilon,
      dtype=dtype,
      reduction_axes=reduction_axes,
      axis_name=axis_name,
      axis_index_groups=axis_index_groups,
      use_fast_variance=use_fast_variance,
      promote_dtype=promote_dtype,
      force_float32_reductions=force_float32_reductions,
      channel_axis=channel_axis,
    )

  def __call__(self, x, *, mask: Array | None = None):
    x, scale, bias = self._promoted(x)
    return F.group_norm(
      x,
      scale,
      bias,
      num_groups=self.num_groups,
      group_size=None,
      channel_axis=self.channel_axis,
      reduction_axes=self.reduction_axes,
      use_fast_variance=self.use_fast_variance,
      **self._engine_kwargs(mask),
    )


# jaxnorm's own normalizers, with the linen modules' fields (after
# ``num_features``; ``rngs`` keyword) and the same functions underneath.


def _extra_param(init, shape, param_dtype, rngs: nnx.Rngs) -> nnx.Param:
  return nnx.Param(init(rngs.params(), shape, param_dtype))


class BatchRenorm(_ModeMixin, nnx.Module):
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
    _batch_renorm_lib._check_schedule(r_max, d_max, warmup_delay, r_max_warmup_steps, d_max_warmup_steps, owner=owner)
    shape = _features(num_features, owner)
    self.mean = _running_stat(jnp.zeros, shape, force_float32_reductions, param_dtype)
    self.var = _running_stat(jnp.ones, shape, force_float32_reductions, param_dtype)
    self.steps = nnx.BatchStat(jnp.zeros((), jnp.int32))
    _feature_params(
      self,
      shape,
      rngs=rngs,
      use_scale=use_scale,
      use_bias=use_bias,
      scale_init=scale_init,
      bias_init=bias_init,
      param_dtype=param_dtype,
      scale_metadata=_NO_METADATA,
      bias_metadata=_NO_METADATA,
    )
    self.num_features, self.use_running_average, self.axis = num_features, use_running_average, axis
    self.momentum, self.epsilon, self.dtype, self.param_dtype = momentum, epsilon, dtype, param_dtype
    self.use_bias, self.use_scale = use_bias, use_scale
    self.axis_name, self.axis_index_groups = axis_name, axis_index_groups
    self.use_fast_variance, self.force_float32_reductions = use_fast_variance, force_float32_reductions
    self.r_max, self.d_max, self.warmup_delay = r_max, d_max, warmup_delay
    self.r_max_warmup_steps, self.d_max_warmup_steps = r_max_warmup_steps, d_max_warmup_steps

  def __call__(self, x, use_running_average: bool | None = None, *, mask: Array | None = None):
    """Normalizes ``x``; in training, updates ``mean``, ``var`` and ``steps``."""
    return _stateful.nnx_apply(_batch_renorm_lib.BATCH_RENORM, self, x, use_running_average, mask)


class EvoNormB0(_ModeMixin, nnx.Module):
  r"""EvoNorm-B0 (:class:`jaxnorm.EvoNormB0` for flax.nnx): batch variance in
  training, the running ``var`` (BatchStat, flax's momentum convention) in
  evaluation; see :func:`jaxnorm.evonorm_b0`. Params ``scale``, ``bias``,
  ``v``. Replaces the normalization and its activation."""

  def __init__(
    self,
    num_features: int,
    *,
    use_running_average: bool | None = False,
    momentum: float = 0.99,
    epsilon: float = 1e-5,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    use_bias: bool = True,
    use_scale: bool = True,
    bias_init: Initializer = initializers.zeros,
    scale_init: Initializer = initializers.ones,
    v_init: Initializer = initializers.ones,
    channel_axis: int = -1,
    axis_name: Any = None,
    axis_index_groups: Any = None,
    use_fast_variance: bool = False,
    force_float32_reductions: bool = True,
    rngs: nnx.Rngs,
  ):
    shape = _features(num_features, "EvoNormB0")
    self.var = _running_stat(jnp.ones, shape, force_float32_reductions, param_dtype)
    _feature_params(
      self,
      shape,
      rngs=rngs,
      use_scale=use_scale,
      use_bias=use_bias,
      scale_init=scale_init,
      bias_init=bias_init,
      param_dtype=param_dtype,
      scale_metadata=_NO_METADATA,
      bias_metadata=_NO_METADATA,
    )
    self.v = _extra_param(v_init, shape, param_dtype, rngs)
    self.num_features, self.use_running_average, self.momentum = num_features, use_running_average, momentum
    self.epsilon, self.dtype, self.param_dtype = epsilon, dtype, param_dtype
    self.use_bias, self.use_scale, self.channel_axis = use_bias, use_scale, channel_axis
    self.axis_name, self.axis_index_groups = axis_name, axis_index_groups
    self.use_fast_variance, self.force_float32_reductions = use_fast_variance, force_float32_reductions

  def __call__(self, x, use_running_average: bool | None = None, *, mask: Array | None = None):
    return _stateful.nnx_apply(_evonorm_lib.EVONORM_B0, self, x, use_running_average, mask)


class EvoNormS0(nnx.Module):
  r"""EvoNorm-S0 (:class:`jaxnorm.EvoNormS0` for flax.nnx): batch-independent,
  group statistics as in group norm; see :func:`jaxnorm.evonorm_s0`. Params
  ``scale``, ``bias``, ``v``."""

  def __init__(
    self,
    num_features: int,
    num_groups: int | None = 32,
    group_size: int | None = None,
    *,
    epsilon: float = 1e-5,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    use_bias: bool = True,
    use_scale: bool = True,
    bias_init: Initializer = initializers.zeros,
    scale_init: Initializer = initializers.ones,
    v_init: Initializer = initializers.ones,
    channel_axis: int = -1,
    use_fast_variance: bool = False,
    force_float32_reductions: bool = True,
    rngs: nnx.Rngs,
  ):
    owner = "EvoNormS0"
    (channels,) = _features(num_features, owner)
    _axes.resolve_groups(channels, num_groups, group_size, owner=owner)
    _feature_params(
      self,
      (channels,),
      rngs=rngs,
      use_scale=use_scale,
      use_bias=use_bias,
      scale_init=scale_init,
      bias_init=bias_init,
      param_dtype=param_dtype,
      scale_metadata=_NO_METADATA,
      bias_metadata=_NO_METADATA,
    )
    self.v = _extra_param(v_init, (channels,), param_dtype, rngs)
    self.num_features, self.num_groups, self.group_size = num_features, num_groups, group_size
    self.epsilon, self.dtype, self.param_dtype = epsilon, dtype, param_dtype
    self.use_bias, self.use_scale, self.channel_axis = use_bias, use_scale, channel_axis
    self.use_fast_variance, self.force_float32_reductions = use_fast_variance, force_float32_reductions

  def __call__(self, x, *, mask: Array | None = None):
    owner = "EvoNormS0"
    _axes.check_floating(x, owner=owner)
    c, _ = _filter_response_lib._per_example_channel_axes(x, self.channel_axis, owner)
    return _evonorm_lib.evonorm_s0(
      x,
      _value(self.scale),
      _value(self.bias),
      self.v[...],
      num_groups=self.num_groups,
      group_size=self.group_size,
      channel_axis=c,
      epsilon=self.epsilon,
      mask=mask,
      use_fast_variance=self.use_fast_variance,
      dtype=self.dtype,
      force_float32_reductions=self.force_float32_reductions,
    )


class FilterResponseNorm(nnx.Module):
  r"""Filter response normalization with TLU
  (:class:`jaxnorm.FilterResponseNorm` for flax.nnx), per example; see
  :func:`jaxnorm.filter_response_norm`. Params ``scale``, ``bias``, ``tau``
  and, with ``learn_epsilon``, ``epsilon_param`` (a scalar; ε = ``epsilon``
  + its absolute value; linen names it ``params/epsilon``, which NNX cannot,
  as ``epsilon`` is the field)."""

  def __init__(
    self,
    num_features: int,
    *,
    epsilon: float = 1e-6,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    use_bias: bool = True,
    use_scale: bool = True,
    use_tlu: bool = True,
    bias_init: Initializer = initializers.zeros,
    scale_init: Initializer = initializers.ones,
    tau_init: Initializer = initializers.zeros,
    learn_epsilon: bool = False,
    epsilon_init: Initializer = initializers.constant(1e-4),  # noqa: B008 (flax.nnx signatures do this too)
    channel_axis: int = -1,
    force_float32_reductions: bool = True,
    rngs: nnx.Rngs,
  ):
    shape = _features(num_features, "FilterResponseNorm")
    _feature_params(
      self,
      shape,
      rngs=rngs,
      use_scale=use_scale,
      use_bias=use_bias,
      scale_init=scale_init,
      bias_init=bias_init,
      param_dtype=param_dtype,
      scale_metadata=_NO_METADATA,
      bias_metadata=_NO_METADATA,
    )
    self.tau = _extra_param(tau_init, shape, param_dtype, rngs) if use_tlu else nnx.data(None)
    self.epsilon_param = _extra_param(epsilon_init, (), param_dtype, rngs) if learn_epsilon else nnx.data(None)
    self.num_features, self.epsilon, self.dtype, self.param_dtype = num_features, epsilon, dtype, param_dtype
    self.use_bias, self.use_scale, self.use_tlu, self.learn_epsilon = use_bias, use_scale, use_tlu, learn_epsilon
    self.channel_axis, self.force_float32_reductions = channel_axis, force_float32_reductions

  def __call__(self, x, *, mask: Array | None = None):
    owner = "FilterResponseNorm"
    _axes.check_floating(x, owner=owner)
    c, _ = _filter_response_lib._per_example_channel_axes(x, self.channel_axis, owner)
    return _filter_response_lib.filter_response_norm(
      x,
      _value(self.scale),
      _value(self.bias),
      _value(self.tau),
      epsilon=self.epsilon,
      learned_epsilon=_value(self.epsilon_param),
      channel_axis=c,
      mask=mask,
      dtype=self.dtype,
      force_float32_reductions=self.force_float32_reductions,
    )


class StandardizedConv(nnx.Conv):
  r"""A drop-in for ``flax.nnx.Conv`` whose kernel is standardized per output
  channel over its fan-in before every call (:class:`jaxnorm.StandardizedConv`
  for flax.nnx; see :func:`jaxnorm.standardize_weight`). ``nnx.Conv``'s
  arguments keep their meaning; ``epsilon``, ``scaled`` (scaled weight
  standardization, with a learned ``gain`` Param per output channel),
  ``activation_gain`` and ``gain_init`` are added after them.

  ``nnx.Conv`` reads its kernel, masks it and hands ``(inputs, kernel,
  bias)`` to its ``promote_dtype`` right before the convolution. For the
  length of each call that hook standardizes the kernel first, with this
  module's current ``gain``: the one hook that keeps ``nnx.Conv``'s whole
  forward pass (padding, dilation, groups, masks) unchanged.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size,
    strides=1,
    *,
    epsilon: float = 1e-6,
    scaled: bool = False,
    activation_gain: float = 1.0,
    gain_init: Initializer = initializers.ones,
    rngs: nnx.Rngs,
    **conv_kwargs,
  ):
    super().__init__(in_features, out_features, kernel_size, strides, rngs=rngs, **conv_kwargs)
    self.gain = _extra_param(gain_init, (out_features,), self.param_dtype, rngs) if scaled else nnx.data(None)
    self.epsilon, self.scaled, self.activation_gain = epsilon, scaled, activation_gain

  def __call__(self, inputs, *args, **kwargs):
    promote, gain, mask = self.promote_dtype, _value(self.gain), self.mask

    def standardizing_promote(arrays, dtype=None):
      x, kernel, bias = arrays
      kernel = standardize_weight(
        kernel,
        gain,
        scaled=self.scaled,
        activation_gain=self.activation_gain,
        epsilon=self.epsilon,
        mask=mask,
        owner="StandardizedConv",
      )
      if mask is not None:
        kernel = kernel * mask  # nnx.Conv masked before the hook; keep masked taps at zero
      return promote((x, kernel, bias), dtype=dtype)

    self.promote_dtype = standardizing_promote
    try:
      return super().__call__(inputs, *args, **kwargs)
    finally:
      self.promote_dtype = promote
