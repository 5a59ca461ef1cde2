"""Batch normalization: batch statistics, running averages, ghost batches.

:func:`batch_norm` standardizes each feature over the batch (and spatial)
axes. Two options extend flax's batch norm without changing its defaults:

* ``virtual_batch_size`` (ghost batch norm): statistics over consecutive
  groups of that many examples, as data-parallel BN computes them per device;
* ``running_stats``: how the running averages follow the batch statistics —
  flax's exponential moving average (``"ema"``, the default), PyTorch's
  cumulative average (``"cumulative"``, its ``momentum=None``), haiku's
  zero-debiased EMA (``"debiased_ema"``), or not at all (``"frozen"``:
  training uses the running statistics, like evaluation).

The running statistics and their update policies
(:mod:`jaxnorm._core.running_stats`) are shared with the other normalizers
that keep ``batch_stats``: batch renormalization and EvoNorm-B0.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxnorm import _stateful
from jaxnorm._core import axes as _axes
from jaxnorm._core import reduction_axes as _reduction
from jaxnorm._core.dispatch import standardize
from jaxnorm._core.moments import Moments
from jaxnorm._core.normalize import normalize
from jaxnorm._core.running_stats import COUNTED
from jaxnorm._core.running_stats import RUNNING_STATS
from jaxnorm._core.running_stats import BatchStats
from jaxnorm._core.running_stats import update_running

Array = jax.Array


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
  unbiased_running_var: bool = False,
) -> tuple[Array, BatchStats | None, Moments | None]:
  """:func:`batch_norm`, also returning the moments of each (virtual) batch.

  The moments, shaped ``(num_virtual_batches, *features)``, are what the
  modules report for :func:`jaxnorm.precise_batch_stats`; they are None in
  evaluation mode.
  """
  _axes.check_choice(running_stats, RUNNING_STATS, name="running_stats", owner=owner)
  evaluating = use_running_average or running_stats == "frozen"
  checked = _axes.check_batch(
    owner,
    x,
    {"scale": scale, "bias": bias},
    None if evaluating else mask,
    axis=axis,
    running={"running_mean": None, "running_var": None}
    if running is None
    else {"running_mean": running.mean, "running_var": running.var},
    needs_running=(
      "use_running_average=True needs running_mean and running_var (so does running_stats='frozen'); "
      "pass them or set use_running_average=False"
    )
    if evaluating
    else None,
    virtual_batch_size=None if evaluating else virtual_batch_size,
  )
  if evaluating:
    x, (scale, bias), _, _, feature_axes = checked
    full = tuple(s if a in feature_axes else 1 for a, s in enumerate(x.shape))
    mean, var = (jnp.asarray(s).reshape(full) for s in running[:2])
    return normalize(x, mean, var, scale, bias, epsilon=epsilon, dtype=dtype), running, None
  y, per_batch = _per_virtual_batch(
    checked,
    virtual_batch_size,
    epsilon=epsilon,
    axis_name=axis_name,
    axis_index_groups=axis_index_groups,
    use_mean=True,
    use_fast_variance=use_fast_variance,
    dtype=dtype,
    force_float32_reductions=force_float32_reductions,
  )
  mean, var = _average_virtual_batches(per_batch, masked=checked.mask is not None)
  if running is None:
    return y, BatchStats(mean, var), per_batch
  if unbiased_running_var:  # PyTorch's: the running variance follows n/(n − 1) times the batch variance
    n = per_batch.count.astype(per_batch.var.dtype)
    bessel = jnp.where(n > 1, n / jnp.maximum(n - 1, 1), 1)
    _, var = _average_virtual_batches(per_batch._replace(var=per_batch.var * bessel), masked=checked.mask is not None)
  new = update_running(running, mean, var, running_stats=running_stats, momentum=momentum)
  return y, new, per_batch


def _per_virtual_batch(checked: _axes.Checked, virtual_batch_size: int | None, **engine) -> tuple[Array, Moments]:
  """Standardizes each virtual batch with its own statistics, in one engine
  call on the view ``(G, N/G, ...)``: ``(y, Moments of each virtual batch)``."""
  x, (scale, bias), mask, _, feature_axes = checked
  groups = 1 if virtual_batch_size is None else x.shape[0] // virtual_batch_size

  def split(a):  # (N, ...) -> (G, N/G, ...); a size-1 leading axis broadcasts
    if a is None:
      return None
    if a.shape[0] == 1:
      return a[None]
    return a.reshape((groups, a.shape[0] // groups) + a.shape[1:])

  # Statistics per virtual batch: reduce every axis of the grouped view but
  # the group axis 0 and the (shifted) feature axes.
  xg = split(x)
  grouped_features = tuple(a + 1 for a in feature_axes)
  reduced = _reduction.batch_norm_axes(xg.ndim, grouped_features)
  y, stats = standardize(
    xg, split(scale), split(bias), reduction_axes=reduced, feature_axes=grouped_features, mask=split(mask), **engine
  )
  feature_shape = tuple(x.shape[a] for a in feature_axes)
  return y.reshape(x.shape), Moments(*(s.reshape((groups,) + feature_shape) for s in stats))


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
  unbiased_running_var: bool = False,
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
    running_stats: ``"ema"``, ``"cumulative"``, ``"debiased_ema"`` or
      ``"frozen"``; see :func:`update_running`. ``"frozen"`` normalizes with
      the running statistics even in training and returns them unchanged.
    running_count: batches averaged so far (``"cumulative"`` and
      ``"debiased_ema"``; default 0).
    unbiased_running_var: PyTorch's running variance: the batch variance
      times ``n/(n − 1)`` (``n`` examples per statistic) enters the running
      average, while the batch is normalized with the biased one, as in
      PyTorch. Default False: flax's, the biased variance throughout.

  Returns:
    ``(y, BatchStats(mean, var, count))``: in training mode the updated
    running statistics (or the batch statistics themselves when no running
    statistics were given); in eval mode the running statistics unchanged.
    ``count`` is the updated ``running_count`` (``"cumulative"``,
    ``"debiased_ema"``) or None.

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
    unbiased_running_var=unbiased_running_var,
  )
  return y, new


# The modules' declaration (linen/batch_norm.py, nnx/batch_norm.py): parameters,
# running state and computation.


def _batch_norm_axes(module, x) -> tuple[int, ...]:
  return _axes.canonicalize_axes(module.axis, jnp.ndim(x), name="axis", owner="BatchNorm")


def _batch_norm_state(module) -> tuple[_stateful.RunningStat, ...]:
  count = (_stateful.RunningStat("count", per_feature=False),) if module.running_stats in COUNTED else ()
  return (_stateful.RunningStat("mean", jnp.zeros), _stateful.RunningStat("var", jnp.ones)) + count


def _batch_norm_compute(module, x, params, state, *, use_running_average, mask, axis_name, dtype):
  y, new, per_batch = _batch_norm(
    x,
    params["scale"],
    params["bias"],
    BatchStats(state["mean"], state["var"], state.get("count")),
    use_running_average=use_running_average,
    axis=_batch_norm_axes(module, x),
    momentum=module.momentum,
    epsilon=module.epsilon,
    mask=mask,
    axis_name=axis_name,
    axis_index_groups=module.axis_index_groups,
    use_fast_variance=module.use_fast_variance,
    dtype=dtype,
    force_float32_reductions=module.force_float32_reductions,
    virtual_batch_size=module.virtual_batch_size,
    running_stats=module.running_stats,
    owner="BatchNorm",
    unbiased_running_var=module.unbiased_running_var,
  )
  return y, {"mean": new.mean, "var": new.var, "count": new.count}, per_batch


BATCH_NORM = _stateful.StatefulNorm(
  owner="BatchNorm",
  params=_stateful.scale_and_bias,
  state=_batch_norm_state,
  feature_axes=_batch_norm_axes,
  compute=_batch_norm_compute,
  always_running=lambda module: module.running_stats == "frozen",
  validate=lambda module: _axes.check_choice(
    module.running_stats, RUNNING_STATS, name="running_stats", owner="BatchNorm"
  ),
)
