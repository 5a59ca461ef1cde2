"""Applying statistics: :func:`normalize`, and the dtype rules of the
accumulation and of the output."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def accumulation_dtype(x_dtype: Any, dtype: Any = None, force_float32_reductions: bool = True):
  """The dtype statistics are computed in (flax's rule).

  ``dtype`` (default: the input's) promoted to at least float32 when
  ``force_float32_reductions``; float64 and complex inputs keep their
  precision.
  """
  dtype = jnp.dtype(x_dtype if dtype is None else dtype)
  if force_float32_reductions:
    dtype = jnp.promote_types(dtype, jnp.float32)
  return dtype


def output_dtype(*arrays: Any, dtype: Any = None):
  """flax's rule: ``dtype`` if given, else the promoted dtype of the inputs."""
  if dtype is not None:
    return jnp.dtype(dtype)
  out = jnp.result_type(*(a for a in arrays if a is not None))
  if not jnp.issubdtype(out, jnp.inexact):
    out = jnp.promote_types(out, jnp.float32)
  return out


def normalize(
  x: Array,
  mean: Array,
  var: Array,
  scale: Array | None = None,
  bias: Array | None = None,
  *,
  epsilon: float,
  dtype: Any = None,
) -> Array:
  r"""Applies given statistics: :math:`y = (x - \mu)\,\gamma / \sqrt{\sigma^2 + \epsilon} + \beta`.

  All of ``mean``, ``var``, ``scale`` and ``bias`` must have the rank of
  ``x`` and broadcast to it. The arithmetic runs in the promoted dtype of
  ``x`` and the statistics (at least float32 for statistics from
  :func:`moments`); the result has ``dtype``, or the promoted dtype of ``x``,
  ``scale`` and ``bias``.
  """
  out = output_dtype(x, scale, bias, dtype=dtype)
  y = x - mean
  mul = lax.rsqrt(var + epsilon)
  if scale is not None:
    mul = mul * scale
  y = y * mul
  if bias is not None:
    y = y + bias
  return jnp.asarray(y, out)
