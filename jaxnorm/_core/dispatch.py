"""Which implementation computes the standardizing normalizers.

Three implementations compute the same function:

* ``"reference"``: the statistics engine and :func:`jaxnorm.normalize`
  composed with ``jax.numpy``; JAX differentiates it. It handles every
  option (masks, ``axis_name``, ``use_fast_variance``, learned ε, complex
  inputs) and every transformation, forward-mode autodiff included.
* ``"fused"``: :mod:`jaxnorm._core.fused`, a ``jax.custom_jvp`` whose reductions
  suit the layout and whose transposed tangent map (the backward pass) is
  one elementwise pass plus small reductions, keeping only the input and
  per-group statistics for it.
* ``"pallas"``: :mod:`jaxnorm._core.pallas`, Pallas GPU kernels for the forward
  passes of channels-last batch, group, layer, instance and RMS norm
  (compiled when lowered for a GPU, interpreted elsewhere).

``"auto"`` (the default) uses the fused path; the Pallas kernels, or the
reference, only on the platforms and shapes where a committed on-device
measurement showed them correct and faster than the fused path
(:data:`AUTO_PALLAS`, :data:`AUTO_REFERENCE`; none so far); and the
reference whenever an option needs it. The choice follows the platform the
program is lowered for, not the host.

Every path supports every JAX transformation: ``jit``, ``vmap``, ``grad``
and ``vjp``, ``jvp``, ``jacfwd``, ``jacrev``, ``linearize``, ``hessian``,
forward-over-reverse and reverse-over-reverse, to any order. The fast paths
define a ``jax.custom_jvp`` whose tangent map is linear, so reverse mode is
JAX's transpose of it (see :mod:`jaxnorm._core.fused`).

This module is the one place that decides. :func:`standardize`, which
every standardizing normalizer calls, takes the fast path that
:func:`fast_standardize` returns, else composes the reference.
:func:`fast_standardize` checks
whether a call's options allow a fast path, asks the Pallas kernels whether
their tiling covers the input (:func:`jaxnorm._core.pallas.covers`), and picks
the path; both fast paths run :func:`jaxnorm._core.fused.standardize` with its
forward passes supplied by an implementation of
:class:`jaxnorm._core.fused.Passes` (:class:`~jaxnorm._core.fused.XlaPasses` or
:class:`~jaxnorm._core.pallas.PallasPasses`).

The choice is read when a function is traced, so it applies to everything
traced inside::

    with jaxnorm.implementation("reference"):
      grads = jax.grad(loss)(params)

The environment variable ``JAXNORM_IMPLEMENTATION`` sets the initial value.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm._core import arguments as _axes
from jaxnorm._core import fused as _fused
from jaxnorm._core import pallas as _pallas
from jaxnorm._core.moments import Moments
from jaxnorm._core.moments import moments
from jaxnorm._core.normalize import accumulation_dtype
from jaxnorm._core.normalize import normalize
from jaxnorm._core.normalize import output_dtype

Array = jax.Array

IMPLEMENTATIONS = ("auto", "fused", "reference", "pallas")

# Where "auto" takes the Pallas kernels instead of the fused XLA path:
# lowering platform ("cuda", "rocm", "tpu", "cpu") -> predicate on
# (shape, reduction_axes, feature_axes) of an input the kernels cover. A
# rule goes here only with a committed on-device result showing the kernels
# correct and faster than the fused path for that class of shapes, and
# names that results file.
#
# "cuda": no rule. benchmarks/results/device_check_h100/device_check.json
# (one H100, jax 0.11.2): the compiled kernels are correct (28 of 28
# numerics cases against float64), but not faster where the work is large
# enough to measure: forward+backward takes fused/pallas = 0.80-0.87 of the
# time at the ResNet-20 activations of N = 2048 (float32; bfloat16
# 0.86-1.25, two shapes of three slower). At N = 128 the ratio is 1.00-1.29,
# but each call there takes 60-150 us for work the copy bandwidth does in
# under 10 us: per-call overhead, not the kernels, is what those rows time.
# So "auto" takes the fused path on every platform.
AUTO_PALLAS: dict[str, Callable[[tuple[int, ...], tuple[int, ...], tuple[int, ...]], bool]] = {}

# Where "auto" takes the reference composition instead of the fused path,
# in the same form and under the same rule of evidence as AUTO_PALLAS (a
# Pallas rule wins where both accept an input).
#
# "cuda": no rule yet. On the H100 the fused path measured slower than
# flax.linen's plain composition (flax ÷ fused = 0.74-1.01 forward +
# backward; training step 0.65-0.94× flax's images/s), but the reference
# path was not timed there; benchmarks/device_check.py times it now, and a
# rule goes here with that results file named.
AUTO_REFERENCE: dict[str, Callable[[tuple[int, ...], tuple[int, ...], tuple[int, ...]], bool]] = {}


def auto_platforms(table, shape, reduction_axes, feature_axes) -> tuple[str, ...]:
  """The lowering platforms whose rule in ``table`` (:data:`AUTO_PALLAS`,
  :data:`AUTO_REFERENCE`) accepts the input."""
  return tuple(platform for platform, rule in sorted(table.items()) if rule(shape, reduction_axes, feature_axes))


def _options_allow_a_fast_path(scale, bias, *, reduction_axes, epsilon, mask, axis_name, use_fast_variance, acc_dtype):
  """The fast paths cover calls without a mask, without ``axis_name``, with
  the stable variance, a real accumulation dtype the parameters do not
  promote, and a fixed ε; the reference handles the rest."""
  return not (
    mask is not None
    or axis_name is not None
    or use_fast_variance
    or not reduction_axes
    or not jnp.issubdtype(acc_dtype, jnp.floating)
    or not isinstance(epsilon, (int, float))
    or jnp.result_type(acc_dtype, *(p for p in (scale, bias) if p is not None)) != acc_dtype
  )


def fast_standardize(
  x,
  scale,
  bias,
  *,
  reduction_axes: tuple[int, ...],
  feature_axes: tuple[int, ...],
  epsilon: Any,
  mask: Any,
  axis_name: Any,
  use_mean: bool,
  use_fast_variance: bool,
  acc_dtype: Any,
  out_dtype: Any,
  reference: Callable,
):
  """``(y, mean, var)`` from the fused path or the Pallas kernels, or None
  where the implementation in effect or the call's options leave it to the
  reference (:func:`jaxnorm.moments` and :func:`jaxnorm.normalize`).

  ``"pallas"`` takes the kernels wherever their tiling covers the input;
  ``"fused"`` never. ``"auto"`` takes them only on the platforms whose rule
  in :data:`AUTO_PALLAS` accepts the input, and ``reference`` (the
  composition as a function of ``(x, scale, bias)`` returning ``(y, mean,
  var)``) on those whose rule in :data:`AUTO_REFERENCE` does; when a rule
  does, the choice is made per lowering platform
  (``lax.platform_dependent``), so a program lowered for CUDA on a CPU host
  gets the CUDA choice.
  """
  name = get_implementation()
  if name == "reference" or not _options_allow_a_fast_path(
    scale,
    bias,
    reduction_axes=reduction_axes,
    epsilon=epsilon,
    mask=mask,
    axis_name=axis_name,
    use_fast_variance=use_fast_variance,
    acc_dtype=acc_dtype,
  ):
    return None
  kwargs = dict(
    reduction_axes=reduction_axes,
    feature_axes=feature_axes,
    epsilon=float(epsilon),
    use_mean=use_mean,
    acc_dtype=acc_dtype,
    out_dtype=out_dtype,
  )
  fused = lambda x, scale, bias: _fused.standardize(x, scale, bias, **kwargs)
  kernels = functools.partial(_pallas.PallasPasses, reduction_axes=reduction_axes, feature_axes=feature_axes)
  pallas = lambda x, scale, bias: _fused.standardize(x, scale, bias, passes=kernels, **kwargs)
  inner = [a for a in reduction_axes if a not in feature_axes]
  # The kernels take per-channel parameters; one that varies along an inner
  # axis (a per-example modulation of batch norm) is the XLA passes' to apply.
  per_channel = all(p is None or all(jnp.shape(p)[a] == 1 for a in inner) for p in (scale, bias))
  covered = per_channel and _pallas.covers(x.shape, reduction_axes, feature_axes)
  if name == "pallas" and covered:
    return pallas(x, scale, bias)
  if name != "auto":
    return fused(x, scale, bias)
  branches = dict.fromkeys(auto_platforms(AUTO_REFERENCE, x.shape, reduction_axes, feature_axes), reference)
  if covered:
    branches.update(dict.fromkeys(auto_platforms(AUTO_PALLAS, x.shape, reduction_axes, feature_axes), pallas))
  if not branches:
    return fused(x, scale, bias)
  return lax.platform_dependent(x, scale, bias, default=fused, **branches)


def standardize(
  x: Array,
  scale: Array | None,
  bias: Array | None,
  *,
  reduction_axes: tuple[int, ...],
  feature_axes: tuple[int, ...],
  epsilon: Any,
  mask: Array | None,
  axis_name: Any,
  axis_index_groups: Any,
  use_mean: bool,
  use_fast_variance: bool,
  dtype: Any,
  force_float32_reductions: bool,
) -> tuple[Array, Moments]:
  """Statistics over ``reduction_axes``, then ``normalize``: ``(y, Moments)``.

  :func:`fast_standardize` decides whether the fused path or the Pallas
  kernels compute it; where neither applies, :func:`jaxnorm.moments` and
  :func:`jaxnorm.normalize` are composed (the reference). ``scale``,
  ``bias`` and ``mask`` have ``x``'s rank (validated by the caller); the
  moments keep the reduced axes with size 1.

  Where a statistic has no masked-in element (its moments are 0 and 0),
  ``x̂`` is 0 and ``y`` is ``β``: dividing by ``√ε`` instead would scale
  ``x`` by 1000 at the default ε, which overflows float16 from ``|x| > 65``
  (flax gives NaN there).
  """
  acc = accumulation_dtype(jnp.result_type(x), dtype, force_float32_reductions)

  def composed(x, scale, bias) -> tuple[Array, Moments]:
    stats = moments(
      x,
      reduction_axes,
      mask=mask,
      axis_name=axis_name,
      axis_index_groups=axis_index_groups,
      use_mean=use_mean,
      use_fast_variance=use_fast_variance,
      dtype=dtype,
      force_float32_reductions=force_float32_reductions,
      keepdims=True,
    )
    var = stats.var
    if mask is not None:  # a group without a masked-in element: x̂ = 0, y = β (not x/√ε)
      var = jnp.where(stats.count > 0, var, jnp.asarray(jnp.inf, var.dtype))
    return normalize(x, stats.mean, var, scale, bias, epsilon=epsilon, dtype=dtype), stats

  def reference(x, scale, bias):
    y, stats = composed(x, scale, bias)
    return y, stats.mean, stats.var

  fast = fast_standardize(
    x,
    scale,
    bias,
    reduction_axes=reduction_axes,
    feature_axes=feature_axes,
    epsilon=epsilon,
    mask=mask,
    axis_name=axis_name,
    use_mean=use_mean,
    use_fast_variance=use_fast_variance,
    acc_dtype=acc,
    out_dtype=output_dtype(x, scale, bias, dtype=dtype),
    reference=reference,
  )
  if fast is not None:
    y, mean, var = fast
    count = jnp.full(mean.shape, math.prod(x.shape[a] for a in reduction_axes), var.dtype)
    return y, Moments(count, mean, var)
  return composed(x, scale, bias)


def _default() -> str:
  name = os.environ.get("JAXNORM_IMPLEMENTATION", "auto")
  _axes.check_choice(name, IMPLEMENTATIONS, name="JAXNORM_IMPLEMENTATION", owner="jaxnorm")
  return name


def _register_state():
  """The choice as a JAX configuration state, or None where JAX lacks them.

  As a state it is part of JAX's trace and compilation cache keys, so
  ``jax.jit(f)`` traced under ``"fused"`` and called again under
  ``"reference"`` is traced again rather than silently reusing the first
  trace. A state is thread-local inside ``with`` blocks, like JAX's own.
  """
  try:
    from jax._src import config as jax_config

    kwargs = dict(
      name="jaxnorm_implementation",
      enum_values=IMPLEMENTATIONS,
      default=_default(),
      help="Which implementation computes jaxnorm's standardizing normalizers.",
      include_in_jit_key=True,
    )
    try:
      return jax_config.enum_state(**kwargs, include_in_trace_context=True), True
    except TypeError:  # an older jax (0.7): a state, but not in the trace caches' keys
      return jax_config.enum_state(**kwargs), False
  except (ImportError, AttributeError, TypeError):  # a JAX without the API
    return None, False


# CHOICE_IN_TRACE_KEY: whether JAX's trace caches see the choice. With
# jax 0.7 (no ``include_in_trace_context``) they do not: a function traced
# (jitted) under one choice keeps that trace when the choice changes, so
# wrap it anew (``jax.jit(f)`` again) after changing the choice.
_STATE, CHOICE_IN_TRACE_KEY = _register_state()
_state = threading.local()  # used only where _STATE is None
_GLOBAL = [_default()]


def get_implementation() -> str:
  """The implementation in effect (see :func:`implementation`)."""
  if _STATE is not None:
    return _STATE.value
  return getattr(_state, "override", None) or _GLOBAL[0]


def set_implementation(name: str) -> None:
  """Sets the implementation globally: one of :data:`IMPLEMENTATIONS`."""
  _axes.check_choice(name, IMPLEMENTATIONS, name="name", owner="set_implementation")
  if _STATE is not None:
    import jax

    jax.config.update("jaxnorm_implementation", name)
  _GLOBAL[0] = name


@contextlib.contextmanager
def implementation(name: str):
  """Context manager selecting ``"auto"``, ``"fused"``, ``"reference"`` or
  ``"pallas"`` for the functions traced inside (this thread only).

  The choice is part of JAX's trace cache key: a jitted function called
  under a different choice is traced again (with jax >= 0.8; with jax 0.7,
  wrap the function anew after changing the choice).
  """
  _axes.check_choice(name, IMPLEMENTATIONS, name="name", owner="implementation")
  if _STATE is not None:
    with _STATE(name):
      yield
    return
  previous = getattr(_state, "override", None)
  _state.override = name
  try:
    yield
  finally:
    _state.override = previous
