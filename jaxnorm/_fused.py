r"""Fused standardization with a hand-written backward pass.

:func:`standardize` computes what the reference path (``moments`` then
``normalize``) computes — :math:`y = \gamma\,(x - \mu)\,r + \beta` with
:math:`r = 1/\sqrt{\sigma^2 + \epsilon}` and statistics over reduction axes
``R`` — for every normalizer that standardizes: batch (and ghost batch),
layer, instance, group and RMS normalization.

Why it is faster than letting JAX differentiate the composition:

* **Reductions in two levels.** Sums run first over the reduced axes that
  the parameters do not vary along (``R \ F``: the spatial axes for group
  norm, everything but the channels for batch norm), keeping the channels;
  the result is tiny, and the second level folds channels into groups.
  Each level is a plain reduction that keeps the layout's own channel axis,
  so NHWC and NCHW inputs need no transposes.
* **Minimal residuals.** The backward pass keeps only ``x`` (alive anyway),
  the statistics and ``γ``; autodiff of the composition keeps full-size
  intermediates such as ``x − μ`` and ``x̂``.
* **One elementwise backward pass.** With :math:`c = x - \mu` and
  :math:`g = \gamma\,\partial y`, the input gradient is

  .. math::
     \partial x = r\,\big(g - \overline{g} - c\,r^2\,\overline{g\,c}\big)
     = A\,\partial y + B\,c + D

  where bars are means over ``R``. ``A``, ``B`` and ``D`` come from two sums
  per channel, :math:`\sum \partial y` and :math:`\sum \partial y\,c`, which
  also give :math:`\partial\beta` and :math:`\partial\gamma`. So the
  backward pass reads ``∂y`` and ``x`` twice and writes ``∂x`` once.

The variance stays two-pass (the mean first, then centred squares), as
accurate as the reference. Statistics accumulate in the engine's dtype (at
least float32 for half-precision inputs).

Only reverse-mode derivatives are defined (``jax.custom_vjp``); see
:mod:`jaxnorm._dispatch` for forward mode.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def _sum(a: Array, axes: tuple[int, ...]) -> Array:
  return jnp.sum(a, axes, keepdims=True) if axes else a


def _sum_to_shape(a: Array, shape: tuple[int, ...]) -> Array:
  """Sums ``a`` over the axes where ``shape`` has size 1 (``a``'s rank)."""
  axes = tuple(i for i, (n, m) in enumerate(zip(shape, a.shape)) if n == 1 and m != 1)
  return _sum(a, axes).reshape(shape)


class _Layout:
  """The input viewed with runs of kept axes merged and size-1 axes dropped.

  Full-size passes run on this view. Merging the kept axes undoes the split
  of channels into groups — ``(N, H, W, G, C/G)`` is viewed as
  ``(N, H, W, C)`` and NCHW's ``(N, G, C/G, H, W)`` as ``(N, C, H, W)`` — so
  XLA reduces the array in its own layout; XLA:CPU runs reductions over
  scattered axes of the rank-5 view (or with size-1 axes) several times
  slower. Per-channel arrays (size 1 on the ``inner`` axes) map to the view
  by a reshape too.
  """

  def __init__(self, shape: tuple[int, ...], inner: tuple[int, ...]):
    self.shape = shape
    self.partial_shape = tuple(1 if a in inner else n for a, n in enumerate(shape))
    runs: list[list[int]] = []
    for a in range(len(shape)):
      if shape[a] == 1:  # size-1 axes leave the view (they slow XLA down)
        continue
      if runs and runs[-1][-1] not in inner and a not in inner:
        runs[-1].append(a)
      else:
        runs.append([a])
    self.view_shape = tuple(math.prod(shape[a] for a in run) for run in runs)
    self.view_inner = tuple(i for i, run in enumerate(runs) if run[0] in inner)
    self.view_partial_shape = tuple(
        1 if i in self.view_inner else n for i, n in enumerate(self.view_shape)
    )

  def view(self, x: Array) -> Array:
    return x.reshape(self.view_shape)

  def partial_sum(self, x_view: Array) -> Array:
    """Sum over the inner axes, returned with the partial (per-channel) shape."""
    return _sum(x_view, self.view_inner).reshape(self.partial_shape)

  def expand(self, a: Array) -> Array:
    """A per-channel array (broadcastable to the partial shape) on the view."""
    return jnp.broadcast_to(a, self.partial_shape).reshape(self.view_partial_shape)


def standardize(
    x: Array,
    scale: Array | None,
    bias: Array | None,
    *,
    reduction_axes: tuple[int, ...],
    feature_axes: tuple[int, ...],
    epsilon: float,
    use_mean: bool,
    acc_dtype: Any,
    out_dtype: Any,
) -> tuple[Array, Array, Array]:
  """Normalized ``x`` and its statistics, with a custom backward pass.

  Args:
    x: input, real floating point.
    scale, bias: None or arrays of ``x``'s rank that vary at most along
      ``feature_axes`` (size 1 elsewhere).
    reduction_axes: the axes ``R`` statistics reduce over (non-empty).
    feature_axes: the axes ``F`` parameters vary along.
    epsilon: added to the variance (a Python number).
    use_mean: centre on the mean (False: RMS normalization, ``μ = 0``).
    acc_dtype: dtype of the arithmetic and of the statistics.
    out_dtype: dtype of ``y``.

  Returns:
    ``(y, mean, var)``; ``mean`` and ``var`` have size 1 along ``R``
    (``mean`` is zeros when ``use_mean`` is False). All three are
    differentiable.
  """
  inner = tuple(a for a in reduction_axes if a not in feature_axes)
  outer = tuple(a for a in reduction_axes if a in feature_axes)
  layout = _Layout(x.shape, inner)
  count = math.prod(x.shape[a] for a in reduction_axes)
  real = jnp.finfo(acc_dtype).dtype

  def mean_over_groups(partial):  # partial sums -> statistics over R
    return _sum(partial, outer) / count

  def to_acc(a):
    return layout.view(a).astype(acc_dtype)

  def parameter(p, default):
    return jnp.asarray(default, acc_dtype) if p is None else p.astype(acc_dtype)

  def forward(x, scale, bias):
    xv = to_acc(x)
    if use_mean:
      mean = mean_over_groups(layout.partial_sum(xv))
      centred = xv - layout.expand(mean)
    else:
      mean, centred = jnp.zeros((), acc_dtype), xv
    var = mean_over_groups(layout.partial_sum(lax.square(centred))).astype(real)
    mean = jnp.broadcast_to(mean, var.shape)
    rstd = lax.rsqrt(var + epsilon)
    y = centred * layout.expand(rstd * parameter(scale, 1))
    if bias is not None:
      y = y + layout.expand(parameter(bias, 0))
    y = y.astype(out_dtype).reshape(x.shape)
    return (y, mean, var), (x, mean, rstd, scale, bias)

  def backward(residuals, cotangents):
    x, mean, rstd, scale, bias = residuals
    dy, dmean, dvar = cotangents
    dyv = to_acc(dy)
    centred = to_acc(x) - layout.expand(mean)
    # The two per-channel sums: with the elementwise pass below, the only
    # passes over full-size arrays.
    p1 = layout.partial_sum(dyv)
    p2 = layout.partial_sum(dyv * centred)
    gamma = parameter(scale, 1)
    a = rstd * gamma
    b = (2.0 / count) * dvar - rstd**3 * mean_over_groups(gamma * p2)
    d = jnp.zeros((), acc_dtype)
    if use_mean:
      d = dmean / count - rstd * mean_over_groups(gamma * p1)
    dx = dyv * layout.expand(a) + centred * layout.expand(b) + layout.expand(d)
    dscale = dbias = None
    if scale is not None:
      dscale = _sum_to_shape(p2 * rstd, scale.shape).astype(scale.dtype)
    if bias is not None:
      dbias = _sum_to_shape(p1, bias.shape).astype(bias.dtype)
    return dx.astype(x.dtype).reshape(x.shape), dscale, dbias

  @jax.custom_vjp
  def fn(x, scale, bias):
    return forward(x, scale, bias)[0]

  fn.defvjp(forward, backward)
  return fn(x, scale, bias)
