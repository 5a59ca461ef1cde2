r"""Conditional normalization: feature-wise modulation computed from a
conditioning input.

Every jaxnorm layer takes a modulation at call time, ``layer(x, scale=s,
shift=t)``, folded into its affine map and applied in its one elementwise
pass (:mod:`jaxnorm._core.modulation`). The conditional layers
(:class:`jaxnorm.AdaLNZero`, :class:`jaxnorm.AdaGroupNorm`,
:class:`jaxnorm.FiLM`, :class:`jaxnorm.ConditionalBatchNorm`) compute that
modulation from the conditioning with a dense layer. This module holds
their pure parts: FiLM's affine map and the tuple AdaLN-Zero returns.
"""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxnorm._core import axes as _axes
from jaxnorm._core.modulation import expand
from jaxnorm._core.normalize import output_dtype

Array = jax.Array


class AdaLNModulation(NamedTuple):
  """One branch of an adaLN-Zero block (DiT): the ``shift`` and ``scale``
  its layer norm is modulated with, ``norm(x, shift=m.shift,
  scale=m.scale)``, and the ``gate`` its residual branch is multiplied by
  (None in an ungated block, such as DiT's final layer). Each has the
  shape ``(N, D)``."""

  shift: Array
  scale: Array
  gate: Array | None


def split_modulation(projected: Array, num_branches: int, gated: bool) -> tuple[AdaLNModulation, ...]:
  """The projected conditioning ``(N, num_branches·k·D)`` cut into branches
  of ``(shift, scale[, gate])``, in DiT's order: ``k = 3`` chunks per
  branch when gated (shift, scale, gate), else 2 (shift, scale)."""
  per_branch = 3 if gated else 2
  chunks = jnp.split(projected, num_branches * per_branch, axis=-1)
  return tuple(
    AdaLNModulation(*chunks[i * per_branch : (i + 1) * per_branch], *(() if gated else (None,)))
    for i in range(num_branches)
  )


def film(
  x: Array,
  scale: Array,
  shift: Array | None = None,
  *,
  feature_axes: _axes.Axes = -1,
  dtype: Any = None,
) -> Array:
  r"""Feature-wise linear modulation: :math:`y = \gamma\,x + \beta`.

  ``γ`` (``scale``) and ``β`` (``shift``) are per example and feature,
  typically predicted from a conditioning input; the same value multiplies
  a feature at every position (every pixel of a channel, every token).

  Args:
    x: input, e.g. ``(N, H, W, C)``.
    scale: ``γ`` of shape ``(N, *features)``, the features alone, or ``x``'s
      rank broadcasting to it.
    shift: optional ``β``, shaped like ``scale``.
    feature_axes: the feature axes (default: last).
    dtype: output dtype (default: promoted dtype of the inputs).

  Returns:
    An array shaped like ``x``.

  References:
    Perez, Strub, de Vries, Dumoulin & Courville, `FiLM: Visual Reasoning
    with a General Conditioning Layer <https://arxiv.org/abs/1709.07871>`_,
    2018.
  """
  owner = "film"
  x = _axes.check_input(x, owner=owner)
  features = _axes.canonicalize_axes(feature_axes, x.ndim, name="feature_axes", owner=owner)
  gamma = expand(scale, x.shape, features, name="scale", owner=owner)
  beta = None if shift is None else expand(shift, x.shape, features, name="shift", owner=owner)
  out = output_dtype(x, gamma, beta, dtype=dtype)
  compute = jnp.promote_types(out, jnp.result_type(x, gamma, *(() if beta is None else (beta,))))
  y = x.astype(compute) * gamma.astype(compute)
  if beta is not None:
    y = y + beta.astype(compute)
  return y.astype(out)


def conditional_affine(projected: Array, scale: Array | None, bias: Array | None) -> tuple[Array, Array]:
  r"""Conditional batch norm's modulation: the projection ``(N, 2C)`` cut
  into ``(Δγ, Δβ)``, as the call-time ``(scale, shift)`` that make a
  normalizer without its own affine map compute :math:`(\gamma +
  \Delta\gamma)\hat x + \beta + \Delta\beta` — ``scale = γ + Δγ − 1``
  (the normalizer multiplies by ``1 + scale``) and ``shift = β + Δβ``, in at
  least float32. An absent ``γ`` is 1 and an absent ``β`` 0."""
  compute = jnp.promote_types(jnp.result_type(projected), jnp.float32)
  delta_scale, delta_bias = jnp.split(projected.astype(compute), 2, axis=-1)
  lead = (1,) * (delta_scale.ndim - 1)  # the parameters broadcast over the examples
  gamma = 1 if scale is None else jnp.reshape(jnp.asarray(scale).astype(compute), lead + jnp.shape(scale))
  beta = 0 if bias is None else jnp.reshape(jnp.asarray(bias).astype(compute), lead + jnp.shape(bias))
  return (gamma - 1) + delta_scale, beta + delta_bias
