"""Batch normalization: batch statistics, running averages, ghost batches.

:func:`batch_norm` standardizes each feature over the batch (and spatial)
axes. Two options extend flax's batch norm without changing its defaults:

* ``virtual_batch_size`` (ghost batch norm): statistics over consecutive
  groups of that many examples, as data-parallel BN computes them per device;
* ``running_stats``: how the running averages follow the batch statistics —
  flax's exponential moving average (``"ema"``, the default), PyTorch's
  cumulative average (``"cumulative"``, its ``momentum=None``), or not at all
  (``"frozen"``: training uses the running statistics, like evaluation).

The helpers here (shape checks, the running-average update) are shared with
the other normalizers that keep ``batch_stats``: batch renormalization and
EvoNorm-B0.
"""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxnorm import _axes
from jaxnorm import _reduction_axes
from jaxnorm._functional import _param
from jaxnorm._functional import _prepare
from jaxnorm._functional import moments_and_normalize
from jaxnorm._functional import normalize
from jaxnorm._moments import Moments

Array = jax.Array

RUNNING_STATS = ("ema", "cumulative", "frozen")


class BatchStats(NamedTuple):
  """Running statistics of batch normalization (flax's ``batch_stats``).

  Attributes:
    mean, var: running mean and variance, feature-shaped.
    count: number of batches averaged so far; only kept by the
      ``running_stats="cumulative"`` policy (None otherwise).
  """

  mean: Array
  var: Array
  count: Array | None = None


def check_running_shapes(owner: str, x_shape: tuple[int, ...], feature_shape: tuple[int, ...], axis: Any, **running):
  """Raises ValueError if a running statistic is not feature-shaped."""
  for name, value in running.items():
    if value is not None and jnp.shape(value) != feature_shape:
      raise ValueError(
        f"{owner}: {name} has shape {jnp.shape(value)}; expected the feature "
        f"shape {feature_shape} of axis={axis!r} for an input of shape "
        f"{x_shape}."
      )


def ema(old: Array, new: Array, momentum: float) -> Array:
  """flax's running-average convention: ``momentum · old + (1 − momentum) · new``."""
  return momentum * old + (1 - momentum) * new


def update_running(
  running: BatchStats,
  mean: Array,
  var: Array,
  *,
  running_stats: str = "ema",
  momentum: float = 0.99,
) -> BatchStats:
  r"""The running statistics after one batch with statistics ``mean``, ``var``.

  * ``"ema"`` (flax): :math:`r \leftarrow m\,r + (1 - m)\,b` with ``m =
    momentum``.
  * ``"cumulative"`` (PyTorch's ``momentum=None``): after ``k`` batches,
    :math:`r \leftarrow r + (b - r)/(k + 1)`, the plain average of the batch
    statistics; ``count`` goes from ``k`` to ``k + 1``.
  * ``"frozen"``: unchanged.
  """
  if running_stats == "frozen":
    return running
  if running_stats == "cumulative":
    count = jnp.asarray(0 if running.count is None else running.count)
    weight = 1 / (count + 1)
    return BatchStats(
      running.mean + (mean - running.mean) * weight,
      running.var + (var - running.var) * weight,
      count + 1,
    )
  return BatchStats(ema(running.mean, mean, momentum), ema(running.var, var, momentum), running.count)


def _average_virtual_batches(per_batch: Moments, masked: bool) -> tuple[Array, Array]:
  """Mean over virtual batches (axis 0) of their means and variances.

  With a mask, virtual batches without any masked-in element are left out.
  """
  if per_batch.mean.shape[0] == 1:
    return per_batch.mean[0], per_batch.var[0]
  if not masked:
    return per_batch.mean.mean(0), per_batch.var.mean(0)
  seen = (per_batch.count > 0).astype(per_batch.var.dtype)
  n = jnp.maximum(seen.sum(0), 1)
  return (seen * per_batch.mean).sum(0) / n, (seen * per_batch.var).sum(0) / n


def _batch_norm(
  x: Array,
  scale: Array | None,
  bias: Array | None,
  running: BatchStats | None,
  *,
  use_running_average: bool,
  axis: _axes.Axes,
  momentum: float,
  epsilon: float,
  mask: Array | None,
  axis_name: Any,
  axis_index_groups: Any,
  use_fast_variance: bool,
  dtype: Any,
  force_float32_reductions: bool,
  virtual_batch_size: int | None,
  running_stats: str,
  owner: str,
) -> tuple[Array, BatchStats | None, Moments | None]:
  """:func:`batch_norm`, also returning the moments of each (virtual) batch.

  The moments, shaped ``(num_virtual_batches, *features)``, are what the
  modules report for :func:`jaxnorm.precise_batch_stats`; they are None in
  evaluation mode.
  """
  x = _prepare(x, owner)
  _axes.check_choice(running_stats, RUNNING_STATS, name="running_stats", owner=owner)
  feature_axes = _axes.canonicalize_axes(axis, x.ndim, name="axis", owner=owner)
  feature_shape = tuple(x.shape[a] for a in feature_axes)
  if running is not None:
    check_running_shapes(
      owner,
      x.shape,
      feature_shape,
      axis,
      running_mean=running.mean,
      running_var=running.var,
    )
  scale = _param(scale, x.shape, feature_axes, name="scale", owner=owner)
  bias = _param(bias, x.shape, feature_axes, name="bias", owner=owner)

  if use_running_average or running_stats == "frozen":
    if running is None:
      raise ValueError(
        f"{owner}: use_running_average=True needs running_mean and "
        f"running_var (so does running_stats='frozen'); pass them or set "
        f"use_running_average=False."
      )
    full = tuple(s if a in feature_axes else 1 for a, s in enumerate(x.shape))
    mean, var = (jnp.asarray(s).reshape(full) for s in running[:2])
    y = normalize(x, mean, var, scale, bias, epsilon=epsilon, dtype=dtype)
    return y, running, None

  groups = _axes.check_virtual_batch(x.shape[0], virtual_batch_size, owner=owner)
  if virtual_batch_size is not None and 0 in feature_axes:
    raise ValueError(
      f"{owner}: axis={axis!r} includes the batch axis 0, which "
      f"virtual_batch_size={virtual_batch_size} splits into virtual "
      f"batches; choose feature axes other than 0."
    )
  mask = _axes.check_mask(mask, x.shape, owner=owner)

  def split(a):  # (N, ...) -> (G, N/G, ...); a size-1 leading axis broadcasts
    if a is None:
      return None
    if a.shape[0] == 1:
      return a[None]
    return a.reshape((groups, a.shape[0] // groups) + a.shape[1:])

  # Statistics per virtual batch: reduce every axis of the grouped view but
  # the group axis 0 and the (shifted) feature axes, in one engine call.
  xg = split(x)
  grouped_features = tuple(a + 1 for a in feature_axes)
  reduced = _reduction_axes.batch_norm_axes(xg.ndim, grouped_features)
  y, stats = moments_and_normalize(
    xg,
    split(scale),
    split(bias),
    reduction_axes=reduced,
    feature_axes=grouped_features,
    epsilon=epsilon,
    mask=split(mask),
    axis_name=axis_name,
    axis_index_groups=axis_index_groups,
    use_mean=True,
    use_fast_variance=use_fast_variance,
    dtype=dtype,
    force_float32_reductions=force_float32_reductions,
  )
  y = y.reshape(x.shape)
  per_batch = Moments(*(s.reshape((groups,) + feature_shape) for s in stats))
  mean, var = _average_virtual_batches(per_batch, masked=mask is not None)
  if running is None:
    return y, BatchStats(mean, var), per_batch
  new = update_running(running, mean, var, running_stats=running_stats, momentum=momentum)
  return y, new, per_batch


def batch_norm(
  x: Array,
  scale: Array | None = None,
  bias: Array | None = None,
  running_mean: Array | None = None,
  running_var: Array | None = None,
  *,
  use_running_average: bool = False,
  axis: _axes.Axes = -1,
  momentum: float = 0.99,
  epsilon: float = 1e-5,
  mask: Array | None = None,
  axis_name: Any = None,
  axis_index_groups: Any = None,
  use_fast_variance: bool = False,
  dtype: Any = None,
  force_float32_reductions: bool = True,
  virtual_batch_size: int | None = None,
  running_stats: str = "ema",
  running_count: Array | None = None,
) -> tuple[Array, BatchStats]:
  r"""Batch normalization (Ioffe & Szegedy, 2015), optionally with ghost batches.

  .. math:: y = \gamma\,(x - \mu_B)/\sqrt{\sigma_B^2 + \epsilon} + \beta

  with :math:`\mu_B, \sigma_B^2` the mean and (biased) variance over every
  axis but ``axis`` — and over ``axis_name`` devices when given. In eval
  mode (``use_running_average=True``) the running statistics replace them.

  **Ghost batch norm.** With ``virtual_batch_size=v`` the batch (axis 0) of
  ``N`` examples is split into ``N/v`` consecutive virtual batches, each
  normalized with its own statistics — what data-parallel BN does with ``v``
  examples per device (the per-GPU BN of the Group Normalization paper), on
  one device. The running statistics are updated once, with the mean over
  virtual batches of their means and of their variances: exactly what
  per-device BN followed by averaging ``batch_stats`` across devices gives.
  ``virtual_batch_size=None`` or ``N`` is plain batch norm.

  Args:
    x: input, e.g. ``(N, H, W, C)``.
    scale, bias: optional ``γ``, ``β`` of the feature shape
      ``[x.shape[a] for a in axis]``.
    running_mean, running_var: running statistics, feature-shaped. Required
      when ``use_running_average``; optional in training mode.
    use_running_average: normalize with the running statistics (eval mode).
    axis: feature axis or axes (kept); all other axes are reduced.
    momentum: EMA decay of the running statistics (flax's convention:
      ``new = momentum * old + (1 - momentum) * batch``).
    epsilon: added to the variance.
    mask: optional boolean mask broadcastable to ``x``; statistics use only
      masked-in elements (the output is computed everywhere). Virtual
      batches without a masked-in element do not enter the running average.
    axis_name, axis_index_groups: reduce statistics across devices (SyncBN);
      exact when devices hold different counts. With ``virtual_batch_size``,
      virtual batch ``i`` of every device is reduced together.
    use_fast_variance: one-pass ``E[x²] − E[x]²`` (flax's default; unstable).
    dtype: output dtype (default: promoted dtype of ``x``, ``scale``, ``bias``).
    force_float32_reductions: accumulate statistics in at least float32.
    virtual_batch_size: examples per virtual batch (must divide ``N``).
    running_stats: ``"ema"``, ``"cumulative"`` or ``"frozen"``; see
      :func:`update_running`. ``"frozen"`` normalizes with the running
      statistics even in training and returns them unchanged.
    running_count: batches averaged so far (``"cumulative"`` only; default 0).

  Returns:
    ``(y, BatchStats(mean, var, count))``: in training mode the updated
    running statistics (or the batch statistics themselves when no running
    statistics were given); in eval mode the running statistics unchanged.
    ``count`` is the updated ``running_count`` (``"cumulative"``) or None.

  References:
    Ioffe & Szegedy, `Batch Normalization: Accelerating Deep Network Training
    by Reducing Internal Covariate Shift <https://arxiv.org/abs/1502.03167>`_,
    2015. Hoffer, Hubara & Soudry, `Train longer, generalize better: closing
    the generalization gap in large batch training of neural networks
    <https://arxiv.org/abs/1705.08741>`_, 2017 (ghost batch norm).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (8, 4))
    >>> y, stats = batch_norm(x, running_mean=jnp.zeros(4), running_var=jnp.ones(4))
    >>> y.shape, stats.mean.shape
    ((8, 4), (4,))
    >>> y, _ = batch_norm(x, virtual_batch_size=2)  # 4 ghost batches of 2
  """
  running = None
  if running_mean is not None and running_var is not None:
    running = BatchStats(running_mean, running_var, running_count)
  y, new, _ = _batch_norm(
    x,
    scale,
    bias,
    running,
    use_running_average=use_running_average,
    axis=axis,
    momentum=momentum,
    epsilon=epsilon,
    mask=mask,
    axis_name=axis_name,
    axis_index_groups=axis_index_groups,
    use_fast_variance=use_fast_variance,
    dtype=dtype,
    force_float32_reductions=force_float32_reductions,
    virtual_batch_size=virtual_batch_size,
    running_stats=running_stats,
    owner="batch_norm",
  )
  return y, new


def stored_running_value(new: Array, stored_dtype) -> Array:
  """A running statistic's new value in the dtype it is stored in.

  The stored dtype is kept (a float32 average stays float32 whatever the
  input dtype), except that a complex value is never cast to a real dtype:
  BatchNorm on complex inputs keeps a complex running mean, as flax does,
  instead of silently dropping its imaginary part.
  """
  if jnp.iscomplexobj(new) and not jnp.issubdtype(stored_dtype, jnp.complexfloating):
    return new.astype(jnp.promote_types(stored_dtype, new.dtype))
  return new.astype(stored_dtype)
