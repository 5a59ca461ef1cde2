r"""Dynamic tanh (DyT), the element-wise replacement for layer norm of
"Transformers without Normalization" (Zhu, Chen, He, LeCun & Liu, 2025):

.. math:: y = \gamma \tanh(\alpha x) + \beta

with a learned scalar ``α`` and per-feature ``γ``, ``β``. It computes no
statistics: the tanh squashes the extreme values that layer norm would
scale down, and ``α`` learns the input's scale.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxnorm._core import axes as _axes
from jaxnorm._core.normalize import output_dtype

Array = jax.Array


def dynamic_tanh(
  x: Array,
  alpha: Array,
  scale: Array | None = None,
  bias: Array | None = None,
  *,
  feature_axes: _axes.Axes = -1,
  dtype: Any = None,
) -> Array:
  r"""Dynamic tanh: :math:`y = \gamma \tanh(\alpha x) + \beta`.

  The arithmetic runs in at least float32 (a bfloat16 input is not rounded
  between the product, the tanh and the affine map); the result has
  ``dtype``, else the promoted dtype of ``x`` and the parameters.

  Args:
    x: input, e.g. ``(N, T, D)`` or ``(N, H, W, C)``.
    alpha: ``α``, a scalar or of shape ``(1,)`` (the paper's), or per
      feature.
    scale, bias: optional ``γ``, ``β`` of the feature shape
      ``[x.shape[a] for a in feature_axes]`` (or ``x``'s rank, broadcasting:
      a per-example modulation folded in).
    feature_axes: the axes ``γ`` and ``β`` vary along (default: last).
    dtype: output dtype.

  Returns:
    An array shaped like ``x``.

  References:
    Zhu, Chen, He, LeCun & Liu, `Transformers without Normalization
    <https://arxiv.org/abs/2503.10622>`_, 2025.

  Example:
    >>> import jax.numpy as jnp
    >>> y = dynamic_tanh(jnp.array([-4.0, 0.0, 4.0]), jnp.array([0.5]))
    >>> [round(float(v), 3) for v in y]
    [-0.964, 0.0, 0.964]
  """
  owner = "dynamic_tanh"
  x = _axes.check_input(x, owner=owner)
  features = _axes.canonicalize_axes(feature_axes, x.ndim, name="feature_axes", owner=owner)
  alpha = jnp.asarray(alpha)
  if alpha.size != 1:
    alpha = _axes.broadcast_param(alpha, x.shape, features, name="alpha", owner=owner)
  else:
    alpha = alpha.reshape(())
  scale = _axes.broadcast_param(scale, x.shape, features, name="scale", owner=owner)
  bias = _axes.broadcast_param(bias, x.shape, features, name="bias", owner=owner)
  out = output_dtype(x, alpha, scale, bias, dtype=dtype)
  compute = jnp.promote_types(jnp.result_type(x, alpha, *(p for p in (scale, bias) if p is not None)), jnp.float32)
  y = jnp.tanh(alpha.astype(compute) * x.astype(compute))
  if scale is not None:
    y = y * scale.astype(compute)
  if bias is not None:
    y = y + bias.astype(compute)
  return y.astype(out)
