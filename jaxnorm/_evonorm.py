"""EvoNorm-B0 and EvoNorm-S0: normalization and activation in one layer.

Liu et al. (2020) searched for layers that fuse the normalization and the
nonlinearity. B0 divides by the larger of a batch standard deviation and an
instance-level term (it keeps a running variance, like batch norm); S0 is
batch-independent: a Swish-like numerator over a group standard deviation.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.nn import initializers

from jaxnorm import _axes
from jaxnorm import _stateful
from jaxnorm._batch_norm import check_running_shapes
from jaxnorm._batch_norm import ema
from jaxnorm._filter_response import _per_example_channel_axes
from jaxnorm._functional import _param
from jaxnorm._functional import _prepare
from jaxnorm._functional import group_layout
from jaxnorm._functional import normalize
from jaxnorm._functional import output_dtype
from jaxnorm._modules import _feature_params
from jaxnorm._modules import scale_and_bias
from jaxnorm._moments import Moments
from jaxnorm._moments import moments

Array = jax.Array
Initializer = Any


def _evonorm_b0(
  x: Array,
  scale: Array | None,
  bias: Array | None,
  v: Array | None,
  running_var: Array | None,
  *,
  use_running_average: bool,
  channel_axis: int,
  momentum: float,
  epsilon: float,
  mask: Array | None,
  axis_name: Any,
  axis_index_groups: Any,
  use_fast_variance: bool,
  dtype: Any,
  force_float32_reductions: bool,
  owner: str,
) -> tuple[Array, Array | None, Moments | None]:
  """:func:`evonorm_b0`, also returning the batch moments (None at eval)."""
  x = _prepare(x, owner)
  c, spatial = _per_example_channel_axes(x, channel_axis, owner)
  features = (x.shape[c],)
  check_running_shapes(owner, x.shape, features, channel_axis, running_var=running_var)
  scale, bias, v = (
    _param(p, x.shape, (c,), name=n, owner=owner) for p, n in ((scale, "scale"), (bias, "bias"), (v, "v"))
  )
  mask = _axes.check_mask(mask, x.shape, owner=owner)
  engine = dict(
    use_fast_variance=use_fast_variance,
    dtype=dtype,
    force_float32_reductions=force_float32_reductions,
    keepdims=True,
  )
  per_batch = None
  new_var = running_var
  if use_running_average:
    if running_var is None:
      raise ValueError(
        f"{owner}: use_running_average=True needs running_var; pass it or set use_running_average=False."
      )
    batch_var = _param(running_var, x.shape, (c,), name="running_var", owner=owner)
  else:
    stats = moments(
      x,
      (0,) + spatial,
      mask=mask,
      axis_name=axis_name,
      axis_index_groups=axis_index_groups,
      **engine,
    )
    batch_var = stats.var
    per_batch = Moments(*(s.reshape((1,) + features) for s in stats))
    new_var = stats.var.reshape(features)
    if running_var is not None:
      new_var = ema(running_var, new_var, momentum)
  instance = moments(x, spatial, mask=mask, **engine)
  out = output_dtype(x, scale, bias, v, dtype=dtype)
  numerator_gain = 1.0 if v is None else v
  den = jnp.maximum(
    jnp.sqrt(batch_var + epsilon),
    x * numerator_gain + jnp.sqrt(instance.var + epsilon),
  )
  y = x / den
  if scale is not None:
    y = y * scale
  if bias is not None:
    y = y + bias
  return jnp.asarray(y, out), new_var, per_batch


def evonorm_b0(
  x: Array,
  scale: Array | None = None,
  bias: Array | None = None,
  v: Array | None = None,
  running_var: Array | None = None,
  *,
  use_running_average: bool = False,
  channel_axis: int = -1,
  momentum: float = 0.99,
  epsilon: float = 1e-5,
  mask: Array | None = None,
  axis_name: Any = None,
  axis_index_groups: Any = None,
  use_fast_variance: bool = False,
  dtype: Any = None,
  force_float32_reductions: bool = True,
) -> tuple[Array, Array]:
  r"""EvoNorm-B0 (Liu et al., 2020).

  .. math:: y = \frac{x}{\max\big(\sqrt{s^2_{b,w,h}(x) + \epsilon},\
     v\,x + \sqrt{s^2_{w,h}(x) + \epsilon}\big)}\,\gamma + \beta

  with :math:`s^2_{b,w,h}` the batch variance of each channel (over the
  batch and spatial axes, and ``axis_name`` devices; the running variance in
  evaluation) and :math:`s^2_{w,h}` the instance variance of each channel of
  each example. ``v``, ``γ``, ``β`` are per channel (``v = None``: 1).

  Args:
    x: input, ``(N, H, W, C)`` or ``(N, C, H, W)`` with ``channel_axis=1``.
    scale, bias, v: ``γ``, ``β``, ``v`` of shape ``(C,)``, or None.
    running_var: running batch variance ``(C,)``; required in evaluation.
    use_running_average: evaluation mode.
    channel_axis: the channel axis.
    momentum: EMA decay (flax's convention).
    epsilon: added to both variances.
    mask, axis_name, axis_index_groups, use_fast_variance, dtype, force_float32_reductions: as in :func:`jaxnorm.batch_norm`.

  Returns:
    ``(y, var)``: the output and the updated running variance (the batch
    variance when ``running_var`` is None; unchanged in evaluation).

  References:
    Liu, Brock, Simonyan & Le, `Evolving Normalization-Activation Layers
    <https://arxiv.org/abs/2004.02967>`_, 2020.
  """
  y, var, _ = _evonorm_b0(
    x,
    scale,
    bias,
    v,
    running_var,
    use_running_average=use_running_average,
    channel_axis=channel_axis,
    momentum=momentum,
    epsilon=epsilon,
    mask=mask,
    axis_name=axis_name,
    axis_index_groups=axis_index_groups,
    use_fast_variance=use_fast_variance,
    dtype=dtype,
    force_float32_reductions=force_float32_reductions,
    owner="evonorm_b0",
  )
  return y, var


def evonorm_s0(
  x: Array,
  scale: Array | None = None,
  bias: Array | None = None,
  v: Array | None = None,
  *,
  num_groups: int | None = 32,
  group_size: int | None = None,
  channel_axis: int = -1,
  epsilon: float = 1e-5,
  mask: Array | None = None,
  use_fast_variance: bool = False,
  dtype: Any = None,
  force_float32_reductions: bool = True,
) -> Array:
  r"""EvoNorm-S0 (Liu et al., 2020).

  .. math:: y = \frac{x\,\sigma(v\,x)}{\sqrt{s^2_{w,h,c/g}(x) + \epsilon}}\,\gamma + \beta

  with :math:`\sigma` the logistic sigmoid and :math:`s^2_{w,h,c/g}` the
  variance of each group of channels of each example, over the group and the
  spatial axes (the grouping of :func:`jaxnorm.group_norm`). ``v``, ``γ``,
  ``β`` are per channel (``v = None``: 1). Nothing depends on the batch.

  Args:
    x: input, ``(N, H, W, C)`` or ``(N, C, H, W)`` with ``channel_axis=1``.
    scale, bias, v: ``γ``, ``β``, ``v`` of shape ``(C,)``, or None.
    num_groups, group_size: the groups, as in :func:`jaxnorm.group_norm`
      (paper: 32 groups).
    channel_axis: the channel axis.
    epsilon: added to the group variance.
    mask, use_fast_variance, dtype, force_float32_reductions: as in
      :func:`jaxnorm.group_norm`.

  Returns:
    The output, shaped like ``x``.

  References:
    Liu, Brock, Simonyan & Le, `Evolving Normalization-Activation Layers
    <https://arxiv.org/abs/2004.02967>`_, 2020.
  """
  owner = "evonorm_s0"
  x = _prepare(x, owner)
  c, _ = _per_example_channel_axes(x, channel_axis, owner)
  layout = group_layout(
    x.shape,
    num_groups=num_groups,
    group_size=group_size,
    channel_axis=c,
    reduction_axes=None,
    owner=owner,
  )
  scale, bias, v = (
    layout.split(_param(p, x.shape, (c,), name=n, owner=owner)) for p, n in ((scale, "scale"), (bias, "bias"), (v, "v"))
  )
  xg = layout.split(x)
  stats = moments(
    xg,
    layout.reduction_axes,
    mask=layout.split(_axes.check_mask(mask, x.shape, owner=owner)),
    use_fast_variance=use_fast_variance,
    dtype=dtype,
    force_float32_reductions=force_float32_reductions,
    keepdims=True,
  )
  numerator = xg * jax.nn.sigmoid(xg if v is None else v * xg)
  out = output_dtype(x, scale, bias, v, dtype=dtype)
  # x σ(vx) / sqrt(s² + ε) · γ + β: normalization of the numerator, uncentred.
  y = normalize(
    numerator,
    jnp.zeros((), stats.var.dtype),
    stats.var,
    scale,
    bias,
    epsilon=epsilon,
    dtype=out,
  )
  return y.reshape(x.shape)


def _evonorm_b0_compute(module, x, params, state, *, use_running_average, mask, axis_name):
  c, _ = _per_example_channel_axes(x, module.channel_axis, "EvoNormB0")
  y, new_var, per_batch = _evonorm_b0(
    x,
    params["scale"],
    params["bias"],
    params["v"],
    state["var"],
    use_running_average=use_running_average,
    channel_axis=c,
    momentum=module.momentum,
    epsilon=module.epsilon,
    mask=mask,
    axis_name=axis_name,
    axis_index_groups=module.axis_index_groups,
    use_fast_variance=module.use_fast_variance,
    dtype=module.dtype,
    force_float32_reductions=module.force_float32_reductions,
    owner="EvoNormB0",
  )
  return y, {"var": new_var}, per_batch


def _channels(module, x) -> tuple[int, ...]:
  c, _ = _per_example_channel_axes(x, module.channel_axis, "EvoNormB0")
  return (jnp.shape(x)[c],)


# Running state: the batch variance's average (evaluation uses it).
EVONORM_B0 = _stateful.StatefulNorm(
  owner="EvoNormB0",
  params=lambda module: scale_and_bias(module) + (("v", "v_init"),),
  state=lambda module: (_stateful.RunningStat("var", jnp.ones),),
  features=_channels,
  compute=_evonorm_b0_compute,
)


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
  ) -> Array:
    return _stateful.linen_apply(EVONORM_B0, self, x, use_running_average, mask)


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
  def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
    owner = "EvoNormS0"
    _axes.check_floating(x, owner=owner)
    c, _ = _per_example_channel_axes(x, self.channel_axis, owner)
    channels = jnp.shape(x)[c]
    # Validate before creating parameters, so init fails with our message.
    _axes.resolve_groups(channels, self.num_groups, self.group_size, owner=owner)
    scale, bias = _feature_params(self, (channels,), use_scale=self.use_scale, use_bias=self.use_bias)
    v = self.param("v", self.v_init, (channels,), self.param_dtype)
    return evonorm_s0(
      x,
      scale,
      bias,
      v,
      num_groups=self.num_groups,
      group_size=self.group_size,
      channel_axis=c,
      epsilon=self.epsilon,
      mask=mask,
      use_fast_variance=self.use_fast_variance,
      dtype=self.dtype,
      force_float32_reductions=self.force_float32_reductions,
    )
