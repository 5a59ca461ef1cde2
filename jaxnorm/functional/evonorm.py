"""EvoNorm-B0 and EvoNorm-S0: normalization and activation in one layer.

Liu et al. (2020) searched for layers that fuse the normalization and the
nonlinearity. B0 divides by the larger of a batch standard deviation and an
instance-level term (it keeps a running variance, like batch norm); S0 is
batch-independent: a Swish-like numerator over a group standard deviation.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxnorm import _stateful
from jaxnorm._core import axes as _axes
from jaxnorm._core.moments import Moments
from jaxnorm._core.moments import moments
from jaxnorm._core.normalize import normalize
from jaxnorm._core.normalize import output_dtype
from jaxnorm._core.running_stats import ema

Array = jax.Array


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
  x, (scale, bias, v, running), mask, spatial, (c,) = _axes.check_channels(
    owner,
    x,
    {"scale": scale, "bias": bias, "v": v, "running_var": running_var},
    mask,
    channel_axis=channel_axis,
    running_var=running_var,
  )
  features = (x.shape[c],)
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
    batch_var = running
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
  (xg, (scale, bias, v), mask, reduced, _), _ = _axes.check_grouped(
    owner,
    x,
    {"scale": scale, "bias": bias, "v": v},
    mask,
    channel_axis=channel_axis,
    num_groups=num_groups,
    group_size=group_size,
    per_example=True,
  )
  stats = moments(
    xg,
    reduced,
    mask=mask,
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
  return y.reshape(jnp.shape(x))


def _evonorm_b0_compute(module, x, params, state, *, use_running_average, mask, axis_name, dtype):
  (c,) = _channel_axis(module, x)
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
    dtype=dtype,
    force_float32_reductions=module.force_float32_reductions,
    owner="EvoNormB0",
  )
  return y, {"var": new_var}, per_batch


def _channel_axis(module, x) -> tuple[int]:
  c, _ = _axes.per_example_channel_axes(jnp.ndim(x), module.channel_axis, "EvoNormB0")
  return (c,)


# Running state: the batch variance's average (evaluation uses it).
EVONORM_B0 = _stateful.StatefulNorm(
  owner="EvoNormB0",
  params=lambda module: _stateful.scale_and_bias(module) + (("v", "v_init"),),
  state=lambda module: (_stateful.RunningStat("var", jnp.ones),),
  feature_axes=_channel_axis,
  compute=_evonorm_b0_compute,
)
