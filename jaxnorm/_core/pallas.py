"""Pallas kernels for the forward passes of batch, group and layer norm.

:class:`PallasPasses` implements the forward passes of
:class:`jaxnorm._core.fused.XlaPasses` with three ``pallas_call`` kernels, so the
statistics, the group folding and the derivative rule are shared with the
fused XLA path and only the passes over full-size arrays change:

=====================  =======================================  ===========
kernel                 computes, per tile of rows               reads/writes
=====================  =======================================  ===========
``_sums``              ``Σ (x − m)^p`` per channel (p = 1, 2)   x
``_affine``            ``(x − m)·a + d``                        x / y
=====================  =======================================  ===========

The input is viewed as ``(B, L, C)``: ``B`` examples (1 for batch norm),
``L`` reduced positions and ``C`` channels, contiguous (channels last).
The grid runs over examples and tiles of ``T`` rows; each program holds a
``(T, C)`` tile and writes one row of per-tile partial sums, which XLA adds
up (they are ``L/T`` times smaller than the input). The forward pass thus
reads ``x`` three times and writes ``y`` once, without the centred
intermediate that XLA materializes. Derivatives, forward and reverse mode,
come from the fused path's tangent map (:func:`jaxnorm._core.fused.standardize`),
which is XLA: JAX transposes it for reverse mode, and a ``pallas_call`` has
no transpose. Channels-first layouts (NCHW) and shapes the tiling does not
cover use the fused XLA path.

The kernels compile (Triton) when the program is lowered for a CUDA or ROCm
GPU and run with ``interpret=True`` when it is lowered for anything else —
chosen per lowering platform (``lax.platform_dependent``), not by the host,
so a program exported for CUDA from a CPU host gets the compiled kernels.
Interpretation is how the test suite checks their numerics on CPU.
:func:`applies` decides, per call, whether this path is taken.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pallas_triton

Array = jax.Array

MAX_CHANNELS = 2048  # a tile holds every channel of a row
TILE_ELEMENTS = 16384  # at most T·C elements per program


def _view_3d(shape, reduction_axes, feature_axes):
  """``(B, L, C, group)`` for an input of ``shape``, or None.

  Requires the pattern ``[kept axes][inner axes][channel axes]`` (size-1
  axes ignored) with the grouped part of the channel axes (``R ∩ F``)
  trailing, so that each statistic covers ``group`` consecutive channels.
  """
  kind = []
  for a, n in enumerate(shape):
    if n == 1:
      continue
    if a in reduction_axes and a not in feature_axes:
      kind.append(("inner", n, a))
    elif a in feature_axes:
      kind.append(("channel", n, a))
    else:
      kind.append(("kept", n, a))
  order = {"kept": 0, "inner": 1, "channel": 2}
  ranks = [order[k] for k, _, _ in kind]
  if ranks != sorted(ranks) or 1 not in ranks:
    return None
  size = lambda which: math.prod(n for k, n, _ in kind if k == which)
  channels = [(n, a) for k, n, a in kind if k == "channel"]
  grouped = [a in reduction_axes for _, a in channels]
  if grouped != sorted(grouped):  # the grouped channel axes must trail
    return None
  group = math.prod(n for n, a in channels if a in reduction_axes)
  return size("kept"), size("inner"), size("channel"), group


def _tile_rows(length: int, channels: int) -> int | None:
  """The largest power-of-two row count dividing ``length`` within budget."""
  budget = max(1, TILE_ELEMENTS // channels)
  rows = 1
  while rows * 2 <= budget and length % (rows * 2) == 0:
    rows *= 2
  return rows if rows >= min(8, length) else None


def covers(shape: tuple[int, ...], reduction_axes, feature_axes) -> bool:
  """Whether the kernels' tiling covers an input of ``shape``: it must fit
  the ``(B, L, C)`` tiling (channels last, a power-of-two channel count up
  to :data:`MAX_CHANNELS`, and a row count with a power-of-two tile).
  :func:`jaxnorm._core.dispatch.fast_standardize` asks."""
  view = _view_3d(shape, reduction_axes, feature_axes)
  if view is None:
    return False
  _, length, channels, _ = view
  power_of_two = channels & (channels - 1) == 0
  return power_of_two and channels <= MAX_CHANNELS and _tile_rows(length, channels) is not None


def _sums_kernel(x_ref, m_ref, out_ref, *, power):
  centred = x_ref[...].astype(m_ref.dtype) - m_ref[...]
  if power == 2:
    centred = centred * centred
  out_ref[...] = jnp.sum(centred, axis=0, keepdims=True)


def _affine_kernel(x_ref, m_ref, a_ref, d_ref, y_ref):
  y = (x_ref[...].astype(m_ref.dtype) - m_ref[...]) * a_ref[...] + d_ref[...]
  y_ref[...] = y.astype(y_ref.dtype)


class PallasPasses:
  """The passes of :func:`jaxnorm._core.fused.standardize` as Pallas kernels: an
  implementation of :class:`jaxnorm._core.fused.Passes`.

  :func:`jaxnorm._core.fused.standardize` takes the variance from the centred
  pass (``single_pass = False``): the kernels never materialize ``x − μ``,
  so single-pass statistics would save only one read.
  """

  single_pass = False

  def __init__(self, xla, *, reduction_axes, feature_axes):
    """``xla``: the :class:`jaxnorm._core.fused.XlaPasses` of the same call
    (its shape, accumulation dtype and derivative rule)."""
    shape, acc_dtype = xla.shape, xla.acc_dtype
    view = _view_3d(shape, reduction_axes, feature_axes)
    if view is None:
      raise ValueError(f"the Pallas kernels do not cover an input of shape {shape}")
    self.batch, self.length, self.channels, _ = view
    self.rows = _tile_rows(self.length, self.channels)
    self.tiles = self.length // self.rows
    self.shape, self.partial_shape, self.acc_dtype = shape, xla.partial_shape, acc_dtype
    self.xla = xla

  # Block specs: a (T, C) tile of example b, or example b's channel row.
  def _tile(self):
    return pl.BlockSpec((None, self.rows, self.channels), lambda b, t: (b, t, 0))

  def _row(self):
    return pl.BlockSpec((None, 1, self.channels), lambda b, t: (b, 0, 0))

  def _partial(self):
    return pl.BlockSpec((None, 1, self.channels), lambda b, t: (b, t, 0))

  def _call(self, kernel, full, per_channel, out_shapes, out_specs):
    """Runs ``kernel`` on full-size arrays (tiled) then per-channel ones."""
    inputs = [self._full(a) for a in full] + [self._per_channel(a) for a in per_channel]

    def run(interpret):
      return pl.pallas_call(
        kernel,
        out_shape=out_shapes,
        grid=(self.batch, self.tiles),
        in_specs=[self._tile()] * len(full) + [self._row()] * len(per_channel),
        out_specs=out_specs,
        interpret=interpret,
        # Triton, not Mosaic GPU: its copies are not limited to 256 rows.
        compiler_params=None if interpret else pallas_triton.CompilerParams(num_warps=4),
      )(*inputs)

    compiled = lambda: run(False)
    return lax.platform_dependent(cuda=compiled, rocm=compiled, default=lambda: run(True))

  def _full(self, x: Array) -> Array:
    return x.reshape(self.batch, self.length, self.channels)

  def _per_channel(self, a: Array) -> Array:
    a = jnp.broadcast_to(jnp.asarray(a, self.acc_dtype), self.partial_shape)
    return a.reshape(self.batch, 1, self.channels)

  def _partial_sums(self):
    return jax.ShapeDtypeStruct((self.batch, self.tiles, self.channels), self.acc_dtype)

  def _fold(self, partial: Array) -> Array:
    return partial.sum(1).reshape(self.partial_shape)

  def _sums(self, x, mean, power):
    kernel = functools.partial(_sums_kernel, power=power)
    out = self._call(kernel, [x], [mean], self._partial_sums(), self._partial())
    return self._fold(out)

  def _pallas_sum(self, x):
    return self._sums(x, jnp.zeros((), self.acc_dtype), power=1)

  def _pallas_centred_square_sum(self, x, mean):
    return self._sums(x, mean, power=2)

  def _pallas_sum_and_square_sum(self, x):
    zero = jnp.zeros((), self.acc_dtype)
    return self._sums(x, zero, power=1), self._sums(x, zero, power=2)

  def _pallas_affine(self, x, mean, a, d, out_dtype):
    out = jax.ShapeDtypeStruct((self.batch, self.length, self.channels), out_dtype)
    y = self._call(_affine_kernel, [x], [mean, a, d], out, self._tile())
    return y.reshape(self.shape)

  def _differentiable(self, name, *args, **static):
    """The kernel's values, with derivatives of the XLA pass of that name.

    :func:`jaxnorm._core.fused.standardize` calls the kernels for primal values
    only; differentiating those again (second order) differentiates the
    XLA passes.
    """
    kernel = functools.partial(getattr(self, f"_pallas_{name}"), **static)
    xla = functools.partial(getattr(self.xla, name), **static)
    fn = jax.custom_jvp(kernel)
    fn.defjvp(lambda primals, tangents: (kernel(*primals), jax.jvp(xla, primals, tangents)[1]))
    return fn(*args)

  def sum(self, x):
    return self._differentiable("sum", x)

  def sum_and_square_sum(self, x):
    return self._differentiable("sum_and_square_sum", x)

  def centred_square_sum(self, x, mean):
    return self._differentiable("centred_square_sum", x, mean)

  def affine(self, x, mean, a, d, out_dtype):
    return self._differentiable("affine", x, mean, a, d, out_dtype=out_dtype)
