"""The statistics engine: count, mean and variance over any set of axes.

Every normalizer in jaxnorm gets its statistics from :func:`moments`; none
keeps a private copy. It handles

* an optional mask (only masked-in elements count),
* reductions across devices (``axis_name``/``axis_index_groups``) that are
  exact when devices hold different numbers of elements,
* a numerically stable variance by default, with the one-pass
  ``E[x²] − E[x]²`` of flax's ``use_fast_variance`` as an option,
* accumulation in at least float32 for bfloat16/float16 inputs.
"""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm._core import arguments as _axes
from jaxnorm._core.normalize import accumulation_dtype

Array = jax.Array


class Moments(NamedTuple):
  """Statistics of a reduction.

  Attributes:
    count: number of elements that entered each statistic (after masking and
      across devices), broadcast to the shape of ``mean``.
    mean: the mean; zeros when the moments are uncentred (``use_mean=False``).
    var: the population (biased) variance, or the mean square ``E[|x|²]``
      when ``use_mean=False``. Always real and non-negative.
  """

  count: Array
  mean: Array
  var: Array


def _abs_sq(x: Array) -> Array:
  if jnp.iscomplexobj(x):
    return lax.square(x.real) + lax.square(x.imag)
  return lax.square(x)


def moments(
  x: Array,
  axes: _axes.Axes,
  *,
  mask: Array | None = None,
  axis_name: str | tuple[str, ...] | None = None,
  axis_index_groups: Any = None,
  use_mean: bool = True,
  use_fast_variance: bool = False,
  dtype: Any = None,
  force_float32_reductions: bool = True,
  keepdims: bool = False,
) -> Moments:
  r"""Count, mean and variance of ``x`` over ``axes``.

  .. math::
     n = \sum_i m_i,\quad \mu = \frac{1}{n}\sum_i m_i x_i,\quad
     \sigma^2 = \frac{1}{n}\sum_i m_i |x_i - \mu|^2

  where ``m`` is the mask (all ones by default) and the sums run over
  ``axes`` and, when ``axis_name`` is given, over every device of that named
  axis (or of its ``axis_index_groups``).

  Algorithm. The default is two-pass: count and sum are reduced (one
  ``psum`` across devices), giving the exact global mean; then the sum of
  squares centred on that global mean is reduced (a second ``psum``). This
  equals the parallel-variance merge of Chan et al. (1979) and, unlike
  averaging per-device means and variances, it is exact when devices hold
  different numbers of elements (masks, uneven shards). It stays accurate
  when ``|mean| ≫ std``. ``use_fast_variance=True`` instead reduces
  ``(n, Σx, Σx²)`` in one pass and one ``psum`` and returns
  ``max(0, E[x²] − E[x]²)``; that cancels catastrophically when
  ``|mean| ≫ std`` and is kept for compatibility with flax.

  Empty reductions (a fully masked-out group) give mean 0 and variance 0.

  Args:
    x: input array, floating point or complex.
    axes: axis or axes of ``x`` to reduce over.
    mask: optional boolean array broadcastable to ``x``; only elements where
      it is true are counted.
    axis_name: named axis (vmap/pmap/shard_map) to reduce over as well.
    axis_index_groups: optional groups of device indices of ``axis_name``
      that reduce separately (pmap only, as in ``lax.psum``).
    use_mean: if False, return the uncentred mean square as ``var`` and zeros
      as ``mean`` (RMS normalization).
    use_fast_variance: one-pass ``E[x²] − E[x]²`` (fast, unstable).
    dtype: dtype to compute in (default: ``x.dtype``), promoted to at least
      float32 when ``force_float32_reductions``.
    force_float32_reductions: accumulate half-precision inputs in float32.
    keepdims: keep the reduced axes with size 1.

  Returns:
    :class:`Moments` ``(count, mean, var)`` in the accumulation dtype
    (``var`` and ``count`` real), shaped like ``x`` without ``axes`` (or with
    size-1 ``axes`` when ``keepdims``).

  Example:
    >>> import jax.numpy as jnp
    >>> m = moments(jnp.array([[1., 2., 3.], [4., 6., 8.]]), axes=1)
    >>> m.mean, m.var
    (Array([2., 6.], dtype=float32), Array([0.6666667, 2.6666667], dtype=float32))
  """
  axes, mask = _axes.check_reduction("moments", x, axes, mask, axis_name)

  acc = accumulation_dtype(jnp.result_type(x), dtype, force_float32_reductions)
  real = jnp.finfo(acc).dtype  # the real dtype matching acc (complex -> float)
  x = jnp.asarray(x, acc)

  if mask is None:
    where = None
    count = 1.0
    for a in axes:
      count *= x.shape[a]
  else:
    where = jnp.broadcast_to(jnp.asarray(mask, bool), x.shape)
    # Zero the masked-out entries so that a NaN or inf there cannot leak into
    # the statistics or their gradients.
    x = jnp.where(where, x, jnp.zeros((), acc))
    count = jnp.sum(where, axes, keepdims=True, dtype=real)

  def reduce_devices(*values):
    if axis_name is None:
      return values
    return lax.psum(values, axis_name, axis_index_groups=axis_index_groups)

  def local_sum(v):
    return jnp.sum(v, axes, keepdims=True, where=where)

  def safe_divide(total, n):
    if where is None:  # n is a positive Python/array constant
      return total / n
    return jnp.where(n > 0, total / jnp.maximum(n, 1), jnp.zeros((), total.dtype))

  if not use_mean:
    count, sq = reduce_devices(count, local_sum(_abs_sq(x)))
    var = safe_divide(sq, count)
    mean = jnp.zeros(var.shape, acc)
  elif use_fast_variance:
    count, s, sq = reduce_devices(count, local_sum(x), local_sum(_abs_sq(x)))
    mean = safe_divide(s, count)
    var = jnp.maximum(safe_divide(sq, count) - _abs_sq(mean), 0.0)
  else:
    count, s = reduce_devices(count, local_sum(x))
    mean = safe_divide(s, count)
    (centred_sq,) = reduce_devices(local_sum(_abs_sq(x - mean)))
    var = safe_divide(centred_sq, count)

  count = jnp.broadcast_to(jnp.asarray(count, real), mean.shape)
  if not keepdims:
    count, mean, var = (jnp.squeeze(v, axes) for v in (count, mean, var))
  return Moments(count, mean, var.astype(real))
