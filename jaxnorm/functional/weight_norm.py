"""Weight normalization: a weight as a direction times a learned length.

Salimans & Kingma (2016) write each output feature's weight vector as
``w = g · v/‖v‖`` and train ``v`` and ``g``: the length of the weight is
decoupled from its direction, which conditions the gradient better, and
nothing depends on the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm._core import axes as _axes

Array = jax.Array


def weight_norm_axes(
  ndim: int, feature_axes, *, owner: str = "weight_normalize"
) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(feature axes, reduction axes) of a weight of rank ``ndim``: the norm
  is taken over every axis but the feature axes (None: over all axes)."""
  features = (
    () if feature_axes is None else _axes.canonicalize_axes(feature_axes, ndim, name="feature_axes", owner=owner)
  )
  return features, tuple(a for a in range(ndim) if a not in features)


def weight_normalize(
  weight: Array,
  scale: Array | None = None,
  *,
  feature_axes=-1,
  epsilon: float = 1e-12,
  dtype=None,
  owner: str = "weight_normalize",
) -> Array:
  r"""``scale · weight / ‖weight‖``, the norm over every axis but the
  feature axes.

  .. math:: \bar w = g \cdot \frac{v}{\sqrt{\sum v^2 + \epsilon}}

  per feature (per output channel with the default ``feature_axes=-1`` of
  a flax kernel), as flax's ``WeightNorm`` computes it, in at least
  float32.

  Args:
    weight: ``v``, any rank.
    scale: ``g``, of the shape of the feature axes (a scalar when there are
      none), or None for unit length.
    feature_axes: the axes that keep one norm each; None or ``()``: one norm
      over the whole weight.
    epsilon: added to the squared norm.
    dtype: of the result (default: ``weight`` and ``scale`` promoted).
    owner: name used in error messages.

  References:
    Salimans & Kingma, `Weight Normalization: A Simple Reparameterization to
    Accelerate Training of Deep Neural Networks
    <https://arxiv.org/abs/1602.07868>`_, 2016.

  Example:
    >>> import jax.numpy as jnp
    >>> w = weight_normalize(jnp.array([[3.0, 0.0], [4.0, 2.0]]), jnp.array([10.0, 1.0]))
    >>> w.tolist()
    [[6.0, 0.0], [8.0, 1.0]]
  """
  _axes.check_floating(weight, name="weight", owner=owner)
  weight = jnp.asarray(weight)
  features, reduction = weight_norm_axes(weight.ndim, feature_axes, owner=owner)
  promoted = jnp.result_type(weight, *([] if scale is None else [scale]))
  compute = jnp.promote_types(promoted, jnp.float32)  # a float16 Σv² overflows above norm 256
  v = weight.astype(compute)
  normalized = v * lax.rsqrt(jnp.sum(v * v, axis=reduction, keepdims=True) + epsilon)  # flax's form: ε inside
  if scale is not None:
    expected = tuple(weight.shape[a] for a in features)
    if jnp.shape(scale) != expected:
      raise ValueError(
        f"{owner}: scale has shape {jnp.shape(scale)}; a weight of shape {weight.shape} with feature_axes="
        f"{feature_axes!r} needs a scale of shape {expected}."
      )
    broadcast = [1] * weight.ndim
    for a in features:
      broadcast[a] = weight.shape[a]
    normalized = normalized * jnp.reshape(scale, broadcast).astype(compute)
  return jnp.asarray(normalized, promoted if dtype is None else dtype)


def weight_norm_of(weight: Array, *, feature_axes=-1, owner: str = "weight_normalize") -> Array:
  """‖weight‖ per feature: the ``g`` for which :func:`weight_normalize`
  returns ``weight`` unchanged (PyTorch's ``weight_norm`` starts ``g``
  there, so wrapping a layer does not change its initialization)."""
  weight = jnp.asarray(weight)
  _, reduction = weight_norm_axes(weight.ndim, feature_axes, owner=owner)
  return jnp.sqrt(jnp.sum(jnp.square(weight.astype(jnp.promote_types(weight.dtype, jnp.float32))), axis=reduction))


NORM_INIT = "norm"
"""``scale_init`` of the WeightNorm modules that starts each ``g`` at
``‖v‖`` of the initial weight, as PyTorch's ``weight_norm`` does."""


def scale_initializer(scale_init, weight: Array, *, feature_axes=-1, owner: str = "WeightNorm"):
  """An initializer ``(key, shape, dtype) -> array`` for the scale of
  ``weight``: ``scale_init`` itself, or for :data:`NORM_INIT` the norm of
  ``weight`` (:func:`weight_norm_of`)."""
  if isinstance(scale_init, str):
    if scale_init != NORM_INIT:
      raise ValueError(
        f"{owner}: scale_init={scale_init!r}; pass an initializer (key, shape, dtype) -> array, or "
        f"{NORM_INIT!r} to start the scale at the norm of the initial weight (PyTorch's weight_norm)."
      )
    return lambda key, shape, dtype=jnp.float32: weight_norm_of(weight, feature_axes=feature_axes).astype(dtype)
  if not callable(scale_init):
    raise TypeError(
      f"{owner}: scale_init={scale_init!r} is not callable; pass an initializer (key, shape, dtype) -> array, "
      f"or {NORM_INIT!r}."
    )
  return scale_init
