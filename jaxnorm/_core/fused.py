r"""Fused standardization with a hand-written derivative rule.

:func:`standardize` computes what the reference path (``moments`` then
``normalize``) computes — :math:`y = \gamma\,(x - \mu)\,r + \beta` with
:math:`r = 1/\sqrt{\sigma^2 + \epsilon}` and statistics over reduction axes
``R`` — for every normalizer that standardizes: batch (and ghost batch),
layer, instance, group and RMS normalization.

Its derivative is a ``jax.custom_jvp`` whose tangent map is linear in the
tangents: forward mode (``jvp``, ``jacfwd``, ``linearize``) evaluates it,
and reverse mode (``grad``, ``vjp``) is JAX's transpose of it, so every
composition of the two, to any order, works. The tangent map is

.. math::
   \dot y = A\,\dot x + B\,c + D, \qquad c = x - \mu,

with per-channel :math:`A = \gamma r`, and :math:`B`, :math:`D` linear in
two sums per channel of the tangent, :math:`\sum \dot x` and
:math:`\sum \dot x\,c`, and in :math:`\dot\gamma`, :math:`\dot\beta`.

Why it is faster than letting JAX differentiate the composition:

* **Reductions in two levels.** Sums run first over the reduced axes that
  the parameters do not vary along (``R \ F``: the spatial axes for group
  norm, everything but the channels for batch norm), keeping the channels;
  the result is tiny, and the second level folds channels into groups.
  Each level is a plain reduction that keeps the layout's own channel axis,
  so NHWC and NCHW inputs need no transposes.
* **Minimal residuals.** The tangent map is rematerialized
  (``jax.checkpoint``), so reverse mode keeps only ``x`` (alive anyway),
  the statistics and ``γ``, and recomputes ``x − μ`` inside its fused
  passes; autodiff of the composition keeps full-size intermediates such as
  ``x − μ`` and ``x̂``.
* **One elementwise backward pass.** Transposed, the map gives the input
  gradient :math:`\partial x = r\,(g - \overline{g} - c\,r^2\,\overline{g\,c})`
  (:math:`g = \gamma\,\partial y`, bars are means over ``R``) from the two
  per-channel sums :math:`\sum \partial y` and :math:`\sum \partial y\,c`,
  which also give :math:`\partial\beta` and :math:`\partial\gamma`: the
  backward pass reads ``∂y`` and ``x`` twice and writes ``∂x`` once.
* **Single-pass statistics where they are accurate.** ``Σx`` and ``Σx²``
  come from one read of ``x``; a run-time check (``μ² ≤ 16σ²`` for every
  statistic, float32 or wider accumulation) falls back to the centred pass
  (``lax.cond``), so inputs such as ``1e4 + N(0, 1)`` stay as accurate as
  the reference. The tangent map always uses centred sums. Statistics accumulate in the engine's dtype (at least
  float32 for half-precision inputs).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any
from typing import Protocol
from typing import runtime_checkable

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


def fence(a: Array) -> Array:
  """``a`` unchanged, as an operation XLA:CPU's YNNPACK fusions do not take.

  Applied to per-row statistics of layer and RMS norm (and their tangents)
  before they are broadcast back over the full-size array. Without it
  XLA:CPU (jax 0.10) fuses a row reduction with the broadcast of its result
  into one YNNPACK fusion with a full-size output, which runs several times
  slower than the reduction and an elementwise loop apart: layer norm
  forward + backward at 8×512×768 took about 2× (float32) and 3× (bfloat16)
  as long. ``reduce_precision`` to the array's own format is the identity
  (NaN and infinities included) and linear, so JAX transposes it into the
  same fence in reverse mode; elsewhere it costs one pass over a few
  per-row numbers.
  """
  info = jnp.finfo(a.dtype)
  return lax.reduce_precision(a, exponent_bits=info.nexp, mantissa_bits=info.nmant)


def private(a: Array, k: int, full_size: int) -> Array:
  """``a`` unchanged, as a value no other use of ``a`` shares (``k`` ≥ 1
  distinct per use); a full-size ``a`` is returned as it is.

  XLA:CPU (jax 0.10) grows a YNNPACK reduction fusion over an operand only
  when every user of the operand is inside the fusion; it CSEs identical
  operations first, so two reductions that broadcast the same small array
  (``γ``, a per-row statistic) share one broadcast, which then stays
  outside both and is written out full-size. ``k`` fences in a row are a
  distinct operation for each ``k``, so each reduction broadcasts its own
  copy and reads only its full-size inputs.
  """
  if jnp.size(a) >= full_size:
    return a
  for _ in range(k):
    a = fence(a)
  return a


# Single-pass statistics are used where every statistic has μ² ≤ 16 σ²: the
# cancellation in E[x²] − μ² then costs at most a factor 17 of the dtype's
# precision (about 1e-6 relative in float32); elsewhere the centred second
# pass runs.
WELL_CENTRED = 16.0


@runtime_checkable
class Passes(Protocol):
  """The full-size forward passes of :func:`standardize`: what an
  implementation supplies, :class:`XlaPasses` as XLA operations and
  :class:`jaxnorm._core.pallas.PallasPasses` as Pallas kernels (chosen in
  :mod:`jaxnorm._core.dispatch`).

  Per-channel arrays have the partial shape (see :class:`XlaPasses`); sums
  run over the inner axes, in the accumulation dtype. Every pass is
  differentiable in forward and reverse mode. The tangent map is not part
  of it: it always runs as :class:`XlaPasses`' operations, which JAX can
  transpose.
  """

  #: whether :func:`standardize` may take the variance from ``Σx`` and
  #: ``Σx²`` (where the statistics are well centred).
  single_pass: bool

  def sum(self, x: Array) -> Array:
    """``Σ x``."""
    ...

  def sum_and_square_sum(self, x: Array) -> tuple[Array, Array]:
    """``Σ x`` and ``Σ x²``."""
    ...

  def centred_square_sum(self, x: Array, mean: Array) -> Array:
    """``Σ (x − mean)²``."""
    ...

  def affine(self, x: Array, mean: Array, a: Array, d: Array, out_dtype: Any) -> Array:
    """``(x − mean)·a + d``, full size, in ``out_dtype``."""
    ...


@dataclasses.dataclass(frozen=True)
class _View:
  """A reshape of the input: its axes grouped into runs, each run merged
  into one axis (size-1 axes dropped); ``inner`` lists the view's axes that
  are runs of inner axes, and ``partial_shape`` is the view's shape with
  size 1 there (what a per-channel array is reshaped to)."""

  shape: tuple[int, ...]
  inner: tuple[int, ...]
  partial_shape: tuple[int, ...]

  @classmethod
  def build(cls, shape: tuple[int, ...], inner: tuple[int, ...], merge_trailing_inner: bool) -> _View:
    """Runs of kept axes are merged; runs of inner axes only where they
    end the shape and ``merge_trailing_inner`` is set."""
    runs: list[list[int]] = []
    for a in range(len(shape)):
      if shape[a] == 1:
        continue
      trailing = all(b in inner or shape[b] == 1 for b in range(a, len(shape)))
      same_kind = runs and (runs[-1][-1] in inner) == (a in inner)
      if same_kind and (a not in inner or (merge_trailing_inner and trailing)):
        runs[-1].append(a)
      else:
        runs.append([a])
    view_shape = tuple(math.prod(shape[a] for a in run) for run in runs)
    view_inner = tuple(i for i, run in enumerate(runs) if run[0] in inner)
    return cls(view_shape, view_inner, tuple(1 if i in view_inner else n for i, n in enumerate(view_shape)))


class XlaPasses:
  """The full-size passes of :func:`standardize`, as XLA operations.

  They run on a view of the input with runs of kept axes merged and size-1
  axes dropped. Merging the kept axes undoes the split of channels into
  groups — ``(N, H, W, G, C/G)`` is viewed as ``(N, H, W, C)`` and NCHW's
  ``(N, G, C/G, H, W)`` as ``(N, C, H, W)`` — so XLA reduces the array in
  its own layout; XLA:CPU runs reductions over scattered axes of the rank-5
  view (or with size-1 axes) several times slower.

  The elementwise passes (``affine``, ``tangent``) of an input already in
  the accumulation dtype also merge a trailing run of inner axes: NCHW's
  ``(N, C, H, W)`` becomes ``(N, C, H·W)``. XLA:CPU's loop over the last
  axis is the vectorized one; over ``W = 8`` it is one vector per
  iteration. Group and batch norm NCHW forward + backward, float32, at
  128×64×8×8 take 0.79–0.94 of the time; the larger ResNet-20 shapes
  measure 0.86–1.05, within this machine's noise
  (``benchmarks.fast_path_compare``, three runs). Reductions keep ``H`` and ``W``
  apart (merged, they measured no faster, up to 1.12× slower at
  128×16×32×32), and so does a half-precision input: its conversion to
  the accumulation dtype is shared by every pass, and in two views XLA
  writes it out full-size (8 MiB at 128×16×32×32, up to 1.8× the time).

  ``single_pass``: the variance comes from ``Σ x`` and ``Σ x²`` in one
  pass where the statistics are well centred (see :data:`WELL_CENTRED`),
  saving XLA a materialized ``x − μ``; otherwise from the centred second
  pass, chosen at run time by ``lax.cond``.

  Per-channel arrays have the *partial shape*: ``x``'s shape with size 1 on
  the ``inner`` axes (the reduced axes the parameters do not vary along).
  Every pass takes and returns full-size arrays in ``x``'s own shape and
  per-channel ones in the partial shape; arithmetic runs in ``acc_dtype``.
  """

  single_pass = True

  def __init__(self, shape: tuple[int, ...], inner: tuple[int, ...], acc_dtype: Any):
    self.shape = shape
    self.inner = inner
    self.acc_dtype = acc_dtype
    self.partial_shape = tuple(1 if a in inner else n for a, n in enumerate(shape))
    self.reduction_view = _View.build(shape, inner, merge_trailing_inner=False)
    self.elementwise_view = _View.build(shape, inner, merge_trailing_inner=True)

  def _elementwise_view(self, x: Array) -> _View:
    same_dtype = jnp.result_type(x) == jnp.dtype(self.acc_dtype)
    return self.elementwise_view if same_dtype else self.reduction_view

  def _view(self, x: Array, view: _View | None = None) -> Array:
    return x.reshape((view or self.reduction_view).shape).astype(self.acc_dtype)

  def _sum(self, x_view: Array) -> Array:
    return _sum(x_view, self.reduction_view.inner).reshape(self.partial_shape)

  def _expand(self, a: Array, view: _View | None = None) -> Array:
    """A per-channel array in the view. An operand that varies along an
    inner axis (a per-example modulation of batch norm, a spatial map) is
    broadcast to the full shape instead; XLA fuses the broadcast into the
    elementwise pass that reads it. It is fenced first: in reverse mode the
    broadcast becomes a sum over the other inner axes, which the fence keeps
    XLA from merging with the sums over the examples that follow (merged,
    each of those would be another full-size reduction)."""
    view = view or self.reduction_view
    if jnp.ndim(a) and any(jnp.shape(a)[i] != 1 for i in self.inner):
      return jnp.broadcast_to(fence(a), self.shape).reshape(view.shape)
    return jnp.broadcast_to(a, self.partial_shape).reshape(view.partial_shape)

  def sum(self, x: Array) -> Array:
    """``Σ x`` over the inner axes."""
    return self._sum(self._view(x))

  def sum_and_square_sum(self, x: Array) -> tuple[Array, Array]:
    """``Σ x`` and ``Σ x²`` over the inner axes (one read of ``x`` each)."""
    x = self._view(x)
    return self._sum(x), self._sum(lax.square(x))

  def centred_square_sum(self, x: Array, mean: Array) -> Array:
    """``Σ (x − mean)²`` over the inner axes."""
    return self._sum(lax.square(self._view(x) - self._expand(mean)))

  def affine(self, x: Array, mean: Array, a: Array, d: Array, out_dtype: Any) -> Array:
    """``(x − mean)·a + d``, full size, in ``out_dtype``."""
    view = self._elementwise_view(x)
    y = (self._view(x, view) - self._expand(mean, view)) * self._expand(a, view) + self._expand(d, view)
    return y.astype(out_dtype).reshape(self.shape)

  def tangent_sums(self, dx: Array, x: Array, mean: Array) -> tuple[Array, Array]:
    """``Σ ∂x`` and ``Σ ∂x·(x − mean)`` over the inner axes."""
    dx = self._view(dx)
    return self._sum(dx), self._sum(dx * (self._view(x) - self._expand(mean)))

  def tangent(self, dx, x, mean, a, b, d, out_dtype) -> Array:
    """``∂x·a + (x − mean)·b + d`` (``d`` may be None), full size, in
    ``out_dtype``: the output tangent, linear in ``∂x``, ``b`` and ``d``."""
    # A barrier keeps XLA from merging this x − mean with the one in
    # tangent_sums: shared, it would be materialized (and, in the
    # transposed program, kept alive from the forward pass).
    view = self._elementwise_view(x)
    dy = (self._view(x, view) - self._expand(lax.optimization_barrier(mean), view)) * self._expand(b, view)
    dy = dy + self._view(dx, view) * self._expand(a, view)
    if d is not None:
      dy = dy + self._expand(d, view)
    return dy.astype(out_dtype).reshape(self.shape)


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
  passes: Callable[[XlaPasses], Passes] | None = None,
) -> tuple[Array, Array, Array]:
  """Normalized ``x`` and its statistics, with a custom derivative rule.

  Args:
    x: input, real floating point.
    scale, bias: None or arrays of ``x``'s rank that broadcast to it. They
      vary along ``feature_axes``, and may vary along the other axes too (a
      per-example modulation).
    reduction_axes: the axes ``R`` statistics reduce over (non-empty).
    feature_axes: the axes ``F`` parameters vary along.
    epsilon: added to the variance (a Python number).
    use_mean: centre on the mean (False: RMS normalization, ``μ = 0``).
    acc_dtype: dtype of the arithmetic and of the statistics.
    out_dtype: dtype of ``y``.
    passes: what runs the forward full-size passes: None for
      :class:`XlaPasses`, or a function from this call's :class:`XlaPasses`
      (``x``'s shape, the inner axes ``R \\ F``) to other :class:`Passes`,
      such as the Pallas kernels of :mod:`jaxnorm._core.pallas`. The tangent
      map always runs as XLA operations, which JAX can transpose.

  Returns:
    ``(y, mean, var)``; ``mean`` and ``var`` have size 1 along ``R``
    (``mean`` is zeros when ``use_mean`` is False). All three are
    differentiable, in forward and reverse mode, to any order.
  """
  plan = _Plan.build(x.shape, reduction_axes, feature_axes, epsilon, use_mean, acc_dtype, out_dtype, passes)
  # The tangent maps are rematerialized (jax.checkpoint), so reverse mode
  # keeps only their primal inputs (x, which is alive anyway, and
  # per-group statistics) and recomputes x − μ inside the fused backward
  # pass instead of storing it.
  remat = functools.partial(jax.checkpoint, prevent_cse=False)
  tangent_map = remat(plan.feature_tangent_map if not plan.inner else plan.channel_tangent_map)

  @jax.custom_jvp
  def fn(x, scale, bias):
    return plan.forward(x, scale, bias)[0]

  @fn.defjvp
  def fn_jvp(primals, tangents):
    x, scale, bias = primals
    dx, dscale, dbias = tangents
    outputs, rstd = plan.forward(x, scale, bias)
    return outputs, tangent_map(x, outputs[1], rstd, scale, dx, dscale, dbias)

  return fn(x, scale, bias)


@dataclasses.dataclass(frozen=True)
class _Plan:
  """One call of :func:`standardize`: its layout, dtypes and passes, and
  the steps it runs — the statistics, the forward pass and the two tangent
  maps (per-channel sums, or per-row sums when the parameters vary along
  every reduced axis)."""

  shape: tuple[int, ...]
  reduction_axes: tuple[int, ...]
  inner: tuple[int, ...]  # reduced axes the parameters do not vary along
  outer: tuple[int, ...]  # reduced axes the parameters vary along
  epsilon: float
  use_mean: bool
  acc_dtype: Any
  out_dtype: Any
  passes: Any
  xla: XlaPasses

  @classmethod
  def build(cls, shape, reduction_axes, feature_axes, epsilon, use_mean, acc_dtype, out_dtype, passes):
    inner = tuple(a for a in reduction_axes if a not in feature_axes)
    outer = tuple(a for a in reduction_axes if a in feature_axes)
    xla = XlaPasses(shape, inner, acc_dtype)
    passes = xla if passes is None else passes(xla)
    return cls(shape, reduction_axes, inner, outer, epsilon, use_mean, acc_dtype, out_dtype, passes, xla)

  @property
  def count(self) -> int:
    return math.prod(self.shape[a] for a in self.reduction_axes)

  @property
  def real(self):
    return jnp.finfo(self.acc_dtype).dtype

  @property
  def stats_shape(self) -> tuple[int, ...]:
    return tuple(1 if a in self.reduction_axes else n for a, n in enumerate(self.shape))

  def mean_over_groups(self, partial: Array) -> Array:
    """Per-channel sums -> statistics over ``R``."""
    return _sum(partial, self.outer) / self.count

  def parameter(self, p: Array | None, default: float) -> Array:
    return jnp.asarray(default, self.acc_dtype) if p is None else p.astype(self.acc_dtype)

  def two_pass_variance(self, x: Array, mean: Array) -> Array:
    return self.mean_over_groups(self.passes.centred_square_sum(x, mean)).astype(self.real)

  def statistics(self, x: Array) -> tuple[Array, Array]:
    """Mean and variance; single-pass where uncentred sums are accurate."""
    if not self.use_mean:
      zeros = jnp.zeros(self.stats_shape, self.acc_dtype)
      return zeros, self.two_pass_variance(x, zeros)
    # Uncentred sums only in float32 or wider: with half-precision
    # accumulation (force_float32_reductions=False) even a factor 17 of the
    # dtype's precision is too much.
    if not (self.passes.single_pass and jnp.finfo(self.acc_dtype).bits >= 32):
      mean = self.mean_over_groups(self.passes.sum(x))
      return mean, self.two_pass_variance(x, mean)
    s1, s2 = self.passes.sum_and_square_sum(x)
    mean, mean_square = self.mean_over_groups(s1), self.mean_over_groups(s2)
    var = (mean_square - lax.square(mean)).astype(self.real)
    accurate = jnp.all(lax.square(mean) <= WELL_CENTRED * var)
    var = lax.cond(accurate, lambda: var, lambda: self.two_pass_variance(x, mean))
    return mean, var

  def forward(self, x: Array, scale: Array | None, bias: Array | None):
    """``((y, mean, var), rstd)``."""
    mean, var = self.statistics(x)
    if not self.inner:  # per-row statistics (layer and RMS norm over the features)
      mean, var = fence(mean), fence(var)
    rstd = lax.rsqrt(var + self.epsilon)
    y = self.passes.affine(x, mean, rstd * self.parameter(scale, 1), self.parameter(bias, 0), self.out_dtype)
    return (y, mean, var), rstd

  # The tangent maps are linear in the tangents (dx, dscale, dbias): JAX
  # evaluates them for forward mode and transposes them for reverse mode.
  # They stay centred: a run-time choice of the (faster on XLA:CPU)
  # uncentred sums needs a lax.cond over tangents, which vmap turns into a
  # select whose reverse mode JAX cannot transpose.

  def channel_tangent_map(self, x, mean, rstd, scale, dx, dscale, dbias):
    """``(dy, dmean, dvar)`` from two per-channel sums of the tangent."""
    acc, count = self.acc_dtype, self.count
    # One conversion of a half-precision tangent: the transpose then sums
    # the input gradient's terms in acc and rounds once (converted per use,
    # each term was rounded to the input's dtype before the sum).
    dx = dx.astype(acc)
    gamma = self.parameter(scale, 1)
    a = rstd * gamma
    s1, s2 = self.xla.tangent_sums(dx, x, mean)  # Σ dx, Σ dx·(x − μ)
    dvar = (2.0 / count) * _sum(s2, self.outer)
    # b and d vary along the axes of the statistics and of γ (groups and
    # examples for group norm; examples too for a per-example γ). Each
    # tangent that varies along fewer is broadcast to them and fenced, so
    # the transpose's sum back over the other axes is a plain reduction of
    # an operand computed apart. Unfenced, XLA:CPU (jax 0.10) fuses the
    # products and the sum into a YNNPACK reduction over the rank-5 view
    # that keeps its size-1 axes, which took 30-60 µs where the split takes
    # 1-5 µs (N = 128, C = 64; four such sums in the backward pass of group
    # norm and of a modulated batch norm: group norm 128×8×8×64 forward +
    # backward took 0.63-0.66 of the time before).
    shape = jnp.broadcast_shapes(a.shape, *(jnp.shape(t) for t in (dscale, dbias) if t is not None))

    def spread(t):
      t = t.astype(acc)
      return t if t.shape == shape else fence(jnp.broadcast_to(t, shape))

    b = -0.5 * rstd**3 * gamma * spread(dvar)
    if dscale is not None:
      b = b + rstd * spread(dscale)
    d = None
    if self.use_mean:
      dmean = self.mean_over_groups(s1)
      d = -a * spread(dmean)
    else:
      dmean = jnp.zeros(self.stats_shape, acc) * dvar  # zero, but linear
    if dbias is not None:
      d = spread(dbias) if d is None else d + spread(dbias)
    dy = self.xla.tangent(dx, x, mean, a, b, d, self.out_dtype)
    return dy, dmean, dvar.astype(self.real)

  def feature_tangent_map(self, x, mean, rstd, scale, dx, dscale, dbias):
    """The tangent map when parameters vary along every reduced axis (layer
    and RMS norm over the features): per-channel sums would be full-size,
    so the reductions run over ``R`` directly.

    Reverse mode is JAX's transpose of this map, and the map is written so
    that every full-size value of the transpose is computed inside the one
    pass that reads it: no temporary buffer, each reduction reading only
    the cotangent and ``x`` (see :func:`private`). Its passes: the row sums
    ``Σ ∂y·γ`` and ``Σ ∂y·γ·(x − μ)``, the parameter gradients ``Σ ∂y·x̂``
    and ``Σ ∂y``, and one elementwise pass for the input gradient.
    """
    acc, axes, count = self.acc_dtype, self.reduction_axes, self.count
    gamma = self.parameter(scale, 1)
    x, dx = x.astype(acc), dx.astype(acc)
    size = x.size
    # dy = γ r (dx − mean(dx) − x̂ · mean(dx·x̂)) + x̂ dγ + dβ, term by term;
    # each reduction of the transpose gets its own copies of μ, r and γ.
    s2 = fence(_sum(dx * (x - mean), axes) * (rstd / count))  # mean of dx·x̂
    dvar = 2.0 * s2 / rstd
    dy = (dx * gamma) * rstd
    dy = dy + ((x - private(mean, 1, size)) * private(gamma, 1, size)) * (-rstd * rstd * s2)
    if self.use_mean:
      dmean = fence(_sum(dx, axes) / count)
      dy = dy + private(gamma, 2, size) * (-rstd * dmean)
    else:
      dmean = jnp.zeros(self.stats_shape, acc) * dvar  # zero, but linear
    if dscale is not None:
      dy = dy + ((x - private(mean, 2, size)) * private(rstd, 1, size)) * dscale.astype(acc)
    if dbias is not None:
      dy = dy + dbias.astype(acc)
    return dy.astype(self.out_dtype), dmean, dvar.astype(self.real)
